"""Checks of an image/mask folder, every problem with its file named.

Both checks decode each file with the loader's own functions
(`unet_seg.data.readers.read_array`, then `plan_channels`, the decision inside
`fit_channels`), so a file they accept is one the loader reads, a channel count
they report is the one it feeds the net, and a file they refuse is refused
with the loader's own message.

`check_pairs` runs before training: it decodes every image and mask once (in a
few threads), so a bad dataset fails in seconds, before the first epoch, with
every problem listed. `inspect_folder` is the full form behind
`python -m unet_seg.check_data`: it also maps every mask to classes to report
values, class balance and suggested settings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from unet_seg.data.layouts import pair_channel_files
from unet_seg.data.masks import (
    PAD_LABEL,
    MaskEncoding,
    looks_like_jpeg,
    read_palette_indices,
    single_channel,
)
from unet_seg.data.readers import (
    IMAGE_EXTENSIONS,
    channel_kind,
    is_image_file,
    plan_channels,
    read_array,
    read_stored,
    size_mismatch,
)
from unet_seg.data.splits import split_problems
from unet_seg.problems import ProblemList

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def median_frequency_weights(share: np.ndarray) -> list[float]:
    """Class weights by median frequency balancing (Eigen and Fergus, 2015):
    `median(share) / share_c` for the pixel share of each class (all > 0)."""
    return [float(w) for w in np.median(share) / share]


def read_header(path: str | Path) -> tuple[int, int, int]:
    """(height, width, channels it feeds a net) of an image file, as the loader decodes it
    (`read_array`) and counts its channels (`channel_kind`): a grey+alpha PNG with an opaque
    alpha is 1, an opaque RGBA 3. Raises a ValueError naming an unreadable file."""
    image, data_channels = read_stored(path)
    return image.shape[0], image.shape[1], channel_kind(image, data_channels)[1]


def _each(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`function` over `items` in order, in a few threads (decoding releases the GIL)."""
    items = list(items)
    workers = min(8, os.cpu_count() or 1, len(items))
    if workers < 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items))


def _check_image(
    path: Path, in_channels: int, crop_size: int | None
) -> tuple[dict | None, list[str]]:
    """The image's facts (`height`, `width`, `kind`, `channels`, `dtype`, `max`) and its
    problems: unreadable, channels that cannot give `in_channels`, smaller than `crop_size`."""
    try:
        image, data_channels = read_stored(path)
    except ValueError as err:
        return None, [str(err)]
    problems = []
    try:
        kind, channels, _ = plan_channels(
            image, in_channels, str(path), data_channels=data_channels
        )
    except ValueError as err:  # refused, but still described (a channel count to suggest)
        problems.append(str(err))
        kind, channels = channel_kind(image, data_channels) if image.ndim in (2, 3) else ("?", 0)
    h, w = image.shape[:2]
    top = int(image.max()) if image.dtype == np.uint16 else None
    info = {"height": h, "width": w, "kind": kind, "channels": channels,
            "dtype": str(image.dtype), "max": top}  # fmt: skip
    if crop_size and min(h, w) < crop_size:
        problems.append(
            f"{path}: {w}x{h} is smaller than data.crop_size={crop_size}; lower data.crop_size "
            f"to at most {min(h, w)}, set data.pad_to_crop=true, or remove the image"
        )
    return info, problems


ClassMasks = dict[Path, list[dict[str, list[Path]]]]
"""For `data.mask_format=folders`: masks root -> one `{stem: files}` per class folder."""


def _class_masks(pairs: Sequence[tuple[Path, Path]]) -> ClassMasks:
    """Each class folder's mask files by stem, for pairs whose mask is an extension-less
    `masks/<stem>` (`data.mask_format=folders`); every folder listed once."""
    index: ClassMasks = {}
    for root in {mask.parent for _, mask in pairs if not mask.exists()}:
        folders = sorted(f for f in root.iterdir() if f.is_dir()) if root.is_dir() else []
        for folder in folders:
            by_stem: dict[str, list[Path]] = {}
            for p in sorted(folder.iterdir()):
                if is_image_file(p):
                    by_stem.setdefault(p.stem, []).append(p)
            index.setdefault(root, []).append(by_stem)
    return index


