"""Volumes as samples (`unet_seg.data.volume_dataset`, `volume_datamodule`): intensity rules,
windows of slices, slabs and patches, foreground oversampling, whole volumes for evaluation,
and the data module's split and checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unet_seg.data.contract import DataContract
from unet_seg.data.masks import IGNORE_INDEX
from unet_seg.data.volume_cases import find_volume_cases, holds_volumes
from unet_seg.data.volume_datamodule import VolumeDataModule
from unet_seg.data.volume_dataset import VolumeDataset, load_case, scale_volume
from unet_seg.data.volumes import VolumeMeta, write_volume


def meta_for(shape: tuple[int, int, int], spacing=(2.0, 1.0, 1.0)) -> VolumeMeta:
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])  # (x, y, z) -> mm
    return VolumeMeta(tuple(shape), tuple(spacing), tuple(map(tuple, affine)), "nifti")


def write_case(root: Path, name: str, image: np.ndarray, labels: np.ndarray | None) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    meta = meta_for(image.shape[:3])
    write_volume(root / "images" / f"{name}.nii.gz", image, meta)
    if labels is not None:
        write_volume(root / "masks" / f"{name}.nii.gz", labels, meta, labels=True)


def contract(**volume) -> DataContract:
    data = {"in_channels": 1, "num_classes": 3, "class_names": ["bg", "a", "b"],
            "mask_values": [0, 1, 2], "intensity": {"mode": "zscore"}, "mean": [0.0],
            "std": [1.0], "crop_size": 8, "volume": True, **volume}  # fmt: skip
    return DataContract.from_config(data)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three cases 6x10x12: the image holds its voxel's z index (so a slice is known by its
    values); class 1 a block, class 2 a single voxel."""
    rng = np.random.default_rng(0)
    for i in range(3):
        z = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 10, 12), np.float32)
        image = (z * 10 + rng.normal(0, 0.01, z.shape)).astype(np.float32)
        labels = np.zeros((6, 10, 12), np.uint8)
        labels[1:3, 2:5, 3:7] = 1
        labels[4, 8, 10] = 2
        write_case(tmp_path, f"case_{i}", image, labels)
    return tmp_path


def test_scale_volume_modes() -> None:
    image = np.stack([np.linspace(-1200, 800, 1000, dtype=np.float32).reshape(10, 10, 10)])
    ct = scale_volume(image, {"mode": "ct", "low": -100.0, "high": 300.0}, [100.0], [50.0])
    assert ct.min() == pytest.approx(-4.0) and ct.max() == pytest.approx(4.0)
    z = scale_volume(image * 3 + 7, {"mode": "zscore"}, [123.0], [9.0])
    assert z.mean() == pytest.approx(0.0, abs=1e-5) and z.std() == pytest.approx(1.0, abs=1e-5)
    fixed = scale_volume(image, {"mode": "fixed", "vmin": -1200.0, "vmax": 800.0}, [0.5], [0.25])
    assert fixed.min() == pytest.approx(-2.0) and fixed.max() == pytest.approx(2.0)
    # 2.5-D: the contract lists a value per slab slice, channel-major; each channel's first
    two = np.stack([image[0], image[0]])
    out = scale_volume(two, {"mode": "ct", "low": -1e4, "high": 1e4}, [0, 0, 0, 100, 100, 100],
                       [1, 1, 1, 2, 2, 2], slab_size=3)  # fmt: skip
    np.testing.assert_allclose(out[1], (image[0] - 100) / 2, rtol=1e-6)


