"""Post-processing of predicted label maps: remove small objects, fill holes, keep the largest.

Every function takes class indices of any rank (`[H, W]` for an image, `[Z, Y, X]` for a
volume; 0 = background, `PAD_LABEL` never a class) and returns a new array of the same
shape and dtype; foreground classes are treated one at a time, sizes counted in pixels or
voxels. Objects are fully connected (8-connected in 2-D, 26 in 3-D); the background
around a hole is face-connected (4 in 2-D, 6 in 3-D), so a hole touching the object's
outline only at a corner or an edge is still a hole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from unet_seg.data.masks import PAD_LABEL


def _components(binary: np.ndarray, full: bool) -> tuple[np.ndarray, np.ndarray]:
    """(component ids, 0 outside, and the size of each id, id 0 included) of a boolean
    mask; `full`: fully connected, else face-connected."""
    structure = ndimage.generate_binary_structure(binary.ndim, binary.ndim if full else 1)
    comp, _ = ndimage.label(binary, structure)
    return comp, np.bincount(comp.ravel())


def foreground_classes(labels: np.ndarray) -> list[int]:
    """The foreground class indices (> 0, not `PAD_LABEL`) present in `labels`."""
    return [int(c) for c in np.unique(labels) if 0 < c != PAD_LABEL]


def remove_small_objects(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set objects of fewer than `min_size` pixels (voxels) to background, class by class."""
    out = labels.copy()
    if min_size <= 1:
        return out
    for c in foreground_classes(labels):
        comp, sizes = _components(labels == c, full=True)
        small = sizes < min_size
        small[0] = False  # not an object
        if small.any():
            out[small[comp]] = 0
    return out


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Give background pixels (voxels) enclosed by one class, in regions not reaching the
    array's border, that class. A background region enclosed by two classes is left alone.
    An axis of length 1 is no border (a one-slice volume is filled as its image).
    """
    out = labels.copy()
    for c in foreground_classes(labels):
        comp, sizes = _components(labels != c, full=False)
        border = np.zeros(len(sizes), dtype=bool)
        for axis, n in enumerate(labels.shape):  # ids on either end of an axis: the border
            if n > 1:  # an axis one pixel long has no extent to leave by ([1, H, W] = [H, W])
                border[np.take(comp, [0, -1], axis=axis)] = True
        inner = ~border
        inner[0] = False  # id 0 is class c itself
        if inner.any():
            out[inner[comp] & (labels == 0)] = c
    return out


def keep_largest(labels: np.ndarray) -> np.ndarray:
    """Keep only the largest object of each class (the first found on a tie); the others
    become background."""
    out = labels.copy()
    for c in foreground_classes(labels):
        comp, sizes = _components(labels == c, full=True)
        if len(sizes) <= 2:  # no object, or one
            continue
        largest = 1 + int(np.argmax(sizes[1:]))
        out[(comp != largest) & (comp > 0)] = 0
    return out


@dataclass(frozen=True)
class PostProcess:
    """Post-processing steps, applied in this order, to class indices of any rank.

    Args:
        min_size: objects smaller than this many pixels (voxels) become background (0: off).
        fill_holes: fill background holes inside each class.
        keep_largest: keep only the largest object of each class.
    """

    min_size: int = 0
    fill_holes: bool = False
    keep_largest: bool = False

    @property
    def active(self) -> bool:
        return self.min_size > 1 or self.fill_holes or self.keep_largest

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        """Class indices `[H, W]` or `[Z, Y, X]` -> post-processed, same shape (the input
        itself when no step is active)."""
        if self.min_size > 1:
            labels = remove_small_objects(labels, self.min_size)
        if self.fill_holes:
            labels = fill_holes(labels)
        if self.keep_largest:
            labels = keep_largest(labels)
        return labels
