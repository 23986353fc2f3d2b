"""Mask encoding: pixel values on disk <-> class indices, checked on load."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

IGNORE_INDEX = -1
"""Class index of pixels that count for nothing (padding), in int64 target tensors."""

PAD_LABEL = 255
"""The same, while masks are uint8 index images inside the augmentation pipeline."""


class MaskEncoding:
    """Maps mask pixel values (e.g. `[0, 255]`) to class indices `0..K-1` and back.

    Args:
        mask_values: the pixel value of each class, in class order.
    """

    def __init__(self, mask_values: Sequence[int]) -> None:
        values = [int(v) for v in mask_values]
        if len(values) < 2 or len(set(values)) != len(values):
            raise ValueError(f"mask_values needs two or more distinct values, got {values}")
        if min(values) < 0 or max(values) > 65535:
            raise ValueError(f"mask_values must lie in 0..65535, got {values}")
        if len(values) > PAD_LABEL:
            raise ValueError(f"at most {PAD_LABEL} classes are supported, got {len(values)}")
        self.mask_values = values
        self._lut = np.full(65536, PAD_LABEL, dtype=np.uint8)
        self._lut[values] = np.arange(len(values), dtype=np.uint8)

    @property
    def num_classes(self) -> int:
        return len(self.mask_values)

    def encode(self, mask: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
        """Pixel values `[H, W]` -> uint8 class indices; unknown values raise, naming `path`."""
        if mask.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"{path}: mask dtype {mask.dtype} unsupported; expected 8/16-bit")
        indices = self._lut[mask]
        if (indices == PAD_LABEL).any():
            found = np.unique(mask)
            unknown = [int(v) for v in found if self._lut[v] == PAD_LABEL]
            raise ValueError(
                f"{path}: mask values {unknown[:10]} are not in data.mask_values="
                f"{self.mask_values} (values found: {[int(v) for v in found[:20]]}). "
                "Set data.mask_values to the pixel value of each class in order "
                "(a 0/255 binary mask needs [0, 255]); masks saved as JPEG carry "
                "compression noise: save them as PNG."
            )
        return indices

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Class indices `[H, W]` -> pixel values (uint8 when they fit, else uint16)."""
        dtype = np.uint8 if max(self.mask_values) < 256 else np.uint16
        return np.asarray(self.mask_values, dtype=dtype)[indices]