def test_percentile_scales_each_channel_over_the_whole_volume() -> None:
    """`percentile` on volumes took the last axis of `[Z, Y, X]` for channels, so each X column
    was stretched to 0..1 on its own; each channel's percentiles are its whole volume's."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 10, (2, 4, 5, 6)).astype(np.float32)
    image[0, ..., 3:] += 100  # the right half of channel 0 is much brighter than the left
    image[1] *= 50
    intensity = {"mode": "percentile", "low": 0.0, "high": 100.0}
    out = scale_volume(image, intensity, [0.0, 0.0], [1.0, 1.0])
    for c in range(2):
        lo, hi = image[c].min(), image[c].max()
        np.testing.assert_allclose(out[c], (image[c] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    assert out[0, ..., :3].max() < 0.1 < 0.9 < out[0, ..., 3:].min()


def test_zscore_over_the_nonzero_region_does_not_see_the_empty_field() -> None:
    """The same brain with 0, 4 and 12 voxels of zero padding: the field weighed in the mean
    (the brain came out at 0.00, 2.6 and 7.8); over the non-zero region (`nonzero`, nnU-Net's
    use_mask_for_norm) the brain's values are the same, and the field stays 0. A zero voxel
    inside the brain (a hole in the region) is normalised with it."""
    rng = np.random.default_rng(1)
    brain = rng.normal(300, 40, (2, 10, 12, 12)).astype(np.float32)
    brain[:, 5, 6, 6] = 0.0
    inside = []
    for pad in (0, 4, 12):
        padded = np.pad(brain, [(0, 0)] + [(pad, pad)] * 3)
        out = scale_volume(padded, {"mode": "zscore", "nonzero": True}, [0.0] * 2, [1.0] * 2)
        core = tuple(slice(pad, pad + n) for n in brain.shape[1:])
        inside.append(out[(slice(None), *core)])
        field = np.ones(padded.shape[1:], bool)
        field[core] = False
        assert (out[:, field] == 0).all()
    for got in inside[1:]:
        np.testing.assert_allclose(got, inside[0], atol=1e-5)
    np.testing.assert_allclose(inside[0].mean((1, 2, 3)), 0.0, atol=1e-5)
    assert (inside[0][:, 5, 6, 6] < -5).all()  # the hole: (0 - 300) / 40 or so


@pytest.mark.parametrize(
    "intensity", [{"mode": "zscore"}, {"mode": "percentile", "low": 1.0, "high": 99.0}]
)
def test_nan_and_infinite_voxels_are_left_out_and_set_to_zero(intensity: dict, caplog) -> None:
    """One NaN made a whole channel NaN after z-score (training then stopped on a NaN loss):
    NaN and infinite voxels count in no statistic and are 0 after normalisation, the rest
    normalised as the finite voxels alone say, and the log says how many."""
    rng = np.random.default_rng(2)
    clean = rng.normal(100, 20, (1, 6, 8, 8)).astype(np.float32)
    dirty = clean.copy()
    dirty[0, 2, 3, 4], dirty[0, 4, 1, 1] = np.nan, np.inf
    keep = np.isfinite(dirty)
    with caplog.at_level("WARNING"):
        out = scale_volume(dirty, intensity, [0.5], [0.25], name="t1.nii.gz")
    assert np.isfinite(out).all() and (out[~keep] == 0).all()
    assert "t1.nii.gz: 2 NaN or infinite voxel(s)" in caplog.text
    finite = clean[keep]
    if intensity["mode"] == "zscore":
        expected = (clean - finite.mean()) / finite.std()
    else:
        lo, hi = np.percentile(finite, [1.0, 99.0])
        expected = (np.clip((clean - lo) / (hi - lo), 0, 1) - 0.5) / 0.25
    np.testing.assert_allclose(out[keep], expected[keep], rtol=1e-4, atol=1e-4)


def test_holds_volumes(folder: Path, tmp_path: Path) -> None:
    assert holds_volumes(folder / "images")
    flat = tmp_path / "flat"
    flat.mkdir()
    import tifffile

    tifffile.imwrite(flat / "a.tif", np.zeros((8, 8), np.uint8))
    assert not holds_volumes(flat)  # a 2-D TIFF is an image
    tifffile.imwrite(flat / "b.tif", np.zeros((9, 8, 8), np.uint8))
    assert holds_volumes(flat)  # a stack of 9 pages is a volume


@pytest.mark.parametrize("dims,slab_size", [(2, 1), (2.5, 3), (3, 1)])
def test_training_windows(folder: Path, dims: float, slab_size: int) -> None:
    c = contract(dims=dims, slab=slab_size, in_channels=slab_size,
                 patch=[4, 8, 8] if dims == 3 else None)  # fmt: skip
    cases = find_volume_cases(folder)
    ds = VolumeDataset(cases, c, train=True, crop=c.patch or [8, 8], augment=None)
    loaded = ds.case(0)
    for seed in range(20):
        item = ds[(0, seed)]
        x, y = item["image"], item["mask"]
        if dims == 3:
            assert x.shape == (1, 4, 8, 8) and y.shape == (4, 8, 8)
            continue
        assert x.shape == (slab_size, 8, 8) and y.shape == (8, 8)
        # the input is the slab around the slice the mask comes from: find the slice by
        # its values (the image holds z * 10) and rebuild the slab from the whole volume
        z = int(np.argmin([abs(loaded.image[0, k].mean() - x[slab_size // 2].mean().item())
                           for k in range(6)]))  # fmt: skip
        expected = [int(np.argmin(abs(loaded.image[0].mean((1, 2)) - x[i].mean().item())))
                    for i in range(slab_size)]  # fmt: skip
        assert expected == [min(max(z + d, 0), 5) for d in range(-(slab_size // 2),
                                                                  slab_size // 2 + 1)]  # fmt: skip
        # the mask is that slice's labels
        assert set(np.unique(y.numpy())) <= set(np.unique(loaded.labels[z]).tolist())


def test_foreground_oversampling_finds_the_single_voxel(folder: Path) -> None:
    """Class 2 is one voxel of 720: with foreground_crop=1 and two classes present, about
    half the windows hold it; uniform windows of 4x8x8 rarely do."""
    c = contract(dims=3, patch=[4, 8, 8])
    cases = find_volume_cases(folder)
    weighted = VolumeDataset(cases, c, train=True, crop=[4, 8, 8], foreground_crop=1.0,
                             augment=None)  # fmt: skip
    hits = sum(bool((weighted[(0, s)]["mask"] == 2).any()) for s in range(60))
    assert 15 <= hits <= 45
    uniform = VolumeDataset(cases, c, train=True, crop=[4, 8, 8], augment=None)
    assert sum(bool((uniform[(0, s)]["mask"] == 2).any()) for s in range(60)) < hits


def test_padding_and_eval_items(folder: Path) -> None:
    c = contract(dims=3, patch=[8, 12, 16])  # larger than 6x10x12 on every axis
    ds = VolumeDataset(find_volume_cases(folder), c, train=True, crop=[8, 12, 16])
    item = ds[(1, 3)]
    assert item["image"].shape == (1, 8, 12, 16)
    assert (item["mask"] == IGNORE_INDEX).sum() == 8 * 12 * 16 - 6 * 10 * 12
    whole = VolumeDataset(find_volume_cases(folder), c)[2]
    assert whole["image"].shape == (1, 6, 10, 12) and whole["mask"].shape == (6, 10, 12)
    assert whole["name"] == "case_2"


def test_label_value_not_in_contract_names_the_file(folder: Path) -> None:
    labels = np.zeros((6, 10, 12), np.uint8)
    labels[0, 0, 0] = 7
    write_case(folder, "case_bad", np.zeros((6, 10, 12), np.float32), labels)
    case = [c for c in find_volume_cases(folder) if c.name == "case_bad"][0]
    with pytest.raises(ValueError, match=r"case_bad\.nii\.gz.*\[7\]"):
        load_case(case, contract(dims=3, patch=[4, 8, 8]))


def test_datamodule_splits_cases_and_checks_every_case(folder: Path, tmp_path: Path) -> None:
    labels = np.zeros((6, 10, 12), np.uint8)
    labels[0, 0, 0] = 9
    write_case(folder, "case_bad", np.zeros((6, 10, 12), np.float32), labels)
    write_case(folder, "case_thin", np.zeros((6, 10, 12, 2), np.float32), labels * 0)
    common = {"root": str(folder), "in_channels": 1, "num_classes": 3,
              "class_names": ["bg", "a", "b"], "mask_values": [0, 1, 2],
              "intensity": {"mode": "zscore"}, "mean": [0.0], "std": [1.0], "crop_size": 8,
              "dims": 3, "patch": [4, 8, 8], "batch_size": 2, "val_fraction": 0.34,
              "test_fraction": 0.0, "splits_path": str(tmp_path / "splits.json")}  # fmt: skip
    problems = VolumeDataModule(**common).check()
    assert len(problems) == 2
    assert any("case_bad" in p and "[9]" in p for p in problems)
    assert any("case_thin" in p and "2 channel(s)" in p for p in problems)
    for name in ("case_bad", "case_thin"):
        for sub in ("images", "masks"):
            (folder / sub / f"{name}.nii.gz").unlink()
    dm = VolumeDataModule(**common)
    assert dm.check() == []
    dm.setup()
    assert sorted(dm.splits["train"] + dm.splits["val"]) == ["case_0", "case_1", "case_2"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 4, 8, 8) and batch["mask"].shape == (2, 4, 8, 8)
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (1, 1, 6, 10, 12)
    freq = dm.class_frequencies()
    assert freq[2] == pytest.approx(1 / 720) and freq[1] == pytest.approx(24 / 720)


def test_augment_window_moves_image_and_labels_together() -> None:
    """Every flip and turn applied to the image is applied to the labels: with the labels a
    copy of the image's values, they stay equal whatever was drawn; no flip when p is 0."""
    from unet_seg.data.volume_dataset import augment_window

    y = np.arange(4 * 6 * 6, dtype=np.uint8).reshape(4, 6, 6)
    x = y[None].astype(np.float32)
    every = {"hflip": 1.0, "vflip": 1.0, "rotate90": 1.0}
    for seed in range(8):
        ax, ay = augment_window(x, y, np.random.default_rng(seed), 3, every)
        np.testing.assert_array_equal(ax[0], ay.astype(np.float32))
        assert not np.array_equal(ay, y)
    same_x, same_y = augment_window(x, y, np.random.default_rng(0), 3, {})
    np.testing.assert_array_equal(same_y, y)


