"""Turn public dataset downloads into the `images/` + `masks/` layout the loader reads.

    python -m unet_seg.data.prepare dsb2018 SRC/stage1_train DST

Carvana and ISBI 2012 need no preparation (see `conf/data/*.yaml`).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from unet_seg.data.readers import read_array

log = logging.getLogger(__name__)


def prepare_dsb2018(src: str | Path, dst: str | Path) -> int:
    """DSB 2018 `SRC/<id>/images/<id>.png` + `SRC/<id>/masks/*.png` (one per nucleus) ->
    `DST/images/<id>.png` + `DST/masks/<id>.png` (uint16 instance labels 1..N).

    Returns the number of images written. Where nucleus masks overlap, the later
    one wins. A sample without its image or masks is an error naming it.
    """
    src, dst = Path(src), Path(dst)
    samples = sorted(p for p in src.iterdir() if p.is_dir()) if src.is_dir() else []
    if not samples:
        raise FileNotFoundError(
            f"{src}: no sample folders (expected SRC/<id>/images, SRC/<id>/masks)"
        )
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(parents=True, exist_ok=True)
    for sample in tqdm(samples, desc="dsb2018", unit="image"):
        image = sample / "images" / f"{sample.name}.png"
        masks = sorted((sample / "masks").glob("*.png"))
        if not image.is_file() or not masks:
            raise FileNotFoundError(f"{sample}: needs images/{sample.name}.png and masks/*.png")
        labels: np.ndarray | None = None
        for i, mask_file in enumerate(masks, start=1):
            nucleus = read_array(mask_file)
            nucleus = nucleus if nucleus.ndim == 2 else nucleus[:, :, 0]
            if labels is None:
                labels = np.zeros(nucleus.shape, np.uint16)
            labels[nucleus > 0] = i
        shutil.copyfile(image, dst / "images" / image.name)
        if not cv2.imwrite(str(dst / "masks" / f"{sample.name}.png"), labels):
            raise OSError(f"could not write {dst / 'masks' / sample.name}.png")
    log.info("wrote %d image/mask pairs to %s", len(samples), dst)
    return len(samples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["dsb2018"])
    parser.add_argument("src", help="the unpacked download (DSB 2018: its stage1_train folder)")
    parser.add_argument("dst", help="output folder, then data.root")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare_dsb2018(args.src, args.dst)


if __name__ == "__main__":
    main()
