"""The fingerprint of an image/mask folder: one pass that records what the data looks like.

Per image: format, pixel type and bit depth, stored channels and what they are
(`readers.channel_kind`), size, intensity statistics (min, max, 0.5/99.5
percentiles, mean and spread per channel, the share of the type's range used,
NaNs). Per mask: the encoding it looks like (class values, palette indices, RGB
colours, instance labels, JPEG noise), pixel counts per value and, for instance
labels, objects, their sizes and how many touch. `unet_seg.data.plan` turns it
into training settings.

The fingerprint is cached (`cache_dir/fingerprint-<hash of the folder>.json`) and
recomputed when any file's name, size or modification time changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from unet_seg.data.dataset import find_pairs, list_images
from unet_seg.data.masks import (
    MaskEncoding,
    is_palette_file,
    looks_like_jpeg,
    pack_rgb,
    read_palette_indices,
    unpack_rgb,
)
from unet_seg.data.readers import (
    channel_kind,
    file_format,
    is_jpeg_file,
    read_array,
    read_stored,
)
from unet_seg.data.weight_map import touching_border
from unet_seg.files import write_json

log = logging.getLogger(__name__)

VERSION = 5
"""Bumped when what a fingerprint records, or how it decides a verdict (JPEG-like masks:
version 4; mask values in the top half: 5), changes; older caches are recomputed."""

MAX_VALUES = 256
"""Distinct mask values recorded with their pixel counts (more: only their number)."""

CONNECTED_SHARE = 0.8
"""A mask is instance-like when at least this share of its ids is one connected region each:
a tile cut from a larger image splits a few non-convex objects into two pieces (a cropped
convex object stays whole), so a few split ids are tolerated."""


def fingerprint(
    root: str | Path,
    images_dir: str = "images",
    masks_dir: str = "masks",
    mask_suffix: str = "",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    ignore_folder: str | None = None,
) -> dict[str, Any]:
    """The fingerprint of the image/mask pairs under `root` (see the module docstring).

    Args:
        root, images_dir, masks_dir, mask_suffix: the folder, as in `data=folder`.
        cache_dir: where to keep the cached fingerprint; None: no cache.
        progress: show a progress bar over the files.
        ignore_folder: a folder of ignore masks under `masks_dir` (`data.ignore_value` of
            class folders), not a class folder.
    Returns:
        `{"version", "root", "signature", "mask_suffix", "class_folders", "images": [...],
        "masks": [...]}`, one entry per pair, in pair order.
    """
    root = Path(root)
    class_folders = mask_class_folders(root / masks_dir)
    if class_folders and ignore_folder in class_folders:
        class_folders = [f for f in class_folders if f != ignore_folder] or None
    pairs = find_pairs(root, images_dir, masks_dir, mask_suffix, class_folders)
    signature = _signature(root / images_dir, root / masks_dir)
    cache = _cache_path(cache_dir, root, images_dir, masks_dir, mask_suffix, ignore_folder or "")
    if cache is not None and cache.is_file():
        try:
            cached = json.loads(cache.read_text())
        except (OSError, ValueError):
            cached = {}
        if cached.get("version") == VERSION and cached.get("signature") == signature:
            log.info("fingerprint of %s: cached in %s (no file changed)", root, cache)
            return cached
    images, masks = [], []
    for image_path, mask_path in tqdm(pairs, desc="fingerprint", unit="pair", disable=not progress):
        images.append(_guarded(describe_image, image_path))
        if class_folders:
            masks.append(_guarded(lambda p: describe_class_folders(p, class_folders), mask_path))
        else:
            masks.append(_guarded(describe_mask, mask_path))
    result = {"version": VERSION, "root": str(root), "signature": signature,
              "mask_suffix": mask_suffix, "class_folders": class_folders, "images": images,
              "masks": masks}  # fmt: skip
    if cache is not None:
        write_json(result, cache)
    return result


def describe_image(path: Path) -> dict[str, Any]:
    """One image's entry: format, dtype, bits, size, channels, kind, intensity statistics."""
    array, data_channels = read_stored(path)  # a TIFF of channels: no alpha, no colour
    kind, feeds = channel_kind(array, data_channels)
    image = array if array.ndim == 3 else array[:, :, None]
    stored = image.shape[2]
    colour = image[:, :, : min(stored, 3)] if kind.startswith(("RGB", "grey as")) else image
    if kind.startswith("grey"):  # one channel carries the picture (alpha and copies dropped)
        colour = image[:, :, :1]
    values = colour.reshape(-1, colour.shape[2])
    sample = values[:: max(1, len(values) // 500_000)].astype(np.float64)  # <= ~1M samples
    finite = np.isfinite(sample).all(axis=1)
    nans = int(len(sample) - finite.sum())
    sample = sample[finite]
    low, high = np.percentile(sample, [0.5, 99.5], axis=0) if len(sample) else ([0.0], [0.0])
    type_max = float(np.iinfo(array.dtype).max) if array.dtype.kind in "ui" else 1.0
    vmin, vmax = sample.min(axis=0), sample.max(axis=0)
    return {
        "name": path.name,
        "format": file_format(path),
        "dtype": str(array.dtype),
        "bits": array.dtype.itemsize * 8,
        "height": int(array.shape[0]),
        "width": int(array.shape[1]),
        "stored_channels": int(stored),
        "kind": kind,
        "channels": int(feeds),
        "min": _floats(vmin),
        "max": _floats(vmax),
        "p0_5": _floats(low),
        "p99_5": _floats(high),
        "mean": _floats(sample.mean(axis=0)),
        "std": _floats(sample.std(axis=0)),
        "range_used": float((np.max(vmax) - np.min(vmin)) / type_max) if type_max else 0.0,
        "nan_samples": nans,
    }


def describe_mask(path: Path) -> dict[str, Any]:
    """One mask's entry: how it stores classes (`encoding`) and what values it holds.

    `encoding`: `palette` (a palette PNG or GIF: the values are palette indices), `rgb` (colours
    with differing channels: `colors`), or `values` (one channel). For one-channel
    integer masks, `instance_like` says whether its non-zero values look like numbered
    objects: two or more ids, (almost) each one connected region (`connected_ids` of
    `checked_ids`), however they are numbered (crops and annotation tools leave gaps).
    Negative values (an ignore label such as -1, or an error) are counted in `negative`.
    """
    entry: dict[str, Any] = {"name": path.name, "format": file_format(path)}
    if is_palette_file(path):  # the loader's test: the pixels are palette indices
        array = read_palette_indices(path)
        entry["encoding"] = "palette"
    else:
        array = read_array(path)
        entry["encoding"] = "values"
        if array.ndim == 3:
            if (array[:, :, :1] == array[:, :, : min(3, array.shape[2])]).all():
                array = array[:, :, 0]  # grey stored as colour
            else:
                entry["encoding"] = "rgb"
    entry.update(dtype=str(array.dtype), height=int(array.shape[0]), width=int(array.shape[1]))
    # palette indices are class indices, never JPEG noise (the checks and the loader agree)
    noisy = array.ndim == 2 and entry["encoding"] != "palette"
    entry["jpeg"] = looks_like_jpeg(array, path) if noisy else is_jpeg_file(path)
    if entry["encoding"] == "rgb":
        values, counts = np.unique(pack_rgb(array), return_counts=True)
        entry["n_values"] = int(len(values))
        if len(values) <= MAX_VALUES:
            entry["colors"] = {
                ",".join(map(str, unpack_rgb(v))): int(c)
                for v, c in zip(values.tolist(), counts.tolist(), strict=True)
            }
        return entry
    if array.dtype.kind not in "ui":
        entry["error"] = f"mask pixel type {array.dtype}: expected integers"
        return entry
    values, counts = np.unique(array, return_counts=True)
    entry["n_values"] = int(len(values))
    if len(values) <= MAX_VALUES:
        entry["values"] = {
            str(v): int(c) for v, c in zip(values.tolist(), counts.tolist(), strict=True)
        }
        top, top_counts = np.unique(array[: array.shape[0] // 2], return_counts=True)
        entry["values_top"] = {  # in the top half of the rows: where classes sit (upright)
            str(v): int(c) for v, c in zip(top.tolist(), top_counts.tolist(), strict=True)
        }
    negative = values[values < 0]
    if len(negative):
        entry["negative"] = {str(v): int(c) for v, c in zip(negative.tolist(),
                             counts[values < 0].tolist(), strict=True)}  # fmt: skip
        array = np.where(array < 0, 0, array)  # the objects are the positive ids
    nonzero = values[values > 0]
    entry["max_value"] = int(values.max()) if len(values) else 0
    entry["instance_like"] = False
    if len(nonzero) >= 2:
        checked, connected = connected_ids(array)
        entry.update(checked_ids=checked, connected_ids=connected)
        entry["instance_like"] = connected >= CONNECTED_SHARE * checked
    if entry["instance_like"]:
        sizes = counts[values > 0]
        touching = np.unique(array[touching_border(array)])
        entry["objects"] = int(len(nonzero))
        entry["object_area_median"] = float(np.median(sizes))
        entry["touching_objects"] = int((touching > 0).sum())
    return entry


def mask_class_folders(masks: Path) -> list[str] | None:
    """The class folders of `data.mask_format=folders` (`masks/<class>/<stem>.png`): the
    sub-folders of `masks`, sorted, when it holds folders and no mask files; else None."""
    if not masks.is_dir() or list_images(masks):
        return None
    folders = sorted(p.name for p in masks.iterdir() if p.is_dir() and not p.name.startswith("."))
    return folders or None


def describe_class_folders(path: Path, class_folders: list[str]) -> dict[str, Any]:
    """One image's masks in class folders (`path` is `masks/<stem>`): pixels of each class
    (index 1.. in folder order; 0 where no folder claims the pixel)."""
    encoding = MaskEncoding(mask_format="folders", class_names=["background", *class_folders])
    indices = encoding.load(path)
    counts = np.bincount(indices.ravel(), minlength=len(class_folders) + 1)
    return {"name": path.name, "format": "folders", "encoding": "folders", "jpeg": False,
            "dtype": "uint8", "height": int(indices.shape[0]), "width": int(indices.shape[1]),
            "n_values": int((counts > 0).sum()),
            "values": {str(v): int(c) for v, c in enumerate(counts.tolist()) if c}}  # fmt: skip


def connected_ids(labels: np.ndarray, max_objects: int = 300) -> tuple[int, int]:
    """`(ids checked, ids that are one 8-connected region)` among the non-zero values of
    `labels` (the first `max_objects`): instance labels have (almost) every id in one
    piece, whatever their numbering; class-index masks have classes in many pieces."""
    ys, xs = np.nonzero(labels)
    if not len(ys):
        return 0, 0
    values = labels[ys, xs]
    order = np.argsort(values, kind="stable")
    values, ys, xs = values[order], ys[order], xs[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    single = 0
    checked = list(zip(starts, ends, strict=True))[:max_objects]
    for s, e in checked:
        y0, y1, x0, x1 = ys[s:e].min(), ys[s:e].max() + 1, xs[s:e].min(), xs[s:e].max() + 1
        region = (labels[y0:y1, x0:x1] == values[s]).astype(np.uint8)
        count, _ = cv2.connectedComponents(region, connectivity=8)
        single += count == 2  # background + one region
    return len(checked), int(single)


def _guarded(describe: Callable[[Path], dict], path: Path) -> dict[str, Any]:
    """`describe(path)`, or `{"name", "error"}` for a file that cannot be read."""
    try:
        return describe(path)
    except (ValueError, OSError, cv2.error) as err:
        return {"name": path.name, "error": str(err)}


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.atleast_1d(values)]


def _signature(*folders: Path) -> str:
    """A hash of the name, size and modification time of every file below `folders`."""
    digest = hashlib.sha256()
    for folder in folders:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            stat = os.stat(file)
            digest.update(f"{file}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _cache_path(cache_dir: str | Path | None, root: Path, *layout: str) -> Path | None:
    if cache_dir is None:
        return None
    key = hashlib.sha256("|".join([str(root.resolve()), *layout]).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"fingerprint-{key}.json"


def summary(fp: dict[str, Any]) -> str:
    """The fingerprint as a few readable lines: images, intensities, masks, classes, objects."""
    images = [e for e in fp["images"] if "error" not in e]
    masks = [e for e in fp["masks"] if "error" not in e]
    lines = [f"{len(fp['images'])} image/mask pairs in {fp['root']}"]
    if images:
        lines.append("  images      " + _counted(
            f"{e['format']} {e['dtype']} {e['kind']}" for e in images))  # fmt: skip
        sizes = sorted((e["height"], e["width"]) for e in images)
        lines.append(f"  sizes       {_hw(sizes[0])} .. {_hw(sizes[-1])}, median "
                     f"{_hw(sizes[len(sizes) // 2])} (height x width)")  # fmt: skip
        used = [e["range_used"] for e in images]
        low = min(min(e["min"]) for e in images)
        high = max(max(e["max"]) for e in images)
        lines.append(f"  intensity   values {low:g}..{high:g}; share of the type's range "
                     f"used {min(used):.1%}..{max(used):.1%}")  # fmt: skip
        nans = sum(e["nan_samples"] for e in images)
        if nans:
            lines.append(f"  NaN         {nans} sampled pixels are NaN")
    if masks:
        lines.append("  masks       " + _counted(
            f"{e['format']} {e['dtype']} {e['encoding']}" for e in masks))  # fmt: skip
        totals: dict[str, int] = {}
        for m in masks:
            for v, c in (m.get("values") or m.get("colors") or {}).items():
                totals[v] = totals.get(v, 0) + c
        pixels = max(1, sum(totals.values()))
        shown = sorted(totals.items(), key=lambda kv: -kv[1])[:12]
        lines.append("  mask values " + ", ".join(f"{v}: {c / pixels:.2%}" for v, c in shown)
                     + (f" ... ({len(totals)} in all)" if len(totals) > 12 else ""))  # fmt: skip
        objects = [m for m in masks if m.get("instance_like")]
        if objects:
            count = sum(m["objects"] for m in objects)
            touching = sum(m["touching_objects"] for m in objects)
            area = float(np.median([m["object_area_median"] for m in objects]))
            lines.append(f"  objects     {count} numbered objects in {len(objects)} masks, median "
                         f"area {area:g} px, {touching} touching another")  # fmt: skip
        jpeg = [m["name"] for m in masks if m.get("jpeg")]
        if jpeg:
            lines.append(f"  JPEG masks  {len(jpeg)}, e.g. {jpeg[:3]}: save masks as PNG")
    errors = [e for e in fp["images"] + fp["masks"] if "error" in e]
    for e in errors[:20]:
        lines.append(f"  unreadable  {e['name']}: {e['error']}")
    return "\n".join(lines)


def _counted(items: Any) -> str:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return "; ".join(f"{n} x {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _hw(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"
