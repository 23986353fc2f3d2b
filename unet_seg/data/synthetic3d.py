"""Synthetic CT-like volumes (the embedded 3-D default data, `data=synthetic3d`).

Generated on first use and written as ordinary NIfTI files, so the volume folder
reader sees them as it sees real data::

    root/images/case_000.nii.gz   int16 [Z, Y, X], Hounsfield-like values
    root/masks/case_000.nii.gz    uint8 labels: 0 background, 1 large structure, 2 small one
    root/synthetic3d.json         generation parameters + format version

Each volume shows air (about -1000 HU, noisy), a "body" ellipsoid of soft tissue
(about 0..60 HU), and inside it two brighter structures: class 1, a large rotated
ellipsoid, and class 2, a small one of about 1% of the voxels (a rare class). A smooth
bias field, partial-volume blur and noise are added after the labels are drawn, so
the labels are the ground truth of the shapes. Shapes are drawn in millimetres, so
the structures have the same physical size at any spacing; the affine is RAS with the
spacing on its diagonal.

Volume `i` depends only on `(seed, i)`: the data are deterministic and do not depend
on `num_volumes`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from unet_seg.data.volumes import VolumeMeta, write_volume
from unet_seg.files import put_in_place

logger = logging.getLogger(__name__)

#: Bump whenever the rendering changes, so data already on disk is regenerated.
FORMAT_VERSION = 1
META_FILE = "synthetic3d.json"
IMAGES_DIR = "images"
MASKS_DIR = "masks"
RARE_SHARE = 0.01
"""Class 2's target share of a volume's voxels."""


def case_name(index: int) -> str:
    """File name (shared by image and mask) of volume `index`."""
    return f"case_{index:03d}.nii.gz"


def _grid(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[np.ndarray]:
    """Open `(z, y, x)` coordinate grids in mm, centred on the volume."""
    return [
        ((np.arange(n, dtype=np.float32) - (n - 1) / 2) * s).reshape(
            [n if a == axis else 1 for a in range(3)]
        )  # [Z, 1, 1], [1, Y, 1], [1, 1, X]
        for axis, (n, s) in enumerate(zip(shape, spacing, strict=True))
    ]


def _ellipsoid(
    grid: list[np.ndarray], centre: np.ndarray, axes: np.ndarray, angle: float = 0.0
) -> np.ndarray:
    """Voxels inside an ellipsoid (semi-axes `axes` in mm, rotated by `angle` in the y-x
    plane) as a bool `[Z, Y, X]`."""
    z, y, x = (g - c for g, c in zip(grid, centre, strict=True))
    cos, sin = math.cos(angle), math.sin(angle)
    v, u = cos * y - sin * x, sin * y + cos * x  # rotated in-plane coordinates
    return (z / axes[0]) ** 2 + (v / axes[1]) ** 2 + (u / axes[2]) ** 2 <= 1.0


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: Sequence[float]):
    """Smooth zero-mean, unit-std noise `[Z, Y, X]` (features about `sigma` voxels wide)."""
    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    field -= field.mean()
    std = float(field.std())
    return field / std if std > 0 else field


def render_volume(
    rng: np.random.Generator,
    shape: Sequence[int] = (24, 48, 48),
    spacing: Sequence[float] = (2.0, 0.8, 0.8),
) -> tuple[np.ndarray, np.ndarray]:
    """One CT-like volume and its labels (the module docstring).

    Args:
        rng: the volume's own generator.
        shape: `(z, y, x)` voxels; spacing: `(z, y, x)` in mm.
    Returns:
        `(image int16 [Z, Y, X], labels uint8 [Z, Y, X])`.
    """
    shape3 = (int(shape[0]), int(shape[1]), int(shape[2]))
    spacing3 = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    grid = _grid(shape3, spacing3)
    extent = np.array(shape3) * np.array(spacing3)  # mm
    body_axes = extent / 2 * rng.uniform(0.75, 0.9, 3)
    body_centre = extent * rng.uniform(-0.04, 0.04, 3)
    body = _ellipsoid(grid, body_centre, body_axes)
    # class 1: large, on the -x side of the body, turned in-plane
    axes1 = body_axes * np.array([rng.uniform(0.45, 0.6), rng.uniform(0.5, 0.6), 0.45])
    centre1 = body_centre + body_axes * np.array([rng.uniform(-0.1, 0.1),
                                                  rng.uniform(-0.15, 0.15), -0.45])  # fmt: skip
    large = _ellipsoid(grid, centre1, axes1, rng.uniform(-0.5, 0.5)) & body
    # class 2: small (about RARE_SHARE of the voxels), on the +x side
    radius = (3 * RARE_SHARE * float(np.prod(extent)) / (4 * math.pi)) ** (1 / 3)
    axes2 = radius * rng.uniform(0.85, 1.15, 3)
    centre2 = body_centre + body_axes * np.array([rng.uniform(-0.15, 0.15),
                                                  rng.uniform(-0.2, 0.2), 0.5])  # fmt: skip
    small = _ellipsoid(grid, centre2, axes2) & body & ~large
    labels = np.zeros(shape3, np.uint8)
    labels[large], labels[small] = 1, 2
    # intensities (HU): air, soft tissue, two brighter structures
    tissue = np.float32(rng.uniform(25.0, 35.0))
    clean = np.full(shape3, -1000.0, np.float32)
    clean[body] = tissue
    clean[large] = tissue + rng.uniform(50.0, 70.0)
    clean[small] = tissue + rng.uniform(110.0, 140.0)
    z_sigma = max(0.3, 0.6 * spacing3[1] / spacing3[0])  # partial volume: thinner along coarse z
    clean = gaussian_filter(clean, (z_sigma, 0.6, 0.6))
    bias = _smooth_field(rng, shape3, (shape3[0] / 4, shape3[1] / 4, shape3[2] / 4))
    clean += np.where(body, 8.0, 40.0) * bias  # smooth bias: stronger in the air
    noise = rng.normal(0.0, 1.0, shape3).astype(np.float32)
    clean += np.where(clean < -500, 30.0, rng.uniform(10.0, 14.0)) * noise
    image = np.clip(np.rint(clean), -1024, 3071).astype(np.int16)
    return image, labels


def _params(
    num_volumes: int, shape: tuple[int, ...], spacing: tuple[float, ...], seed: int
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "generator": "unet_seg.data.synthetic3d",
        "num_volumes": int(num_volumes),
        "shape": [int(n) for n in shape],
        "spacing": [float(s) for s in spacing],
        "seed": int(seed),
    }


def _checked(
    num_volumes: int, shape: Sequence[int], spacing: Sequence[float]
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """`shape` and `spacing` as tuples, refusing what cannot be drawn (every problem at once)."""
    problems = []
    if int(num_volumes) < 1:
        problems.append(f"data.synthetic3d.num_volumes={num_volumes}: give at least 1")
    if len(shape) != 3 or any(int(n) < 8 for n in shape):
        problems.append(f"data.synthetic3d.shape={list(shape)}: give [z, y, x], each >= 8 voxels")
    if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
        problems.append(f"data.synthetic3d.spacing={list(spacing)}: give [z, y, x] in mm, > 0")
    if problems:
        raise ValueError("; ".join(problems))
    return (
        (int(shape[0]), int(shape[1]), int(shape[2])),
        (float(spacing[0]), float(spacing[1]), float(spacing[2])),
    )


def generate(
    root: str | Path,
    num_volumes: int = 10,
    shape: Sequence[int] = (24, 48, 48),
    spacing: Sequence[float] = (2.0, 0.8, 0.8),
    seed: int = 0,
) -> Path:
    """Write the dataset atomically (a temporary sibling folder, then renamed); return root.

    An existing `root` is replaced only if it is empty or a previous synthetic 3-D dataset
    (it holds `synthetic3d.json`); anything else raises FileExistsError.
    """
    shape3, spacing3 = _checked(num_volumes, shape, spacing)
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not (root / META_FILE).is_file():
        raise FileExistsError(
            f"{root} exists and is not a synthetic 3-D dataset (no {META_FILE}); refusing to "
            "overwrite it: point data.root at an empty or new folder"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    z, y, x = spacing3
    meta = VolumeMeta(shape=shape3, spacing=spacing3, format="nifti",
                      affine=((x, 0, 0, 0), (0, y, 0, 0), (0, 0, z, 0), (0, 0, 0, 1)))  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        for d in (IMAGES_DIR, MASKS_DIR):
            (tmp / d).mkdir()
        for i in range(num_volumes):
            image, labels = render_volume(np.random.default_rng([seed, i]), shape3, spacing3)
            write_volume(tmp / IMAGES_DIR / case_name(i), image, meta)
            write_volume(tmp / MASKS_DIR / case_name(i), labels, meta, labels=True)
        params = _params(num_volumes, shape3, spacing3, seed)
        (tmp / META_FILE).write_text(json.dumps(params, indent=2) + "\n")
        put_in_place(tmp, root, lambda: is_current(root, num_volumes, shape3, spacing3, seed),
                     "synthetic 3-D dataset")  # fmt: skip
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def is_current(
    root: str | Path,
    num_volumes: int = 10,
    shape: Sequence[int] = (24, 48, 48),
    spacing: Sequence[float] = (2.0, 0.8, 0.8),
    seed: int = 0,
) -> bool:
    """True if `root` holds a complete synthetic 3-D dataset made with these parameters."""
    root = Path(root)
    try:
        meta = json.loads((root / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    if meta != _params(num_volumes, tuple(shape), tuple(spacing), seed):
        return False
    return all((root / d / case_name(i)).is_file()
               for d in (IMAGES_DIR, MASKS_DIR) for i in range(num_volumes))  # fmt: skip


def ensure_synthetic3d(
    root: str | Path,
    num_volumes: int = 10,
    shape: Sequence[int] = (24, 48, 48),
    spacing: Sequence[float] = (2.0, 0.8, 0.8),
    seed: int = 0,
) -> Path:
    """Generate unless `root/synthetic3d.json` records exactly these parameters (and every
    file is there); called as `ensure_synthetic3d(root, **cfg.data.synthetic3d)`.

    Args:
        root: the dataset folder (`data.root`).
        num_volumes: volumes to write; shape: `(z, y, x)` voxels of each; spacing: `(z, y, x)`
            in mm; seed: volume `i` depends on `(seed, i)` only.
    Returns:
        `root`.
    """
    root = Path(root)
    shape3, spacing3 = _checked(num_volumes, list(shape), list(spacing))
    if is_current(root, num_volumes, shape3, spacing3, seed):
        logger.info("Synthetic 3-D dataset at %s is up to date (%d volumes)", root, num_volumes)
        return root
    logger.info("Generating synthetic 3-D dataset at %s (num_volumes=%d, shape=%s, spacing=%s, "
                "seed=%d)", root, num_volumes, shape3, spacing3, seed)  # fmt: skip
    generate(root, num_volumes, shape3, spacing3, seed)
    logger.info("Synthetic 3-D dataset written to %s", root)
    return root
