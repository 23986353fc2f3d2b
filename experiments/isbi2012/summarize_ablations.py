"""One row per ablation run under a folder (run_ablations.sh's): held-out pixel error, Dice
per class, steps and wall minutes (from wall_seconds.txt when the runner wrote it).

    python experiments/isbi2012/summarize_ablations.py outputs/isbi2012_ablations
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/isbi2012_ablations")
    walls = {}
    if (folder / "wall_seconds.txt").is_file():
        for line in (folder / "wall_seconds.txt").read_text().splitlines():
            name, seconds = line.split()
            walls[name] = int(seconds) / 60
    rows = ["| arm | held-out pixel error | cell Dice | membrane Dice | steps | wall minutes |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for metrics in sorted(folder.glob("*/metrics.json")):
        m = json.loads(metrics.read_text())
        name = metrics.parent.name
        wall = f"{walls[name]:.1f}" if name in walls else "-"
        rows.append(f"| {name} | {m['val/pixel_error']:.4f} | {m['val/dice/cell']:.4f} | "
                    f"{m['val/dice/membrane']:.4f} | {m['global_step']} | {wall} |")  # fmt: skip
    sys.stdout.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
