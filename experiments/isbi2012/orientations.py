"""How a net scores each of the 8 orientations of the held-out slices, and their average.

Each slice is turned by k quarter turns (and mirrored left-right), predicted, turned
back, and scored; `tta=d4` is the average of the 8 probability maps. A net trained to
see every orientation alike scores them alike; a gap says it learned the slices'
upright look.

    python experiments/isbi2012/orientations.py outputs/isbi2012_ablations/baseline
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from unet_seg import load_model
from unet_seg.metrics import confusion_counts, pixel_error

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "isbi2012"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run of experiment=isbi2012_cv")
    parser.add_argument("--slices", default="24-29", help="held-out slices, first-last")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    first, last = (int(s) for s in args.slices.split("-"))
    model = load_model(args.run_dir / "checkpoints" / "last.ckpt", device="cpu")
    slices = range(first, last + 1)
    images = [cv2.imread(str(args.data / "images" / f"{i}.png"), cv2.IMREAD_GRAYSCALE)
              for i in slices]  # fmt: skip
    truths = [(cv2.imread(str(args.data / "masks" / f"{i}.png"), 0) > 127).astype(np.int64)
              for i in slices]  # fmt: skip
    total = [np.zeros((2, *t.shape), np.float32) for t in truths]
    lines = ["| quarter turns | mirrored | pixel error |", "|---|---|---|"]
    for turns in range(4):
        for mirror in (False, True):
            counts = 0
            for j, (image, truth) in enumerate(zip(images, truths, strict=True)):
                seen = np.rot90(image, turns)
                seen = seen[:, ::-1] if mirror else seen
                probs = model.probabilities(np.ascontiguousarray(seen))  # [2, H, W]
                probs = probs[:, :, ::-1] if mirror else probs
                probs = np.rot90(probs, -turns, axes=(1, 2))
                total[j] += probs
                counts = counts + confusion_counts(probs.argmax(0), truth, 2)
            lines.append(f"| {turns} | {'yes' if mirror else 'no'} | "
                         f"{float(pixel_error(counts)):.4f} |")  # fmt: skip
    pairs = zip(total, truths, strict=True)
    counts = sum(confusion_counts(probs.argmax(0), truth, 2) for probs, truth in pairs)
    lines.append(f"| average of the 8 (tta=d4) | | {float(pixel_error(counts)):.4f} |")
    sys.stdout.write(f"{args.run_dir}, slices {args.slices}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
