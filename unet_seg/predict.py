"""Write masks for new images from a checkpoint alone:
`python -m unet_seg.predict ckpt=best.ckpt input=DIR_OR_FILE_OR_GLOB [output=DIR] [key=value ...]`.

Masks come out at each image's own size in the dataset's mask format: mask values
(a `[0, 255]` dataset gets 0/255 PNGs; more than two classes a palette PNG whose
indices are the values), palette PNGs, RGB colour PNGs, one `<class>/` folder of
0/255 masks per foreground class, or numbered objects for instance masks.
Optional overlays (`overlays/`) and probability maps (`probabilities/`, float32
TIFF, one page per class; for two classes one page, class 1). Files that cannot
be read are listed at the end; the others still finish.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from unet_seg.api import load_model_from_config
from unet_seg.config import CONF_DIR
from unet_seg.data.dataset import IMAGE_EXTENSIONS, list_images, read_image
from unet_seg.inference import Predictor
from unet_seg.visualize import colorize

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


def display_image(image: np.ndarray) -> np.ndarray:
    """An image `[H, W, C]` uint8/uint16 -> RGB uint8 `[H, W, 3]` to look at (16-bit images
    are stretched between their 0.5 and 99.5 percentiles)."""
    if image.dtype != np.uint8:
        lo, hi = np.percentile(image, (0.5, 99.5))
        scaled = (image.astype(np.float32) - lo) / max(float(hi - lo), 1.0)
        image = (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Tint an RGB uint8 image `[H, W, 3]` with the colours of class indices `[H, W]`
    (background left untinted). Returns RGB uint8 `[H, W, 3]`."""
    colours = colorize(labels).astype(np.float32)
    tinted = image.astype(np.float32) * (1 - alpha) + colours * alpha
    fg = (labels > 0)[:, :, None]
    return np.where(fg, tinted, image).round().astype(np.uint8)


def mask_palette(mask_values: list[int]) -> list[int]:
    """A 256-entry RGB palette giving each class's mask value its `colorize` colour."""
    palette = np.zeros((256, 3), np.uint8)
    colours = colorize(np.arange(len(mask_values))[None])[0]  # [K, 3]
    palette[mask_values] = colours
    return palette.ravel().tolist()


def write_png(path: Path, array: np.ndarray, palette: list[int] | None = None) -> Path:
    """Write `[H, W]` (8/16-bit) or RGB `[H, W, 3]` as a PNG; with `palette`, a palette PNG
    whose pixel indices are the `[H, W]` uint8 values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette is not None:
        image = Image.fromarray(array)  # mode L
        image.putpalette(palette)  # now mode P: the indices are the values
        image.save(path)
        return path
    if array.ndim == 3:
        array = np.ascontiguousarray(array[:, :, ::-1])  # RGB -> BGR for OpenCV
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")
    return path


def instance_labels(labels: np.ndarray) -> np.ndarray:
    """Foreground `[H, W]` -> its 8-connected objects numbered 1..N (uint8, or uint16 past 255)."""
    count, objects = cv2.connectedComponents((labels > 0).astype(np.uint8), connectivity=8)
    return objects.astype(np.uint8 if count <= 256 else np.uint16)


def write_probabilities(path: Path, probs: np.ndarray) -> None:
    """Class probabilities `[K, H, W]` -> a float32 TIFF, one page per class
    (for two classes, one page: class 1)."""
    pages = [probs[1]] if probs.shape[0] == 2 else list(probs)
    if not cv2.imwritemulti(str(path), [np.ascontiguousarray(p, np.float32) for p in pages]):
        raise OSError(f"could not write {path}")


class _Writer:
    """Writes one image's outputs under `output`: its mask in the dataset's format,
    `overlays/` and `probabilities/` when asked."""

    def __init__(self, predictor: Predictor, output: Path, cfg: DictConfig) -> None:
        self.predictor, self.output = predictor, output
        self.overlays = output / "overlays" if cfg.get("overlays") else None
        self.probabilities = output / "probabilities" if cfg.get("probabilities") else None
        for folder in (output, self.overlays, self.probabilities):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
        encoding = predictor.encoding
        values = encoding.mask_values
        use_palette = cfg.get("palette", "auto")
        if use_palette == "auto":
            use_palette = encoding.mask_format == "palette" or (
                encoding.mask_format == "values" and len(values) > 2 and max(values) < 256
            )
        if use_palette and (encoding.mask_format not in ("values", "palette") or max(values) > 255):
            raise ValueError(
                f"palette=true needs data.mask_format values or palette with values below 256, "
                f"got {encoding.mask_format} {values}"
            )
        self.palette = mask_palette(values) if use_palette else None

    def __call__(
        self, stem: str, image: np.ndarray, labels: np.ndarray, probs: np.ndarray | None
    ) -> Path:
        target = self.write_mask(stem, labels)
        if self.overlays is not None:
            write_png(self.overlays / f"{stem}.png", overlay(display_image(image), labels))
        if self.probabilities is not None and probs is not None:
            write_probabilities(self.probabilities / f"{stem}.tif", probs)
        return target

    def write_mask(self, stem: str, labels: np.ndarray) -> Path:
        """The mask as the dataset stores masks; returns the (first) file written."""
        encoding = self.predictor.encoding
        if encoding.mask_format == "folders":  # masks/<class>/<stem>.png, 0/255 each
            names = self.predictor.class_names[1:]
            files = [
                write_png(self.output / name / f"{stem}.png", (labels == c).astype(np.uint8) * 255)
                for c, name in enumerate(names, start=1)
            ]
            return files[0]
        target = self.output / f"{stem}.png"
        if encoding.mask_format == "instances":
            return write_png(target, instance_labels(labels))
        return write_png(target, encoding.decode(labels), self.palette)


def predict(cfg: DictConfig) -> list[Path]:
    """Predict a mask for every input image; return the mask files written.

    Images that fit one forward pass are batched `batch_size` at a time; larger ones
    are tiled one by one (their tiles batched).
    """
    files = resolve_inputs(str(cfg.input))
    predictor = load_model_from_config(cfg.ckpt, cfg)
    predictor.progress = True
    output = Path(cfg.output)
    writer = _Writer(predictor, output, cfg)
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
        results = predictor.run([im for _, im in pending], probabilities=want_probs)
        for (stem, image), (labels, probs) in zip(pending, results, strict=True):
            written.append(writer(stem, image, labels, probs))
        pending.clear()

    named = list(zip(files, output_stems(files), strict=True))
    for path, stem in tqdm(named, desc="predict", unit="image"):
        try:
            image = read_image(path, predictor.in_channels)
        except (ValueError, OSError, cv2.error) as err:
            failed.append(str(err))
            continue
        pending.append((stem, image))
        if len(pending) >= predictor.batch_size or not predictor.takes_one_pass(image.shape):
            flush()
    if pending:
        flush()
    log.info("wrote %d mask(s) to %s", len(written), output)
    if failed:
        log.warning("%d file(s) could not be read:\n  %s", len(failed), "\n  ".join(failed))
    return written


@hydra.main(config_path=CONF_DIR, config_name="predict", version_base=None)
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
