"""The plan: training settings derived from a folder's fingerprint (nnU-Net's idea).

`data=auto` sets the planned keys of the data config to `auto`; `plan` fills
each key still `auto` from the fingerprint and leaves every other value alone,
so a key given on the command line always wins, and the keys planned after it
follow it (give `data.mask_values` and the class names follow their count).

What is planned, and how:

- `mask_suffix`: the suffix every mask name adds to its image's stem (Carvana's
  `x.jpg` / `x_mask.gif`: `_mask`), found by comparing the names; none when masks are
  named like their images (`detect_mask_suffix`).
- `in_channels`: 1 when every image is grey (also grey+alpha with an opaque alpha,
  grey stored as RGB/RGBA), 3 for colour and for grey and colour mixed (grey is
  repeated), 4 for grey+alpha next to colour (RGBA: images without transparency get
  an opaque alpha), else the images' channel count (a TIFF of C channels of data, such
  as 2-channel fluorescence, is C channels: never grey+alpha, `readers.read_stored`).
- `mask_format`, `mask_values`, `mask_colors`, `class_names`, `num_classes`: from
  what the masks hold: palette images (PNG, GIF), RGB colours, class folders,
  instance labels (each id one connected region, however numbered: one foreground
  class, `_instance_like`), or pixel values (each a class, in increasing order; 0/255
  is binary). `num_classes` is the number of classes. The value, colour or folder
  given as `data.ignore_value` (unlabelled pixels, also a negative value such as -1) is
  never a class; other negative values are refused.

Each guess (the mask suffix, instance labels, the channels) says in its reason what
it saw, with counts; `check_data` prints the override that undoes it.
- `intensity`, `mean`, `std`: a fixed linear map of the dataset's 0.5..99.5
  percentile range to 0..1 (clipped), then the mean and spread of the data so
  mapped: a 16-bit image using 0.4% of its range trains exactly as an 8-bit one
  with the same content. Images whose brightness differs by more than 4x in
  their upper percentile get per-image percentile scaling instead.
- `crop_size`, `pad_to_crop`: the median image's shorter side, in multiples of 16,
  at most 256 on a CPU (512 on a GPU); images smaller than that are padded.
- `batch_size`, `eval_batch_size`: 4 patches of 256x256 on a CPU (scaled by the
  patch area; more with a GPU's memory), and about the same pixels per evaluation.
- `train_repeats`: patches drawn per training image and epoch, so that an epoch
  is at least `MIN_STEPS` steps (a small dataset still trains for a while), twice
  that when a foreground class covers under 1% of the mask pixels (rare classes
  are learned late); the number of epochs is `trainer.max_epochs`, or the steps
  fit `trainer.budget`.
- `foreground_crop`: a third of the patches centred on a foreground class picked
  uniformly among those present (rare-class oversampling, as nnU-Net).
- `cache`: decode the training and validation images once, in the main process, and
  keep them in memory as their files hold them (uint8, uint16) for the loader's workers
  to share, when they take at most `CACHE_SHARE` of the memory available now
  (`decide_cache`); off otherwise. `data=folder` decides the same at set-up
  (`SegDataModule`), estimating from the first image.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from unet_seg.data.layouts import (
    CHANNEL_SUFFIX,
    IMAGES_TR,
    DatasetJson,
    contradictions,
    plan_from_dataset_json,
    read_dataset_json,
    resolve_folders,
)
from unet_seg.data.plan_rules import (
    AUTO,
    MAX_CLASSES,
    MIN_STEPS,
    RARE_SHARE,
    RARE_STEPS_FACTOR,
    PlanError,
    rare_subject,
)
from unet_seg.data.splits import planned_split, train_count
from unet_seg.problems import problem_list

PLANNED_KEYS = ("mask_suffix", "in_channels", "mask_format", "mask_values", "mask_colors",
                "class_names", "num_classes", "intensity", "mean", "std", "crop_size",
                "pad_to_crop", "batch_size", "eval_batch_size", "train_repeats",
                "foreground_crop", "rare_classes", "background", "upright",
                "cache")  # fmt: skip
"""Data keys the plan fills when they are `auto`, in this order."""

UNPLANNED_AUTO = ("cache",)
"""Planned keys whose `auto` the data module also resolves itself (`data=folder`'s default):
alone, they do not make a config one to plan (`has_auto`)."""

CACHE_SHARE = 0.25
"""`data.cache: auto` is on when the decoded training and validation images take at most
this share of the memory available (MemAvailable). The rest is the run's and the machine's:
the net's activations and the optimiser (about 1-2 GB for the CPU plan's batch), the
batches in flight, pages a forked worker copies when it writes near an array, a copy per
worker where workers are spawned, and on a shared machine the other jobs, which a run
should not push into swapping for a loader that is a few times faster, not essential."""

VOLUME_KEYS = ("volume", "dims", "slab", "slice_axis", "spacing", "patch", "ignore_value")
"""Data keys null in `conf/data/folder.yaml` that a volume folder's plan fills
(`unet_seg.data.volume_plan`) unless given: the keys for volumes only, and `ignore_value`
(-1 in label volumes: unlabelled voxels)."""

RARE_IDS_MASKS, RARE_IDS_RECUR = 4, 2.0
"""With few distinct values that are not numbered 1..N in each mask, the masks are still
instance labels when, over at least `RARE_IDS_MASKS` masks, each value lies in at most
`RARE_IDS_RECUR` masks on average: tiles of one image share only the objects cut by their
borders, while a class recurs from mask to mask."""


def plan(
    fp: dict[str, Any],
    data: dict[str, Any],
    gpu_memory_gb: float | None = None,
    available: int | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Fill the `auto` keys of a data config from a fingerprint.

    Args:
        fp: `unet_seg.data.fingerprint.fingerprint(...)`.
        data: the data config as plain data; keys that are not `auto` are kept.
        gpu_memory_gb: memory of the GPU training will use, or None for a CPU.
        available: bytes of memory available for `cache` (None: MemAvailable, read now).
    Returns:
        `(data with every auto key filled, {key: why})` for the keys planned here.
    Raises:
        PlanError: listing every unreadable file and every contradiction at once.
    """
    problems = [e["error"] for e in fp["images"] + fp["masks"] if "error" in e]
    encodings = sorted({m["encoding"] for m in fp["masks"] if "error" not in m})
    colour_ignore = isinstance(data.get("ignore_value"), list)  # an [r, g, b]: colour masks
    if encodings == ["rgb", "values"] or (encodings == ["values"] and colour_ignore):
        # colour masks, some or all of them grey (an empty one is black)
        fp = {**fp, "masks": [_grey_as_colours(m) for m in fp["masks"]]}
        encodings = sorted({m["encoding"] for m in fp["masks"] if "error" not in m})
    if len(encodings) > 1:
        problems.append(
            f"{fp['root']}: masks mix encodings {encodings} (palette images, colour and grey "
            "masks): save them all one way, or set data.mask_format"
        )
    jpeg = [m["name"] for m in fp["masks"] if m.get("jpeg")]
    if jpeg and data.get("mask_format") == AUTO:
        problems.append(
            f"{fp['root']}: {len(jpeg)} mask(s) are JPEG files, e.g. {jpeg[:3]}: JPEG's "
            "compression noise turns class values into dozens of others. Save the masks as "
            "PNG (lossless)."
        )
    if problems:
        raise PlanError(_listing(problems))
    data, why = dict(data), {}

    def fill(key: str, value: Any, reason: str) -> None:
        if data.get(key) == AUTO:
            data[key], why[key] = value, reason

    fill("mask_suffix", fp.get("mask_suffix", ""), "the suffix the fingerprint paired with")
    images, masks = fp["images"], fp["masks"]
    feeds = sorted({e["channels"] for e in images})
    channels = max(feeds)
    alpha = any(e["channels"] == 2 and e["kind"] != "2 channels" for e in images)
    if alpha and 3 in feeds:
        channels = 4  # grey+alpha with colour: RGBA, an opaque alpha added where none is
    kinds: dict[str, int] = {}
    for e in images:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    seen = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
    mixed = (" (grey and colour mixed: grey is repeated into 3 channels)" if feeds == [1, 3]
             else " (grey+alpha and colour mixed: RGBA, an opaque alpha where none is)"
             if channels == 4 and 2 in feeds else "")  # fmt: skip
    fill("in_channels", channels, f"{channels} channel(s): of {len(images)} images, {seen}{mixed}")
    _plan_classes(fp, data, fill)
    _plan_intensity(images, data, fill)
    _plan_patches(images, masks, data, fill, gpu_memory_gb)
    fill("upright", *_upright(masks, data))
    if data.get("cache") == AUTO:
        names = _train_and_val(images, data)
        kept = [e for e in images if e["name"] in names]
        on, reason = decide_cache(decoded_bytes(kept, data), available)
        fill("cache", on, reason)
    return data, why


