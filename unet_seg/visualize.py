"""Pictures of predictions: colour-coded masks, overlays, palettes for mask PNGs and
input | truth | prediction grids."""

from __future__ import annotations

import cv2
import numpy as np

_PALETTE = np.array(
    [
        [0, 0, 0],
        [255, 255, 255],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
    ],
    dtype=np.uint8,
)


def colorize(labels: np.ndarray) -> np.ndarray:
    """Class indices `[H, W]` -> RGB `[H, W, 3]` uint8 (background black, class 1 white).

    Ignored pixels (negative labels) are drawn mid-grey.
    """
    palette = _PALETTE
    if labels.max(initial=0) >= len(palette):
        rng = np.random.default_rng(0)
        extra = rng.integers(0, 256, (int(labels.max()) + 1 - len(palette), 3), dtype=np.uint8)
        palette = np.concatenate([palette, extra])
    rgb = palette[np.clip(labels, 0, None)]
    rgb[labels < 0] = 128
    return rgb


def error_map(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Where a prediction is wrong, `[H, W]` labels -> RGB `[H, W, 3]` uint8.

    Correct pixels show the truth dimmed; false positives (truth background) are
    red, misses (predicted background) blue, other confusions yellow; ignored
    pixels grey.
    """
    rgb = colorize(truth) // 3
    wrong = (truth != pred) & (truth >= 0)
    rgb[wrong & (truth == 0)] = (255, 0, 0)
    rgb[wrong & (pred == 0)] = (0, 90, 255)
    rgb[wrong & (truth > 0) & (pred > 0)] = (255, 225, 25)
    return rgb


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """A [0, 1] float image `[C, H, W]` (1 channel, or the first 3) -> RGB uint8 `[H, W, 3]`."""
    image = np.clip(image, 0, 1)
    if image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    return (image[:3].transpose(1, 2, 0) * 255).round().astype(np.uint8)


def prediction_grid(
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], gap: int = 2
) -> np.ndarray:
    """Stack rows of (input RGB, truth labels, predicted labels) into one RGB picture.

    Each row is `input | truth | prediction | errors` (see `error_map`); rows of
    different sizes are padded with grey. Returns `[H, W, 3]` uint8.
    """
    panels = []
    for image, truth, pred in rows:
        h, w = truth.shape
        spacer = np.full((h, gap, 3), 128, np.uint8)
        row = [image, colorize(truth), colorize(pred), error_map(truth, pred)]
        panels.append(np.concatenate([p for panel in row for p in (panel, spacer)][:-1], axis=1))
    width = max(p.shape[1] for p in panels)
    padded = []
    for p in panels:
        p = np.pad(p, ((0, gap), (0, width - p.shape[1]), (0, 0)), constant_values=128)
        padded.append(p)
    return np.concatenate(padded, axis=0)


def attention_strip(image: np.ndarray, alphas: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """`input | gate 0 | gate 1 | ...`: Attention U-Net's coefficients over the input.

    Args:
        image: RGB uint8 `[H, W, 3]`.
        alphas: one map per gate, shallow to deep, values in [0, 1], each `[h, w]` at its
            level's resolution; shown nearest-upsampled to the input's size, the input
            dimmed where the gate lets little through (alpha near 0).
    Returns:
        RGB uint8 `[H, (1 + len(alphas)) * (W + gap) - gap, 3]`.
    """
    h, w = image.shape[:2]
    panels = [image]
    for alpha in alphas:
        rows = np.minimum(np.arange(h) * alpha.shape[0] // h, alpha.shape[0] - 1)
        cols = np.minimum(np.arange(w) * alpha.shape[1] // w, alpha.shape[1] - 1)
        a = np.clip(alpha[rows][:, cols], 0, 1)[..., None]  # [H, W, 1]
        heat = np.concatenate([a, np.zeros_like(a), 1 - a], axis=2) * 255  # red: open
        panels.append((0.5 * image + 0.5 * heat).round().astype(np.uint8))
    spacer = np.full((h, gap, 3), 128, np.uint8)
    return np.concatenate([q for panel in panels for q in (panel, spacer)][:-1], axis=1)


def display_image(image: np.ndarray) -> np.ndarray:
    """An image `[H, W, C]` uint8/uint16 -> RGB uint8 `[H, W, 3]` to look at (16-bit images
    are stretched between their 0.5 and 99.5 percentiles)."""
    if image.dtype != np.uint8:
        lo, hi = np.percentile(image, (0.5, 99.5))
        scaled = (image.astype(np.float32) - lo) / max(float(hi - lo), 1.0)
        image = (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Tint an RGB uint8 image `[H, W, 3]` with the colours of class indices `[H, W]`
    (background left untinted). Returns RGB uint8 `[H, W, 3]`."""
    colours = colorize(labels).astype(np.float32)
    tinted = image.astype(np.float32) * (1 - alpha) + colours * alpha
    fg = (labels > 0)[:, :, None]
    return np.where(fg, tinted, image).round().astype(np.uint8)


def mask_palette(mask_values: list[int]) -> list[int]:
    """A 256-entry RGB palette giving each class's mask value its `colorize` colour."""
    palette = np.zeros((256, 3), np.uint8)
    colours = colorize(np.arange(len(mask_values))[None])[0]  # [K, 3]
    palette[mask_values] = colours
    return palette.ravel().tolist()


def object_colours(n: int) -> np.ndarray:
    """RGB uint8 `[n + 1, 3]`: black for 0, then a bright colour per object whose hue steps
    by the golden ratio, so neighbouring numbers differ (deterministic)."""
    hue = (np.arange(n + 1) * 0.618034 % 1.0 * 180).astype(np.uint8)  # OpenCV hue: 0..179
    hsv = np.stack([hue, np.full_like(hue, 230), np.full_like(hue, 255)], axis=1)[None]
    colours = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]
    colours[0] = 0
    return colours


def outline_objects(image: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """Draw each object of `objects` (`[H, W]` labels, 0 = background) outlined in its own
    colour (`object_colours`) on an RGB uint8 image `[H, W, 3]`; returns a new image.

    An outline pixel is an object pixel with a 4-neighbour of another label (or background).
    """
    edge = np.zeros(objects.shape, bool)
    vertical = objects[1:] != objects[:-1]  # [H - 1, W]
    horizontal = objects[:, 1:] != objects[:, :-1]  # [H, W - 1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge &= objects > 0
    out = image.copy()
    out[edge] = object_colours(int(objects.max(initial=0)))[objects[edge]]
    return out
