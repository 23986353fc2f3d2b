"""Write masks for new images from a checkpoint alone:
`python -m unet_seg.predict ckpt=best.ckpt input=DIR_OR_FILE_OR_GLOB output=DIR`.

Masks come out at each image's own size, in the dataset's encoding (a `[0, 255]`
dataset gets 0/255 PNGs back). Files that cannot be read are listed at the end;
the others still finish.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path

import cv2
import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from unet_seg.data.dataset import IMAGE_EXTENSIONS, list_images, read_image
from unet_seg.data.masks import MaskEncoding
from unet_seg.inference import load_for_inference, predict_labels

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


def predict(cfg: DictConfig) -> list[Path]:
    """Predict a mask for every input image; return the mask files written."""
    files = resolve_inputs(str(cfg.input))
    module = load_for_inference(cfg.ckpt, cfg.device, cfg.level)
    encoding = MaskEncoding(module.hparams.mask_values)
    in_channels = module.hparams.arch["in_channels"]
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    for path in tqdm(files, desc="predict", unit="image"):
        try:
            image = read_image(path, in_channels)
        except ValueError as err:
            failed.append(str(err))
            continue
        mask = encoding.decode(predict_labels(module, image))
        target = output / f"{path.stem}.png"
        if not cv2.imwrite(str(target), mask):
            raise OSError(f"could not write {target}")
        written.append(target)
    log.info("wrote %d mask(s) to %s", len(written), output)
    if failed:
        log.warning("%d file(s) could not be read:\n  %s", len(failed), "\n  ".join(failed))
    return written


@hydra.main(config_path="../conf", config_name="predict", version_base=None)
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
