"""The U-Net weight map for touching objects (Ronneberger et al., 2015, Sec. 3, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 * sigma^2))

d1 and d2 are the Euclidean distances (pixel centres) from pixel x to the
nearest and the second-nearest object of an instance label map (0 =
background, 1..N = objects). The border term is added on background pixels
only, as in the paper, where it marks the thin background gaps separating
touching objects; foreground pixels get w_c(x) alone. With fewer than two
objects d2 does not exist and the border term is 0 everywhere.

w_c balances the two classes of the image (background, foreground = any
object): `w_c = N / (2 * n_c)` for a pixel of class c, with N pixels in the
image and n_c of them in class c, so both classes carry the same total weight
and the mean of w_c over the image is 1. With `class_balance=False`, or when
an image holds one class only, w_c = 1.

The paper trains on labels in which touching cells are separated by a
background border (`separate_touching`); the weight map is computed on those
separated labels, so the border pixels are the background pixels it
emphasises.

Shapes: instance labels `[H, W]` integer -> float32 `[H, W]`.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from unet_seg.data.masks import negative_ids_message
from unet_seg.data.readers import read_array

WEIGHT_MAP_KEYS = ("w0", "sigma", "class_balance", "separate_touching")

REACH_SIGMAS = 6.0
"""The border term is computed where d1 + d2 <= REACH_SIGMAS * sigma and is 0 beyond,
where its true value is below w0 * exp(-18) = w0 * 1.5e-8."""


def consecutive_labels(instances: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel objects 1..N (0 stays background): (int32 `[H, W]` labels, N).

    Negative values are refused (`MaskEncoding.objects_of` first makes a negative
    `data.ignore_value` background)."""
    if instances.ndim != 2 or instances.dtype.kind not in "ui":
        raise ValueError(
            f"instance labels must be a 2-D integer array, got {instances.dtype} {instances.shape}"
        )
    if instances.size == 0:
        return np.zeros(instances.shape, np.int32), 0
    low, high = int(instances.min()), int(instances.max())
    if low < 0:  # an ignore label (-1) left in, or an error: never an object
        raise ValueError(negative_ids_message("instance labels", np.unique(instances[instances < 0])
                                              .tolist()))  # fmt: skip
    if high <= 4 * instances.size + 65536:  # a lookup table: no sort of the pixels
        present = np.bincount(instances.ravel(), minlength=high + 1) > 0
        present[0] = False  # 0 stays background
        table = (np.cumsum(present) * present).astype(np.int32)
        return table[instances], int(present.sum())
    values, inverse = np.unique(instances, return_inverse=True)
    inverse = inverse.reshape(instances.shape).astype(np.int32)
    if values[0] != 0:  # no background pixel at all: every value is an object
        inverse += 1
    return inverse, int(inverse.max())


def touching_border(instances: np.ndarray) -> np.ndarray:
    """Boolean `[H, W]`: object pixels with an 8-neighbour in another object.

    Setting them to background (`separate_touching`) leaves touching objects
    apart by a 2-pixel background gap, and no longer 8-connected to each other.
    """
    labels, n = consecutive_labels(instances)
    if n < 2:
        return np.zeros(instances.shape, bool)
    return object_edges(labels, n, width=1, background=False)


def object_edges(labels: np.ndarray, n: int, width: int = 1, background: bool = True) -> np.ndarray:
    """Boolean `[H, W]`: object pixels whose `(2 width + 1)`-square neighbourhood holds
    another object (or, with `background`, background). The image edge is no neighbour.

    Args:
        labels: objects 1..n, 0 = background (`consecutive_labels`).
    """
    lab = labels.astype(np.float32)  # exact up to 2**24 objects
    kernel = np.ones((2 * width + 1,) * 2, np.uint8)
    # outside the image: the pixel's own value (no edge along the image border)
    highest = cv2.dilate(lab, kernel, borderType=cv2.BORDER_REPLICATE)  # largest label around
    low = lab if background else np.where(labels > 0, lab, np.float32(n + 1))
    lowest = cv2.erode(low, kernel, borderType=cv2.BORDER_REPLICATE)  # smallest (0: background)
    return (labels > 0) & ((highest != lab) | (lowest != lab))


def separate_touching(instances: np.ndarray) -> np.ndarray:
    """A copy of `instances` with the pixels of `touching_border` set to 0."""
    out = instances.copy()
    out[touching_border(instances)] = 0
    return out


def _bounding_boxes(labels: np.ndarray, n: int) -> np.ndarray:
    """`[n + 1, 4]` int64 rows (y0, y1, x0, x1), end exclusive, of objects 1..n."""
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs]
    boxes = np.zeros((n + 1, 4), np.int64)
    boxes[:, 0], boxes[:, 2] = labels.shape
    np.minimum.at(boxes[:, 0], ids, ys)
    np.maximum.at(boxes[:, 1], ids, ys + 1)
    np.minimum.at(boxes[:, 2], ids, xs)
    np.maximum.at(boxes[:, 3], ids, xs + 1)
    return boxes


