"""`data.cache`: decoded once in the main process, shared by the loader's workers, the same
samples as reading each file, and `auto` deciding from the memory available."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import unet_seg.data.dataset as dataset_module
from tests.conftest import compose_train
from unet_seg.config import to_plain
from unet_seg.data.datamodule import SegDataModule
from unet_seg.data.dataset import SegDataset, find_pairs
from unet_seg.data.fingerprint import fingerprint
from unet_seg.data.masks import MaskEncoding
from unet_seg.data.plan import AUTO, decide_cache, decoded_bytes, has_auto, plan
from unet_seg.data.transforms import build_train_transform

AUGMENT = {"hflip": 0.5, "vflip": 0.5, "rotate90": 0.5,
           "affine": {"p": 0.5, "scale": [0.9, 1.1], "rotate": [-15, 15], "translate": 0.05},
           "brightness_contrast": {"p": 0.5, "brightness": 0.2, "contrast": 0.2}}  # fmt: skip


def em_folder(root: Path, n: int = 6, sixteen_bit: bool = False) -> Path:
    """`n` 40x56 grey+alpha PNGs (or 16-bit TIFFs) with 4-class masks (values 0/1/2/3)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = rng.integers(0, 4, (40, 56)).astype(np.uint8)
        grey = (60 * mask + rng.integers(0, 60, mask.shape)).astype(np.uint8)
        if sixteen_bit:
            tifffile.imwrite(root / "images" / f"s{i}.tif", grey.astype(np.uint16) * 200 + 7)
        else:
            alpha = np.full_like(grey, 255)
            Image.fromarray(np.stack([grey, alpha], -1), mode="LA").save(
                root / "images" / f"s{i}.png"
            )
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    return root


def datamodule(root: Path, **kwargs) -> SegDataModule:
    args = {"root": str(root), "in_channels": 1, "num_classes": 4,
            "class_names": ["bg", "a", "b", "c"], "mask_values": [0, 1, 2, 3],
            "crop_size": 32, "batch_size": 2, "val_fraction": 0.34, "test_fraction": 0.0,
            "augment": AUGMENT, **kwargs}  # fmt: skip
    return SegDataModule(**args)


def count_reads(monkeypatch: pytest.MonkeyPatch, log: Path) -> None:
    """Each image decode appends a line to `log`, from whichever process decodes."""
    real = dataset_module.read_image

    def counted(path, in_channels):
        with open(log, "a") as f:
            f.write(f"{Path(path).name}\n")
        return real(path, in_channels)

    monkeypatch.setattr(dataset_module, "read_image", counted)


def test_cache_is_filled_once_in_the_main_process_and_workers_never_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "reads.txt"
    count_reads(monkeypatch, log)
    dm = datamodule(em_folder(tmp_path / "em"), cache=True, num_workers=1)
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    decoded = log.read_text().splitlines()
    assert sorted(decoded) == sorted(p.name for p, _ in train.pairs + val.pairs)  # each once
    assert train.cached_bytes() == len(train) * 40 * 56 * 2  # uint8 image + uint8 mask
    assert all(image.dtype == np.uint8 for image, _ in train._cache.values())
    loader = dm.train_dataloader()  # a forked worker, kept across epochs
    assert loader.num_workers == 1 and loader.persistent_workers
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        assert sum(len(b["image"]) for b in batches) == len(train)
    list(dm.val_dataloader())
    assert log.read_text().splitlines() == decoded  # the worker decoded nothing


def test_a_pickled_cache_serves_spawned_workers_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spawn pickles the dataset to each worker: the cache travels with it."""
    dm = datamodule(em_folder(tmp_path / "em"), cache=True)
    dm.setup("fit")
    train = dm.datasets["train"]
    want = train[(0, 5)]

    def refuse(path, in_channels):
        raise AssertionError(f"{path} decoded again")

    copy = pickle.loads(pickle.dumps(train))
    monkeypatch.setattr(dataset_module, "read_image", refuse)
    got = copy[(0, 5)]
    assert torch.equal(got["image"], want["image"]) and torch.equal(got["mask"], want["mask"])


@pytest.mark.parametrize(
    ("sixteen_bit", "intensity"),
    [(False, None), (True, None),
     (True, {"mode": "fixed", "vmin": 300.0, "vmax": 40000.0}),
     (True, {"mode": "percentile", "low": 1.0, "high": 99.0})],
)  # fmt: skip
def test_cached_samples_equal_samples_read_from_the_files(
    tmp_path: Path, sixteen_bit: bool, intensity: dict | None
) -> None:
    """The same seed gives the same patch, augmentation and values, cached or not: the
    cache holds the file's pixels, converted to [0, 1] after the crop."""
    pairs = find_pairs(em_folder(tmp_path / "em", 3, sixteen_bit))
    common = {"encoding": MaskEncoding([0, 1, 2, 3]), "in_channels": 1, "mean": [0.5],
              "std": [0.25], "crop_size": 24, "foreground_crop": 0.33,
              "intensity": intensity}  # fmt: skip
    plain = SegDataset(pairs, transform=build_train_transform(AUGMENT), **common)
    cached = SegDataset(pairs, transform=build_train_transform(AUGMENT), cache=True, **common)
    cached.fill_cache(progress=False)
    stored = cached._cache[0][0].dtype
    assert stored == (np.float32 if intensity and intensity["mode"] == "percentile"
                      else np.uint16 if sixteen_bit else np.uint8)  # fmt: skip
    for index in range(3):
        for seed in (1, 2, 3):
            a, b = plain[(index, seed)], cached[(index, seed)]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        np.testing.assert_array_equal(plain.load(index)[0], cached.load(index)[0])
    whole = SegDataset(pairs, cache=True, **{**common, "crop_size": None})
    assert torch.equal(
        whole[0]["image"], SegDataset(pairs, **{**common, "crop_size": None})[0]["image"]
    )