def _mask_files(mask_path: Path, class_masks: ClassMasks) -> list[Path]:
    """The file(s) of a pair's mask: the mask itself, or for `data.mask_format=folders`
    its class masks `masks/<class>/<stem>.*`."""
    folders = class_masks.get(mask_path.parent, [])
    found = [p for by_stem in folders for p in by_stem.get(mask_path.name, [])[:1]]
    return found or [mask_path]


def _check_pair(
    pair: tuple[Path, Path],
    in_channels: int,
    crop_size: int | None,
    class_masks: ClassMasks,
    labelled: MaskEncoding | None = None,
) -> list[str]:
    image_path, mask_path = pair
    info, problems = _check_image(image_path, in_channels, crop_size)
    if labelled is not None:
        try:
            if not (labelled.load(mask_path) != PAD_LABEL).any():
                problems.append(_nothing_labelled(mask_path, labelled))
        except (ValueError, FileNotFoundError) as err:
            problems.append(str(err))
    for file in _mask_files(mask_path, class_masks):
        try:
            mask = read_array(file)
        except ValueError as err:
            problems.append(str(err))
            continue
        if info is not None:
            size = (info["height"], info["width"])
            mismatch = size_mismatch(file, "mask", mask.shape, image_path.name, size)
            if mismatch:
                problems.append(mismatch)
    return problems


def _raise_problems(problems: list[str]) -> None:
    if problems:
        raise ProblemList(f"{len(problems)} problem(s) in the dataset", problems)


def check_pairs(
    pairs: Sequence[tuple[Path, Path]],
    in_channels: int,
    crop_size: int | None = None,
    labelled: MaskEncoding | None = None,
) -> None:
    """Raise one error listing every pair that cannot train, each with its file and the fix.

    Decodes every image and mask as the loader does. Checks: both files readable,
    mask the image's size, image pixels and channels that give `in_channels` (the
    loader's own decision, `readers.plan_channels`), image at least `crop_size`
    on each side. Mask values are checked as each mask loads (`MaskEncoding`);
    with `labelled` (the encoding, for training masks with `data.ignore_value`)
    each mask is also decoded now and must hold a labelled pixel.
    """
    class_masks = _class_masks(pairs)
    found = _each(
        lambda pair: _check_pair(pair, in_channels, crop_size, class_masks, labelled), pairs
    )
    _raise_problems([problem for problems in found for problem in problems])


def _nothing_labelled(mask_path: Path, encoding: MaskEncoding) -> str:
    return (
        f"{mask_path}: no pixel is labelled (all data.ignore_value={encoding.ignore_value!r}): "
        "label some pixels, or remove the image from the training data"
    )


def shared_stems(kind: str, files: Sequence[tuple[str, Path]], folder: Path) -> list[str]:
    """One problem per stem that several `(stem, file)` of `kind` (images, masks) share:
    a pair needs one image and one mask."""
    by_stem: dict[str, list[str]] = {}
    for stem, path in files:
        by_stem.setdefault(stem, []).append(path.name)
    return [
        f"{kind} {names} in {folder} share the stem {stem!r} (images and masks pair by "
        "stem, one each): keep one of them"
        for stem, names in by_stem.items() if len(names) > 1
    ]  # fmt: skip


def _stem(path: Path, suffix: str) -> str | None:
    if suffix and not path.stem.endswith(suffix):
        return None
    return path.stem[: len(path.stem) - len(suffix)] if suffix else path.stem


