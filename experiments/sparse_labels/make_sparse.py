"""Partly labelled copies of ISBI 2012: each training slice keeps its labels in random
16x16 squares covering a given share of its pixels; every other pixel gets the ignore
value. Validation slices (the held-out fold) stay fully labelled.

    python experiments/sparse_labels/make_sparse.py [--fractions 1 0.5 0.1 0.02]

Writes outputs/sparse_labels/data/<arm>/{images,masks} (images: a link to the originals),
arm `full` for fraction 1 and `pNN` otherwise (p50 = 50%), and prints each arm's
labelled share of the training pixels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from unet_seg.data.splits import make_folds

IGNORE_VALUE = 128
"""Mask value of unlabelled pixels (the masks hold 0 = membrane, 255 = cell)."""


def arm_name(fraction: float) -> str:
    return "full" if fraction >= 1 else f"p{round(fraction * 100):02d}"


def labelled_squares(
    shape: tuple[int, int], fraction: float, side: int, rng: np.random.Generator
) -> np.ndarray:
    """Boolean `[H, W]`: `round(fraction * cells)` grid cells of `side` pixels, at random."""
    rows, cols = shape[0] // side, shape[1] // side
    chosen = rng.choice(rows * cols, size=round(fraction * rows * cols), replace=False)
    cells = np.zeros(rows * cols, bool)
    cells[chosen] = True
    return np.kron(cells.reshape(rows, cols), np.ones((side, side), bool)).astype(bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="../shared/data/isbi2012")
    parser.add_argument("--out", default="outputs/sparse_labels/data")
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.1, 0.02])
    parser.add_argument("--side", type=int, default=16, help="side of a labelled square")
    parser.add_argument("--fold", type=int, default=0, help="held-out fold (of 5, contiguous)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = Path(args.source).resolve()
    names = sorted(p.name for p in (source / "images").glob("*.png"))
    # the split of conf/experiment/isbi2012_cv.yaml (contiguous folds need no seed)
    held_out = set(make_folds(names, 5, args.fold, 0, order="contiguous")["val"])
    for fraction in args.fractions:
        arm = Path(args.out) / arm_name(fraction)
        (arm / "masks").mkdir(parents=True, exist_ok=True)
        if not (arm / "images").exists():
            (arm / "images").symlink_to(source / "images")
        labelled = total = 0
        for i, name in enumerate(names):
            mask = cv2.imread(str(source / "masks" / name), cv2.IMREAD_UNCHANGED)
            if name not in held_out and fraction < 1:
                rng = np.random.default_rng([args.seed, i, round(fraction * 1e6)])
                keep = labelled_squares(mask.shape, fraction, args.side, rng)
                mask = np.where(keep, mask, IGNORE_VALUE).astype(np.uint8)
            if name not in held_out:
                labelled += int((mask != IGNORE_VALUE).sum())
                total += mask.size
            cv2.imwrite(str(arm / "masks" / name), mask)
        sys.stdout.write(
            f"{arm}: {labelled / total:.4f} of the training pixels labelled; "
            f"held out (fully labelled): {sorted(held_out)}\n"
        )


if __name__ == "__main__":
    main()
