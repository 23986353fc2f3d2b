"""Summarise the sparse-label arms: held-out pixel error against full labels, per arm.

    python experiments/sparse_labels/summarize.py outputs/sparse_labels/runs

Reads each arm's metrics.json, config.yaml and splits.json, counts the labelled share of
its training masks, takes its wall time from the first line of its train.log (the run
directory made) to its metrics.json (written after the final evaluation), and writes
results.json and results.md beside this script (the table is also printed).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import cv2
import yaml

HERE = Path(__file__).resolve().parent
ORDER = ["full", "p50", "p10", "p02"]


def labelled_share(root: Path, names: list[str], ignore_value: int) -> float:
    labelled = total = 0
    for name in names:
        mask = cv2.imread(str(root / "masks" / name), cv2.IMREAD_UNCHANGED)
        labelled += int((mask != ignore_value).sum())
        total += mask.size
    return labelled / total


def wall_seconds(run: Path) -> int:
    first = (run / "train.log").read_text().splitlines()[0]
    start = datetime.strptime(first[1:20], "%Y-%m-%d %H:%M:%S").timestamp()
    return round((run / "metrics.json").stat().st_mtime - start)


def summarize(runs: Path) -> tuple[list[dict], str]:
    rows = []
    for metrics_file in sorted(runs.glob("*/metrics.json")):
        run = metrics_file.parent
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        metrics = json.loads(metrics_file.read_text())
        splits = json.loads((run / "splits.json").read_text())
        rows.append(
            {
                "arm": run.name,
                "labelled_share": labelled_share(
                    Path(cfg["data"]["root"]), splits["train"], cfg["data"]["ignore_value"]
                ),
                "epochs": metrics["epochs"],
                "steps": metrics["global_step"],
                "pixel_error": metrics["val/pixel_error"],
                "dice_cell": metrics["val/dice/cell"],
                "dice_membrane": metrics["val/dice/membrane"],
                "seconds": wall_seconds(run),
                "held_out": splits["val"],
            }
        )
    rows.sort(key=lambda r: ORDER.index(r["arm"]) if r["arm"] in ORDER else len(ORDER))
    lines = [
        "| arm | training pixels labelled | epochs (steps) | held-out pixel error | "
        "cell Dice | membrane Dice | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        wall = f"{r['seconds'] // 60} min {r['seconds'] % 60} s"
        lines.append(
            f"| {r['arm']} | {r['labelled_share']:.2%} | {r['epochs']} ({r['steps']}) "
            f"| {r['pixel_error']:.4f} | {r['dice_cell']:.4f} | "
            f"{r['dice_membrane']:.4f} | {wall} |"
        )
    return rows, "\n".join(lines)


if __name__ == "__main__":
    rows, table = summarize(Path(sys.argv[1]))
    (HERE / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    (HERE / "results.md").write_text(table + "\n")
    sys.stdout.write(table + "\n")
