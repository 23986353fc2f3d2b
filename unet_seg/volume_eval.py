"""Prediction and evaluation for checkpoints trained on volumes (`data.volume: true`).

`predict` and `evaluate` hand a volume checkpoint to these functions:

- `predict_volumes`: every input volume (a file, a folder, or nnU-Net's `<case>_0000..`
  channel files when the checkpoint takes several channels: its channel count decides)
  gets a label volume written with the input's own geometry (affine, sform and qform,
  spacing) in the input's format, so it opens aligned over the image in 3D Slicer or
  ITK-SNAP; label values are the dataset's mask values.
- A volume too large to predict whole (`stream=auto`: more than a quarter of the memory
  available; `stream=true`) is read, normalised, predicted and written a band of z slices
  at a time (`CaseFiles`, `Bands`, `SegModule.volume_label_bands`, `write_volume_bands`).
- `evaluate_volumes`: per volume and class, Dice, IoU, HD95 and the mean surface distance
  in millimetres (`unet_seg.surface`); a per-volume CSV, the mean over volumes per class
  (a structure missed scores the worst distance, the volume's diagonal, never NaN), and
  the worst volumes drawn as three orthogonal slices with overlays.

The net sees each volume as in validation (`SegModule.volume_probabilities`): a Gaussian
sliding window of the training patch for 3-D nets, every slice or slab for 2-D ones, each
tiled by the training crop. The options of `predict` and `evaluate` that do not apply to
volumes are refused by name before anything is read (`inference.check_options`); `level`
prunes a UNet++ (`nested3d`) as for images, and `postprocess.*` acts in 3-D (`PostProcess`
of any rank: objects 26-connected, sizes in voxels).
A volume whose spacing differs from the training spacing is resampled to it (images
trilinear, labels nearest) and its probabilities back to its own grid, where it is
written and scored.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np
import tifffile
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from unet_seg.data.masks import IGNORE_INDEX, PAD_LABEL
from unet_seg.data.volume_cases import (
    VolumeCase,
    find_volume_cases,
    list_volumes,
    volume_stem,
)
from unet_seg.data.volume_dataset import (
    Bands,
    CaseFiles,
    LoadedCase,
    at_spacing,
    load_case,
    resample_image,
    resampled_shape,
)
from unet_seg.data.volumes import TIFF_EXTENSIONS, label_dtype, write_volume, write_volume_bands
from unet_seg.files import json_safe, write_json, write_rows
from unet_seg.inference import load_for_inference
from unet_seg.module import SegModule, mean_over_volumes
from unet_seg.postprocess import PostProcess
from unet_seg.run_dir import RunDir
from unet_seg.scores import mean_key
from unet_seg.threads import set_threads
from unet_seg.visualize import class_legend, display_image, overlay, with_legend

log = logging.getLogger(__name__)

NO_DATA = (
    "evaluate needs the images to score: add data_root=DIR (DIR/images and DIR/masks), or "
    "data=folder data.root=DIR, or give run_dir=RUN instead of ckpt= (the run's test split)"
)
"""What `evaluate` says when it is given a checkpoint and no data."""

VOLUME_METRICS = ("dice", "iou", "hd95", "msd")
"""Per-volume scores, each per class (`unet_seg.surface.volume_scores`)."""


def checkpoint_is_volume(ckpt: str | Path) -> bool:
    """Whether a checkpoint's data contract is for volumes (read without building the net).
    False for a file that is no checkpoint: loading it for 2-D images says what is wrong."""
    try:
        stored = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        return bool(stored["hyper_parameters"]["data"].get("volume"))
    except Exception:  # noqa: BLE001 - the 2-D path names a missing or broken file
        return False


def load_volume_module(
    ckpt: str | Path, device: str = "auto", level: int | None = None
) -> SegModule:
    """The checkpoint's `SegModule` in eval mode on `device` (`auto`: a GPU if there is one),
    UNet++-pruned to `level` when given (as for images: `inference.load_for_inference`)."""
    return load_for_inference(ckpt, device, None if level is None else int(level)).eval()


def stored_channels(path: Path) -> int | None:
    """The channels of one volume file from its header alone (a 4-D NIfTI `[X, Y, Z, C]`,
    the Medical Segmentation Decathlon's layout, or a TIFF with a C axis); None when the
    header does not say (the file is then checked when it is read)."""
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            shape = nib.load(str(path)).shape
            if len(shape) == 5 and shape[3] == 1:  # (x, y, z, t=1, c)
                return int(shape[4])
            return int(shape[3]) if len(shape) == 4 else 1
        if name.endswith(TIFF_EXTENSIONS):
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                axes = series.axes
                return int(series.shape[axes.index("C")]) if "C" in axes else 1
    except Exception:  # noqa: BLE001 - an unreadable file is named when it is read
        return None
    return None


def input_cases(spec: str | Path, channels: int) -> list[VolumeCase]:
    """The cases to predict: a volume file, or a folder of them; with `channels` > 1 a
    file holding them all (a 4-D NIfTI `[X, Y, Z, C]`, the Decathlon's layout), or a folder
    of such files or in nnU-Net's layout (`<case>_0000`, `<case>_0001`, ...)."""
    path = Path(spec)
    if path.is_file():
        found = stored_channels(path)
        if found is not None and found != channels:
            layout = (
                f"a 4-D file of {channels} channels ([X, Y, Z, C], the Decathlon's layout), "
                f"or the folder of its {channels} channel files (<case>_0000, <case>_0001, ...)"
                if channels > 1
                else "a volume of one channel"
            )
            raise ValueError(
                f"input={path}: {found} channel(s) in the file, but the checkpoint takes "
                f"{channels}: give {layout}"
            )
        return [VolumeCase(volume_stem(path), (path,))]
    if not path.is_dir():
        raise FileNotFoundError(f"input={path}: no such volume file or folder")
    if channels > 1:
        return find_volume_cases(path.parent, path.name, masks_dir=None)
    files = list_volumes(path)
    if not files:
        raise FileNotFoundError(f"input={path}: no volumes in the folder")
    return [VolumeCase(volume_stem(p), (p,)) for p in files]


def _extension(path: Path) -> str:
    """The volume extension of a file name (`.nii.gz` counts as one)."""
    return path.name[len(volume_stem(path)) :]


def inference_options(cfg: DictConfig) -> dict:
    """`volume_probabilities` keyword arguments from a predict/evaluate config (checked by
    `inference.check_options`; an absent or null key is the default: overlap 0.5, batch 2;
    `overlap=0` is windows side by side)."""
    overlap, batch = cfg.get("overlap"), cfg.get("batch_size")
    return {"tta": str(cfg.get("tta") or "none"),
            "overlap": 0.5 if overlap is None else float(overlap),
            "batch_size": 2 if batch is None else int(batch)}  # fmt: skip


def _probabilities(module: SegModule, loaded: LoadedCase, cfg: DictConfig) -> np.ndarray:
    """Class probabilities `[K, Z, Y, X]` on the file's own grid (a case resampled to the
    training spacing is predicted there and its probabilities resampled back)."""
    volume = torch.from_numpy(loaded.image)
    with torch.no_grad():
        probs = module.volume_probabilities(volume, **inference_options(cfg))
    return resample_image(probs.numpy(), loaded.meta.shape)


def _predicted_labels(module: SegModule, loaded: LoadedCase, cfg: DictConfig) -> np.ndarray:
    """Class indices uint8 `[Z, Y, X]` on the file's own grid, post-processed: decided band
    by band (`SegModule.volume_labels`) when the case is predicted on its own grid; through
    the whole probabilities when they are resampled back to it."""
    if tuple(loaded.image.shape[1:]) != tuple(loaded.meta.shape):
        return _labels(_probabilities(module, loaded, cfg), cfg)
    with torch.no_grad():
        labels = module.volume_labels(torch.from_numpy(loaded.image), **inference_options(cfg))
    return _postprocessed(labels, cfg)


def peak_memory() -> str:
    """This process's peak resident memory so far, for the log: Linux's VmHWM, the high-water
    mark of this program's own memory (`ru_maxrss` would also count a parent's memory that
    a `subprocess` child shares between its fork and exec); `ru_maxrss` where there is no
    /proc."""
    try:
        with open("/proc/self/status") as status:
            kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return f"peak memory (RSS) {kib / 2**20:.2f} GiB"


def _labels(probs: np.ndarray, cfg: DictConfig) -> np.ndarray:
    """Probabilities `[K, Z, Y, X]` -> class indices uint8 `[Z, Y, X]`, post-processed."""
    return _postprocessed(probs.argmax(0).astype(np.uint8), cfg)


def _postprocessed(labels: np.ndarray, cfg: DictConfig) -> np.ndarray:
    """Class indices `[Z, Y, X]` post-processed in 3-D by `cfg.postprocess` (`PostProcess`,
    the one post-processing of every rank)."""
    return PostProcess(**dict(cfg.get("postprocess") or {}))(labels)


def _check_spacing(module: SegModule, loaded: LoadedCase) -> None:
    trained = module.contract.spacing
    if tuple(loaded.image.shape[1:]) != tuple(loaded.meta.shape):
        log.info(
            "%s: spacing %s mm, resampled to the training spacing %s mm (%s -> %s voxels) and "
            "predicted back on its own grid", loaded.name,
            [round(s, 3) for s in loaded.meta.spacing], [round(s, 3) for s in trained],
            list(loaded.meta.shape), list(loaded.image.shape[1:]),
        )  # fmt: skip


def _stream_refusal(cfg: DictConfig, module: SegModule) -> str | None:
    """Why this prediction needs each volume whole (None: it may read and write bands)."""
    c = module.contract
    if cfg.get("probabilities"):
        return "probabilities=true writes the whole volume's probabilities"
    post = dict(cfg.get("postprocess") or {})
    if post.get("min_size") or post.get("fill_holes") or post.get("keep_largest"):
        return "postprocess.* acts on the whole label volume (its objects in 3-D)"
    if c.intensity.get("mode") == "zscore" and c.intensity.get("nonzero"):
        return "z-score over the non-zero region needs the whole volume (its holes filled in 3-D)"
    if c.dims != 3 and c.slice_axis != 0:
        return f"a 2-D net's slices along {'zyx'[c.slice_axis]} need the whole volume"
    return None


def in_memory_bytes(files: CaseFiles) -> int:
    """What predicting a case whole holds at its peak: the stored volume, its float32
    normalised copy and the one being made, and the labels with their values."""
    voxels = math.prod(files.shape[1:])
    return voxels * (files.shape[0] * (files.dtype.itemsize + 8) + 2)


def _streams(cfg: DictConfig, files: CaseFiles, refusal: str | None) -> tuple[bool, str]:
    """`(read and write in bands, why)` for one case by `stream` (auto | true | false)."""
    from unet_seg.data.plan import CACHE_SHARE, available_memory

    choice = cfg.get("stream", "auto")
    shape = resampled_shape(files.meta.shape, files.meta.spacing, files.contract.spacing)
    if choice is False or refusal or shape != tuple(files.meta.shape) or not files.streamed:
        if choice is False:
            return False, "stream=false"
        if refusal:
            return False, refusal
        if not files.streamed:
            return False, "its file is read whole (not NIfTI or a TIFF of one page per slice)"
        return False, "resampled to the training spacing"
    needed = in_memory_bytes(files)
    if choice is True:
        return True, "stream=true"
    available = available_memory()
    if available is None:  # not Linux: the memory available is unknown
        return False, "the memory available could not be read (stream=true reads in bands)"
    on = needed > CACHE_SHARE * available
    more = "more" if on else "no more"
    return on, (f"whole it would take {needed / 2**30:.2f} GiB, {more} than "
                f"{CACHE_SHARE:.0%} of the {available / 2**30:.1f} GiB available")  # fmt: skip


def _predict_in_bands(module: SegModule, files: CaseFiles, cfg: DictConfig, target: Path) -> None:
    """Read, predict and write one case a band of z slices at a time: two passes over the
    input (its intensity statistics, then the windows), the labels written as they are
    decided (`volumes.write_volume_bands`)."""
    contract = module.contract
    files.gather_statistics(progress=True)
    source = Bands(files.normalised, files.shape)
    values = contract.encoding.mask_values  # what is written, whatever is predicted
    dtype = label_dtype(0, int(max(values)))
    with torch.no_grad():
        bands = module.volume_label_bands(source, **inference_options(cfg), progress=True)
        decoded = (contract.encoding.decode(labels) for _, labels in bands)
        write_volume_bands(target, decoded, files.meta, dtype)


def predict_volumes(cfg: DictConfig, spec: str | Path) -> list[Path]:
    """Write a label volume for every input case (the module docstring); return the files."""
    set_threads(cfg.get("threads", "auto"), "threads")
    module = load_volume_module(cfg.ckpt, str(cfg.get("device", "auto")), cfg.get("level"))
    contract = module.contract
    refusal = _stream_refusal(cfg, module)
    if cfg.get("stream") is True and refusal:
        raise ValueError(f"stream=true: {refusal}; leave stream out (auto) to predict whole")
    cases = input_cases(spec, contract.in_channels // contract.slab)
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    log.info("predicting %d volume(s) on %s (%s)", len(cases), module.device, _how(module))
    written, failed = [], []
    for case in tqdm(cases, desc="predict", unit="volume"):
        target = output / f"{case.name}{_extension(case.images[0])}"
        try:
            with CaseFiles(case, contract) as files:
                stream, why = _streams(cfg, files, refusal)
                if cfg.get("stream") is True and not stream:
                    log.warning("%s: predicted whole, not in bands: %s", case.name, why)
                if stream:
                    log.info("%s: read, predicted and written in bands of slices (%s)",
                             case.name, why)  # fmt: skip
                    _predict_in_bands(module, files, cfg, target)
                    written.append(target)
                    continue
            loaded = load_case(case, contract)
        except (ValueError, OSError) as err:
            failed.append(str(err))
            continue
        _check_spacing(module, loaded)
        want_probs = bool(cfg.get("probabilities"))
        probs = _probabilities(module, loaded, cfg) if want_probs else None
        labels = _labels(probs, cfg) if want_probs else _predicted_labels(module, loaded, cfg)
        values = contract.encoding.decode(labels)
        write_volume(target, values, loaded.meta, labels=True)
        written.append(target)
        if probs is not None:
            folder = output / "probabilities"
            folder.mkdir(exist_ok=True)
            # [K, Z, Y, X] -> [Z, Y, X, K]: one channel per class, the input's geometry
            write_volume(folder / f"{case.name}.nii.gz", np.moveaxis(probs, 0, -1), loaded.meta)
    if failed:
        log.warning("%d volume(s) could not be read:\n  %s", len(failed), "\n  ".join(failed))
    if failed and not written:
        log.error("predict: none of the %d volume(s) could be read (listed above): nothing "
                  "written", len(failed))  # fmt: skip
        return written
    skipped = f"; {len(failed)} of {len(cases)} volume(s) failed (listed above)" if failed else ""
    log.info("wrote %d label volume(s) to %s%s; %s", len(written), output, skipped,
             peak_memory())  # fmt: skip
    return written


def _how(module: SegModule) -> str:
    """How the net sees a volume, for the log and the evaluation's JSON."""
    c = module.contract
    level = f", UNet++ pruned to level {module.inference_level}" if module.inference_level else ""
    if c.dims == 3:
        return f"3-D sliding window of {c.patch}{level}"
    what = f"2.5-D slabs of {c.slab}" if c.dims == 2.5 else "2-D slices"
    window = f", windows of {c.crop_size} px" if c.crop_size else ""
    return f"{what} along {'zyx'[c.slice_axis]}{window}{level}"


def evaluation_cases(cfg: DictConfig) -> tuple[list[VolumeCase], str]:
    """(cases with masks, what they are): the run's split, or `data_root` / `data.root`."""
    if cfg.get("run_dir"):
        run = RunDir(cfg.run_dir)
        data = run.load_config().data
        cases = {c.name: c for c in find_volume_cases(
            data.root, data.get("images_dir", "images"), data.get("masks_dir", "masks"),
            data.get("mask_suffix") or "")}  # fmt: skip
        names = run.split(cfg.split)
        missing = [n for n in names if n not in cases]
        if missing:
            raise FileNotFoundError(f"{data.root}: split volumes missing, e.g. {missing[:5]}")
        return [cases[n] for n in names], f"{cfg.split} split of {run}"
    data = cfg.get("data") or {}
    root = data.get("root") or cfg.get("data_root")
    if not root:
        raise ValueError(NO_DATA)
    suffix = data.get("mask_suffix") or cfg.get("mask_suffix") or ""
    return find_volume_cases(root, data.get("images_dir", "images"),
                             data.get("masks_dir", "masks"), suffix), str(root)  # fmt: skip


def evaluate_volumes(cfg: DictConfig, output: Path) -> dict[str, float]:
    """Score a volume checkpoint per volume (the module docstring); write `output` (JSON),
    `<output>_per_volume.csv` and `<output>_worst.png`.

    Returns:
        `{metric/mean/class: mean over volumes}` for each scored class (the foreground, or
        every class with `data.background=false`: `DataContract.scored_classes`) and their
        mean (`mean_fg`, or `mean` over all classes: `scores.mean_key`; `summarise`),
        `volumes`, and the headline `dice` and `iou` (those means: the definition of
        `val/volume_dice`, `module.mean_over_volumes`).
    """
    from unet_seg.surface import volume_scores

    set_threads(cfg.get("threads", "auto"), "threads")
    ckpt = Path(cfg.ckpt) if cfg.get("ckpt") else RunDir(cfg.run_dir).best
    module = load_volume_module(ckpt, str(cfg.get("device", "auto")), cfg.get("level"))
    contract = module.contract
    names = contract.class_names
    scored = contract.scored_classes  # the foreground, or every class without a background
    first = len(names) - len(scored)
    cases, what = evaluation_cases(cfg)
    log.info("evaluating %s on %s, %d volume(s) (%s)", ckpt, what, len(cases), _how(module))
    rows, shown = [], []
    for case in tqdm(cases, desc="evaluate", unit="volume"):
        loaded = load_case(case, contract, resample=False)  # scored on the file's own grid
        net_input = at_spacing(loaded, contract.spacing)
        _check_spacing(module, net_input)
        pred = _predicted_labels(module, net_input, cfg)
        truth = loaded.labels.astype(np.int64)
        truth[loaded.labels == PAD_LABEL] = IGNORE_INDEX
        scores = volume_scores(pred, truth, len(names), loaded.meta.spacing, IGNORE_INDEX)
        row: dict[str, object] = {"volume": case.name}
        for metric in VOLUME_METRICS:
            for c, name in enumerate(scored, start=first):
                row[f"{metric}/{name}"] = float(scores[metric][c])
        rows.append(row)
        fg = np.nanmean([row[f"dice/{n}"] for n in scored]) if scored else np.nan
        shown.append((float(fg), case.name, loaded, pred))
        shown = sorted(shown, key=lambda s: (np.nan_to_num(s[0], nan=2.0), s[1]))[: cfg.worst]
    results = summarise(rows, scored, contract.background)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json({"checkpoint": str(ckpt), "evaluated": what, "inference": _how(module),
                "spacing_mm": "per volume, from its file", **json_safe(results)},
               output)  # fmt: skip
    table = output.with_name(f"{output.stem}_per_volume.csv")
    write_rows(rows, table)
    picture = output.with_name(f"{output.stem}_worst.png")
    if shown:
        cv2.imwrite(str(picture), cv2.cvtColor(worst_picture(shown, names), cv2.COLOR_RGB2BGR))
    table_text = format_volume_table(results, scored, contract.background)
    log.info("%s, %d volume(s):\n%s", what, len(rows), table_text)
    log.info("wrote %s, %s and %s; %s", output, table, picture, peak_memory())
    return results


def summarise(rows: list[dict], classes: list[str], background: bool = True) -> dict[str, float]:
    """Means over volumes per metric and class, and their mean over `classes` (the scored
    classes: `mean_fg` over the foreground, or `mean` over all without a `background`,
    `scores.mean_key`; the headline `dice` and `iou`), by `module.mean_over_volumes`: the one
    definition `val/volume_dice` uses in training (a class absent from both truth and
    prediction in a volume is NaN there and left out of that class's mean)."""
    out: dict[str, float] = {"volumes": len(rows)}
    key = mean_key(background)
    for metric in VOLUME_METRICS:
        table = np.array([[r[f"{metric}/{n}"] for n in classes] for r in rows], dtype=float)
        per_class, mean = mean_over_volumes(table.reshape(len(rows), len(classes)))
        for name, value in zip(classes, per_class.tolist(), strict=True):
            out[f"{metric}/mean/{name}"] = value
        out[f"{metric}/mean/{key}"] = float(mean)
    out["dice"], out["iou"] = out[f"dice/mean/{key}"], out[f"iou/mean/{key}"]
    return out


def format_volume_table(
    results: dict[str, float], classes: list[str], background: bool = True
) -> str:
    """Rows the metrics (distances in mm), columns the classes and their mean."""
    key = mean_key(background)
    header = f"{'mean over volumes':<20}" + "".join(f"{n:>12}" for n in [*classes, key])
    lines = [header]
    for metric, label in zip(VOLUME_METRICS, ("Dice", "IoU", "HD95 (mm)", "MSD (mm)"),
                             strict=True):  # fmt: skip
        cells = [results[f"{metric}/mean/{n}"] for n in [*classes, key]]
        lines.append(f"{label:<20}" + "".join(f"{v:>12.4f}" for v in cells))
    return "\n".join(lines)


def orthogonal_slices(
    volume: np.ndarray, spacing: tuple[float, float, float], centre: tuple[int, int, int]
) -> list[np.ndarray]:
    """The axial `[Y, X]`, coronal `[Z, X]` and sagittal `[Z, Y]` slices through `centre` of
    `[Z, Y, X(, C)]`, with rows stretched to the physical aspect (nearest neighbour); the
    coronal and sagittal ones with z upwards (the last slice at the top)."""
    z, y, x = centre
    views = [(volume[z], spacing[1], spacing[2]), (volume[::-1, y], spacing[0], spacing[2]),
             (volume[::-1, :, x], spacing[0], spacing[1])]  # fmt: skip
    out = []
    for view, row_mm, col_mm in views:
        rows = max(1, round(view.shape[0] * row_mm / col_mm))
        view = np.ascontiguousarray(view)
        out.append(cv2.resize(view, (view.shape[1], rows), interpolation=cv2.INTER_NEAREST))
    return out


def _centre(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """Where to cut: the centre of the truth's foreground (what should be found), else of
    the errors (what was found where nothing is), else the middle."""
    for mask in (truth > 0, (truth != pred) & (truth != PAD_LABEL)):
        where = np.argwhere(mask & (truth != PAD_LABEL))
        if where.size:
            return tuple(int(v) for v in np.median(where, axis=0).round())
    return tuple(n // 2 for n in truth.shape)


def worst_picture(shown: list[tuple[float, str, LoadedCase, np.ndarray]],
                  names: list[str]) -> np.ndarray:  # fmt: skip
    """One block per volume (worst first): rows axial, coronal, sagittal; columns the image,
    the truth and the prediction over it. RGB uint8."""
    blocks = []
    for dice, name, loaded, pred in shown:
        truth = np.where(loaded.labels == PAD_LABEL, 0, loaded.labels)
        centre = _centre(loaded.labels, pred)
        spacing = loaded.meta.spacing
        image = np.moveaxis(loaded.image, 0, -1)  # [Z, Y, X, C]
        rows = []
        for img, t, p in zip(*(orthogonal_slices(v, spacing, centre)
                               for v in (image, truth, pred)), strict=True):  # fmt: skip
            # the channels are modalities, never RGB: a composite of each
            base = display_image(img if img.ndim == 3 else img[..., None], colour=False)
            # the labels over the image's brightness in grey, so each class keeps the colour
            # of the legend (a tint over the composite's green or magenta would not)
            grey = np.repeat(base.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
            panels = [base, overlay(grey, t), overlay(grey, p)]
            rows.append(_hstack(panels))
        block = _vstack(rows)
        title = np.full((22, block.shape[1], 3), 255, np.uint8)
        cv2.putText(title, f"{name}: Dice {dice:.3f} (image | truth | prediction)", (4, 15),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
        blocks.append(_vstack([title, block]))
    return with_legend(_vstack(blocks), class_legend(names))


def _hstack(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
    height = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, gap), (0, 0)), constant_values=255)
              for p in panels]  # fmt: skip
    return np.concatenate(padded, axis=1)


def _vstack(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
    width = max(p.shape[1] for p in panels)
    padded = [np.pad(p, ((0, gap), (0, width - p.shape[1]), (0, 0)), constant_values=255)
              for p in panels]  # fmt: skip
    return np.concatenate(padded, axis=0)
