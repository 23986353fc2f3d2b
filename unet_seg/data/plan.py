"""The plan: training settings derived from a folder's fingerprint (nnU-Net's idea).

`data=auto` sets the planned keys of the data config to `auto`; `plan` fills
each key still `auto` from the fingerprint and leaves every other value alone,
so a key given on the command line always wins, and the keys planned after it
follow it (give `data.mask_values` and the class names follow their count).

What is planned, and how:

- `in_channels`: 1 when every image is grey (also grey+alpha with an opaque alpha,
  grey stored as RGB/RGBA), 3 for colour, else the images' channel count (the largest:
  images without transparency next to ones with it get an opaque alpha; 4 for
  grey+alpha next to colour).
- `mask_format`, `mask_values`, `mask_colors`, `class_names`, `num_classes`: from
  what the masks hold: palette PNGs, RGB colours, class folders, numbered objects
  (instance labels: one foreground class), or pixel values (each a class, in
  increasing order; 0/255 is binary). `num_classes` is the number of classes.
  The value, colour or folder given as `data.ignore_value` (unlabelled pixels) is
  never a class.
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
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

AUTO = "auto"
PLANNED_KEYS = ("in_channels", "mask_format", "mask_values", "mask_colors", "class_names",
                "num_classes", "intensity", "mean", "std", "crop_size", "pad_to_crop",
                "batch_size", "eval_batch_size", "train_repeats", "foreground_crop")  # fmt: skip
"""Data keys the plan fills when they are `auto`, in this order."""

MIN_STEPS = 20
"""Training steps an epoch has at least (`train_repeats` draws each image more often)."""

RARE_SHARE = 0.01
"""A foreground class under this share of all mask pixels is rare."""

RARE_STEPS_FACTOR = 2
"""With a rare class, an epoch has this many times `MIN_STEPS`: a rare class is learned late
(experiments/plan: a class of 0.3% of the pixels was learned after about 400 steps, and
only when the schedule still had a high learning rate then)."""

MAX_CLASSES = 32
"""More distinct mask values than this are not classes: instance labels (or noise)."""


class PlanError(ValueError):
    """The data cannot be planned for; the message lists every problem with its file."""


def plan(
    fp: dict[str, Any], data: dict[str, Any], gpu_memory_gb: float | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Fill the `auto` keys of a data config from a fingerprint.

    Args:
        fp: `unet_seg.data.fingerprint.fingerprint(...)`.
        data: the data config as plain data; keys that are not `auto` are kept.
        gpu_memory_gb: memory of the GPU training will use, or None for a CPU.
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
            f"{fp['root']}: masks mix encodings {encodings} (palette PNGs, colour and grey "
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

    images, masks = fp["images"], fp["masks"]
    feeds = sorted({e["channels"] for e in images})
    kinds = sorted({e["kind"] for e in images})
    channels = max(feeds)
    if feeds == [1, 3]:
        channels = 3  # grey and colour images mixed: grey is repeated
    elif 2 in feeds and 3 in feeds:
        channels = 4  # grey+alpha with colour: RGBA, an opaque alpha added where none is
    fill("in_channels", channels, f"images are {', '.join(kinds)}")
    _plan_classes(fp, data, fill)
    _plan_intensity(images, data, fill)
    _plan_patches(images, masks, data, fill, gpu_memory_gb)
    return data, why


def _plan_classes(fp: dict, data: dict, fill) -> None:
    masks = fp["masks"]
    encodings = sorted({m["encoding"] for m in masks})
    if fp.get("class_folders"):
        fill("mask_format", "folders", f"masks are class folders {fp['class_folders']}")
    elif encodings == ["rgb"]:
        fill("mask_format", "rgb", "masks are RGB colours")
    elif encodings == ["palette"]:
        fill("mask_format", "palette", "masks are palette PNGs (values: palette indices)")
    else:
        instance = _instance_like(masks)
        fill("mask_format", "instances" if instance else "values",
             "masks number objects 1..N (instance labels)" if instance
             else "masks hold one value per class")  # fmt: skip
    fmt = data["mask_format"]
    ignore = data.get("ignore_value")  # unlabelled pixels: never a class
    ignore = ",".join(str(int(v)) for v in ignore) if isinstance(ignore, list) else str(ignore)
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


def _instance_like(masks: list[dict]) -> bool:
    """Whether the masks are instance labels: numbered, connected objects whose numbers vary
    from mask to mask (class masks repeat one small set of values)."""
    numbered = [m.get("instance_like", False) for m in masks if m.get("n_values", 0) > 2]
    if not numbered or sum(numbered) < 0.8 * len(numbered):
        return False
    sets = {tuple(sorted(m.get("values") or {})) for m in masks}
    largest = max(m.get("n_values", 0) for m in masks)
    return len(sets) > 1 or largest > MAX_CLASSES


def _plan_intensity(images: list[dict], data: dict, fill) -> None:
    lows = np.array([e["p0_5"] for e in images])  # [N, C]
    highs = np.array([e["p99_5"] for e in images])
    means, stds = np.array([e["mean"] for e in images]), np.array([e["std"] for e in images])
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
    held_out = (data.get("val_fraction") or 0) + (data.get("test_fraction") or 0)
    if data.get("num_folds"):
        held_out = 1 / data["num_folds"] + (data.get("test_fraction") or 0)
    train_images = max(1, round(len(images) * (1 - held_out)))
    counts = np.zeros(data["num_classes"])  # pixels per class, to find the rare ones
    if data["mask_format"] in ("values", "palette", "folders"):
        for m in masks:
            for v, c in (m.get("values") or {}).items():
                i = int(v) if data["mask_format"] == "folders" else _index(data, int(v))
                if i is not None and i < len(counts):
                    counts[i] += c
    total = counts.sum()
    rare = [i for i, c in enumerate(counts) if i > 0 and total and c < RARE_SHARE * total]
    steps = MIN_STEPS * (RARE_STEPS_FACTOR if rare else 1)
    repeats = max(1, math.ceil(steps * data["batch_size"] / train_images))
    fill("train_repeats", repeats,
         f"about {train_images} training images x {repeats} / batch {data['batch_size']}: "
         f"{math.ceil(train_images * repeats / data['batch_size'])} steps an epoch"
         + (f", twice the usual {MIN_STEPS}: classes {rare} are under 1% of pixels" if rare
            else ""))  # fmt: skip
    fill("foreground_crop", 0.33,
         "a third of patches centred on a foreground class, uniformly among those present"
         + (f" (classes {rare} are under 1% of pixels)" if rare else ""))  # fmt: skip


def _index(data: dict, value: int) -> int | None:
    values = data.get("mask_values") or []
    return values.index(value) if value in values else None


def _listing(problems: list[str]) -> str:
    shown = "\n  ".join(problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return f"{len(problems)} problem(s) in the data:\n  {shown}{more}"


def has_auto(data: dict[str, Any]) -> bool:
    """Whether a data config leaves anything to the plan."""
    return any(data.get(k) == AUTO for k in PLANNED_KEYS)


def plan_data_config(
    data: dict[str, Any], cache_dir: str | None = None, gpu_memory_gb: float | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fingerprint the folder of a data config (plain data) and fill its `auto` keys.

    Returns:
        `(planned data config, record)`, the record holding the fingerprint (`fingerprint`)
        and each planned key's value and reason (`plan`), and the keys given (`given`).
    """
    from unet_seg.data.fingerprint import fingerprint  # reads files: imported when planning

    ignore = data.get("ignore_value")
    fp = fingerprint(data["root"], data.get("images_dir", "images"),
                     data.get("masks_dir", "masks"), data.get("mask_suffix") or "",
                     cache_dir=cache_dir,
                     ignore_folder=ignore if isinstance(ignore, str) else None)  # fmt: skip
    planned, why = plan(fp, data, gpu_memory_gb)
    record = {
        "plan": {k: {"value": planned[k], "why": why[k]} for k in PLANNED_KEYS if k in why},
        "given": {k: data[k] for k in PLANNED_KEYS if k in data and data[k] != AUTO},
        "fingerprint": fp,
    }
    return planned, record


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
