"""Fast checks of an image/mask folder before training: headers only, every file named.

Reading headers (size, channels) costs well under a millisecond a file, so a
bad dataset fails in seconds at the start of a run, not after an epoch.
Pixel values are checked when each mask is loaded (`MaskEncoding.encode`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
from PIL import Image

# PIL modes -> channels as OpenCV decodes them (palette images decode to colour)
_MODE_CHANNELS = {"1": 1, "L": 1, "I": 1, "I;16": 1, "I;16B": 1, "F": 1, "P": 3, "LA": 2,
                  "RGB": 3, "RGBA": 4, "CMYK": 4, "YCbCr": 3}  # fmt: skip


def read_header(path: str | Path) -> tuple[int, int, int]:
    """(height, width, channels) of an image file, decoding it only if Pillow cannot tell."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's decompression-bomb warning
            with Image.open(path) as im:
                if im.mode in _MODE_CHANNELS:
                    return im.height, im.width, _MODE_CHANNELS[im.mode]
    except (OSError, ValueError, Image.DecompressionBombError):
        pass
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{path}: cannot be read as an image (unreadable, truncated or not one)")
    return image.shape[0], image.shape[1], 1 if image.ndim == 2 else image.shape[2]


def check_pairs(
    pairs: Sequence[tuple[Path, Path]], in_channels: int, crop_size: int | None = None
) -> None:
    """Raise one error listing every pair that cannot train, each with its file and the fix.

    Checks: both files readable, mask the image's size, mask single-channel (or
    grey stored as colour), image channels convertible to `in_channels`, image
    at least `crop_size` on each side.
    """
    problems: list[str] = []
    for image_path, mask_path in pairs:
        try:
            h, w, c = read_header(image_path)
            mh, mw, _ = read_header(mask_path)
        except ValueError as err:
            problems.append(str(err))
            continue
        if (mh, mw) != (h, w):
            problems.append(
                f"{mask_path}: mask is {mw}x{mh} but its image {image_path.name} is {w}x{h} "
                "(width x height); masks must match their image's size"
            )
        if c not in (in_channels, 1, 3, 4) or (c == 4 and in_channels not in (3, 4)):
            problems.append(
                f"{image_path}: {c} channel(s) cannot feed data.in_channels={in_channels}; "
                f"set data.in_channels={c} or convert the image"
            )
        if crop_size and min(h, w) < crop_size:
            problems.append(
                f"{image_path}: {w}x{h} is smaller than data.crop_size={crop_size}; "
                f"lower data.crop_size to at most {min(h, w)} or remove the image"
            )
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"{len(problems)} problem(s) in the dataset:\n  {shown}{more}")
