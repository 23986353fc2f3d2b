"""Volumes larger than memory (`data.cache` for volumes, `VolumeDataset.store`): cases over
the memory budget are preprocessed once into a copy on disk and memory-mapped, give the same
windows as in memory, and the copy is reused until its files or the contract change."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from unet_seg.data import volume_dataset
from unet_seg.data.contract import DataContract
from unet_seg.data.volume_cases import find_volume_cases
from unet_seg.data.volume_datamodule import VolumeDataModule
from unet_seg.data.volume_dataset import VolumeDataset
from unet_seg.data.volumes import VolumeMeta, write_volume

AUGMENT = {"hflip": 0.5, "vflip": 0.5, "rotate90": 0.5,
           "brightness_contrast": {"p": 0.5, "brightness": 0.2, "contrast": 0.2}}  # fmt: skip


def contract(**fields) -> DataContract:
    data = {"in_channels": 1, "num_classes": 3, "class_names": ["bg", "a", "b"],
            "mask_values": [0, 1, 2], "intensity": {"mode": "ct", "low": -50.0, "high": 80.0},
            "mean": [10.0], "std": [20.0], "volume": True, "dims": 3, "patch": [4, 8, 8],
            **fields}  # fmt: skip
    return DataContract.from_config(data)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three cases 6x10x10 of random intensities, class 1 a block, class 2 one voxel."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    affine = tuple(map(tuple, np.diag([1.0, 1.0, 2.0, 1.0])))
    meta = VolumeMeta((6, 10, 10), (2.0, 1.0, 1.0), affine, "nifti")
    for i in range(3):
        image = rng.normal(0, 40, (6, 10, 10)).astype(np.float32)
        labels = np.zeros((6, 10, 10), np.uint8)
        labels[1:3, 2:5, 3:7] = 1
        labels[4, 8, 9] = 2
        write_volume(tmp_path / "data" / "images" / f"case_{i}.nii.gz", image, meta)
        write_volume(tmp_path / "data" / "masks" / f"case_{i}.nii.gz", labels, meta, labels=True)
    return tmp_path / "data"


def dataset(folder: Path, c: DataContract, **cache) -> VolumeDataset:
    return VolumeDataset(find_volume_cases(folder), c, train=True, crop=[4, 8, 8],
                         foreground_crop=0.5, augment=AUGMENT, **cache)  # fmt: skip


def test_over_its_budget_a_dataset_is_memory_mapped_with_the_same_windows(
    folder: Path, tmp_path: Path
) -> None:
    c = contract()
    memory = dataset(folder, c)
    # 3 cases of 600 voxels take 3 x 3000 bytes: a quarter of 4000 bytes is under that
    mapped = dataset(folder, c, cache="auto", cache_dir=tmp_path / "cache", cache_memory=4000)
    mapped.load_all()
    assert mapped.memory_mapped and mapped._loaded == {}  # no case held in memory
    for i in range(3):
        case = mapped.case(i)
        assert isinstance(case.image, np.memmap) and isinstance(case.labels, np.memmap)
        np.testing.assert_array_equal(case.image, memory.case(i).image)
        np.testing.assert_array_equal(case.labels, memory.case(i).labels)
        assert case.meta == memory.case(i).meta
    for seed in range(40):
        a, b = memory[(seed % 3, seed)], mapped[(seed % 3, seed)]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert b["image"].numpy().flags.writeable  # copied out of the read-only mapping
    whole = VolumeDataset(find_volume_cases(folder), c, cache=False, cache_dir=tmp_path / "cache")
    assert torch.equal(whole[1]["image"], VolumeDataset(find_volume_cases(folder), c)[1]["image"])
    # within the budget, auto keeps them in memory
    roomy = dataset(folder, c, cache="auto", cache_dir=tmp_path / "cache", cache_memory=10**9)
    roomy.load_all()
    assert not roomy.memory_mapped and type(roomy.case(0).image) is np.ndarray


def test_the_copy_on_disk_is_reused_and_a_changed_contract_writes_a_new_one(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    reads = []
    load = volume_dataset.load_case
    monkeypatch.setattr(
        volume_dataset, "load_case", lambda *a, **k: reads.append(1) or load(*a, **k)
    )
    first = dataset(folder, contract(), cache=False, cache_dir=cache)
    first.load_all()
    copies = sorted(cache.glob("case_*"))
    assert len(copies) == 3 and len(reads) == 3
    times = {p: (p / "image.npy").stat().st_mtime_ns for p in copies}
    again = dataset(folder, contract(), cache=False, cache_dir=cache)
    again.load_all()
    assert len(reads) == 3  # nothing read or written again
    assert sorted(cache.glob("case_*")) == copies
    assert {p: (p / "image.npy").stat().st_mtime_ns for p in copies} == times
    assert not list(cache.glob(".*"))  # no temporary folder left
    # another mean is another preprocessing: new copies beside the old ones
    other = dataset(folder, contract(mean=[30.0]), cache=False, cache_dir=cache)
    other.load_all()
    assert len(reads) == 6 and len(list(cache.glob("case_*"))) == 6
    np.testing.assert_allclose(other.case(0).image, again.case(0).image - 1.0, atol=1e-5)
    # a changed case file too
    write_volume(folder / "masks" / "case_0.nii.gz", np.zeros((6, 10, 10), np.uint8),
                 first.case(0).meta, labels=True)  # fmt: skip
    changed = dataset(folder, contract(), cache=False, cache_dir=cache)
    assert changed.case(0).labels.max() == 0 and len(reads) == 7


def test_the_data_module_keeps_volumes_over_the_budget_on_disk(
    folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    common = {"root": str(folder), "in_channels": 1, "num_classes": 3,
              "class_names": ["bg", "a", "b"], "mask_values": [0, 1, 2],
              "intensity": {"mode": "zscore"}, "mean": [0.0], "std": [1.0], "crop_size": 8,
              "dims": 3, "patch": [4, 8, 8], "batch_size": 2, "val_fraction": 0.34,
              "test_fraction": 0.0, "splits_path": str(tmp_path / "run" / "splits.json"),
              "cache_memory": 4000}  # fmt: skip
    with caplog.at_level(logging.INFO, logger="unet_seg.data.volume_datamodule"):
        dm = VolumeDataModule(**common)
        assert dm.check() == []
        assert dm._preloaded == {}  # check() wrote the copies, kept nothing
        dm.setup()
    assert "data.cache=auto: on disk" in caplog.text
    assert len(list((tmp_path / "run" / ".cache" / "volumes").glob("case_*"))) == 3
    for dataset in dm.datasets.values():
        assert dataset.memory_mapped and dataset._loaded == {}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 4, 8, 8)
    assert next(iter(dm.val_dataloader()))["image"].shape == (1, 1, 6, 10, 10)
    assert dm.class_frequencies()[2] == pytest.approx(1 / 600)
    # data.cache=true keeps them in memory whatever the budget
    kept = VolumeDataModule(**{**common, "cache": True})
    kept.setup()
    assert not kept.datasets["train"].memory_mapped
    assert type(kept.datasets["train"].case(0).image) is np.ndarray


def test_a_bad_cache_value_is_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match="data.cache='disk'"):
        VolumeDataset(find_volume_cases(folder), contract(), cache="disk")
