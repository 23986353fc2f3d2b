"""Checks of an image/mask folder, every problem with its file named.

`check_pairs` is the fast form that runs before training: headers only (well
under a millisecond a file), so a bad dataset fails in seconds, not after an
epoch. `inspect_folder` is the full form behind `python -m unet_seg.check_data`:
it decodes every mask to report values, class balance and suggested settings.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from unet_seg.data.masks import MaskEncoding
from unet_seg.data.readers import IMAGE_EXTENSIONS, read_array, size_mismatch

# PIL modes -> channels as OpenCV decodes them (palette images decode to colour)
_MODE_CHANNELS = {"1": 1, "L": 1, "I": 1, "I;16": 1, "I;16B": 1, "F": 1, "P": 3, "LA": 2,
                  "RGB": 3, "RGBA": 4, "CMYK": 4, "YCbCr": 3}  # fmt: skip


def median_frequency_weights(share: np.ndarray) -> list[float]:
    """Class weights by median frequency balancing (Eigen and Fergus, 2015):
    `median(share) / share_c` for the pixel share of each class (all > 0)."""
    return [float(w) for w in np.median(share) / share]


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
    image = read_array(path)
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
        mismatch = size_mismatch(mask_path, "mask", (mh, mw), image_path.name, (h, w))
        if mismatch:
            problems.append(mismatch)
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


def _stem(path: Path, suffix: str) -> str | None:
    if suffix and not path.stem.endswith(suffix):
        return None
    return path.stem[: len(path.stem) - len(suffix)] if suffix else path.stem


def inspect_folder(
    root: str | Path,
    encoding: MaskEncoding,
    in_channels: int,
    images_dir: str = "images",
    masks_dir: str = "masks",
    mask_suffix: str = "",
    crop_size: int | None = None,
) -> dict:
    """Everything worth knowing about a dataset before training on it.

    Returns a JSON-ready dict: pairs found, unmatched files on either side,
    image sizes and channel counts, raw mask values with their pixel counts,
    files whose masks look JPEG-compressed, per-class pixel shares, suggested
    `mask_values` and class weights, and the list of problems (empty when the
    data will train).
    """
    root = Path(root)
    image_folder, mask_folder = root / images_dir, root / masks_dir
    problems: list[str] = []
    for folder in (image_folder, mask_folder):
        if not folder.is_dir():
            return {"root": str(root), "problems": [f"{folder} does not exist"]}

    def files(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)

    images = {p.stem: p for p in files(image_folder)}
    folders = encoding.mask_format == "folders"
    masks: dict[str, Path] = {}
    if folders:
        masks = {stem: mask_folder / f"{stem}{mask_suffix}" for stem in images}
    else:
        for p in files(mask_folder):
            stem = _stem(p, mask_suffix)
            if stem is not None:
                masks[stem] = p
    pairs = [(images[s], masks[s]) for s in sorted(images) if s in masks]
    report: dict = {
        "root": str(root),
        "pairs": len(pairs),
        "images_without_mask": sorted(images[s].name for s in images if s not in masks),
        "masks_without_image": sorted(masks[s].name for s in masks if s not in images),
        "ignored_files": sorted(
            p.name for f in (image_folder, mask_folder) for p in f.iterdir()
            if p.is_file() and p.suffix.lower() not in IMAGE_EXTENSIONS
        ),
    }  # fmt: skip
    if not images:
        problems.append(f"{image_folder} holds no images")
    for name in report["images_without_mask"][:20]:
        problems.append(f"{image_folder / name}: no mask in {mask_folder}")

    sizes: dict[str, int] = {}
    channels: dict[int, int] = {}
    values: dict[int, int] = {}
    class_pixels = np.zeros(encoding.num_classes, np.int64)
    jpeg_like: list[str] = []
    for image_path, mask_path in pairs:
        try:
            h, w, c = read_header(image_path)
        except ValueError as err:
            problems.append(str(err))
            continue
        sizes[f"{w}x{h}"] = sizes.get(f"{w}x{h}", 0) + 1
        channels[c] = channels.get(c, 0) + 1
        if not folders and encoding.mask_format != "rgb":
            try:
                raw = read_array(mask_path)
            except ValueError as err:
                problems.append(str(err))
                continue
            if raw.ndim == 2:
                found, counts = np.unique(raw, return_counts=True)
                for v, n in zip(found.tolist(), counts.tolist(), strict=True):
                    values[v] = values.get(v, 0) + n
                expected = len(encoding.mask_values)
                if mask_path.suffix.lower() in (".jpg", ".jpeg") or len(found) > 2 * expected + 2:
                    jpeg_like.append(mask_path.name)
        try:
            indices = encoding.load(mask_path)
        except (ValueError, FileNotFoundError) as err:
            problems.append(str(err))
            continue
        if indices.shape != (h, w):
            problems.append(
                f"{mask_path}: mask is {indices.shape[1]}x{indices.shape[0]} but its image "
                f"{image_path.name} is {w}x{h}"
            )
        class_pixels += np.bincount(indices.ravel(), minlength=len(class_pixels))[
            : len(class_pixels)
        ]
    try:
        check_pairs(pairs, in_channels, crop_size)
    except ValueError as err:
        problems += [
            line.strip() for line in str(err).splitlines()[1:]
            if line.strip() not in problems and not line.strip().startswith("...")
        ]  # fmt: skip

    total = max(1, int(class_pixels.sum()))
    share = class_pixels / total
    weights = median_frequency_weights(share) if (share > 0).all() else None
    report.update({
        "image_sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
        "image_channels": channels,
        "mask_values": {str(k): v for k, v in sorted(values.items())},
        "masks_jpeg_like": jpeg_like,
        "class_pixel_share": {
            name: float(f) for name, f in zip(_class_names(encoding), share, strict=True)
        },
        "suggested_mask_values": sorted(values) if 1 < len(values) <= 20 else None,
        "suggested_class_weights": weights,
        "problems": problems,
    })  # fmt: skip
    return report


def _class_names(encoding: MaskEncoding) -> list[str]:
    if encoding.class_names and len(encoding.class_names) == encoding.num_classes:
        return encoding.class_names
    return [f"class{i}" for i in range(encoding.num_classes)]
