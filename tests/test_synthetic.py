"""Tests for the synthetic nuclei dataset."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from unet_seg.data.synthetic import (
    FORMAT_VERSION,
    ensure_synthetic,
    generate,
    render_sample,
)

SIZE = 64


def _read(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert array is not None, path
    return array


def _touching(instances: np.ndarray) -> bool:
    """True if two different non-zero labels are 4-adjacent somewhere."""
    for a, b in (
        (instances[:, :-1], instances[:, 1:]),
        (instances[:-1, :], instances[1:, :]),
    ):
        if np.any((a > 0) & (b > 0) & (a != b)):
            return True
    return False


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    return [render_sample(np.random.default_rng([0, i]), 128) for i in range(12)]


def test_render_sample_types(samples: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for image, instances in samples:
        assert image.shape == instances.shape == (128, 128)
        assert image.dtype == np.uint8
        assert instances.dtype == np.uint16
        labels = np.unique(instances)
        # Consecutive labels 0..N.
        assert np.array_equal(labels, np.arange(len(labels)))
        assert len(labels) >= 2


def test_render_sample_deterministic() -> None:
    a = render_sample(np.random.default_rng([3, 7]), SIZE)
    b = render_sample(np.random.default_rng([3, 7]), SIZE)
    c = render_sample(np.random.default_rng([4, 7]), SIZE)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_content_sanity(samples: list[tuple[np.ndarray, np.ndarray]]) -> None:
    fg = np.stack([inst > 0 for _, inst in samples])
    images = np.stack([img for img, _ in samples]).astype(np.float64)
    assert 0.05 < fg.mean() < 0.5
    fg_mean = images[fg].mean()
    bg_mean = images[~fg].mean()
    assert fg_mean > bg_mean + 30
    # Not saturated: nearly all pixels below 255.
    assert (images == 255).mean() < 0.01
    assert sum(_touching(inst) for _, inst in samples) >= 3


@pytest.mark.parametrize("size", [64, 256])
def test_density_independent_of_size(size: int) -> None:
    fg = [(render_sample(np.random.default_rng([0, i]), size)[1] > 0).mean() for i in range(6)]
    assert 0.05 < float(np.mean(fg)) < 0.5


def test_not_trivial(samples: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """One global threshold for all images must not segment them perfectly."""
    fg = np.stack([inst > 0 for _, inst in samples])
    images = np.stack([img for img, _ in samples])
    best = 0.0
    for t in range(1, 255, 2):
        pred = images >= t
        dice = 2 * (pred & fg).sum() / (pred.sum() + fg.sum())
        best = max(best, dice)
    assert 0.6 < best < 0.97


def test_generate_files(tmp_path: Path) -> None:
    root = generate(tmp_path / "syn", num_images=5, size=SIZE, seed=1)
    assert root == tmp_path / "syn"
    names = {
        d: sorted(p.name for p in (root / d).iterdir()) for d in ("images", "masks", "instances")
    }
    assert len(names["images"]) == 5
    assert names["images"] == names["masks"] == names["instances"]
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert (meta["num_images"], meta["size"], meta["seed"]) == (5, SIZE, 1)
    # No temporary directories left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]

    for i, name in enumerate(names["images"]):
        image = _read(root / "images" / name)
        mask = _read(root / "masks" / name)
        instances = _read(root / "instances" / name)
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert instances.dtype == np.uint16 and instances.shape == (SIZE, SIZE)
        assert np.array_equal(mask, (instances > 0).astype(np.uint8) * 255)
        ref_image, ref_instances = render_sample(np.random.default_rng([1, i]), SIZE)
        assert np.array_equal(image, ref_image)
        assert np.array_equal(instances, ref_instances)


def test_generate_independent_of_count(tmp_path: Path) -> None:
    small = generate(tmp_path / "a", num_images=5, size=SIZE, seed=2)
    large = generate(tmp_path / "b", num_images=10, size=SIZE, seed=2)
    other = generate(tmp_path / "c", num_images=5, size=SIZE, seed=3)
    for i in range(5):
        name = f"{i:04d}.png"
        assert (small / "images" / name).read_bytes() == (large / "images" / name).read_bytes()
        assert (small / "instances" / name).read_bytes() == (
            large / "instances" / name
        ).read_bytes()
    assert not np.array_equal(
        _read(small / "images" / "0000.png"), _read(other / "images" / "0000.png")
    )


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _age(root: Path) -> None:
    """Set all mtimes into the past so a rewrite is detectable regardless of clock resolution."""
    for p in root.rglob("*"):
        os.utime(p, ns=(1_000_000_000, 1_000_000_000))


def test_ensure_synthetic(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data" / "syn"
    caplog.set_level(logging.INFO, logger="unet_seg.data.synthetic")
    assert ensure_synthetic(root, num_images=4, size=SIZE, seed=0) == root
    assert len(list((root / "images").iterdir())) == 4
    assert "Generating" in caplog.text

    _age(root)
    before = _mtimes(root)
    caplog.clear()
    ensure_synthetic(root, num_images=4, size=SIZE, seed=0)
    assert _mtimes(root) == before
    assert "up to date" in caplog.text

    # Different parameters -> regenerated.
    ensure_synthetic(root, num_images=3, size=SIZE, seed=0)
    assert len(list((root / "images").iterdir())) == 3
    assert json.loads((root / "synthetic.json").read_text())["num_images"] == 3
    _age(root)
    before = _mtimes(root)
    ensure_synthetic(root, num_images=3, size=SIZE, seed=5)
    assert _mtimes(root) != before
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 5

    # Missing file -> regenerated.
    (root / "masks" / "0001.png").unlink()
    ensure_synthetic(root, num_images=3, size=SIZE, seed=5)
    assert (root / "masks" / "0001.png").is_file()

    # Outdated format version -> regenerated.
    meta = json.loads((root / "synthetic.json").read_text())
    meta["format_version"] = FORMAT_VERSION - 1
    (root / "synthetic.json").write_text(json.dumps(meta))
    ensure_synthetic(root, num_images=3, size=SIZE, seed=5)
    assert json.loads((root / "synthetic.json").read_text())["format_version"] == FORMAT_VERSION


def test_refuses_to_overwrite_foreign_dir(tmp_path: Path) -> None:
    root = tmp_path / "real"
    root.mkdir()
    (root / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        ensure_synthetic(root, num_images=2, size=SIZE)
    assert (root / "keep.txt").read_text() == "user data"
    assert [p.name for p in tmp_path.iterdir()] == ["real"]


def test_generate_concurrent(tmp_path: Path) -> None:
    """Parallel callers (e.g. DDP ranks) end with one complete dataset and no leftovers."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path / "syn"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ensure_synthetic(root, 6, SIZE, 0), range(4)))
    assert results == [root] * 4
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]
    assert len(list((root / "instances").iterdir())) == 6