def _inspect_pair(
    pair: tuple[Path, Path], encoding: MaskEncoding, in_channels: int, crop_size: int | None
) -> dict:
    """One pair, each file decoded once: image facts, raw mask values, JPEG verdict,
    class pixel counts and problems."""
    image_path, mask_path = pair
    info, problems = _check_image(image_path, in_channels, crop_size)
    out: dict = {"image": info, "problems": problems, "values": None, "jpeg": False,
                 "class_pixels": None, "ignored": 0}  # fmt: skip
    try:
        if encoding.mask_format == "folders":
            indices = encoding.load(mask_path)
        elif encoding.mask_format == "palette":
            raw = read_palette_indices(mask_path)
            out["values"] = np.unique(raw, return_counts=True)
            indices = encoding.encode(raw, mask_path)
        else:
            raw = read_array(mask_path)
            if encoding.mask_format != "rgb":
                try:
                    flat = single_channel(raw, mask_path)
                except ValueError:
                    flat = None
                if flat is not None:
                    out["values"] = np.unique(flat, return_counts=True)
                    out["jpeg"] = looks_like_jpeg(flat, mask_path)
            indices = encoding.indices_of(raw, mask_path)
    except (ValueError, FileNotFoundError) as err:
        problems.append(str(err))
        return out
    if info is not None:
        size = (info["height"], info["width"])
        mismatch = size_mismatch(mask_path, "mask", indices.shape, image_path.name, size)
        if mismatch:
            problems.append(mismatch)
            return out
    out["class_pixels"] = np.bincount(indices.ravel(), minlength=encoding.num_classes)[
        : encoding.num_classes
    ]
    out["ignored"] = int((indices == PAD_LABEL).sum())
    if out["ignored"] == indices.size:
        problems.append(_nothing_labelled(mask_path, encoding))
    return out


