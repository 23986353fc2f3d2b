"""The CamVid table: one row per run from OUT/*/score.json (score.py's and peer.py's).

    python experiments/camvid/summarize.py [--out outputs/camvid] [--write results.md]

Columns: the run, its budget, training steps, mIoU (mean over the 11 classes), pixel
accuracy, then the IoU of each class; rows ordered by budget, then name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unet_seg.budget import parse_duration

CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car",
           "pedestrian", "bicyclist"]  # fmt: skip


def table(results: list[dict]) -> str:
    """A markdown table of score JSONs; IoU and accuracies as percentages to one decimal."""
    head = ["run", "budget", "steps", "mIoU", "pixel acc.", *CLASSES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.get("name", "?"), str(r.get("budget", "?")), str(r.get("steps", "?")),
                 f"{100 * r['miou']:.1f}", f"{100 * r['pixel_accuracy']:.1f}",
                 *(f"{100 * r['iou'][c]:.1f}" for c in CLASSES)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def budget_seconds(result: dict) -> float:
    try:
        return parse_duration(str(result.get("budget")))
    except (ValueError, TypeError):
        return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/camvid"),
                        help="folder of runs, each with a score.json")  # fmt: skip
    parser.add_argument("--write", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    files = sorted(args.out.glob("*/score.json"))
    if not files:
        sys.exit(f"no {args.out}/*/score.json: run experiments/camvid/run.sh (or score.py) first")
    results = [json.loads(f.read_text()) for f in files]
    results.sort(key=lambda r: (budget_seconds(r), r.get("name", "")))
    text = (f"CamVid test split ({results[0]['images']} images, void ignored); IoU and "
            "accuracy in %\n\n" + table(results))  # fmt: skip
    if args.write is not None:
        args.write.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
