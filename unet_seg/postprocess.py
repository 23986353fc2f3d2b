"""Post-processing of predicted label maps: remove small objects, fill holes, keep the largest.

Every function takes class indices `[H, W]` (0 = background) and returns a new
array of the same shape and dtype; foreground classes are treated one at a
time. Objects are 8-connected; the background around a hole is therefore
4-connected, so a hole touching the object's outline only at a corner is still
a hole.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def _components(binary: np.ndarray, connectivity: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(count incl. label 0, labels `[H, W]` int32, stats `[count, 5]`) of a boolean mask."""
    return cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=connectivity)[:3]


def _select(comp: np.ndarray, count: int, ids: np.ndarray) -> np.ndarray:
    """Boolean `[H, W]`: pixels whose component id is in `ids` (a lookup, not a search)."""
    chosen = np.zeros(count, dtype=bool)
    chosen[ids] = True
    return chosen[comp]


def foreground_classes(labels: np.ndarray) -> list[int]:
    """The foreground class indices (> 0) present in `labels`."""
    return [int(c) for c in np.unique(labels) if c > 0]


def remove_small_objects(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set objects of fewer than `min_size` pixels to background, class by class."""
    out = labels.copy()
    if min_size <= 1:
        return out
    for c in foreground_classes(labels):
        count, comp, stats = _components(labels == c, connectivity=8)
        small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < min_size) + 1
        if small.size:
            out[_select(comp, count, small)] = 0
    return out


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Give background pixels enclosed by one class (not reaching the border) that class.

    A background region enclosed by two different classes is left alone.
    """
    out = labels.copy()
    h, w = labels.shape
    for c in foreground_classes(labels):
        count, comp, stats = _components(labels != c, connectivity=4)
        left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
        right = left + stats[:, cv2.CC_STAT_WIDTH]
        bottom = top + stats[:, cv2.CC_STAT_HEIGHT]
        inner = (left > 0) & (top > 0) & (right < w) & (bottom < h)
        inner[0] = False  # label 0 is class c itself
        holes = np.flatnonzero(inner)
        if holes.size:
            out[_select(comp, count, holes) & (labels == 0)] = c
    return out


def keep_largest(labels: np.ndarray) -> np.ndarray:
    """Keep only the largest object of each class; the others become background."""
    out = labels.copy()
    for c in foreground_classes(labels):
        count, comp, stats = _components(labels == c, connectivity=8)
        if count <= 2:
            continue
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        out[(comp != largest) & (labels == c)] = 0
    return out


@dataclass(frozen=True)
class PostProcess:
    """Post-processing steps, applied in this order.

    Args:
        min_size: objects smaller than this many pixels become background (0: off).
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
        """Class indices `[H, W]` -> post-processed class indices `[H, W]`."""
        if self.min_size > 1:
            labels = remove_small_objects(labels, self.min_size)
        if self.fill_holes:
            labels = fill_holes(labels)
        if self.keep_largest:
            labels = keep_largest(labels)
        return labels
