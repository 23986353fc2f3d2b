"""A folder of large EM-like slices for the own-folder benchmark (docs/performance.md).

Twelve 1024x768 grey+alpha PNGs (the issue's EM slices were such files) with 4-class
masks: 0 membrane/background, 1 cells, 2 rare synapses (small dark blobs, about 0.4% of
the pixels), 3 vesicles (clusters of small discs, a few percent).

    python experiments/throughput/make_em_folder.py /tmp/em
    python -m unet_seg.benchmark data=auto data.root=/tmp/em
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def main(root: Path, n: int = 12, height: int = 768, width: int = 1024) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        noise = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 6)
        mask = np.where(noise > 0.0, 1, 0).astype(np.uint8)  # cells against membrane
        grey = 140 + 50 * np.tanh(noise * 8)
        for _ in range(6):  # synapses: small dark ellipses
            y, x = rng.integers(20, height - 20), rng.integers(20, width - 20)
            axes = (int(rng.integers(6, 14)), int(rng.integers(3, 8)))
            cv2.ellipse(mask, (int(x), int(y)), axes, float(rng.uniform(0, 180)), 0, 360, 2, -1)
        for _ in range(40):  # vesicles: small discs
            y, x = rng.integers(10, height - 10), rng.integers(10, width - 10)
            cv2.circle(mask, (int(x), int(y)), int(rng.integers(5, 12)), 3, -1)
        grey = np.where(mask == 2, 50, grey)
        grey = np.where(mask == 3, grey - 40 + 20 * rng.normal(size=(height, width)), grey)
        grey = np.clip(grey + rng.normal(0, 12, (height, width)), 0, 255).astype(np.uint8)
        alpha = np.full_like(grey, 255)
        Image.fromarray(np.dstack([grey, alpha]), "LA").save(root / "images" / f"slice_{i:02d}.png")
        cv2.imwrite(str(root / "masks" / f"slice_{i:02d}.png"), mask)
    share = np.bincount(mask.ravel(), minlength=4) / mask.size
    sys.stdout.write(f"wrote {n} slices to {root}; class shares of the last: {share.round(4)}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
