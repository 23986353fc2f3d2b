"""One row per ablation run under a folder (run_ablations.sh's): held-out pixel error, Dice
per class, steps, CPU minutes (user + system, data workers included) and wall minutes
(from times.txt, which run_ablations.sh writes), then the test-time augmentation rows
(tta/<arm>_<tta>.json, written by `python -m unet_seg.evaluate ... tta=d4 output=...`).

    python experiments/isbi2012/summarize_ablations.py outputs/isbi2012_ablations
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def times(folder: Path) -> dict[str, tuple[float, float]]:
    """arm -> (wall minutes, CPU minutes); the last line of an arm wins (a re-run)."""
    out = {}
    path = folder / "times.txt"
    for line in path.read_text().splitlines() if path.is_file() else []:
        parts = line.split()
        if len(parts) == 4 and not parts[0].startswith("Command"):
            name, wall, user, system = parts
            out[name] = (float(wall) / 60, (float(user) + float(system)) / 60)
    return out


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/isbi2012_ablations")
    clock = times(folder)
    rows = ["| arm | held-out pixel error | cell Dice | membrane Dice | steps | CPU minutes | "
            "wall minutes |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for metrics in sorted(folder.glob("*/metrics.json")):
        m = json.loads(metrics.read_text())
        name = metrics.parent.name
        wall, cpu = (f"{v:.1f}" for v in clock[name]) if name in clock else ("-", "-")
        error, cell, membrane = m["val/pixel_error"], m["val/dice/cell"], m["val/dice/membrane"]
        scores = f"{error:.4f} | {cell:.4f} | {membrane:.4f}"
        rows.append(f"| {name} | {scores} | {m['global_step']} | {cpu} | {wall} |")
    evaluations = sorted((folder / "tta").glob("*.json"))
    if evaluations:
        rows += ["", "| evaluation | held-out pixel error | cell Dice | membrane Dice |",
                 "|---|---|---|---|"]  # fmt: skip
        for path in evaluations:
            if path.name.endswith("_per_image.json"):
                continue
            m = json.loads(path.read_text())
            error = m["pixel_error/pooled"]
            cell, membrane = m["dice/pooled/cell"], m["dice/pooled/membrane"]
            rows.append(f"| {path.stem} | {error:.4f} | {cell:.4f} | {membrane:.4f} |")
    sys.stdout.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
