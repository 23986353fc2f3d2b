"""Write masks for new images from a checkpoint alone:
`python -m unet_seg.predict ckpt=best.ckpt input=DIR_OR_FILE_OR_GLOB [output=DIR] [key=value ...]`.

Masks come out at each image's own size in the dataset's mask format: mask values
(a `[0, 255]` dataset gets 0/255 PNGs; more than two classes a palette PNG whose
indices are the values), palette PNGs, RGB colour PNGs, one `<class>/` folder of
0/255 masks per foreground class, or numbered objects for instance masks.
A net trained on an instance target (`data.target=instances`) writes its objects:
uint16 PNG labels (0 = background, 1..N; a 32-bit TIFF past 65535 objects), decoded
after the tiles are blended, and overlays with each object outlined in its own colour.
Optional overlays (`overlays/`) and probability maps (`probabilities/`, float32
TIFF, one page per class; for two classes one page, class 1). Files that cannot
be read are listed at the end; the others still finish; when none could be, the command
exits 1.

A checkpoint trained on volumes writes label volumes (`predict_volumes`); the
options that apply to 2-D images only (`mode`, `tile_size`, `size`, `palette`, `overlays`)
are refused by name before anything is read (`inference.check_options`, the one list).

`ckpt=PACKAGE.zip`, a bioimage.io model package (ours from `export format=bioimageio`, or
a 2-D model of the zoo): bioimageio.core runs it with its own processing, tiled with its
halo (`predict_with_package`).
"""

from __future__ import annotations

import glob
import logging
import math
import os
import sys
from pathlib import Path

import cv2
import hydra
import numpy as np
import tifffile
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tqdm import tqdm

from unet_seg.api import load_model_from_config
from unet_seg.bioimageio import PackagePredictor, is_package
from unet_seg.config import CONF_DIR
from unet_seg.data.dataset import IMAGE_EXTENSIONS, list_images
from unet_seg.data.masks import MaskEncoding, write_png
from unet_seg.data.readers import fit_channels, read_stored
from unet_seg.data.volume_cases import (
    VolumeCase,
    find_volume_cases,
    is_volume_file,
    list_volumes,
    volume_stem,
)
from unet_seg.data.volume_dataset import Bands, CaseFiles, load_case, resampled_shape
from unet_seg.data.volumes import (
    TIFF_EXTENSIONS,
    ZARR_EXTENSIONS,
    ZarrVolume,
    label_dtype,
    write_volume,
    write_volume_bands,
)
from unet_seg.inference import (
    case_labels,
    case_probabilities,
    check_options,
    checkpoint_is_volume,
    describe_volume_inference,
    load_volume_module,
    log_resampling,
    volume_options,
)
from unet_seg.instances import write_objects
from unet_seg.memory import peak_memory
from unet_seg.module import SegModule
from unet_seg.run_dir import RunDir, hydra_log_file
from unet_seg.threads import set_threads
from unet_seg.visualize import (
    class_legend,
    display_image,
    mask_palette,
    outline_objects,
    overlay,
    with_legend,
)

log = logging.getLogger(__name__)