def inspect_folder(
    root: str | Path,
    encoding: MaskEncoding,
    in_channels: int,
    images_dir: str = "images",
    masks_dir: str = "masks",
    mask_suffix: str = "",
    crop_size: int | None = None,
    intensity_mode: str = "range",
    split: Mapping[str, Any] | None = None,
) -> dict:
    """Everything worth knowing about a dataset before training on it.

    Returns a JSON-ready dict: pairs found, unmatched files on either side,
    image sizes, the channels each image feeds the net (`image_channels`, as the
    loader counts them) and what they are (`image_kinds`: grey, grey+alpha, RGB,
    ...), pixel types, raw mask values with their pixel counts, files whose masks
    look JPEG-compressed (JPEG files, or 8-bit masks with compression noise
    around a few values; never lossless label images), per-class pixel shares (of the
    labelled pixels), the share of mask pixels that carry a label (`labelled_share`: 1
    without `data.ignore_value`) and the least labelled mask, masks with nothing
    labelled as problems,
    suggested `mask_values` and class weights, hints (`hints`: 16-bit images
    using a small part of their range, when `intensity_mode` is `range`) and the list
    of problems (empty when the data will train), among them a `split` (the data
    config's split keys) that the pairs cannot fill.
    """
    root = Path(root)
    image_folder, mask_folder = root / images_dir, root / masks_dir
    problems: list[str] = []
    for folder in (image_folder, mask_folder):
        if not folder.is_dir():
            return {"root": str(root), "problems": [f"{folder} does not exist"]}

    def files(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if is_image_file(p))

    image_files = files(image_folder)
    images = {p.stem: p for p in image_files}
    problems += shared_stems("images", [(p.stem, p) for p in image_files], image_folder)
    folders = encoding.mask_format == "folders"
    masks: dict[str, Path] = {}
    if folders:
        masks = {stem: mask_folder / f"{stem}{mask_suffix}" for stem in images}
    else:
        stems = [(_stem(p, mask_suffix), p) for p in files(mask_folder)]
        stems = [(stem, p) for stem, p in stems if stem is not None]
        problems += shared_stems("masks", stems, mask_folder)
        masks = dict(stems)
        problems += pair_channel_files(image_files, masks, image_folder)  # nnU-Net's 2-D
    pairs = [(images[s], masks[s]) for s in sorted(images) if s in masks]
    report: dict = {
        "root": str(root),
        "pairs": len(pairs),
        "images_without_mask": sorted(images[s].name for s in images if s not in masks),
        "masks_without_image": sorted(masks[s].name for s in masks if s not in images),
        "ignored_files": sorted(
            p.name for f in (image_folder, mask_folder) for p in f.iterdir()
            if p.is_file() and not is_image_file(p)
        ),
    }  # fmt: skip
    if not images:
        problems.append(
            f"{image_folder} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)}, in any "
            "case): put the images there, or point data.root (and data.images_dir) at them"
        )
    for name in report["images_without_mask"][:20]:
        problems.append(f"{image_folder / name}: no mask in {mask_folder}")
    if split is not None and pairs:  # the data config's split keys (train cuts the same split)
        problems += split_problems([image.name for image, _ in pairs], split, root)

    sizes: dict[str, int] = {}
    channels: dict[int, int] = {}
    kinds: dict[str, int] = {}
    dtypes: dict[str, int] = {}
    values: dict[int, int] = {}
    class_pixels = np.zeros(encoding.num_classes, np.int64)
    ignored = 0
    least: tuple[float, str] | None = None  # (labelled share, mask) of the least labelled
    jpeg_like: list[str] = []
    top16 = 0.0
    found = _each(lambda pair: _inspect_pair(pair, encoding, in_channels, crop_size), pairs)
    for (_, mask_path), result in zip(pairs, found, strict=True):
        problems += result["problems"]
        info = result["image"]
        if info is not None:
            size = f"{info['width']}x{info['height']}"
            sizes[size] = sizes.get(size, 0) + 1
            channels[info["channels"]] = channels.get(info["channels"], 0) + 1
            kinds[info["kind"]] = kinds.get(info["kind"], 0) + 1
            dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + 1
            if info["dtype"] == "uint16":
                top16 = max(top16, info["max"])
        if result["values"] is not None:
            for v, n in zip(*(a.tolist() for a in result["values"]), strict=True):
                values[v] = values.get(v, 0) + n
        if result["jpeg"]:
            jpeg_like.append(mask_path.name)
        if result["class_pixels"] is not None:
            class_pixels += result["class_pixels"]
            ignored += result["ignored"]
            labelled = int(result["class_pixels"].sum())
            share = labelled / max(1, labelled + result["ignored"])
            least = min(least, (share, mask_path.name)) if least else (share, mask_path.name)

    hints = []
    if dtypes.get("uint16") and top16 < 4096 and intensity_mode == "range":
        hints.append(
            f"16-bit images reach at most {top16:.0f} of 65535 ({top16 / 655.35:.2g}% of the "
            "range): with data.intensity.mode=range they reach the net nearly black; "
            "data.intensity.mode=percentile stretches each image to 0..1"
        )
    for hint in hints:
        log.warning("%s", hint)
    suggested = sorted(v for v in values if v != encoding.ignore_value)  # classes only
    total = max(1, int(class_pixels.sum()))
    share = class_pixels / total
    weights = median_frequency_weights(share) if (share > 0).all() else None
    report.update({
        "image_sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
        "image_channels": channels,
        "image_kinds": kinds,
        "image_pixel_types": dtypes,
        "mask_values": {str(k): v for k, v in sorted(values.items())},
        "masks_jpeg_like": jpeg_like,
        "class_pixel_share": {
            name: float(f) for name, f in zip(_class_names(encoding), share, strict=True)
        },
        "labelled_share": float(class_pixels.sum() / max(1, class_pixels.sum() + ignored)),
        "least_labelled_mask": {"mask": least[1], "labelled_share": least[0]} if least else None,
        "suggested_mask_values": suggested if 1 < len(suggested) <= 20 else None,
        "suggested_class_weights": weights,
        "hints": hints,
        "problems": problems,
    })  # fmt: skip
    return report


def _class_names(encoding: MaskEncoding) -> list[str]:
    if encoding.class_names and len(encoding.class_names) == encoding.num_classes:
        return encoding.class_names
    return [f"class{i}" for i in range(encoding.num_classes)]
