"""Summarise an ISBI 2012 cross-validation sweep as a Markdown table.

    python experiments/isbi2012/summarize.py outputs/multirun/<time>

Reads each job's config.yaml and metrics.json (written by `python -m unet_seg.train`),
groups the jobs by architecture, and prints mean and standard deviation over folds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import yaml

METRICS = [
    ("val/pixel_error", "pixel error"),
    ("val/dice/cell", "foreground (cell) Dice"),
    ("val/dice/membrane", "membrane Dice"),
]


def summarize(sweep: Path) -> str:
    rows: dict[str, list[dict]] = {}
    for metrics_file in sorted(sweep.rglob("metrics.json")):
        cfg = yaml.safe_load((metrics_file.parent / "config.yaml").read_text())
        metrics = json.loads(metrics_file.read_text())
        rows.setdefault(cfg["arch"]["name"], []).append({"fold": cfg["data"]["fold"], **metrics})
    if not rows:
        raise SystemExit(f"{sweep}: no */metrics.json found")
    header = "| arch | folds | " + " | ".join(label for _, label in METRICS) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 2)]
    for arch, jobs in sorted(rows.items()):
        cells = []
        for key, _ in METRICS:
            values = np.array([job[key] for job in jobs])
            cells.append(
                f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0:.4f}"
            )
        folds = ",".join(str(j["fold"]) for j in sorted(jobs, key=lambda j: j["fold"]))
        lines.append(f"| {arch} | {folds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(summarize(Path(sys.argv[1])) + "\n")
