"""Instance labels for the ISBI 2012 cells, for the U-Net weight map (`loss=weighted_ce_dice`).

The weight map of Ronneberger et al. (2015) weighs background pixels by their distance to
the two nearest objects, so it needs objects. ISBI's masks are binary (0 = membrane,
255 = cell); every cell is enclosed by membrane, so its cells are the 4-connected regions
of 255 (4-connectivity: two cells that meet only at a corner stay two). This writes them
as 16-bit labels named like the masks, for `data.instances_dir`:

    python experiments/isbi2012/cell_instances.py outputs/isbi2012_cells
    python -m unet_seg.train experiment=isbi2012_cv loss=weighted_ce_dice \
        data.instances_dir=$PWD/outputs/isbi2012_cells
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "isbi2012"
log = logging.getLogger("cell_instances")


def cell_labels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Binary mask (255 = cell) -> uint16 labels (0 = membrane, 1..N = cells), N."""
    count, labels = cv2.connectedComponents((mask > 127).astype(np.uint8), connectivity=4)
    return labels.astype(np.uint16), count - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    masks = sorted((args.data / "masks").glob("*.png"))
    if not masks:
        raise SystemExit(f"no masks under {args.data / 'masks'}: pass --data DIR")
    cells = []
    for path in masks:
        labels, n = cell_labels(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
        cv2.imwrite(str(args.out / path.name), labels)
        cells.append(n)
    log.info("%d label maps in %s, %d to %d cells each (median %d)", len(masks), args.out,
             min(cells), max(cells), int(np.median(cells)))  # fmt: skip


if __name__ == "__main__":
    main()
