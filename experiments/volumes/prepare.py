"""Volume folders for experiments/volumes (README there): the ISBI 2012 stack cut into a
training volume (slices 0..23) and a held-out one (24..29), and the two brain MRI volumes of
pyradiomics' test data.

    python experiments/volumes/prepare.py isbi  [--src ../shared/data/isbi2012]
    python experiments/volumes/prepare.py brain --src PYRADIOMICS/data

Writes outputs/data/isbi_stack/ and outputs/data/brain_mri/ (images/, masks/, split.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2
import numpy as np

from unet_seg.data.volumes import VolumeMeta, write_volume

EM_SPACING = (0.05, 0.004, 0.004)
"""ISBI 2012: serial-section TEM, 4x4 nm pixels, 50 nm sections (Cardona et al., 2010), in mm."""


def isbi(src: Path, out: Path) -> None:
    def read(sub: str, i: int) -> np.ndarray:
        return cv2.imread(str(src / sub / f"{i}.png"), cv2.IMREAD_GRAYSCALE)

    images = np.stack([read("images", i) for i in range(30)])  # [30, 512, 512] uint8
    masks = np.stack([read("masks", i) for i in range(30)])
    z, y, x = EM_SPACING
    affine = tuple(map(tuple, np.diag([x, y, z, 1.0])))
    parts = {"train": slice(0, 24), "heldout": slice(24, 30)}
    for name, part in parts.items():
        for sub, array in (("images", images), ("masks", masks)):
            (out / sub).mkdir(parents=True, exist_ok=True)
            vol = array[part]
            meta = VolumeMeta((len(vol), 512, 512), EM_SPACING, affine, "tiff")
            write_volume(out / sub / f"{name}.tif", vol, meta, labels=sub == "masks")
    split = {"train": ["train"], "val": ["heldout"], "test": ["heldout"]}
    (out / "split.json").write_text(json.dumps(split, indent=1))


def brain(src: Path, out: Path) -> None:
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for case in ("brain1", "brain2"):
        shutil.copy(src / f"{case}_image.nrrd", out / "images" / f"{case}.nrrd")
        shutil.copy(src / f"{case}_label.nrrd", out / "masks" / f"{case}.nrrd")
    split = {"train": ["brain1"], "val": ["brain2"], "test": ["brain2"]}
    (out / "split.json").write_text(json.dumps(split, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("isbi", "brain"))
    parser.add_argument("--src", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.what == "isbi":
        isbi(
            args.src or Path("../shared/data/isbi2012"), args.out or Path("outputs/data/isbi_stack")
        )
    else:
        if args.src is None:
            parser.error("brain needs --src: the data/ folder of a pyradiomics checkout")
        brain(args.src, args.out or Path("outputs/data/brain_mri"))