def resolve_inputs(spec: str) -> list[Path]:
    """Image files named by a file, a folder (its images) or a glob pattern."""
    path = Path(spec)
    if path.is_dir():
        files = list_images(path)
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True))
        files = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise FileNotFoundError(
            f"input={spec}: no images found (a file, a folder or a glob; "
            f"extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return files


def input_spec(cfg: DictConfig) -> str | Path:
    """`input=`, else the images folder of `data=... data.root=DIR`."""
    if cfg.get("input"):
        return cfg.input
    data = cfg.get("data")
    if data is not None and data.get("root"):
        return Path(data.root) / data.get("images_dir", "images")
    raise ValueError(
        "give input=FILE_FOLDER_OR_GLOB (the images to predict), or data=folder data.root=DIR "
        "(predicts DIR/images)"
    )


def output_stems(files: list[Path]) -> list[str]:
    """One output name per input: its stem where that is unique, else its path below the
    inputs' common folder with `_` for separators, extension included (`a/x.tif` -> `a_x_tif`)."""
    stems = [p.stem for p in files]
    common = Path(os.path.commonpath([p.resolve().parent for p in files]))
    names = []
    for p, stem in zip(files, stems, strict=True):
        if stems.count(stem) == 1:
            names.append(stem)
        else:
            relative = p.resolve().relative_to(common).with_suffix("")
            names.append("_".join([*relative.parts, p.suffix.lstrip(".")]))
    return names


def write_probabilities(path: Path, probs: np.ndarray) -> None:
    """Class probabilities `[K, H, W]` -> a float32 TIFF, one page per class
    (for two classes, one page: class 1)."""
    pages = [probs[1]] if probs.shape[0] == 2 else list(probs)
    if not cv2.imwritemulti(str(path), [np.ascontiguousarray(p, np.float32) for p in pages]):
        raise OSError(f"could not write {path}")


class _Writer:
    """Writes one image's outputs under `output`: its mask in the dataset's format
    (`MaskEncoding.write`) or, with `objects`, its object labels (`write_objects`);
    `overlays/` (`auto`: with objects; classes with a legend naming `class_names`, objects
    outlined each in its own colour) and `probabilities/` when asked."""

    def __init__(
        self, encoding: MaskEncoding, output: Path, cfg: DictConfig, class_names: list[str],
        objects: bool = False, background: bool = True,
    ) -> None:  # fmt: skip
        self.encoding, self.output, self.objects = encoding, output, objects
        self.background = background  # else class 0 is tinted as any class
        self.legend = None if objects else class_legend(class_names, background)
        overlays = cfg.get("overlays", "auto")
        overlays = objects if overlays == "auto" else bool(overlays)
        self.overlays = output / "overlays" if overlays else None
        self.probabilities = output / "probabilities" if cfg.get("probabilities") else None
        for folder in (output, self.overlays, self.probabilities):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
        use_palette = encoding.writes_palette(cfg.get("palette", "auto"))
        self.palette = mask_palette(encoding.mask_values) if use_palette else None

    def __call__(
        self, stem: str, image: np.ndarray, labels: np.ndarray, probs: np.ndarray | None
    ) -> Path:
        """Write one image's outputs; `labels` are its objects when the writer has `objects`."""
        if self.objects:
            target = write_objects(self.output, stem, labels)
        else:
            target = self.encoding.write(self.output, stem, labels, self.palette)
        if self.overlays is not None:
            if self.objects:
                picture = outline_objects(display_image(image), labels)
            else:
                shown = overlay(display_image(image), labels, background=self.background)
                picture = with_legend(shown, self.legend)
            write_png(self.overlays / f"{stem}.png", picture)
        if self.probabilities is not None and probs is not None:
            write_probabilities(self.probabilities / f"{stem}.tif", probs)
        return target


def predict(cfg: DictConfig) -> list[Path]:
    """Predict a mask for every input image; return the mask files written.

    Images that fit one forward pass are batched `batch_size` at a time; larger ones
    are tiled one by one (their tiles batched).
    """
    if is_package(cfg.ckpt):  # a bioimage.io model (ours or the zoo's), run by bioimageio.core
        return predict_with_package(cfg, resolve_inputs(str(input_spec(cfg))))
    volume = checkpoint_is_volume(cfg.ckpt)
    check_options(cfg, "predict", volume)  # before anything is read or written
    if volume:  # label volumes in the inputs' geometry
        return predict_volumes(cfg, input_spec(cfg))
    set_threads(cfg.get("threads", "auto"), "threads")
    files = resolve_inputs(str(input_spec(cfg)))
    predictor = load_model_from_config(cfg.ckpt, cfg)
    predictor.progress = True
    output = Path(cfg.output)
    objects = predictor.contract.instance_target
    contract = predictor.contract
    writer = _Writer(predictor.encoding, output, cfg, contract.class_names, objects,
                     contract.background)  # fmt: skip
    want_probs = bool(cfg.get("probabilities"))
    tiling = f" tile_size={predictor.tile_size} overlap={predictor.overlap}"
    log.info(
        "predicting %d image(s) on %s: mode=%s tta=%s%s", len(files), predictor.device,
        predictor.mode, predictor.tta, tiling if predictor.mode == "tile" else "",
    )  # fmt: skip
    written: list[Path] = []
    failed: list[str] = []
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        images = [im for _, im in pending]
        if objects:  # (objects, class labels, probabilities): the objects are written
            results = [(o, p) for o, _, p in predictor.run_instances(images, want_probs)]
        else:
            results = predictor.run(images, probabilities=want_probs)
        for (stem, image), (labels, probs) in zip(pending, results, strict=True):
            written.append(writer(stem, image, labels, probs))
        pending.clear()

    fix = (f"convert it to {predictor.in_channels} channel(s): the model was trained on "
           f"{predictor.in_channels}")  # fmt: skip
    named = list(zip(files, output_stems(files), strict=True))
    for path, stem in tqdm(named, desc="predict", unit="image"):
        try:  # the checkpoint fixes the channels: the fix is converting the image
            stored, data_channels = read_stored(path)  # a TIFF of channels: no alpha, no colour
            image = fit_channels(stored, predictor.in_channels, str(path), fix, data_channels)
        except (ValueError, OSError, cv2.error) as err:
            failed.append(str(err))
            continue
        pending.append((stem, image))
        if len(pending) >= predictor.batch_size or not predictor.takes_one_pass(image.shape):
            flush()
    if pending:
        flush()
    if failed:
        log.warning("%d file(s) could not be read:\n  %s", len(failed), "\n  ".join(failed))
    skipped = f"; {len(failed)} of {len(files)} file(s) failed (listed above)" if failed else ""
    log.info("wrote %d mask(s) to %s%s", len(written), output, skipped)
    return written


# volumes: a label volume per case, in the input's geometry and format


def stored_channels(path: Path) -> int | None:
    """The channels of one volume file from its header alone (a 4-D NIfTI `[X, Y, Z, C]`,
    the Medical Segmentation Decathlon's layout, a TIFF or OME-Zarr with a C axis); None when the
    header does not say (the file is then checked when it is read)."""
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            shape = nib.load(str(path)).shape
            if len(shape) == 5 and shape[3] == 1:  # (x, y, z, t=1, c)
                return int(shape[4])
            return int(shape[3]) if len(shape) == 4 else 1
        if name.endswith(ZARR_EXTENSIONS):
            with ZarrVolume(path) as volume:  # its metadata and array header only
                return int(volume.shape[3]) if len(volume.shape) == 4 else 1
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
    if path.is_file() or is_volume_file(path):  # an OME-Zarr image is a folder
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
        bands = module.volume_label_bands(source, **volume_options(cfg), progress=True)
        decoded = (contract.encoding.decode(labels) for _, labels in bands)
        write_volume_bands(target, decoded, files.meta, dtype)


def predict_volumes(cfg: DictConfig, spec: str | Path) -> list[Path]:
    """Write a label volume for every input case (the module docstring); return the files."""
    set_threads(cfg.get("threads", "auto"), "threads")
    module = load_volume_module(cfg.ckpt, cfg)
    contract = module.contract
    refusal = _stream_refusal(cfg, module)
    if cfg.get("stream") is True and refusal:
        raise ValueError(f"stream=true: {refusal}; leave stream out (auto) to predict whole")
    cases = input_cases(spec, contract.in_channels // contract.slab)
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    how = describe_volume_inference(module)
    log.info("predicting %d volume(s) on %s (%s)", len(cases), module.device, how)
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
        log_resampling(module, loaded)
        probs = case_probabilities(module, loaded, cfg) if cfg.get("probabilities") else None
        labels = case_labels(module, loaded, cfg, probs)
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


PACKAGE_DEFAULTS = {
    "mode": "tile",
    "tta": "none",
    "level": None,
    "size": None,
    "halo": 0,
    "overlays": "auto",
    "palette": "auto",
}
"""predict's options that a package's own processing replaces, at the values that ask for
nothing."""


def predict_with_package(cfg, files: list[Path]) -> list[Path]:
    """`predict` with `ckpt=` a bioimage.io package: label masks (PNG: the run's mask values
    for our packages, else class indices, 0/255 for one foreground class) and optionally
    probabilities, one per readable input image."""
    asked = [
        f"{k}={cfg.get(k)}"
        for k, default in PACKAGE_DEFAULTS.items()
        if cfg.get(k, default) != default
    ]
    if any(cfg.get("postprocess", {}).get(k) for k in ("min_size", "fill_holes", "keep_largest")):
        asked.append("postprocess.*")
    if asked:
        raise ValueError(f"{', '.join(asked)}: not for a bioimage.io package, which runs "
                           "with its own processing; leave them out (tile_size, "
                           "probabilities, input and output apply)")  # fmt: skip
    model = PackagePredictor(cfg.ckpt, int(cfg.get("tile_size") or 512))
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    values = (model.contract or {}).get("mask_values") or []
    if len(values) != len(model.class_names):
        values = [0, 255] if len(model.class_names) <= 2 else list(range(len(model.class_names)))
    lut = np.zeros(256, np.uint8)
    lut[: len(values)] = values
    written, failed = [], []
    log.info("predicting %d image(s) with the bioimage.io model %s (%s)", len(files),
             model.descr.name, cfg.ckpt)  # fmt: skip
    for path, stem in tqdm(list(zip(files, output_stems(files), strict=True)),
                           desc="predict", unit="image"):  # fmt: skip
        try:
            stored, data_channels = read_stored(path)
            image = fit_channels(
                stored,
                model.in_channels,
                str(path),
                f"convert it to the model's {model.in_channels} channel(s)",
                data_channels,
            )
        except (ValueError, OSError) as err:
            failed.append(str(err))
            continue
        labels, probs = model.run(image)
        target = output / f"{stem}.png"
        write_png(target, lut[labels])
        if cfg.get("probabilities"):
            (output / "probabilities").mkdir(exist_ok=True)
            write_probabilities(output / "probabilities" / f"{stem}.tif", probs)
        written.append(target)
    if failed:
        log.warning("%d file(s) could not be read:\n  %s", len(failed), "\n  ".join(failed))
    log.info("wrote %d mask(s) to %s", len(written), output)
    return written


@hydra.main(config_path=CONF_DIR, config_name="predict", version_base=None)
def main(cfg: DictConfig) -> None:
    output = RunDir(HydraConfig.get().runtime.output_dir)
    fresh = not output.holds_run
    log_file, log_kept = hydra_log_file()  # cut back to this size if refused
    try:
        written = predict(cfg)
    except (ValueError, FileNotFoundError) as refused:  # an option, an input, a checkpoint
        log.debug("refused", exc_info=True)
        if fresh:
            output.discard(log_file, log_kept)  # Hydra's .hydra/ and this command's log lines
        sys.exit(f"{refused}")  # the message alone, on stderr; exit status 1
    if not written:  # nothing written: every input failed (each listed above)
        sys.exit(1)


if __name__ == "__main__":
    main()
