"""Synthetic fluorescence-microscopy nuclei dataset (the embedded default data).

The dataset is generated on first use and written as ordinary files, so it is read by
the same folder loader as real data::

    root/images/0000.png     uint8 grayscale image
    root/masks/0000.png      uint8 binary mask, 0 = background, 255 = nucleus
    root/instances/0000.png  uint16 instance labels, 0 = background, 1..N = nuclei
    root/synthetic.json      generation parameters + format version

Image ``i`` depends only on ``(seed, i)``, so the data is deterministic and does not
depend on ``num_images``. The masks are rasterised from the nucleus outlines *before*
the optical blur and noise are applied, so they are the ground truth of the objects.
Nucleus size, blur and texture are fixed in pixels (radius ~5-16 px); a larger ``size``
shows more nuclei at the same density, like a larger crop from the same microscope.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from unet_seg.files import put_in_place

logger = logging.getLogger(__name__)

#: Bump whenever the rendering changes, so data already on disk is regenerated.
FORMAT_VERSION = 1
META_FILE = "synthetic.json"
IMAGES_DIR = "images"
MASKS_DIR = "masks"
INSTANCES_DIR = "instances"

_POLY_POINTS = 64
_SHIFT = 4  # sub-pixel bits for cv2.fillPoly
_MAX_TRIES = 20


def sample_name(index: int) -> str:
    """File name (shared by image, mask and instance map) of sample ``index``."""
    return f"{index:04d}.png"


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth zero-mean, unit-std noise field (size x size) with ~``cells`` features per side."""
    cells = max(2, cells)
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    field -= field.mean()
    std = float(field.std())
    return field / std if std > 0 else field


def _ellipse_radius(a: float, b: float, angle: float, direction: float) -> float:
    """Distance from the centre of an ellipse to its outline along ``direction``."""
    psi = direction - angle
    return a * b / math.hypot(b * math.cos(psi), a * math.sin(psi))


def _outline(
    rng: np.random.Generator, cx: float, cy: float, a: float, b: float, angle: float
) -> np.ndarray:
    """Slightly irregular elliptical outline as fixed-point polygon points for cv2.fillPoly."""
    t = np.linspace(0.0, 2.0 * np.pi, _POLY_POINTS, endpoint=False)
    radius = np.ones_like(t)
    for harmonic in (2, 3, 4):
        amp = rng.uniform(0.0, 0.07 if harmonic < 4 else 0.04)
        radius += amp * np.cos(harmonic * t + rng.uniform(0.0, 2.0 * np.pi))
    x = a * radius * np.cos(t)
    y = b * radius * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    px = cx + ca * x - sa * y
    py = cy + sa * x + ca * y
    pts = np.stack([px, py], axis=1) * (1 << _SHIFT)
    return np.round(pts).astype(np.int32)


def _draw_nuclei(rng: np.random.Generator, size: int) -> np.ndarray:
    """Place nuclei (some touching) and return the uint16 instance label map."""
    # Objects keep their pixel size (same "optics" at every image size); the number of
    # nuclei scales with the image area so the density stays the same.
    area_scale = (size / 128.0) ** 2
    lo = max(1, round(4 * area_scale))
    hi = max(lo, round(18 * area_scale))
    count = int(rng.integers(lo, hi + 1))

    labels = np.zeros((size, size), dtype=np.uint16)
    areas: list[int] = [0]  # index = label; areas at placement time
    shapes: list[tuple[float, float, float, float, float]] = []  # cx, cy, a, b, angle

    for _ in range(count):
        for _ in range(_MAX_TRIES):
            a = rng.uniform(5.0, 16.0)
            b = a * rng.uniform(0.6, 1.0)
            angle = rng.uniform(0.0, np.pi)
            touching = bool(shapes) and rng.random() < 0.45
            if touching:
                ox, oy, oa, ob, oangle = shapes[int(rng.integers(len(shapes)))]
                direction = rng.uniform(0.0, 2.0 * np.pi)
                dist = _ellipse_radius(oa, ob, oangle, direction) + _ellipse_radius(
                    a, b, angle, direction + np.pi
                )
                dist *= rng.uniform(0.85, 1.0)
                cx = ox + dist * math.cos(direction)
                cy = oy + dist * math.sin(direction)
                if not (0.0 <= cx < size and 0.0 <= cy < size):
                    continue
            else:
                cx, cy = rng.uniform(0.0, size, 2)

            # Rasterise into a local patch around the polygon's bounding box.
            pts = _outline(rng, cx, cy, a, b, angle)
            x0, y0 = np.maximum((pts.min(axis=0) >> _SHIFT) - 1, 0)
            x1, y1 = np.minimum((pts.max(axis=0) >> _SHIFT) + 2, size)
            if x1 <= x0 or y1 <= y0:
                continue
            patch = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
            offset = np.array([x0, y0], dtype=np.int32) << _SHIFT
            cv2.fillPoly(patch, [pts - offset], 1, cv2.LINE_8, _SHIFT)
            region = patch.astype(bool)
            area = int(region.sum())
            if area < 8:
                continue
            window = labels[y0:y1, x0:x1]
            hit = window[region]
            overlap = np.bincount(hit, minlength=len(areas))
            overlap[0] = 0
            limit = 0.2 if touching else 0.02
            if overlap.sum() > limit * area:
                continue
            # Never let a newcomer swallow much of an existing nucleus.
            if np.any(overlap[1:] > 0.2 * np.asarray(areas[1:])):
                continue
            window[region] = len(areas)
            areas.append(area)
            shapes.append((cx, cy, a, b, angle))
            break

    # Relabel consecutively (a label can vanish or shrink under later nuclei).
    present = np.unique(labels)
    present = present[present > 0]
    lut = np.zeros(len(areas), dtype=np.uint16)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.uint16)
    return lut[labels]