def test_resampling_to_the_contract_spacing_keeps_the_labels(tmp_path: Path) -> None:
    from unet_seg.data.volume_dataset import resample_labels, resampled_shape

    labels = np.random.default_rng(0).choice(np.array([0, 2, 5], np.uint8), size=(7, 9, 11))
    out = resample_labels(labels, (13, 4, 11))
    assert out.shape == (13, 4, 11) and set(np.unique(out)) <= {0, 2, 5}  # no 1, 3 or 4
    np.testing.assert_array_equal(resample_labels(labels, (7, 9, 11)), labels)
    assert resampled_shape((10, 20, 20), (2.0, 1.0, 1.0), (4.0, 1.0, 1.0)) == (5, 20, 20)
    assert resampled_shape((10, 20, 20), (2.0, 1.0, 1.0), (2.04, 1.0, 1.0)) == (10, 20, 20)
    # a case at 2 mm slices read for a net trained at 4 mm: half the slices, labels kept
    image = np.zeros((6, 10, 12), np.float32)
    image[:, :, 6:] = 1
    labels = (image > 0).astype(np.uint8)
    write_case(tmp_path, "thin", image, labels)  # spacing (2, 1, 1)
    (case,) = find_volume_cases(tmp_path)
    loaded = load_case(case, contract(dims=3, patch=[4, 8, 8], spacing=[4.0, 1.0, 1.0]))
    assert loaded.image.shape == (1, 3, 10, 12) and loaded.labels.shape == (3, 10, 12)
    np.testing.assert_array_equal(loaded.labels[:, :, 6:], 1)
    assert loaded.meta.shape == (6, 10, 12)  # the file's own grid, to write back to
    native = load_case(case, contract(dims=3, patch=[4, 8, 8], spacing=[4.0, 1.0, 1.0]),
                       resample=False)  # fmt: skip
    assert native.image.shape == (1, 6, 10, 12)
