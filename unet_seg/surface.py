"""Surface distances in millimetres (in pixels at a spacing of 1): the 95th-percentile
Hausdorff distance (HD95) and the mean surface distance (MSD) of a predicted mask against
the truth, spacing-aware, for any rank; `scores.ScoreBook` scores images and volumes by
them.

Definitions (MONAI's, `monai.metrics` 1.x, which we match):

- The surface of a mask is the mask minus its binary erosion with face connectivity (the
  6-neighbourhood in 3-D, 4 in 2-D: `scipy.ndimage.generate_binary_structure(rank, 1)`),
  the array's outside counting as background, so a mask touching the border has a surface
  there (MONAI's `get_mask_edges`, medpy's `connectivity=1`).
- The directed distances from one surface to the other are the Euclidean distances in mm
  (`distance_transform_edt(..., sampling=spacing)`) from each voxel centre of the first
  surface to the nearest voxel centre of the second.
- HD95 is the larger of the two directed 95th percentiles (linear interpolation), as
  `compute_hausdorff_distance(percentile=95)`. nnU-Net v1 (through medpy's `hd95`) takes
  instead the 95th percentile of both directions pooled, which is never larger.
- MSD is the mean of both directions' distances pooled, each surface voxel counting
  once, as `compute_average_surface_distance(symmetric=True)`. medpy's `assd` (nnU-Net
  v1) averages the two directed means instead; the two agree when both surfaces have as
  many voxels.

Where the definitions leave a gap we choose, and each choice is a test: a structure
present in one mask and absent from the other scores the worst case, the diagonal of the
volume in mm (`sqrt(sum((shape * spacing)^2))`, longer than any distance inside it), never
NaN or infinity (MONAI gives inf, nnU-Net v1 NaN, and a mean would drop it); a structure
absent from both scores NaN (nothing to score: left out of a mean, like the per-image Dice
of `unet_seg.metrics.ratio_scores(empty=nan)`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from scipy import ndimage


def _check_masks(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> None:
    problems = []
    if pred.shape != truth.shape:
        problems.append(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    if len(spacing) != truth.ndim:
        problems.append(
            f"spacing {tuple(spacing)} has {len(spacing)} values for {truth.ndim}-D masks: give "
            "one per axis, in the arrays' axis order (z, y, x for volumes)"
        )
    elif not all(math.isfinite(s) and s > 0 for s in spacing):
        problems.append(f"spacing {tuple(spacing)}: every value must be a positive length in mm")
    if problems:
        raise ValueError("; ".join(problems))


def worst_distance(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The diagonal of a volume of `shape` voxels of `spacing` mm: the score of a structure
    missed or predicted where there is none."""
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True)))


_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def surface(mask: np.ndarray) -> np.ndarray:
    """The voxels of a bool `mask` with a face neighbour outside it (or on the array's
    border): `mask & ~binary_erosion(mask)`, face connectivity (OpenCV's erosion in 2-D,
    the same and about 4 times faster than SciPy's)."""
    if mask.ndim == 2:
        eroded = cv2.erode(mask.astype(np.uint8), _CROSS, borderType=cv2.BORDER_CONSTANT,
                           borderValue=0)  # fmt: skip
        return mask & ~eroded.astype(bool)
    return mask & ~ndimage.binary_erosion(mask, ndimage.generate_binary_structure(mask.ndim, 1))


def _distance_to(target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Euclidean distance in mm from every voxel to the nearest voxel of `target` (bool):
    OpenCV's exact transform for a 2-D image of square pixels, SciPy's otherwise."""
    if target.ndim == 2 and spacing[0] == spacing[1]:
        free = (~target).astype(np.uint8)  # distances to the nearest zero pixel
        return cv2.distanceTransform(free, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) * float(spacing[0])
    return ndimage.distance_transform_edt(~target, sampling=[float(s) for s in spacing])


def _crop(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union: surfaces and distances between
    them are the same (a box face is a surface either way), at a fraction of the cost."""
    box = ndimage.find_objects((pred | truth).astype(np.uint8))[0]
    return pred[box], truth[box]


def surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm, both ways.

    Args:
        pred, truth: bool masks of one shape, any rank (e.g. `[Z, Y, X]`).
        spacing: voxel size in mm per axis, in the arrays' axis order.
    Returns:
        `(pred -> truth, truth -> pred)` float64: for each surface voxel of the first mask,
        its distance to the nearest surface voxel of the second. A mask with no voxels has
        an empty surface (an empty array), and the distances from the other one to it are
        infinite.
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    _check_masks(pred, truth, spacing)
    if not (pred.any() or truth.any()):
        return np.zeros(0), np.zeros(0)
    pred, truth = _crop(pred, truth)
    edges = surface(pred), surface(truth)
    distances = []
    for source, target in (edges, edges[::-1]):
        if not target.any():
            distances.append(np.full(int(source.sum()), np.inf))
            continue
        distances.append(_distance_to(target, spacing)[source].astype(np.float64))
    return distances[0], distances[1]


def surface_scores(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
) -> tuple[float, float, tuple[np.ndarray, np.ndarray] | None]:
    """`(hd95, mean_surface_distance, distances)` in mm from one pass over the surfaces, by
    the module's rules: the volume's diagonal for both when exactly one mask is empty, NaN
    when both are; `distances` (`surface_distances`' two directions, to pool over cases)
    when both masks have voxels, else None."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    _check_masks(pred, truth, spacing)
    there = pred.any(), truth.any()
    if not any(there):
        return math.nan, math.nan, None
    if not all(there):
        worst = worst_distance(truth.shape, spacing)
        return worst, worst, None
    distances = surface_distances(pred, truth, spacing)
    return (*distance_scores(*distances), distances)


def distance_scores(to_truth: np.ndarray, to_pred: np.ndarray) -> tuple[float, float]:
    """`(hd95, mean_surface_distance)` of two directed surface distances (each non-empty):
    the larger of the two 95th percentiles, and the mean of both pooled."""
    hd = max(np.percentile(to_truth, 95), np.percentile(to_pred, 95))
    return float(hd), float(np.concatenate([to_truth, to_pred]).mean())


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """The 95th-percentile Hausdorff distance in mm: the larger of the two directed 95th
    percentiles of `surface_distances` (MONAI's). The volume's diagonal when exactly one
    mask is empty; NaN when both are.

    Args:
        pred, truth: bool masks of one shape, any rank.
        spacing: voxel size in mm per axis.
    """
    return surface_scores(pred, truth, spacing)[0]


def mean_surface_distance(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """The symmetric mean surface distance in mm: the mean over the surface voxels of both
    masks of their distance to the other surface (MONAI's symmetric average surface
    distance). The volume's diagonal when exactly one mask is empty; NaN when both are.

    Args:
        pred, truth: bool masks of one shape, any rank.
        spacing: voxel size in mm per axis.
    """
    return surface_scores(pred, truth, spacing)[1]