def render_sample(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 HxW) and instance label map (uint16 HxW)."""
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    area_scale = (size / 128.0) ** 2
    instances = _draw_nuclei(rng, size)
    n = int(instances.max())

    # Per-nucleus brightness and texture strength, applied through lookup tables.
    brightness = np.concatenate([[0.0], rng.uniform(0.35, 1.0, n)]).astype(np.float32)
    texture_amp = np.concatenate([[0.0], rng.uniform(0.08, 0.25, n)]).astype(np.float32)
    texture = _smooth_noise(rng, size, round(size / 6))
    signal = brightness[instances] * (1.0 + texture_amp[instances] * texture)

    # A few faint out-of-focus nuclei (not part of the mask).
    blobs = np.zeros((size, size), dtype=np.float32)
    for _ in range(int(rng.integers(0, round(2 * area_scale) + 1))):
        cx, cy = rng.uniform(0.0, size, 2)
        axes = (int(rng.uniform(6, 14)), int(rng.uniform(6, 14)))
        value = float(rng.uniform(0.08, 0.2))
        cv2.ellipse(blobs, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, value, -1)
    if blobs.any():
        blobs = cv2.GaussianBlur(blobs, (0, 0), 4.0)

    # Optical point-spread function.
    sigma = float(rng.uniform(1.0, 1.5))
    signal = cv2.GaussianBlur(signal, (0, 0), sigma) + blobs

    # Uneven illumination: linear gradient times vignette, max normalised to 1.
    coords = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    gx, gy = rng.uniform(-0.25, 0.25, 2)
    vignette = float(rng.uniform(0.0, 0.3))
    illumination = (1.0 + gx * xx + gy * yy) * (1.0 - vignette * (xx * xx + yy * yy) / 2.0)
    illumination /= illumination.max()

    # Background offset with faint smooth autofluorescence.
    offset = float(rng.uniform(0.03, 0.08))
    background = offset * (1.0 + 0.3 * _smooth_noise(rng, size, round(size / 32)))
    clean = np.clip(signal * illumination + background, 0.0, None)

    # Shot noise (Poisson in photon counts) plus Gaussian read noise.
    photons = float(rng.uniform(30.0, 120.0))
    counts = rng.poisson(clean * photons).astype(np.float32)
    counts += rng.normal(0.0, rng.uniform(0.5, 2.0), counts.shape).astype(np.float32)

    gain = float(rng.uniform(0.55, 0.75)) * 255.0 / photons
    image = np.clip(np.round(counts * gain), 0, 255).astype(np.uint8)
    return image, instances


def _params(num_images: int, size: int, seed: int) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "generator": "unet_seg.data.synthetic",
        "num_images": int(num_images),
        "size": int(size),
        "seed": int(seed),
    }


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


def generate(root: str | Path, num_images: int = 200, size: int = 128, seed: int = 0) -> Path:
    """Write the dataset atomically (temp sibling dir, then rename into place); return root.

    An existing ``root`` is replaced only if it is empty or a previous synthetic dataset
    (contains ``synthetic.json``); anything else raises ``FileExistsError``.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not (root / META_FILE).is_file():
        raise FileExistsError(
            f"{root} exists and is not a synthetic dataset; refusing to overwrite"
        )
    root.parent.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        dirs = [tmp / d for d in (IMAGES_DIR, MASKS_DIR, INSTANCES_DIR)]
        for d in dirs:
            d.mkdir()
        for i in range(num_images):
            image, instances = render_sample(np.random.default_rng([seed, i]), size)
            name = sample_name(i)
            _write_png(dirs[0] / name, image)
            _write_png(dirs[1] / name, np.where(instances > 0, 255, 0).astype(np.uint8))
            _write_png(dirs[2] / name, instances)
        (tmp / META_FILE).write_text(json.dumps(_params(num_images, size, seed), indent=2) + "\n")

        put_in_place(tmp, root, lambda: is_current(root, num_images, size, seed),
                     "synthetic dataset")  # fmt: skip
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def is_current(root: str | Path, num_images: int = 200, size: int = 128, seed: int = 0) -> bool:
    """True if ``root`` holds a complete synthetic dataset generated with these parameters."""
    root = Path(root)
    try:
        meta = json.loads((root / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    if meta != _params(num_images, size, seed):
        return False
    return all(
        (root / d / sample_name(i)).is_file()
        for d in (IMAGES_DIR, MASKS_DIR, INSTANCES_DIR)
        for i in range(num_images)
    )


def ensure_synthetic(
    root: str | Path, num_images: int = 200, size: int = 128, seed: int = 0
) -> Path:
    """Generate unless ``root/synthetic.json`` records exactly these parameters.

    Also regenerates if any expected file is missing. Logs what it does; returns root.
    """
    root = Path(root)
    if is_current(root, num_images, size, seed):
        logger.info("Synthetic dataset at %s is up to date (%d images)", root, num_images)
        return root
    logger.info(
        "Generating synthetic nuclei dataset at %s (num_images=%d, size=%d, seed=%d)",
        root,
        num_images,
        size,
        seed,
    )
    generate(root, num_images=num_images, size=size, seed=seed)
    logger.info("Synthetic dataset written to %s", root)
    return root