UPRIGHT_SHARE = (0.3, 0.7)
"""A class sits at a fixed height when, in at least `UPRIGHT_MASKS` of the masks that show
it (8 at least), less or more of its pixels than this lie in the top half (`_upright`)."""
UPRIGHT_MASKS = 0.8


def _upright(masks: list[dict], data: dict) -> tuple[bool, str]:
    """Whether the images have an up, from where the classes sit: road scenes and photos
    keep the sky at the top and the road at the bottom in almost every image, where cells
    and EM sections are alike in every direction. Upright images train without vertical
    flips or quarter turns (`data.upright`): a flipped street is no test image. Only a
    class of at least 5% of the pixels counts, in the masks where it holds 1% or more."""
    if data["mask_format"] not in ("values", "palette"):
        return False, "no evidence read from these masks: flips and quarter turns kept"
    ignore = str(data.get("ignore_value"))
    total: dict[str, int] = {}
    for m in masks:
        for v, c in (m.get("values") or {}).items():
            total[v] = total.get(v, 0) + c
    pixels = sum(c for v, c in total.items() if v != ignore)
    low, high = UPRIGHT_SHARE
    fixed: dict[str, float] = {}  # value -> the share of its masks with it up (or down)
    for v, c in total.items():
        if v == ignore or not pixels or c < 0.05 * pixels:
            continue
        shares = [m["values_top"].get(v, 0) / m["values"][v] for m in masks
                  if "values_top" in m and m["values"].get(v, 0) >= 0.01 * _area(m)]  # fmt: skip
        if len(shares) < 8:
            continue
        up = sum(s > high for s in shares) / len(shares)
        down = sum(s < low for s in shares) / len(shares)
        if max(up, down) >= UPRIGHT_MASKS:
            fixed[v] = up if up >= down else -down
    if not fixed:
        return False, ("no class keeps to the top or the bottom half of the images: flips "
                       "and quarter turns kept")  # fmt: skip
    names = data.get("class_names") or []
    values = [str(v) for v in (data.get("mask_values") or [])]

    def name(v: str) -> str:
        return names[values.index(v)] if v in values and values.index(v) < len(names) else v

    seen = ", ".join(f"{name(v)} in the {'top' if f > 0 else 'bottom'} half of {abs(f):.0%}"
                     for v, f in fixed.items())  # fmt: skip
    return True, (f"classes keep their height ({seen} of the masks showing them): the "
                  "images have an up, so no vertical flips or quarter turns")  # fmt: skip