def nearest_two_distances(
    labels: np.ndarray, n: int, reach: float = math.inf
) -> tuple[np.ndarray, np.ndarray]:
    """Distances d1 <= d2 from every pixel to its nearest and second-nearest object.

    One exact Euclidean distance transform per object (`cv2.DIST_MASK_PRECISE`),
    inside the object's bounding box grown by `reach` pixels: wherever
    d1 + d2 <= reach both values are exact; elsewhere they may be larger than
    the truth (inf when fewer objects lie within reach).

    Args:
        labels: int `[H, W]` object labels 1..n, 0 = background (`consecutive_labels`).
        n: number of objects.
        reach: how far from each object distances are computed (pixels).
    Returns:
        d1, d2: float64 `[H, W]`; 0 on an object's own pixels for d1.

    OpenCV's float32 distances differ in their last bit with the memory alignment of
    the arrays (its vector code), which made the weight map, and so training, differ
    between identical runs. A squared distance between pixel centres is an integer:
    it is recovered exactly by rounding, and its square root taken in float64.
    """
    h, w = labels.shape
    d1 = np.full((h, w), np.inf, np.float64)
    d2 = np.full((h, w), np.inf, np.float64)
    grow = h + w if math.isinf(reach) else int(math.ceil(reach))
    for i, (y0, y1, x0, x1) in enumerate(_bounding_boxes(labels, n)[1:], start=1):
        if y1 <= y0:  # label absent
            continue
        ya, yb, xa, xb = max(0, y0 - grow), min(h, y1 + grow), max(0, x0 - grow), min(w, x1 + grow)
        outside = (labels[ya:yb, xa:xb] != i).astype(np.uint8)
        dist = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        dist = np.sqrt(np.rint(dist.astype(np.float64) ** 2))  # exact: sqrt(dy^2 + dx^2)
        near, second = d1[ya:yb, xa:xb], d2[ya:yb, xa:xb]  # views: updated in place
        np.minimum(second, np.maximum(near, dist), out=second)
        np.minimum(near, dist, out=near)
    return d1, d2


def class_balance_weights(foreground: np.ndarray) -> np.ndarray:
    """w_c `[H, W]` float32: N / (2 * n_c) per pixel of class c (1 if a class is absent)."""
    total = foreground.size
    n_fg = int(foreground.sum())
    if n_fg == 0 or n_fg == total:
        return np.ones(foreground.shape, np.float32)
    return np.where(foreground, total / (2.0 * n_fg), total / (2.0 * (total - n_fg))).astype(
        np.float32
    )


def unet_weight_map(
    instances: np.ndarray, w0: float = 10.0, sigma: float = 5.0, class_balance: bool = True
) -> np.ndarray:
    """The U-Net loss weight map of an instance label map (see the module docstring).

    Args:
        instances: `[H, W]` integer labels, 0 = background, other values = objects.
        w0: height of the border term.
        sigma: its width in pixels.
        class_balance: add w_c = N / (2 n_c) (else w_c = 1).
    Returns:
        float32 `[H, W]`.
    """
    if w0 < 0 or sigma <= 0:
        raise ValueError(f"the weight map needs w0 >= 0 and sigma > 0, got w0={w0}, sigma={sigma}")
    labels, n = consecutive_labels(instances)
    background = labels == 0
    weight = (
        class_balance_weights(~background) if class_balance else np.ones(labels.shape, np.float32)
    )
    if w0 == 0 or n < 2 or not background.any():
        return weight
    reach = REACH_SIGMAS * sigma
    d1, d2 = nearest_two_distances(labels, n, reach)
    total = (d1 + d2)[background]
    near = total <= reach
    border = np.zeros(total.shape, np.float64)
    border[near] = w0 * np.exp(-(total[near] ** 2) / (2.0 * sigma**2))
    weight[background] = (weight[background] + border).astype(np.float32)
    return weight


def weight_map_params(cfg: dict) -> dict:
    """Checked settings of `loss.weight_map` (defaults filled in)."""
    unknown = sorted(set(cfg) - set(WEIGHT_MAP_KEYS))
    if unknown:
        raise ValueError(f"loss.weight_map: unknown keys {unknown}; known: {list(WEIGHT_MAP_KEYS)}")
    params = {"w0": 10.0, "sigma": 5.0, "class_balance": True, "separate_touching": True}
    params.update(cfg)
    if params["w0"] < 0 or params["sigma"] <= 0:
        raise ValueError(
            f"loss.weight_map needs w0 >= 0 and sigma > 0, got w0={params['w0']}, "
            f"sigma={params['sigma']}"
        )
    return params


def read_instances(path: str | Path) -> np.ndarray:
    """An instance label file as integer `[H, W]` (0 = background), naming `path` on error."""
    array = read_array(path)
    if array.ndim == 3 and array.shape[2] in (3, 4) and (array[..., :1] == array[..., :3]).all():
        array = array[..., 0]
    if array.ndim != 2 or array.dtype.kind not in "ui":
        raise ValueError(
            f"{path}: instance labels must be a single-channel integer image (0 = background, "
            f"1..N = objects; 16-bit PNG or TIFF for more than 255), got {array.dtype} "
            f"{array.shape}"
        )
    return array


def weights_and_borders(instances: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """The training weight map and the touching-border pixels of one image.

    With `separate_touching`, objects are first separated by `touching_border`
    (those pixels become background in the training target, as in the paper),
    and the weight map is computed on the separated labels.

    Returns:
        weight: float32 `[H, W]`; border: bool `[H, W]` (all False without separation).
    """
    if params.get("separate_touching", True):
        border = touching_border(instances)
        instances = np.where(border, 0, instances)
    else:
        border = np.zeros(instances.shape, bool)
    weight = unet_weight_map(instances, params["w0"], params["sigma"], params["class_balance"])
    return weight, border
