"""The ISBI stack table of experiments/volumes/README.md from its runs' metrics.json and
plan.json: `python experiments/volumes/summarize.py outputs/volumes/isbi`."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(run: Path) -> str:
    metrics = json.loads((run / "metrics.json").read_text())
    plan = json.loads((run / "plan.json").read_text())
    data = {k: v["value"] for k, v in plan["plan"].items()} | plan["given"]
    dims = data.get("dims")
    what = f"{dims}-D" + (f", slab {data.get('slab')}" if dims == 2.5 else "")
    window = data.get("patch") or data.get("crop_size")
    minutes = metrics.get("budget_spent_s", float("nan")) / 60
    return (
        f"| {run.name} | {what} | {window} | {metrics['global_step']} | {minutes:.1f} | "
        f"{metrics['test/pixel_error']:.4f} | {metrics['test/dice']:.4f} |"
    )


def table(root: Path) -> str:
    lines = ["| run | input | window | steps | train min | pixel error (24..29) | cell Dice |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    runs = sorted(p for p in root.iterdir() if (p / "metrics.json").is_file())
    return "\n".join(lines + [row(run) for run in runs])


if __name__ == "__main__":
    sys.stdout.write(table(Path(sys.argv[1])) + "\n")