def _area(entry: dict) -> int:
    return int(entry["height"]) * int(entry["width"])


def _train_and_val(images: list[dict], data: dict) -> set[str]:
    """Names of the images the data module will cache (training and validation)."""
    splits = planned_split([e["name"] for e in images], data)
    if splits is None:
        return {e["name"] for e in images}
    return set(splits["train"]) | set(splits["val"])


def decoded_bytes(images: list[dict], data: dict) -> int:
    """Memory the cache takes for fingerprint entries `images` (`height`, `width`, `bits`):
    each image at `data.in_channels` of its own pixel type (float32 under `percentile`
    intensity, converted when decoded), and its uint8 class mask."""
    percentile = (data.get("intensity") or {}).get("mode") == "percentile"
    total = 0
    for e in images:
        pixels = int(e["height"]) * int(e["width"])
        size = 4 if percentile or int(e.get("bits", 8)) > 16 else max(1, int(e.get("bits", 8)) // 8)
        total += pixels * (int(data["in_channels"]) * size + 1)
    return total


def available_memory(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """Bytes of memory available to new work (Linux's MemAvailable: free memory plus the
    page cache that can be dropped), or None where it cannot be read."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def decide_cache(
    needed: int, available: int | None = None, share: float = CACHE_SHARE
) -> tuple[bool, str]:
    """`(on, why)` for `data.cache: auto`: on when `needed` bytes of decoded images are at
    most `share` of `available` bytes (None: read now, `available_memory`)."""
    if available is None:
        available = available_memory()
    if available is None:
        return False, (f"decoded images would take {needed / 2**20:.0f} MiB; the memory "
                       "available could not be read (no /proc/meminfo): off, set "
                       "data.cache=true to keep them")  # fmt: skip
    limit = share * available
    on = needed <= limit
    return on, (
        f"decoded training+validation images {needed / 2**20:.0f} MiB "
        f"{'<=' if on else '>'} {share:.0%} of the {available / 2**30:.1f} GiB "
        f"available: {'decoded once, shared by the workers' if on else 'read per sample'}"
    )


def _plan_classes(fp: dict, data: dict, fill) -> None:
    masks = fp["masks"]
    encodings = sorted({m["encoding"] for m in masks})
    if fp.get("class_folders"):
        fill("mask_format", "folders", f"masks are class folders {fp['class_folders']}")
    elif encodings == ["rgb"]:
        fill("mask_format", "rgb", "masks are RGB colours")
    elif encodings == ["palette"]:
        fill("mask_format", "palette", f"masks are palette images ({_formats(masks)}): the "
             "values are palette indices")  # fmt: skip
    else:
        ignore = data.get("ignore_value")
        instance, evidence = _instance_like(masks, "" if ignore is None else str(ignore))
        fill("mask_format", "instances" if instance else "values", evidence)
    fmt = data["mask_format"]
    ignore = data.get("ignore_value")  # unlabelled pixels: never a class
    ignore = ",".join(str(int(v)) for v in ignore) if isinstance(ignore, list) else str(ignore)
    _refuse_negative(fp, fmt, ignore)
    union: dict[Any, int] = {}
    for m in masks:
        for v, c in (m.get("colors") if fmt == "rgb" else m.get("values") or {}).items():
            if v != ignore:
                union[v] = union.get(v, 0) + c
    if fmt == "rgb":
        colors = list(union)
        if len(colors) == 1 and data.get("mask_colors") == AUTO:  # empty masks: binary, as values
            colors.append(next(c for c in ("255,255,255", "0,0,0", "255,0,0")
                               if c not in colors and c != ignore))  # fmt: skip
        colors = sorted(colors, key=lambda c: (c != "0,0,0", c))  # black, if there, first
        fill("mask_colors", [[int(x) for x in c.split(",")] for c in colors],
             f"the {len(colors)} colours found (black first)")  # fmt: skip
        fill("mask_values", None, "mask_format=rgb uses mask_colors")
        n = len(data["mask_colors"] or [])
        names = [f"class{i}" for i in range(n)]
    elif fmt == "folders":
        fill("mask_values", None, "mask_format=folders: one folder per class")
        fill("mask_colors", None, "not an RGB encoding")
        names = ["background", *fp["class_folders"]]
        n = len(names)
    elif fmt == "instances":
        fill("mask_values", [0, 1], "instance labels: background and one object class")
        fill("mask_colors", None, "not an RGB encoding")
        n, names = 2, ["background", "object"]
    else:
        values = sorted(int(v) for v in union)
        if len(values) > MAX_CLASSES and data.get("mask_values") == AUTO:
            raise PlanError(
                f"{fp['root']}: the masks hold {len(values)} distinct values, too many for "
                "classes: for instance labels set data.mask_format=instances; otherwise list "
                "the class values in data.mask_values"
            )
        if len(values) == 1 and data.get("mask_values") == AUTO:
            values = [0, 255] if values[0] in (0, 255) else [0, values[0]]
            values = [0, 1] if ignore == "255" and values == [0, 255] else values  # not ignored
        fill("mask_values", values, f"the {len(values)} values found in the masks, in order")
        fill("mask_colors", None, "not an RGB encoding")
        n = len(data["mask_values"])
        names = ["background", "foreground"] if n == 2 else ["background"]
        names += [f"class{i}" for i in range(len(names), n)]
    fill("class_names", names, f"{n} classes, background first")
    fill("num_classes", len(data["class_names"]), "one per class name")


def _grey_as_colours(mask: dict) -> dict:
    """An 8-bit grey mask's entry as colours (value v: colour v,v,v), to plan it with colour
    masks; any other entry as it is."""
    values = mask.get("values")
    if mask.get("encoding") != "values" or mask.get("dtype") != "uint8" or values is None:
        return mask
    colors = {f"{v},{v},{v}": c for v, c in values.items()}
    return {**mask, "encoding": "rgb", "colors": colors, "values": None}


def _instance_like(masks: list[dict], ignore: str) -> tuple[bool, str]:
    """Whether the masks are instance labels, and the evidence. The signal is connectivity:
    in (nearly) every mask holding two or more ids, (almost) each non-zero id is one
    connected region. Many distinct ids (more than `MAX_CLASSES` in one mask or in all)
    are then objects whatever their numbering: crops of one large image, annotation tools
    and stitched tiles leave gaps. A few distinct values could be classes that each form
    one region: they are objects when they vary from mask to mask and either count about
    1..N in each, or each lies in few masks (tiles); a class recurs. Class-index masks
    have classes in many pieces, or repeat one set."""
    ids, union, many = [], set(), False
    for m in masks:
        values = m.get("values")
        if values is None:  # more than the fingerprint lists: many ids
            many |= m.get("n_values", 0) > MAX_CLASSES
            ids.append(None)
            continue
        own = sorted(int(v) for v in values if v != ignore and int(v) > 0)
        ids.append(own)
        union.update(own)
    numbered = [m for m, own in zip(masks, ids, strict=True) if own is None or len(own) >= 2]
    connected = [m for m in numbered if m.get("instance_like")]
    checked = sum(m.get("checked_ids", 0) for m in numbered)
    whole = sum(m.get("connected_ids", 0) for m in numbered)
    many |= len(union) > MAX_CLASSES
    seen = (f"in {len(connected)} of {len(numbered)} masks with two or more ids each id is "
            f"one connected region ({whole} of {checked} ids in one piece)")  # fmt: skip
    if not numbered:
        return False, "masks hold one value per class (no mask holds two or more ids)"
    if len(connected) < 0.8 * len(numbered):
        return False, f"masks hold one value per class: not instance labels, {seen}"
    top = max(m.get("max_value", 0) for m in masks)
    if many:
        return True, (f"instance labels (one foreground class): {seen}; {len(union)} distinct "
                      f"ids, up to {top}: too many for classes")  # fmt: skip
    counted = all(own is None or len(own) < 2 or max(own) <= 2 * len(own) for own in ids)
    varied = len({tuple(own or ()) for own in ids}) > 1
    if varied and counted:
        return True, (f"instance labels (one foreground class): {seen}; the ids vary from "
                      f"mask to mask and count about 1..N (up to {top})")  # fmt: skip
    recur = sum(len(own or ()) for own in ids) / max(1, len(union))  # masks an id is in
    if varied and len(masks) >= RARE_IDS_MASKS and recur <= RARE_IDS_RECUR:
        return True, (f"instance labels (one foreground class): {seen}; {len(union)} distinct "
                      f"ids, up to {top}, each in {recur:.1f} masks on average (objects "
                      "of tiles cut from larger images; a class recurs)")  # fmt: skip
    return False, (f"masks hold one value per class: {seen}, but only {len(union)} distinct "
                   "values, " + ("the same in every mask" if not varied else
                                 f"each in {recur:.1f} masks on average"))  # fmt: skip


def _refuse_negative(fp: dict, fmt: str, ignore: str) -> None:
    """Negative mask values are either the ignore label (`data.ignore_value`, e.g. -1, of
    instance labels or label values) or an error: refused, naming each file, before they
    become a class or an object."""
    problems = []
    for m in fp["masks"]:
        bad = sorted(int(v) for v in m.get("negative") or {} if v != ignore)
        if bad:
            fix = (
                f"if they mark unlabelled pixels set data.ignore_value={bad[0]}"
                + "; otherwise save the labels with 0 = background and 1..N = "
                + ("objects" if fmt == "instances" else "classes")
            )
            problems.append(f"{fp['root']}: mask {m['name']} holds negative values {bad[:5]}: "
                            f"{fix}")  # fmt: skip
    if problems:
        raise PlanError(_listing(problems))


def _plan_intensity(images: list[dict], data: dict, fill) -> None:
    width = max(len(e["p0_5"]) for e in images)  # grey and colour mixed: grey repeated

    def stat(key: str) -> np.ndarray:  # [N, C]
        return np.array([_per_channel(np.asarray(e[key], float), width) for e in images])

    lows, highs, means, stds = stat("p0_5"), stat("p99_5"), stat("mean"), stat("std")
    spread = highs.max(0) / np.maximum(highs.min(0), 1e-12)
    if data.get("intensity") == AUTO:
        if (spread > 4).any() and (highs.min(0) > 0).all():
            fill("intensity", {"mode": "percentile", "low": 0.5, "high": 99.5},
                 f"image brightness differs up to {spread.max():.1f}x: each image's own "
                 "0.5..99.5 percentiles to 0..1")  # fmt: skip
        else:
            vmin, vmax = float(lows.min()), float(highs.max())
            if vmax <= vmin:
                vmax = vmin + 1.0
            fill("intensity", {"mode": "fixed", "vmin": vmin, "vmax": vmax},
                 f"the dataset's 0.5..99.5 percentiles {vmin:g}..{vmax:g} to 0..1")  # fmt: skip
    intensity = data["intensity"]
    if intensity.get("mode") == "fixed":
        scale = intensity["vmax"] - intensity["vmin"]
        scaled_means = (means - intensity["vmin"]) / scale
        scaled_vars = (stds / scale) ** 2
    elif intensity.get("mode") == "percentile":
        scale = np.maximum(highs - lows, 1e-12)
        scaled_means, scaled_vars = (means - lows) / scale, (stds / scale) ** 2
    else:  # range: divide by the type's maximum
        top = np.array([2 ** e["bits"] - 1 if e["dtype"].startswith("uint") else 1.0
                        for e in images])[:, None]  # fmt: skip
        scaled_means, scaled_vars = means / top, (stds / top) ** 2
    mean = scaled_means.mean(0)  # the dataset's: pooled over images of similar size
    std = np.sqrt(scaled_vars.mean(0) + scaled_means.var(0))
    channels = data["in_channels"]
    mean, std = _per_channel(mean, channels), _per_channel(std, channels)
    fill("mean", [round(float(v), 4) for v in mean], "the scaled data's mean")
    fill("std", [round(max(float(v), 1e-3), 4) for v in std], "the scaled data's spread")


def _per_channel(values: np.ndarray, channels: int) -> np.ndarray:
    """Statistics of the stored picture channels -> one per net input channel."""
    if len(values) == channels:
        return values
    if len(values) == 1:
        return np.repeat(values, channels)
    return np.repeat(values.mean(keepdims=True), channels)


def _plan_patches(
    images: list[dict], masks: list[dict], data: dict, fill, gpu_memory_gb: float | None
) -> None:
    sides = np.array([min(e["height"], e["width"]) for e in images])
    cap = 256 if gpu_memory_gb is None else 512
    crop = int(min(cap, max(16, int(np.median(sides)) // 16 * 16)))
    fill("crop_size", crop, f"median shorter side {int(np.median(sides))} px, at most {cap}")
    crop = int(data["crop_size"])
    small = int((sides < crop).sum())
    reason = f"{small} image(s) smaller than the patch: padded" if small else "none smaller"
    fill("pad_to_crop", small > 0, reason)
    budget = 4 * 256**2 if gpu_memory_gb is None else 16 * 256**2 * max(1.0, gpu_memory_gb / 24)
    batch = int(min(32, max(2, budget // crop**2)))
    fill("batch_size", batch, f"about {budget / 2**16:.0f} x 256x256 pixels per step")
    pixels = float(np.median([e["height"] * e["width"] for e in images]))
    fill("eval_batch_size", int(max(1, min(batch, math.floor(budget / pixels)))),
         "about the same pixels per evaluation step")  # fmt: skip
    train_images = train_count([e["name"] for e in images], data)
    counts = np.zeros(data["num_classes"])  # pixels per class, to find the rare ones
    if data["mask_format"] in ("values", "palette", "folders"):
        for m in masks:
            for v, c in (m.get("values") or {}).items():
                i = int(v) if data["mask_format"] == "folders" else _index(data, int(v))
                if i is not None and i < len(counts):
                    counts[i] += c
    total = counts.sum()
    rare = [i for i, c in enumerate(counts) if i > 0 and total and c < RARE_SHARE * total]
    said = rare_subject(rare, data.get("class_names"))
    steps = MIN_STEPS * (RARE_STEPS_FACTOR if rare else 1)
    repeats = max(1, math.ceil(steps * data["batch_size"] / train_images))
    usual = max(1, math.ceil(MIN_STEPS * data["batch_size"] / train_images))
    fill("train_repeats", repeats,
         f"about {train_images} training images x {repeats} / batch {data['batch_size']}: "
         f"{math.ceil(train_images * repeats / data['batch_size'])} steps an epoch"
         + (f", at least twice the usual {MIN_STEPS}: {said} under 1% of pixels"
            if repeats > usual else ""))  # fmt: skip
    if data["num_classes"] <= 2:  # a rare foreground: the Dice term is made for it
        fill("rare_classes", [], "binary: the Dice term balances a rare foreground, and the "
                                 "cross-entropy is not weighed")  # fmt: skip
    fill("rare_classes", rare,
         f"{said} under 1% of the pixels: loss.class_weights=rare (the default) "
         "weighs the cross-entropy by median frequency" if rare
         else "no class is under 1% of the pixels: the cross-entropy is not weighed")  # fmt: skip
    fill("foreground_crop", 0.33,
         "a third of patches centred on a foreground class, uniformly among those present"
         + (f" ({said} under 1% of pixels)" if rare else ""))  # fmt: skip
    fill("background", *_background(counts, data))
    if data["background"] is False and _made_up_names(data["class_names"]):
        data["class_names"] = [f"class{i}" for i in range(len(data["class_names"]))]


def _made_up_names(names: list[str]) -> bool:
    """Whether `names` are the ones `_plan_classes` makes up for several classes."""
    return list(names) == ["background", *(f"class{i}" for i in range(1, len(names)))]


def _background(counts: np.ndarray, data: dict) -> tuple[bool, str]:
    """Whether class 0 is a background (left out of the mean scores): always for two
    classes, instance labels and class folders; for several classes when class 0 covers
    the most pixels (cells, EM, organs), not when another class does (CamVid: road over
    sky)."""
    fmt = data["mask_format"]
    if data["num_classes"] <= 2 or fmt in ("instances", "folders"):
        return True, (
            f"{'two classes' if data['num_classes'] <= 2 else 'mask_format=' + fmt}: "
            "class 0 is the background, the mean scores are over the others"
        )
    total = counts.sum()
    if fmt == "rgb" or not total:
        return True, "class 0 is taken as the background (its pixels are not counted here)"
    names = data["class_names"]
    names = [f"class{i}" for i in range(len(names))] if _made_up_names(names) else names
    largest = int(np.argmax(counts))
    share = f"{counts[0] / total:.0%} of the pixels"
    if largest == 0:
        return True, (
            f"class 0 ({names[0]}) covers the most pixels ({share}): the background, "
            "left out of the mean scores"
        )
    return False, (
        f"class 0 ({names[0]}) covers {share}, {names[largest]} "
        f"{counts[largest] / total:.0%}: no background class, the mean scores count "
        "every class (data.background=true to leave class 0 out)"
    )


def _formats(entries: list[dict]) -> str:
    """`12 GIF` or `3 PNG, 1 TIFF`: the files' real formats, counted."""
    counts: dict[str, int] = {}
    for e in entries:
        name = {"tif": "TIFF", "jpg": "JPEG"}.get(e.get("format", ""), e.get("format", "").upper())
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _index(data: dict, value: int) -> int | None:
    values = data.get("mask_values") or []
    return values.index(value) if value in values else None


def _listing(problems: list[str]) -> str:
    return problem_list(f"{len(problems)} problem(s) in the data", problems)


def has_auto(data: dict[str, Any]) -> bool:
    """Whether a data config leaves anything to the plan."""
    return any(data.get(k) == AUTO for k in PLANNED_KEYS if k not in UNPLANNED_AUTO)


def plan_data_config(
    data: dict[str, Any], cache_dir: str | None = None, gpu_memory_gb: float | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fingerprint the folder of a data config (plain data) and fill its `auto` keys: one
    entry for images and volumes (`is_volume_config`; a volume folder also plans the volume
    keys left null, `VOLUME_KEYS`, by `unet_seg.data.volume_plan`).

    A folder in nnU-Net's or the Decathlon's layout (`imagesTr/`, `labelsTr/`, no `images/`)
    is read there (`images_dir`, `masks_dir` planned with the reason), and its `dataset.json`
    names the classes and channels (`_read_layout`); a `dataset.json` that contradicts the
    files is refused, every problem listed.

    Returns:
        `(planned data config, record)`, the record holding the fingerprint (`fingerprint`)
        and each planned key's value and reason (`plan`), the keys given (`given`), and what a
        `dataset.json` said (`dataset_json`: its labels, channel names, file ending).
    """
    asked = data
    data, layout, info = _read_layout(data)
    volume = is_volume_config(data)
    keys = PLANNED_KEYS + (VOLUME_KEYS if volume else ())
    given = {k: asked[k] for k in keys if k in asked and asked[k] != AUTO
             and not (k in VOLUME_KEYS and asked[k] is None)}  # fmt: skip
    if volume:
        planned, why, fp = _plan_volume_folder(data, info, gpu_memory_gb)
    else:
        planned, why, fp = _plan_image_folder(data, info, cache_dir, gpu_memory_gb)
    if info is not None and info.channel_names and "in_channels" in why:
        # the data contract has no place for the channel names: they are in the record too
        why["in_channels"] += f"; {', '.join(info.channel_names)} ({info.path.name})"
    record = {
        "plan": {**{k: {"value": v, "why": w} for k, (v, w) in layout.items()},
                 **{k: {"value": planned[k], "why": why[k]}
                    for k in dict.fromkeys((*keys, "ignore_value")) if k in why}},
        "given": given,
        "fingerprint": fp,
    }  # fmt: skip
    if info is not None:
        record["dataset_json"] = info.summary()
    return planned, record


def _plan_image_folder(
    data: dict[str, Any],
    info: DatasetJson | None,
    cache_dir: str | None,
    gpu_memory_gb: float | None,
) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """`plan_data_config` for a folder of 2-D images: `(planned, {key: why}, fingerprint)`."""
    from unet_seg.data.fingerprint import fingerprint  # reads files: imported when planning

    ignore = data.get("ignore_value")
    folders = data["root"], data.get("images_dir", "images"), data.get("masks_dir", "masks")
    suffix_why = None
    if data.get("mask_suffix") == AUTO:
        data = dict(data)
        data["mask_suffix"], suffix_why = detect_mask_suffix(*folders)
    fp = fingerprint(*folders, data.get("mask_suffix") or "", cache_dir=cache_dir,
                     ignore_folder=ignore if isinstance(ignore, str) else None)  # fmt: skip
    from_json = {} if info is None else plan_from_dataset_json(info, data, AUTO)
    if info is not None:
        channels = max((e["channels"] for e in fp["images"] if "channels" in e), default=None)
        label_files = {m["name"]: {int(v) for v in m["values"]} for m in fp["masks"]
                       if isinstance(m.get("values"), dict) and "encoding" in m
                       and m["encoding"] != "rgb"}  # fmt: skip
        problems = contradictions(info, channels, label_files, [e["name"] for e in fp["images"]],
                                  from_json.get("ignore_value", (ignore,))[0])  # fmt: skip
        if problems:
            raise PlanError(_listing(problems))
        data = {**data, **{k: v for k, (v, _) in from_json.items()}}
    planned, why = plan(fp, data, gpu_memory_gb)
    if suffix_why is not None:
        why["mask_suffix"] = suffix_why
    why.update({k: w for k, (_, w) in from_json.items()})
    return planned, why, fp


def _read_layout(
    data: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, tuple[str, str]], DatasetJson | None]:
    """A data config's folder as nnU-Net's or the Decathlon's layout: `(data with the folders
    it reads, {"images_dir": (value, why), "masks_dir": ...} when they were found so,
    the `dataset.json` of a folder read from `imagesTr/` or None)`."""
    root = data["root"]
    images_dir, masks_dir, why = resolve_folders(root, data.get("images_dir", "images"),
                                                 data.get("masks_dir", "masks"))  # fmt: skip
    layout: dict[str, tuple[str, str]] = {}
    if why is not None:
        data = {**data, "images_dir": images_dir, "masks_dir": masks_dir}
        layout = {"images_dir": (images_dir, why), "masks_dir": (masks_dir, why)}
    info = read_dataset_json(root) if images_dir == IMAGES_TR else None
    return data, layout, info


def is_volume_config(data: dict[str, Any]) -> bool:
    """Whether a data config reads volumes: `data.volume` true, or null or `auto` and the
    images folder holds volumes (`volume_cases.holds_volumes`)."""
    from unet_seg.data.volume_cases import holds_volumes

    volume = data.get("volume")
    if volume in (None, AUTO):
        images_dir, _, _ = resolve_folders(data["root"], data.get("images_dir", "images"),
                                           data.get("masks_dir", "masks"))  # fmt: skip
        return holds_volumes(Path(data["root"]) / images_dir)
    return bool(volume)


def _plan_volume_folder(
    data: dict[str, Any], info: DatasetJson | None, gpu_memory_gb: float | None = None
) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """`plan_data_config` for a folder of volumes: the volume fingerprint and plan
    (`unet_seg.data.volume_plan`), the volume keys left null planned too: `(planned,
    {key: why}, fingerprint)`."""
    from unet_seg.data.volume_plan import fingerprint_volumes, plan_volumes

    keys = PLANNED_KEYS + VOLUME_KEYS
    data = {**data, **{k: AUTO for k in VOLUME_KEYS if data.get(k) is None}}
    data["volume"] = True
    why: dict[str, str] = {}

    def fill(key: str, value: Any, reason: str) -> None:
        if data.get(key) == AUTO:
            data[key], why[key] = value, reason

    fill("mask_suffix", "", "volume masks are named like their images (data.mask_suffix=_seg "
                            "for masks/<case>_seg.nii.gz)")  # fmt: skip
    where = data["root"], data.get("images_dir", "images"), data.get("masks_dir", "masks")
    try:
        fp = fingerprint_volumes(*where, data["mask_suffix"])
    except (FileNotFoundError, ValueError) as err:
        raise PlanError(str(err)) from None
    problems = [e["error"] for e in fp.get("cases", []) if "error" in e] + fp.get("problems", [])
    if info is not None:
        for key, (value, reason) in plan_from_dataset_json(info, data, AUTO).items():
            fill(key, value, reason)
        label_files = {e["mask"]: {int(v) for v in e["labels"]} for e in fp.get("cases", [])
                       if e.get("mask") and isinstance(e.get("labels"), dict)}  # fmt: skip
        problems += contradictions(info, fp.get("channels"), label_files,
                                   [e["name"] for e in fp.get("cases", [])],
                                   -1 if data.get("ignore_value") == AUTO  # planned so if held
                                   else data.get("ignore_value"))  # fmt: skip
    if problems:
        raise PlanError(_listing(problems))
    plan_volumes(fp, data, fill, gpu_memory_gb)
    # 2-D keys a volume plan has no use for: their neutral values
    fill("mask_colors", None, "volumes hold label values, not colours")
    fill("pad_to_crop", True, "windows larger than a volume are padded (no label there)")
    fill("crop_size", None, "3-D patches (data.patch)")
    if data.get("cache") == AUTO:  # float32 images and uint8 labels at the planned spacing
        cases = [e for e in fp["cases"] if "channels" in e]
        needed = sum(math.prod(n * s / t for n, s, t in zip(e["shape"], e["spacing"],
                     data["spacing"] or e["spacing"], strict=True)) * (4 * e["channels"] + 1)
                     for e in cases)  # fmt: skip
        on, why_cache = decide_cache(int(needed))
        fill("cache", on, why_cache.replace("decoded training+validation images", "volumes "
             "(float32)").replace("decoded once, shared by the workers", "kept in memory")
             .replace("read per sample", "each preprocessed once into a copy on disk and "
                      "memory-mapped (VolumeDataset.store)"))  # fmt: skip
    fill("rare_classes", [], "not planned for volumes: loss.class_weights=rare weighs 2-D "
                             "data only, where CamVid measured it")  # fmt: skip
    fill("upright", False, "volumes: the augmentation as configured (data.augment)")
    fill("background", True, "volumes: label 0 is the background")
    left = [k for k in keys if data.get(k) == AUTO]
    if left:
        raise PlanError(f"the volume plan left {left} unplanned: give them on the command line")
    return data, why, fp


def detect_mask_suffix(root: str | Path, images_dir: str, masks_dir: str) -> tuple[str, str]:
    """The suffix every mask name adds to its image's stem (`x.jpg` -> `x_mask.gif`: `_mask`),
    or `""` when masks are named like their images or no one suffix pairs them; and the
    reason, with what was seen.

    A mask stem that is no image stem is split after the longest image stem it starts
    with; the most common suffix so found is taken when it gives every image a mask."""
    from unet_seg.data.dataset import list_images  # reads folders: imported when planning

    folder, mask_folder = Path(root) / images_dir, Path(root) / masks_dir
    if not folder.is_dir() or not mask_folder.is_dir():
        return "", "no image or mask folder to compare names in"
    stems = {p.stem for p in list_images(folder)}
    masks = [p.stem for p in list_images(mask_folder)]
    if not masks or not stems:
        return "", "no mask files to compare with the images (class folders, or none)"
    named = set(masks)
    cases = [CHANNEL_SUFFIX.match(s) for s in stems]
    if not named & stems and all(c is not None and c["case"] in named for c in cases):
        return "", (f"nnU-Net's layout: every one of {len(stems)} images is <case>_NNNN, its mask "
                    "<case>")  # fmt: skip
    if all(s in named for s in stems):
        if len(masks) == len(stems):
            return "", f"every one of {len(masks)} masks is named like its image"
        return "", f"every one of {len(stems)} images has a mask of its own name"
    suffixes: dict[str, int] = {}
    for m in masks:
        cut = next((k for k in range(len(m) - 1, 0, -1) if m[:k] in stems), None)
        if m not in stems and cut is not None:
            suffixes[m[cut:]] = suffixes.get(m[cut:], 0) + 1
    for suffix, count in sorted(suffixes.items(), key=lambda kv: -kv[1]):
        if all(s + suffix in named for s in stems):
            if count == len(masks):
                return suffix, f"every one of {count} masks is named <image stem>{suffix}"
            return suffix, (f"{count} of {len(masks)} masks are named <image stem>{suffix}, "
                            f"one for each of the {len(stems)} images")  # fmt: skip
    seen = ", ".join(f"{n} x {k!r}" for k, n in sorted(suffixes.items(), key=lambda kv: -kv[1]))
    return "", ("no one suffix gives every image a mask" + (f" (seen {seen[:200]})" if seen
            else "") + ": masks are paired by the image's own stem")  # fmt: skip


def plan_table(record: dict[str, Any]) -> str:
    """The plan as aligned `key  value  (why)` lines, given keys marked as such."""
    lines = []
    for key, entry in record["plan"].items():
        lines.append(f"  {key:<16} {_short(entry['value']):<34} {entry['why']}")
    for key, value in record["given"].items():
        lines.append(f"  {key:<16} {_short(value):<34} (given)")
    if "epochs" in record:
        lines.append(f"  {'epochs':<16} {_short(record['epochs']['value']):<34} "
                     f"{record['epochs']['why']}")  # fmt: skip
    return "\n".join(lines)


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 34 else text[:31] + "..."


def plan_pretrained_normalisation(
    planned: dict[str, Any], record: dict[str, Any], weights: str
) -> None:
    """`arch.encoder_weights` (an ImageNet-pretrained encoder): the planned `mean` and `std`
    become ImageNet's, and 8-bit images are scaled by 1/255 (`intensity` range) as ImageNet's
    were, so the encoder sees what it was trained on; keys the user gave stay as given. The
    contract (and so the checkpoint, and `predict`) carries them.

    Channels: one per input channel, RGB's for 3; the average of RGB's for 1 (a grey image
    meets the summed RGB kernels of the adapted first conv); channel i takes RGB's `i % 3`
    for other counts (the kernels are repeated alike). `planned` and `record` change in place.
    """
    from unet_seg.models.encoders.weights import IMAGENET_MEAN, IMAGENET_STD

    given, plan = record["given"], record["plan"]
    why = f"arch.encoder_weights={weights}: the encoder was pretrained on ImageNet"
    images = record["fingerprint"]["images"]
    if "intensity" not in given and all(e.get("dtype") == "uint8" for e in images):
        planned["intensity"] = {"mode": "range"}
        plan["intensity"] = {"value": planned["intensity"],
                             "why": f"{why}, 8-bit images divided by 255"}  # fmt: skip
    channels = int(planned["in_channels"])
    for key, rgb in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        if key in given:
            continue
        if channels == 1:
            values = [round(sum(rgb) / 3, 4)]
        else:
            values = [rgb[i % 3] for i in range(channels)]
        planned[key] = values
        plan[key] = {"value": values, "why": f"{why} (ImageNet's {key} {list(rgb)}, per channel)"}
