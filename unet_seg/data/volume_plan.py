"""The fingerprint and plan of a folder of volumes (nnU-Net's rules, each with its reason).

`fingerprint_volumes` reads every case once (`describe_case`): shape, spacing,
channels, pixel type, label counts, intensity statistics of the whole volume and
of the foreground (label > 0, up to `FG_SAMPLES` voxels sampled per case, seeded,
as nnU-Net does), and whether image and mask share one geometry. `plan_volumes`
turns it into the data keys still `auto`, through pure decisions that each return
their value and a reason with the numbers seen:

- `choose_intensity`: CT when the values look like Hounsfield units (signed integers,
  or whole numbers read as floats from a scaled NIfTI, reaching `HU_MIN` or below, air,
  in most cases): clip to the pooled foreground's
  0.5..99.5 percentiles, then the clipped foreground's mean and std (nnU-Net's
  CTNormalization); otherwise a z-score per volume and channel (MRI, microscopy), over
  the non-zero region only (`nonzero`, the voxels outside kept at 0) when cropping to it
  keeps less than `NONZERO_SHARE` of the median case's voxels (nnU-Net's use_mask_for_norm).
  NaN and infinite voxels count in no statistic and are 0 after normalisation; the reason
  says how many.
- `choose_dims`: 2-D slices along the coarsest axis when the spacing is anisotropic
  (max / min >= `ANISOTROPY`) or a volume is too thin for a 3-D patch (fewer than
  `THIN` voxels along an axis); else 3-D patches.
- `choose_patch`: a 3-D patch of about equal physical extent per axis (sides
  proportional to 1 / spacing) within a voxel budget (CPU: `CPU_VOXELS`; a GPU's scaled
  by its memory), sides multiples of 16 (8 below 16), at most the median shape, batch
  2 (nnU-Net's); or a 2-D crop as `unet_seg.data.plan` plans for images.

Shapes are compared at the planned spacing (the median spacing, nnU-Net's target):
a volume's shape is resampled to it before the median is taken.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from unet_seg.data.plan_rules import (
    AUTO,
    MAX_CLASSES,
    MIN_STEPS,
    RARE_SHARE,
    RARE_STEPS_FACTOR,
    PlanError,
    rare_subject,
)
from unet_seg.data.splits import train_count
from unet_seg.data.volume_cases import VolumeCase, find_volume_cases
from unet_seg.data.volumes import geometry_mismatch, read_volume
from unet_seg.problems import problem_list

log = logging.getLogger(__name__)

VERSION = 2
"""Bumped when what a volume fingerprint records changes (2: `nonzero_share`, NaN and
infinite voxels out of every statistic)."""

VOLUME_KEYS = ("mask_suffix", "ignore_value", "mask_format", "mask_values", "mask_colors",
               "class_names", "num_classes", "intensity", "mean", "std", "spacing", "dims",
               "slice_axis", "slab", "in_channels", "patch", "crop_size", "pad_to_crop",
               "batch_size", "eval_batch_size", "train_repeats", "foreground_crop")  # fmt: skip
"""Data keys `plan_volumes` fills when they are `auto`, in this order (a later key follows
the earlier ones, given or planned)."""

FG_SAMPLES = 10_000
"""Foreground voxels sampled per case for the intensity statistics (nnU-Net's number)."""

NONZERO_SHARE = 0.75
"""Volumes are z-scored over their non-zero region when cropping to it keeps less than this
share of the voxels in the median case (nnU-Net's rule: the brain inside its zero field)."""

HU_MIN = -500.0
"""A volume whose minimum is at or below this, in signed integers, holds air in Hounsfield
units (about -1000): CT."""

ANISOTROPY = 3.0
"""Spacing max / min from which 2-D slices along the coarsest axis are planned (nnU-Net
treats a ratio of 3 as anisotropic)."""

THIN = 16
"""A volume with fewer voxels than this along an axis is too thin for a 3-D patch."""

CPU_VOXELS = 48**3
"""Voxels of a 3-D patch on a CPU (batch 2): a 3-D U-Net of base 16 should train a step of
two 48^3 patches in about a second on two cores (estimated from a measured step of a 3-level
3-D U-Net, base 16, on 2 x 32x48x48 patches: 0.6 s on one core)."""

GPU_VOXELS = 128**3
"""Voxels of a 3-D patch on a 24 GB GPU (nnU-Net's 128^3, batch 2), scaled by the memory
within `GPU_SCALE`."""

GPU_SCALE = (0.25, 2.0)
"""The range of memory / 24 GB the GPU's patch budget is scaled by."""

PATCH_BATCH = 2
"""3-D patches per step (nnU-Net's), more only when the volume limits the patch on every axis."""

SLAB = 3
"""Slices per 2.5-D input when `data.dims=2.5` is given without `data.slab`."""

_QUANTILES = np.linspace(0.0, 100.0, 401)
"""The pooled foreground's quantiles kept in the fingerprint (for CT bounds the user gives)."""


# --- the fingerprint --------------------------------------------------------------------------


def describe_case(case: VolumeCase, seed: int = 0, keep_samples: bool = False) -> dict[str, Any]:
    """One case's entry of the fingerprint (the module docstring).

    Args:
        case: its image files (one per channel) and its mask.
        seed: the foreground samples depend on `(seed, case name)` only.
        keep_samples: also return the sampled foreground voxels (`fg_samples`, `[N, C]`).
    Returns:
        `{"name", "images", "mask", "shape" (z, y, x), "spacing" (z, y, x), "channels",
        "dtype", "integer_valued", "labels" {value: voxels}, "min", "max", "mean", "std" (of up
        to ~2M evenly strided voxels; NaN and infinite voxels left out), "nan_voxels" (voxels
        NaN or infinite in some channel), "nonzero_share" (`_nonzero_share`),
        "fg_voxels", "fg_min", "fg_max", "fg_mean", "fg_std", "fg_p0_5", "fg_p99_5",
        "problems"}` (per-channel lists), or `{"name", "error"}` naming the file that cannot
        be read.
    """
    try:
        return _describe(case, seed, keep_samples)
    except (ValueError, OSError, ImportError, MemoryError) as err:
        text = str(err)
        named = any(str(p) in text for p in (*case.images, case.mask) if p is not None)
        return {"name": case.name, "error": text if named else f"{case.images[0]}: {text}"}


def _describe(case: VolumeCase, seed: int, keep_samples: bool) -> dict[str, Any]:
    arrays, metas = [], []
    for path in case.images:
        array, meta = read_volume(path)
        arrays.append(array if array.ndim == 4 else array[..., None])  # [Z, Y, X, C]
        metas.append(meta)
    entry: dict[str, Any] = {
        "name": case.name,
        "images": [p.name for p in case.images],
        "mask": case.mask.name if case.mask is not None else None,
        "shape": list(metas[0].shape),
        "spacing": [float(s) for s in metas[0].spacing],
        "spacing_assumed": [bool(a) for a in metas[0].spacing_assumed],
        "problems": [],
    }
    for path, meta in zip(case.images[1:], metas[1:], strict=True):
        entry["problems"] += _mismatch(path, meta, case.images[0], metas[0], "channel file")
    if entry["problems"]:
        return entry
    image = np.concatenate(arrays, axis=3) if len(arrays) > 1 else arrays[0]  # [Z, Y, X, C]
    channels = image.shape[3]
    values = image.reshape(-1, channels)  # [Z*Y*X, C]
    dtypes = sorted({str(a.dtype) for a in arrays})
    sample = values[:: max(1, len(values) // 1_000_000)].astype(np.float64)  # <= ~2M voxels
    bad = ~np.isfinite(values) if image.dtype.kind == "f" else None  # NaN, inf: [Z*Y*X, C]
    if bad is not None and not bad.any():
        bad = None
    if bad is not None:  # left out of every statistic (scale_volume sets them to 0)
        values = np.where(bad, np.nan, values)
        sample[~np.isfinite(sample)] = np.nan
    whole = sample[:200_000]
    entry.update(
        channels=int(channels),
        dtype="/".join(dtypes),
        integer_valued=bool(np.all(np.mod(whole[np.isfinite(whole)], 1) == 0)),
        min=_floats(np.nanmin(values, 0) if bad is not None else values.min(0)),
        max=_floats(np.nanmax(values, 0) if bad is not None else values.max(0)),
        mean=_floats(np.nanmean(sample, 0)),
        std=_floats(np.nanstd(sample, 0)),
        nan_voxels=int(bad.any(1).sum()) if bad is not None else 0,
        nonzero_share=_nonzero_share(image),
    )
    foreground = None
    if case.mask is not None:
        mask, mask_meta = read_volume(case.mask)
        problems = _mismatch(case.mask, mask_meta, case.images[0], metas[0], "mask")
        if mask.ndim == 4:
            problems.append(
                f"{case.mask}: a label volume with {mask.shape[3]} channels; save the labels "
                "as one [Z, Y, X] volume of class values"
            )
        elif mask.dtype.kind == "f" and not np.all(np.mod(mask, 1) == 0):
            problems.append(
                f"{case.mask}: labels hold fractional values (a resampled or interpolated "
                "mask?); save the labels as integers (nearest-neighbour resampling)"
            )
        entry["problems"] += problems
        entry["mask_dtype"] = str(mask.dtype)
        if not problems:
            labels, counts = _label_counts(mask)
            entry["n_labels"] = int(len(labels))
            if len(labels) <= 256:
                entry["labels"] = {str(int(v)): int(c) for v, c in zip(labels, counts, strict=True)}
            foreground = mask.reshape(-1) > 0  # [Z*Y*X]
    _foreground_stats(entry, values, foreground, seed, keep_samples)
    return entry


def _nonzero_share(image: np.ndarray) -> float:
    """The share of a volume's voxels `[Z, Y, X, C]` inside the bounding box of its non-zero
    region (some channel finite and not 0): what cropping to it keeps (nnU-Net's relative size
    after cropping); 1.0 when no voxel is non-zero."""
    region = np.zeros(image.shape[:3], bool)
    for c in range(image.shape[3]):
        channel = image[..., c]
        region |= (channel != 0) & np.isfinite(channel)
    if not region.any():
        return 1.0
    box = 1
    for axis in range(3):
        hit = np.flatnonzero(region.any(axis=tuple(a for a in range(3) if a != axis)))
        box *= int(hit[-1] - hit[0] + 1)
    return round(box / region.size, 6)


def _label_counts(mask: np.ndarray, chunk: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of a label volume and their voxel counts; small unsigned labels
    are counted in chunks (np.unique sorts a copy, bincount of all makes int64 of all)."""
    flat = mask.reshape(-1)  # [Z*Y*X]
    if mask.dtype.kind not in "ub" or not flat.size or int(flat.max()) >= 65536:
        return np.unique(flat, return_counts=True)
    counts = np.zeros(int(flat.max()) + 1, np.int64)
    for start in range(0, flat.size, chunk):
        part = np.bincount(flat[start : start + chunk])
        counts[: len(part)] += part
    labels = np.flatnonzero(counts)
    return labels, counts[labels]


def _foreground_stats(
    entry: dict, values: np.ndarray, foreground: np.ndarray | None, seed: int, keep: bool
) -> None:
    """Foreground statistics from up to `FG_SAMPLES` voxels (all when fewer), seeded."""
    index = np.flatnonzero(foreground) if foreground is not None else np.zeros(0, np.int64)
    entry["fg_voxels"] = int(len(index))
    if len(index) > FG_SAMPLES:
        rng = np.random.default_rng([seed, zlib.crc32(entry["name"].encode())])
        index = np.sort(rng.choice(index, FG_SAMPLES, replace=False))
    samples = values[index].astype(np.float64)  # [N, C]
    samples = samples[np.isfinite(samples).all(1)]
    if len(samples):
        low, high = np.percentile(samples, [0.5, 99.5], axis=0)
        entry.update(fg_min=_floats(samples.min(0)), fg_max=_floats(samples.max(0)),
                     fg_mean=_floats(samples.mean(0)), fg_std=_floats(samples.std(0)),
                     fg_p0_5=_floats(low), fg_p99_5=_floats(high))  # fmt: skip
    else:
        entry.update({k: None for k in ("fg_min", "fg_max", "fg_mean", "fg_std", "fg_p0_5",
                                         "fg_p99_5")})  # fmt: skip
    if keep:
        entry["fg_samples"] = samples


def _mismatch(path: Path, meta: Any, ref_path: Path, ref: Any, what: str) -> list[str]:
    """The problem naming `path` when it does not lie on its case's first channel's grid:
    the one rule of `volumes.geometry_mismatch`, which every reader of a case applies."""
    problem = geometry_mismatch(path, meta, ref_path, ref, what)
    return [problem] if problem else []


def fingerprint_volumes(
    root: str | Path,
    images_dir: str = "images",
    masks_dir: str = "masks",
    mask_suffix: str = "",
    seed: int = 0,
) -> dict[str, Any]:
    """The fingerprint of the volume cases under `root` (the module docstring).

    Args:
        root, images_dir, masks_dir, mask_suffix: the folder, as `find_volume_cases` reads it.
        seed: for the foreground samples.
    Returns:
        `{"version", "root", "volumes": True, "mask_suffix", "cases": [...], "problems": [...],
        "channels", "spacing_median"/"_min"/"_max", "shape_median", "anisotropy",
        "foreground": {per-channel pooled statistics}, "labels": {value: voxels}}`; spacing and
        shape as `(z, y, x)`.
    Raises:
        FileNotFoundError / ValueError from `find_volume_cases`, listing every problem of the
        folder's layout at once.
    """
    cases = find_volume_cases(root, images_dir, masks_dir, mask_suffix)
    log.info("fingerprint of %d volume cases in %s", len(cases), root)
    entries, pooled = [], []
    for case in cases:
        entry = describe_case(case, seed, keep_samples=True)
        samples = entry.pop("fg_samples", None)
        if samples is not None and len(samples):
            pooled.append(samples)
        entries.append(entry)
    problems = [e["error"] for e in entries if "error" in e]
    problems += [p for e in entries for p in e.get("problems", [])]
    valid = [e for e in entries if "error" not in e and "channels" in e]
    counts = sorted({e["channels"] for e in valid})
    if len(counts) > 1:
        listing = "; ".join(f"{n}: {[e['name'] for e in valid if e['channels'] == n][:5]}"
                            for n in counts)  # fmt: skip
        problems.append(f"{root}: cases differ in their channel count ({listing}): every case "
                        "needs the same channels in the same order")  # fmt: skip
    spacings = np.array([e["spacing"] for e in valid]) if valid else np.zeros((0, 3))
    shapes = np.array([e["shape"] for e in valid]) if valid else np.zeros((0, 3))
    labels: dict[str, int] = {}
    for e in valid:
        for v, c in (e.get("labels") or {}).items():
            labels[v] = labels.get(v, 0) + c
    median = _floats(np.median(spacings, 0)) if valid else None
    return {
        "version": VERSION,
        "root": str(root),
        "volumes": True,
        "images_dir": images_dir,
        "masks_dir": masks_dir,
        "mask_suffix": mask_suffix,
        "cases": entries,
        "problems": problems,
        "channels": max(counts) if counts else None,
        "spacing_median": median,
        "spacing_min": _floats(spacings.min(0)) if valid else None,
        "spacing_max": _floats(spacings.max(0)) if valid else None,
        "shape_median": _floats(np.median(shapes, 0)) if valid else None,
        "anisotropy": float(max(median) / min(median)) if median else None,
        "foreground": _pooled(pooled),
        "labels": dict(sorted(labels.items(), key=lambda kv: int(kv[0]))),
    }


def _pooled(pooled: list[np.ndarray]) -> dict[str, Any] | None:
    """Per-channel statistics of the foreground samples of all cases: 0.5/99.5 percentiles,
    mean and std, those of the samples clipped to the percentiles, and `_QUANTILES`."""
    widths = {s.shape[1] for s in pooled}
    if not pooled or len(widths) > 1:
        return None
    samples = np.concatenate(pooled)  # [N, C]
    low, high = np.percentile(samples, [0.5, 99.5], axis=0)
    clipped = np.clip(samples, low, high)
    return {
        "samples": int(len(samples)),
        "cases": len(pooled),
        "p0_5": _floats(low),
        "p99_5": _floats(high),
        "mean": _floats(samples.mean(0)),
        "std": _floats(samples.std(0)),
        "clipped_mean": _floats(clipped.mean(0)),
        "clipped_std": _floats(clipped.std(0)),
        "quantiles": [_floats(q) for q in np.percentile(samples, _QUANTILES, axis=0).T],
    }


# --- the decisions ----------------------------------------------------------------------------


def _hu_evidence(fp: dict[str, Any]) -> tuple[bool, str]:
    """Whether the cases look like CT in Hounsfield units, and what was seen."""
    valid = [e for e in fp["cases"] if "error" not in e and "min" in e]
    hu = [e for e in valid if (e["dtype"].startswith("int") or
                               (e["integer_valued"] and not e["dtype"].startswith("uint")))
          and max(e["min"]) <= HU_MIN]  # fmt: skip
    low = min(min(e["min"]) for e in valid) if valid else float("nan")
    high = max(max(e["max"]) for e in valid) if valid else float("nan")
    dtypes = ", ".join(sorted({e["dtype"] for e in valid}))
    seen = (f"{len(hu)} of {len(valid)} cases hold signed integers with a minimum at or below "
            f"{HU_MIN:g} (values {low:g}..{high:g}, {dtypes})")  # fmt: skip
    return bool(valid) and len(hu) > len(valid) / 2, seen


def choose_intensity(
    fp: dict[str, Any],
) -> tuple[dict[str, Any], list[float], list[float], str]:
    """How volumes are normalised (nnU-Net's rules, the module docstring).

    Returns:
        `(intensity, mean, std, reason)`: `{"mode": "ct", "low", "high"}` with the clipped
        foreground's mean and std (one channel: the CT mode clips every channel alike), or
        `{"mode": "zscore"}` (`"nonzero": True` over the non-zero region, `_nonzero_evidence`)
        with mean 0 and std 1 per channel.
    """
    channels = fp.get("channels") or 1
    ct, seen = _hu_evidence(fp)
    fg = fp.get("foreground")
    nans = _nan_note(fp)
    if ct and fg is not None and channels == 1:
        low, high = fg["p0_5"], fg["p99_5"]
        mean = [round(v, 4) for v in fg["clipped_mean"]]
        std = [round(max(v, 1e-3), 4) for v in fg["clipped_std"]]
        intensity = {"mode": "ct", "low": round(low[0], 4), "high": round(high[0], 4)}
        return intensity, mean, std, (
            f"CT: {seen}: clipped to the foreground's 0.5..99.5 percentiles {_list(low)}.."
            f"{_list(high)} ({fg['samples']} voxels sampled from {fg['cases']} cases), then "
            f"their mean {_list(mean)} and std {_list(std)} (nnU-Net's CT normalisation); not "
            "CT? data.intensity={mode:zscore}" + nans
        )  # fmt: skip
    why = (seen if not ct else f"{seen}, but no foreground voxels to take CT bounds from"
           if fg is None else f"{seen}, but {channels} channels: the CT mode clips every "
           "channel alike")  # fmt: skip
    nonzero, region = _nonzero_evidence(fp)
    intensity = {"mode": "zscore", "nonzero": True} if nonzero else {"mode": "zscore"}
    return intensity, [0.0] * channels, [1.0] * channels, (
        f"not CT ({why}): each volume and channel z-scored, (x - mean) / std of the volume"
        + (" over its non-zero region, the voxels outside it kept at 0" if nonzero else "")
        + f" (nnU-Net's rule for MRI and microscopy); {region}; CT in Hounsfield units? "
        "data.intensity={mode:ct,low:L,high:H}" + nans
    )  # fmt: skip


def _nonzero_evidence(fp: dict[str, Any]) -> tuple[bool, str]:
    """Whether volumes are z-scored over their non-zero region (nnU-Net: when cropping to it
    keeps less than `NONZERO_SHARE` of the voxels in the median case), and what was seen."""
    shares = [e["nonzero_share"] for e in fp["cases"] if "nonzero_share" in e]
    if not shares:
        return False, "no non-zero region measured"
    median = float(np.median(shares))
    smaller = sum(s < NONZERO_SHARE for s in shares)
    seen = (f"cropping to the non-zero region (some channel not 0) keeps a median "
            f"{median:.0%} of the voxels ({smaller} of {len(shares)} cases under "
            f"{NONZERO_SHARE:.0%})")  # fmt: skip
    if median < NONZERO_SHARE:
        return True, (f"{seen}: the empty field around the object would weigh in the mean, so "
                      "the statistics are the non-zero region's (nnU-Net's use_mask_for_norm); "
                      "the whole volume instead: data.intensity={mode:zscore}")  # fmt: skip
    return False, (f"{seen}: the statistics are the whole volume's; over the non-zero region "
                   "only: data.intensity={mode:zscore,nonzero:true}")  # fmt: skip


def _nan_note(fp: dict[str, Any]) -> str:
    """The reason's note on NaN and infinite voxels, naming the cases; "" when none."""
    cases = [e for e in fp["cases"] if e.get("nan_voxels")]
    if not cases:
        return ""
    total = sum(e["nan_voxels"] for e in cases)
    names = [e["name"] for e in cases]
    return (f"; {total} NaN or infinite voxel(s) in {len(cases)} case(s) (e.g. {names[:3]}): "
            "left out of the statistics and set to 0 (the normalised mean) in the net's "
            "input")  # fmt: skip


def choose_dims(spacing_median: list[float], shape_median: list[float]) -> tuple[float, int, str]:
    """2-D slices or 3-D patches, from the spacing and the volume size (the module docstring).

    Args:
        spacing_median: `(z, y, x)` in mm; shape_median: `(z, y, x)` voxels at that spacing.
    Returns:
        `(dims, slice_axis, reason)`: `slice_axis` is the coarsest axis (the first of equals),
        or the thinnest for a volume too thin for 3-D; it is where 2-D would slice.
    """
    spacing, shape = np.asarray(spacing_median, float), np.asarray(shape_median, float)
    ratio = float(spacing.max() / spacing.min())
    coarse, thin = int(np.argmax(spacing)), int(np.argmin(shape))
    where = f"spacing (z, y, x) {_mm(spacing)} mm, median shape {_vox(shape)}"
    if ratio >= ANISOTROPY:
        return 2, coarse, (f"{where}: anisotropy {ratio:.1f} >= {ANISOTROPY:g}, so 2-D slices "
                           f"along the coarsest axis {coarse} ({'zyx'[coarse]}); 3-D or slabs "
                           "instead: data.dims=3 or data.dims=2.5")  # fmt: skip
    if shape.min() < THIN:
        return 2, thin, (f"{where}: only {shape.min():g} voxels along axis {thin} "
                         f"({'zyx'[thin]}), too thin for a 3-D patch (< {THIN}): 2-D slices "
                         "along it; data.dims=3 pads it")  # fmt: skip
    return 3, coarse, (f"{where}: anisotropy {ratio:.1f} < {ANISOTROPY:g} and at least {THIN} "
                       "voxels along every axis: 3-D patches; slices instead: data.dims=2 "
                       "(or 2.5)")  # fmt: skip


def choose_patch(
    dims: float,
    spacing: list[float],
    shape_median: list[float],
    gpu_memory_gb: float | None,
    in_channels: int,
    slice_axis: int = 0,
    num_cases: int | None = None,
) -> tuple[list[int] | int, int, str]:
    """The training patch and batch (the module docstring).

    Args:
        dims: 2, 2.5 or 3; spacing: `(z, y, x)` mm; shape_median: `(z, y, x)` voxels at it.
        gpu_memory_gb: the GPU's memory, or None for a CPU.
        in_channels: the net's input channels (a 3-D budget shrinks beyond 4).
        slice_axis: the axis 2-D and 2.5-D slice along.
        num_cases: training cases, for nnU-Net's cap on a larger batch (5% of the voxels).
    Returns:
        `(patch [d, h, w], batch, reason)` for 3-D, `(crop_size, batch, reason)` for 2-D/2.5-D.
    """
    shape = [float(n) for n in shape_median]
    if dims != 3:
        plane = [n for a, n in enumerate(shape) if a != slice_axis]
        side = int(min(plane))
        cap = 256 if gpu_memory_gb is None else 512
        crop = int(min(cap, max(16, side // 16 * 16)))
        budget = 4 * 256**2 if gpu_memory_gb is None else 16 * 256**2 * max(1.0, gpu_memory_gb / 24)
        batch = int(min(32, max(2, budget // crop**2)))
        return crop, batch, (f"slices of median {_vox(plane)} voxels: crop {crop}, the shorter "
                             f"side in multiples of 16, at most {cap}; batch {batch}, about "
                             f"{budget / 2**16:.0f} x 256x256 pixels a step")  # fmt: skip
    device = "a CPU" if gpu_memory_gb is None else f"a {gpu_memory_gb:g} GB GPU"
    budget = float(CPU_VOXELS)
    if gpu_memory_gb is not None:
        budget = GPU_VOXELS * min(GPU_SCALE[1], max(GPU_SCALE[0], gpu_memory_gb / 24))
    budget /= max(1.0, in_channels / 4)
    patch = _patch_3d(np.asarray(spacing, float), np.asarray(shape), budget)
    voxels = int(np.prod(patch))
    whole = all(p >= _cap(n) for p, n in zip(patch, shape, strict=True))
    batch = PATCH_BATCH
    if whole:  # the volume limits the patch on every axis: more of them, nnU-Net's 5% cap
        batch = int(max(PATCH_BATCH, PATCH_BATCH * budget // voxels))
        if num_cases:
            batch = int(max(PATCH_BATCH, min(batch, 0.05 * num_cases * np.prod(shape) / voxels)))
    extent = [p * s for p, s in zip(patch, spacing, strict=True)]
    padded = [a for a, (p, n) in enumerate(zip(patch, shape, strict=True)) if p > n]
    return patch, batch, (
        f"spacing (z, y, x) {_mm(spacing)} mm, median shape {_vox(shape)}: patch {_vox(patch)} "
        f"({_mm(extent)} mm: about equal extent per axis where the median shape allows, sides "
        f"multiples of 16, 8 below 16), at most {budget:.0f} voxels on {device}"
        + (f" (input channels {in_channels})" if in_channels > 4 else "")
        + f"; batch {batch}"
        + (" (the median volume limits the patch on every axis: more patches a step, at most "
           "5% of the training voxels)" if whole else "")
        + (f"; axes {padded} padded (volumes thinner than 8)" if padded else "")
    )  # fmt: skip


def _cap(n: float) -> int:
    """The largest patch side for `n` voxels: a multiple of 16 (of 8 below 16), at least 8."""
    return int(n // 16 * 16) if n >= 16 else max(8, int(n // 8 * 8))


def _round(side: float) -> int:
    """The nearest multiple of 16 (of 8 below 12), at least 8."""
    step = 16 if side >= 12 else 8
    return max(8, int(step * math.floor(side / step + 0.5)))


def _patch_3d(spacing: np.ndarray, shape: np.ndarray, budget: float) -> list[int]:
    """The largest patch of sides `round(k / spacing)` (equal physical extent k), each at most
    the shape's cap, of at most `budget` voxels: k grows in 1% steps."""
    caps = [_cap(n) for n in shape]
    k, best = 8 * float(spacing.min()), [8, 8, 8]
    while True:
        patch = [min(_round(k / s), c) for s, c in zip(spacing, caps, strict=True)]
        if np.prod(patch) > budget:
            break
        best = patch
        if patch == caps:
            break
        k *= 1.01
    return [int(p) for p in best]


# --- the plan ---------------------------------------------------------------------------------


def plan_volumes(
    fp: dict[str, Any],
    data: dict[str, Any],
    fill: Callable[[str, Any, str], None],
    gpu_memory_gb: float | None = None,
) -> None:
    """Fill the `auto` keys of a volume data config from `fingerprint_volumes(...)`.

    Args:
        fp: the fingerprint.
        data: the data config that `fill` writes into; keys that are not `auto` are kept, and
            the keys planned after them follow them (`dims` given: the patch is for it).
        fill: `fill(key, value, reason)` sets `data[key]` when it is `auto` (as in
            `unet_seg.data.plan.plan`).
        gpu_memory_gb: the GPU's memory, or None for a CPU.
    Raises:
        PlanError: listing every unreadable file and every mismatch at once.
    """
    problems = fp["problems"] + _given_problems(data)
    if problems:
        raise PlanError(problem_list(f"{len(problems)} problem(s) in the data", problems))
    cases = [e for e in fp["cases"] if "error" not in e]
    fill("mask_suffix", fp.get("mask_suffix", ""), "the suffix the cases were paired with")
    _plan_labels(fp, data, fill)
    intensity, mean, std, why = choose_intensity(fp)
    fill("intensity", intensity, why)
    if data["intensity"] != intensity:  # given: the mean and std that go with it
        mean, std, why = _normalisation(fp, data["intensity"], mean, std)
    fill("mean", mean, why)
    fill("std", std, why)
    low, high = _mm(fp["spacing_min"]), _mm(fp["spacing_max"])
    fill("spacing", [round(s, 6) for s in fp["spacing_median"]],
         f"the median spacing (z, y, x) of {len(cases)} cases, in mm; " + (
             "every case has it" if low == high else
             f"volumes of another spacing ({low}..{high}) are resampled to it")
         + _assumed(cases))  # fmt: skip
    spacing = [float(s) for s in data["spacing"]]
    shape = _shape_at(cases, spacing)
    dims, axis, why = choose_dims(spacing, shape)
    fill("dims", dims, why)
    fill("slice_axis", axis, why)
    dims = _dims(data.get("dims"))
    fill("slab", SLAB if dims == 2.5 else 1,
         f"{SLAB} neighbouring slices as channels (2.5-D)" if dims == 2.5 else
         f"one slice (dims {dims:g})" if dims == 2 else "3-D patches take no slab")  # fmt: skip
    slab, channels = int(data.get("slab") or 1), int(fp["channels"])
    fill("in_channels", channels * slab,
         f"{channels} channel(s) per case" + (f" x {slab} slices" if slab > 1 else ""))  # fmt: skip
    axis = int(data.get("slice_axis") or 0)
    names = [e["name"] for e in cases]
    train_cases = train_count(names, data)
    patch, batch, why = choose_patch(dims, spacing, shape, gpu_memory_gb,
                                     int(data["in_channels"]), axis, train_cases)  # fmt: skip
    if dims == 3:
        fill("patch", patch, why)
        fill("crop_size", None, "3-D training takes data.patch")
        size = [int(v) for v in data["patch"]]
        smaller = [e["name"] for e in cases if any(
            n < p for n, p in zip(_resampled(e, spacing), size, strict=True))]  # fmt: skip
    else:
        fill("crop_size", patch, why)
        fill("patch", None, f"{dims:g}-D training takes data.crop_size")
        crop = int(data["crop_size"])
        smaller = [e["name"] for e in cases if min(
            n for a, n in enumerate(_resampled(e, spacing)) if a != axis) < crop]  # fmt: skip
    fill("pad_to_crop", bool(smaller), f"{len(smaller)} case(s) smaller than the patch, e.g. "
         f"{smaller[:3]}: padded" if smaller else "no case smaller than the patch")  # fmt: skip
    fill("batch_size", batch, why)
    fill("eval_batch_size", 1, "one volume at a time (sliding window within it)")
    _plan_repeats(fp, data, fill, train_cases)


def _given_problems(data: dict[str, Any]) -> list[str]:
    """What is wrong with the volume keys given (not `auto`), each with its fix."""
    problems = []

    def given(key: str) -> bool:
        return key in data and data[key] != AUTO and data[key] is not None

    def numbers(value: Any, kind: type) -> list | None:
        try:
            values = [kind(v) for v in value]
        except (TypeError, ValueError):
            return None
        return values if len(values) == 3 and all(v > 0 for v in values) else None

    if given("dims") and data["dims"] not in (2, 2.5, 3):
        problems.append(f"data.dims={data['dims']!r}: choose 2 (slices), 2.5 (slabs of slices "
                        "as channels) or 3 (3-D patches), or leave it to the plan")  # fmt: skip
    if given("slab") and (not isinstance(data["slab"], int) or data["slab"] < 1
                          or data["slab"] % 2 == 0):  # fmt: skip
        problems.append(f"data.slab={data['slab']!r}: a slab is an odd number of slices (3, 5)")
    if given("slice_axis") and data["slice_axis"] not in (0, 1, 2):
        problems.append(f"data.slice_axis={data['slice_axis']!r}: the axis 2-D slices along is "
                        "0 (z), 1 (y) or 2 (x)")  # fmt: skip
    if given("spacing") and numbers(data["spacing"], float) is None:
        problems.append(f"data.spacing={data['spacing']!r}: the spacing to train at is "
                        "[z, y, x] in mm, e.g. data.spacing=[2.5,0.8,0.8]")  # fmt: skip
    patch = data.get("patch")
    if given("patch") and (numbers(patch, int) is None or any(int(v) != v for v in patch)):
        problems.append(f"data.patch={patch!r}: a 3-D patch is [d, h, w] in voxels (z, y, x), "
                        "e.g. data.patch=[32,64,64]; or leave it to the plan (auto)")  # fmt: skip
    return problems


def plan_volume_data(
    fp: dict[str, Any], data: dict[str, Any], gpu_memory_gb: float | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """`plan_volumes` on a copy of `data`: `(planned data config, {key: why})`."""
    data, why = dict(data), {}

    def fill(key: str, value: Any, reason: str) -> None:
        if data.get(key) == AUTO:
            data[key], why[key] = value, reason

    plan_volumes(fp, data, fill, gpu_memory_gb)
    return data, why


UNLABELLED = -1
"""The label value taken for unlabelled voxels when label volumes hold it and
`data.ignore_value` is not given (a common convention of signed label volumes)."""


def _plan_labels(fp: dict, data: dict, fill: Callable[[str, Any, str], None]) -> None:
    """The classes of label volumes: `ignore_value` (-1 when the volumes hold it: unlabelled
    voxels, no loss term or score), then every other value a class in increasing order, 0
    first; other negative values are refused with the fix."""
    found = sorted(int(v) for v in fp["labels"])
    holding = [e for e in fp["cases"] if UNLABELLED in {int(v) for v in e.get("labels") or {}}]
    voxels = sum(int(e["labels"][str(UNLABELLED)]) for e in holding)
    fill("ignore_value", UNLABELLED if UNLABELLED in found else None, (
        f"{voxels} voxel(s) of {len(holding)} label volume(s) (e.g. "
        f"{[e['mask'] for e in holding][:3]}) hold {UNLABELLED}: unlabelled, counted in no loss "
        "term or score; if it is a class, save the labels as 0 = background and 1..N = "
        "classes" if UNLABELLED in found else f"no label volume holds {UNLABELLED} (unlabelled "
        "voxels): every voxel is labelled"))  # fmt: skip
    ignore = data.get("ignore_value")
    ignore = None if ignore in (None, AUTO) or isinstance(ignore, list | str) else int(ignore)
    values = [v for v in found if v != ignore]
    problems = []
    negative = [v for v in values if v < 0]
    if negative and data.get("mask_values") == AUTO:
        files = [e["mask"] for e in fp["cases"] if any(int(v) < 0 and int(v) != ignore
                                                       for v in e.get("labels") or {})]  # fmt: skip
        fix = (f"only one value marks unlabelled voxels (data.ignore_value={ignore})"
               if ignore is not None else
               f"if they mark unlabelled voxels set data.ignore_value={negative[0]}")  # fmt: skip
        problems.append(f"{fp['root']}: label volumes {files[:5]} hold negative values "
                        f"{negative[:5]}: {fix}; otherwise save 0 = background and "
                        "1..N = classes")  # fmt: skip
    many = [e["mask"] for e in fp["cases"] if e.get("n_labels", 0) > 256]
    if (len(values) > MAX_CLASSES or many) and data.get("mask_values") == AUTO:
        problems.append(f"{fp['root']}: the label volumes hold {len(values)} distinct values "
                        f"{'(e.g. ' + str(many[:3]) + ')' if many else ''}, too many for "
                        "classes: list the class values in data.mask_values")  # fmt: skip
    if problems:
        raise PlanError(problem_list(f"{len(problems)} problem(s) in the data", problems))
    fill("mask_format", "values", "label volumes hold one value per class")
    if len(values) == 1:
        values = [0, values[0]] if values[0] != 0 else [0, 1]
    fill("mask_values", values, f"the {len(values)} values found in the label volumes, in order")
    fill("mask_colors", None, "not an RGB encoding")
    n = len(data["mask_values"])
    names = ["background", "foreground"] if n == 2 else ["background"] + [
        f"class_{i}" for i in range(1, n)]  # fmt: skip
    fill("class_names", names, f"{n} classes, background first")
    fill("num_classes", len(data["class_names"]), "one per class name")


def _normalisation(
    fp: dict, intensity: dict, mean: list[float], std: list[float]
) -> tuple[list[float], list[float], str]:
    """The mean and std that go with `intensity`, planned or given."""
    mode = intensity.get("mode") if isinstance(intensity, dict) else None
    channels = fp.get("channels") or 1
    if mode == "zscore":
        return [0.0] * channels, [1.0] * channels, "zscore: each volume is already z-scored"
    if mode == "ct":
        fg = fp.get("foreground")
        low, high = intensity.get("low"), intensity.get("high")
        if fg is None or low is None or high is None:
            return mean, std, "no foreground voxels to take the mean and std from"
        lows = np.broadcast_to(np.asarray(low, float), (channels,))
        highs = np.broadcast_to(np.asarray(high, float), (channels,))
        quantiles = np.asarray(fg["quantiles"])  # [C, Q]: the foreground's distribution
        clipped = np.clip(quantiles, lows[:, None], highs[:, None])
        mean = [round(float(v), 4) for v in clipped.mean(1)]
        std = [round(max(float(v), 1e-3), 4) for v in clipped.std(1)]
        return mean, std, (f"the foreground clipped to {_list(lows)}..{_list(highs)}: mean "
                           f"{_list(mean)}, std {_list(std)} ({fg['samples']} voxels "
                           "sampled)")  # fmt: skip
    return (
        [0.5] * channels,
        [0.25] * channels,
        (f"intensity mode {mode!r} scales to 0..1: the 2-D defaults 0.5 and 0.25"),
    )


def _plan_repeats(
    fp: dict, data: dict, fill: Callable[[str, Any, str], None], train_cases: int
) -> None:
    values = data.get("mask_values") or []
    counts = np.zeros(len(values))
    for v, c in fp["labels"].items():
        if int(v) in values:
            counts[values.index(int(v))] += c
    total = counts.sum()
    rare = [i for i, c in enumerate(counts) if i > 0 and total and c < RARE_SHARE * total]
    said = rare_subject(rare, data.get("class_names"))
    steps = MIN_STEPS * (RARE_STEPS_FACTOR if rare else 1)
    batch = int(data["batch_size"])
    repeats = max(1, math.ceil(steps * batch / train_cases))
    usual = max(1, math.ceil(MIN_STEPS * batch / train_cases))
    fill("train_repeats", repeats,
         f"about {train_cases} training volumes x {repeats} patches / batch {batch}: "
         f"{math.ceil(train_cases * repeats / batch)} steps an epoch"
         + (f", at least twice the usual {MIN_STEPS}: {said} under 1% of voxels"
            if repeats > usual else ""))  # fmt: skip
    fill("foreground_crop", 0.33,
         "a third of patches centred on a foreground class, uniformly among those present"
         + (f" ({said} under 1% of voxels)" if rare else ""))  # fmt: skip


def _assumed(cases: list[dict]) -> str:
    """A note naming the cases whose files give no spacing along some axis (1 mm assumed)."""
    assumed = [e["name"] for e in cases if any(e.get("spacing_assumed") or ())]
    if not assumed:
        return ""
    return (f"; {len(assumed)} case(s) give no spacing along some axis, 1 mm assumed (e.g. "
            f"{assumed[:3]}): if wrong, set data.spacing=[z,y,x] in mm")  # fmt: skip


def _dims(value: Any) -> float:
    """`data.dims` as 2, 2.5 or 3 (None: the contract's default, 2)."""
    if value is None:
        return 2
    dims = float(value)
    return 2.5 if dims == 2.5 else int(dims)


def _resampled(entry: dict, spacing: list[float]) -> list[float]:
    """A case's shape `(z, y, x)` at `spacing`."""
    return [n * s / t for n, s, t in zip(entry["shape"], entry["spacing"], spacing, strict=True)]


def _shape_at(cases: list[dict], spacing: list[float]) -> list[float]:
    """The median shape `(z, y, x)` of the cases resampled to `spacing`."""
    return [float(v) for v in np.median([_resampled(e, spacing) for e in cases], axis=0)]


# --- the summary ------------------------------------------------------------------------------


def volume_summary(fp: dict[str, Any], planned: dict[str, Any] | None = None) -> str:
    """The fingerprint as readable lines for `check_data`: cases, channels, shapes, spacing,
    anisotropy, the intensity evidence, label counts, and with `planned` the choice of dims
    with its reason.

    Args:
        fp: `fingerprint_volumes(...)`.
        planned: plan.json's record (`{"plan": {key: {"value", "why"}}, ...}`), its `plan`,
            or a data config as plain data (the dims' reason is then the plan's rule, and a
            dims that differs from it is marked as not the plan's); None: no choice shown.
    """
    valid = [e for e in fp["cases"] if "error" not in e and "channels" in e]
    lines = [f"{len(fp['cases'])} volume cases in {fp['root']}"]
    if valid:
        dtypes = ", ".join(sorted({e["dtype"] for e in valid}))
        lines.append(f"  channels    {fp['channels']} ({dtypes})")
        shapes = np.array([e["shape"] for e in valid])
        lines.append(f"  shape       median {_vox(fp['shape_median'])} (z, y, x), "
                     f"{_vox(shapes.min(0))} .. {_vox(shapes.max(0))}")  # fmt: skip
        lines.append(f"  spacing     median {_mm(fp['spacing_median'])} mm, min "
                     f"{_mm(fp['spacing_min'])}, max {_mm(fp['spacing_max'])}")  # fmt: skip
        lines.append(f"  anisotropy  {fp['anisotropy']:.2f} (max / min of the median spacing)"
                     + _assumed(valid))  # fmt: skip
        ct, seen = _hu_evidence(fp)
        lines.append(f"  intensity   {'CT-like' if ct else 'not CT'}: {seen}")
        fg = fp.get("foreground")
        if fg is not None:
            lines.append(f"  foreground  0.5..99.5 percentiles {_list(fg['p0_5'])}.."
                         f"{_list(fg['p99_5'])}, mean {_list(fg['mean'])}, std "
                         f"{_list(fg['std'])} ({fg['samples']} voxels sampled)")  # fmt: skip
        total = max(1, sum(fp["labels"].values()))
        lines.append("  labels      " + ", ".join(
            f"{v}: {c / total:.2%}" for v, c in fp["labels"].items()))  # fmt: skip
    lines += _choice_lines(fp, valid, planned)
    for problem in fp["problems"][:20]:
        lines.append(f"  problem     {problem}")
    return "\n".join(lines)


def _choice_lines(fp: dict, valid: list[dict], planned: dict[str, Any] | None) -> list[str]:
    """`dims`, `slice_axis`, `patch`, `crop_size` lines of `volume_summary`."""
    planned = planned or {}
    planned = planned.get("plan", planned)
    keys = ("dims", "slice_axis", "patch", "crop_size")
    if any(isinstance(planned.get(k), dict) for k in keys):  # {key: {"value", "why"}}
        shown = [k for k in keys if isinstance(planned.get(k), dict)
                 and planned[k].get("value") is not None]  # fmt: skip
        return [f"  {k:<11} {planned[k]['value']}: {planned[k]['why']}" for k in shown]
    if planned.get("dims") in (None, AUTO) or not valid:
        return []
    spacing = planned.get("spacing")
    spacing = fp["spacing_median"] if spacing in (None, AUTO) else [float(v) for v in spacing]
    rule, axis, why = choose_dims(spacing, _shape_at(valid, spacing))
    dims = _dims(planned["dims"])
    lines = [f"  dims        {dims:g}: {why}" if dims == rule else
             f"  dims        {dims:g} (given: the plan's rule takes {rule:g}: {why})"]  # fmt: skip
    for key in keys[1:]:
        if planned.get(key) not in (None, AUTO):
            lines.append(f"  {key:<11} {planned[key]}")
    return lines


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.atleast_1d(values)]


def _mm(values: Any) -> str:
    return " x ".join(f"{float(v):.3g}" for v in values)


def _vox(values: Any) -> str:
    return "x".join(f"{float(v):g}" for v in values)


def _list(values: Any) -> str:
    values = [float(v) for v in np.atleast_1d(values)]
    return (
        f"{values[0]:.4g}"
        if len(values) == 1
        else "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
    )