def test_padding_a_small_image_gives_the_same_sample_cached(tmp_path: Path) -> None:
    pairs = find_pairs(em_folder(tmp_path / "em", 2, sixteen_bit=True))
    common = {"encoding": MaskEncoding([0, 1, 2, 3]), "in_channels": 1, "mean": [0.5],
              "std": [0.25], "crop_size": 48, "pad_to_crop": True,
              "intensity": {"mode": "fixed", "vmin": 300.0, "vmax": 40000.0}}  # fmt: skip
    a = SegDataset(pairs, **common)[(1, 4)]
    b = SegDataset(pairs, cache=True, **common)[(1, 4)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_auto_cache_flips_on_the_memory_available(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = em_folder(tmp_path / "em")
    needed = 6 * 40 * 56 * 2  # 4 training + 2 validation images, uint8 image and mask
    roomy = datamodule(root, cache=AUTO, cache_memory=4 * needed)  # a quarter: just fits
    with caplog.at_level("INFO"):
        roomy.setup("fit")
    assert "data.cache=auto: on" in caplog.text
    assert len(roomy.datasets["train"]._cache) == 4 and len(roomy.datasets["val"]._cache) == 2
    assert roomy.datasets["test"]._cache is None
    tight = datamodule(root, cache=AUTO, cache_memory=4 * needed - 1)
    caplog.clear()
    with caplog.at_level("INFO"):
        tight.setup("fit")
    assert "data.cache=auto: off" in caplog.text and "read per sample" in caplog.text
    assert tight.datasets["train"]._cache is None and tight.datasets["val"]._cache is None
    assert len(tight.datasets["train"][0]["image"].shape) == 3  # still serves samples


def test_the_plan_decides_the_cache_from_the_fingerprint() -> None:
    images = [{"name": f"s{i}.png", "height": 768, "width": 1024, "bits": 8} for i in range(10)]
    data = {"in_channels": 1, "intensity": {"mode": "fixed"}, "val_fraction": 0.2,
            "test_fraction": 0.1}  # fmt: skip
    assert decoded_bytes(images[:1], data) == 768 * 1024 * 2
    assert (
        decoded_bytes(images[:1], {**data, "intensity": {"mode": "percentile"}}) == 768 * 1024 * 5
    )
    on, why = decide_cache(100, 400)
    assert on and "<= 25%" in why
    off, why = decide_cache(101, 400)
    assert not off and "> 25%" in why and "read per sample" in why
    # alone, `cache: auto` (data=folder's default) does not make a config one to plan
    assert not has_auto({"cache": AUTO, "in_channels": 1})
    assert has_auto({"cache": AUTO, "in_channels": AUTO})


def test_plan_fills_cache_with_its_reason(tmp_path: Path) -> None:
    root = em_folder(tmp_path / "em")
    data = to_plain(compose_train(["data=auto", f"data.root={root}"]).data)
    assert data["cache"] == AUTO
    fp = fingerprint(root, progress=False)
    planned, why = plan(fp, data, available=10**9)
    assert planned["cache"] is True and "decoded once" in why["cache"]
    planned, why = plan(fp, data, available=1000)
    assert planned["cache"] is False and "read per sample" in why["cache"]


def test_errors_name_the_file(tmp_path: Path) -> None:
    root = em_folder(tmp_path / "em", 3)
    (root / "images" / "s1.png").write_bytes(b"not a png")
    pairs = find_pairs(root)
    ds = SegDataset(pairs, MaskEncoding([0, 1, 2, 3]), 1, [0.5], [0.25], cache=True)
    with pytest.raises(ValueError, match="s1.png"):
        ds.fill_cache(progress=False)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "s2.png")
    ds = SegDataset(pairs[2:], MaskEncoding([0, 1, 2, 3]), 1, [0.5], [0.25], cache=True)
    with pytest.raises(ValueError, match="s2.png"):
        ds.fill_cache(progress=False)
    with pytest.raises(ValueError, match="cache=False"):
        SegDataset(pairs, MaskEncoding([0, 1, 2, 3]), 1, [0.5], [0.25]).fill_cache()
    with pytest.raises(ValueError, match="data.cache='yes'"):
        datamodule(root, cache="yes")


def test_loader_workers_are_at_most_the_cores_this_process_may_use(monkeypatch) -> None:
    """A run pinned to one core (`taskset -c 0`) gets one loader worker, not the two of
    `data.num_workers`'s default; where affinity cannot be read the setting is kept."""
    from unet_seg.data import datamodule

    monkeypatch.setattr(datamodule, "allowed_cpus", lambda: {0})
    assert datamodule.loader_workers(2) == 1 and datamodule.loader_workers(0) == 0
    monkeypatch.setattr(datamodule, "allowed_cpus", lambda: {0, 1, 2, 3})
    assert datamodule.loader_workers(2) == 2
    monkeypatch.setattr(datamodule, "allowed_cpus", set)
    assert datamodule.loader_workers(3) == 3
