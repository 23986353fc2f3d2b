"""Print the plan and the held-out scores of each run of `run_isbi.sh` as a Markdown table.

python experiments/plan/summarize.py isbi_8bit isbi_16bit_1pct ...   (runs in outputs/plan/)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(variant: str, runs: Path = Path("outputs/plan")) -> str:
    run = runs / variant
    if not (run / "metrics.json").is_file():
        return f"| `{variant}` | did not finish: see `{run}.log` |"
    plan = json.loads((run / "plan.json").read_text())["plan"]
    metrics = json.loads((run / "metrics.json").read_text())
    intensity = plan["intensity"]["value"]
    scaling = (f"{intensity['mode']} {intensity.get('vmin', 0):g}..{intensity.get('vmax', 0):g}"
               if intensity["mode"] == "fixed" else intensity["mode"])  # fmt: skip
    names = plan["class_names"]["value"]
    dice = " / ".join(f"{metrics[f'test/dice/{n}']:.4f}" for n in names)
    error = metrics["test/pixel_error"]
    return (f"| `{variant}` | {plan['in_channels']['value']} | {scaling} | "
            f"{plan['mask_values']['value']} | {error:.4f} | {dice} |")  # fmt: skip


def rare_row(name: str, runs: Path = Path("outputs/plan")) -> str:
    """Validation and test Dice per class of one run of `run_rare.sh`."""
    run = runs / name
    if not (run / "metrics.json").is_file():
        return f"| `{name}` | did not finish: see `{run}.log` |"
    metrics = json.loads((run / "metrics.json").read_text())
    classes = json.loads((run / "plan.json").read_text())["plan"]["class_names"]["value"]
    cells = [f"{metrics[f'val/dice/{c}']:.3f} / {metrics[f'test/dice/{c}']:.3f}" for c in classes]
    return f"| `{name}` | " + " | ".join(cells) + " |"


def main() -> None:
    if sys.argv[1] == "--rare":
        names = sys.argv[2:]
        plan = json.loads((Path("outputs/plan") / names[0] / "plan.json").read_text())
        classes = plan["plan"]["class_names"]["value"]
        lines = ["| run | " + " | ".join(f"{c} Dice (val / test)" for c in classes) + " |",
                 "|---|" + "---|" * len(classes), *map(rare_row, names)]  # fmt: skip
    else:
        lines = ["| variant | channels | intensity | mask values | test pixel error | "
                 "test Dice per class |", "|---|---|---|---|---|---|",
                 *map(row, sys.argv[1:])]  # fmt: skip
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
