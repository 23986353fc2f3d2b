"""The synthetic 3-D dataset: deterministic CT-like volumes, written once, read back aligned."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from unet_seg.data.synthetic3d import (
    META_FILE,
    case_name,
    ensure_synthetic3d,
    render_volume,
)
from unet_seg.data.volume_plan import choose_intensity, fingerprint_volumes
from unet_seg.data.volumes import read_volume

SHAPE, SPACING = (12, 24, 24), (2.0, 0.8, 0.8)


def test_volumes_are_deterministic_and_ct_like() -> None:
    image, labels = render_volume(np.random.default_rng([0, 1]), (24, 48, 48), SPACING)
    again, same = render_volume(np.random.default_rng([0, 1]), (24, 48, 48), SPACING)
    other, _ = render_volume(np.random.default_rng([1, 1]), (24, 48, 48), SPACING)
    assert np.array_equal(image, again) and np.array_equal(labels, same)
    assert not np.array_equal(image, other)
    assert image.dtype == np.int16 and labels.dtype == np.uint8
    assert image.shape == labels.shape == (24, 48, 48)
    share = np.bincount(labels.ravel(), minlength=3) / labels.size
    assert set(np.unique(labels)) == {0, 1, 2}
    assert 0.004 < share[2] < 0.02 < share[1]  # class 2 is rare, class 1 large
    air = np.median(image[:, :2, :2])  # a corner, outside the body
    assert -1050 < air < -900
    body = image[(labels == 0) & (image > -500)]  # soft tissue around the structures
    assert -20 < np.median(body) < 60
    assert np.median(image[labels == 1]) > np.median(body) + 30
    assert np.median(image[labels == 2]) > np.median(image[labels == 1]) + 30


def test_ensure_writes_once_and_reads_back_with_its_spacing(tmp_path) -> None:
    root = tmp_path / "s3d"
    assert ensure_synthetic3d(root, num_volumes=2, shape=list(SHAPE), spacing=list(SPACING)) == root
    for i in range(2):
        image, meta = read_volume(root / "images" / case_name(i))
        labels, mask_meta = read_volume(root / "masks" / case_name(i))
        assert image.dtype == np.int16 and labels.dtype == np.uint8
        assert image.shape == labels.shape == SHAPE
        assert np.allclose(meta.spacing, SPACING) and np.allclose(mask_meta.spacing, SPACING)
        assert np.allclose(meta.affine_matrix(), np.diag([0.8, 0.8, 2.0, 1.0]))
        expected = render_volume(np.random.default_rng([0, i]), SHAPE, SPACING)
        assert np.array_equal(image, expected[0]) and np.array_equal(labels, expected[1])
    params = json.loads((root / META_FILE).read_text())
    assert params["shape"] == list(SHAPE) and params["num_volumes"] == 2
    stamp = (root / "images" / case_name(0)).stat().st_mtime_ns
    ensure_synthetic3d(root, num_volumes=2, shape=SHAPE, spacing=SPACING)  # up to date
    assert (root / "images" / case_name(0)).stat().st_mtime_ns == stamp
    ensure_synthetic3d(root, num_volumes=3, shape=SHAPE, spacing=SPACING, seed=1)
    assert json.loads((root / META_FILE).read_text())["seed"] == 1
    assert (root / "images" / case_name(2)).is_file()
    assert not any(p.name.startswith(".s3d") for p in tmp_path.iterdir())  # no temp left


def test_bad_parameters_and_foreign_folders_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError) as err:
        ensure_synthetic3d(tmp_path / "x", num_volumes=0, shape=(4, 16, 16), spacing=(1, 0, 1))
    text = str(err.value)
    assert "num_volumes=0" in text and "shape=[4, 16, 16]" in text and "spacing" in text
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "scan.nii.gz").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not a synthetic 3-D dataset"):
        ensure_synthetic3d(mine, num_volumes=1, shape=SHAPE, spacing=SPACING)
    assert (mine / "scan.nii.gz").is_file()


def test_the_config_holds_what_the_plan_finds_on_the_default_volumes(tmp_path) -> None:
    data = OmegaConf.load(Path(__file__).parents[1] / "conf" / "data" / "synthetic3d.yaml")
    params = OmegaConf.to_container(data.synthetic3d)
    root = ensure_synthetic3d(tmp_path / "s3d", **params)  # as the data module calls it
    assert params == {"num_volumes": 10, "shape": [24, 48, 48], "spacing": [2.0, 0.8, 0.8],
                      "seed": 0}  # fmt: skip
    intensity, mean, std, _ = choose_intensity(fingerprint_volumes(root))
    assert OmegaConf.to_container(data.intensity) == intensity
    assert list(data.mean) == mean and list(data.std) == std
    assert list(data.spacing) == params["spacing"] and data.dims == 3 and data.volume
