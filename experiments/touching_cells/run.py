"""Touching cells: does the U-Net weight map separate touching nuclei?

Trains the default U-Net (`scale=small`) on the default synthetic nuclei three
times with the same seed, split and budget: `loss=ce_dice`, `loss=weighted_ce_dice`,
and an ablation that keeps the weighted run's training target (touching nuclei
separated by a carved background border) but weighs every pixel 1 (`w0=0`, no
class balance), so that the border term's own effect can be told apart from the
target's. Then it scores each on the test split: pixel Dice against the masks as stored, and
object counts (`unet_seg.scores.object_counts`): the connected components of the
predicted foreground matched one-to-one to the true instances at IoU > 0.5.

    python experiments/touching_cells/run.py                      # train both, then score
    python experiments/touching_cells/run.py trainer.max_epochs=10  # extra train overrides

A run directory that already holds a finished run is not trained again (the
train entry point returns its metrics). Writes `results.md` and `results.json`
beside this file (or `--results DIR`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from unet_seg.api import load_model
from unet_seg.data.readers import read_image
from unet_seg.data.splits import load_splits
from unet_seg.data.weight_map import read_instances, separate_touching
from unet_seg.run_dir import RunDir
from unet_seg.scores import OBJECT_COUNTS, object_counts

log = logging.getLogger("touching_cells")
HERE = Path(__file__).parent
ARMS = {  # run directory name -> train overrides
    "ce_dice": ["loss=ce_dice"],
    "separated_target_only": ["loss=weighted_ce_dice", "loss.weight_map.w0=0",
                              "loss.weight_map.class_balance=false"],
    "weighted_ce_dice": ["loss=weighted_ce_dice"],
}  # fmt: skip


def train_command(arm: str, run_dir: Path, overrides: list[str]) -> list[str]:
    """The `python -m unet_seg.train` command line of one arm."""
    # the data is the default synthetic set, generated into the experiment's own folder so
    # that no other job's dataset at outputs/data/synthetic is touched
    return ["python", "-m", "unet_seg.train", *ARMS[arm], f"hydra.run.dir={run_dir}",
            f"data.root={run_dir.parent / 'data'}", *overrides]  # fmt: skip


def score_predictions(predict, names: list[str], data, split_root: Path) -> dict[str, float]:
    """Pixel Dice (pooled) and summed object counts of `predict(name) -> bool [H, W]`."""
    counts: Counter[str] = Counter()
    tp = fp = fn = 0
    for name in names:
        instances = read_instances(split_root / data.instances_dir / name)
        pred = predict(name)
        truth = instances > 0
        tp += int((pred & truth).sum())
        fp += int((pred & ~truth).sum())
        fn += int((~pred & truth).sum())
        counts.update(object_counts(pred, instances))
    return {"dice": 2 * tp / max(1, 2 * tp + fp + fn), **{k: counts[k] for k in OBJECT_COUNTS}}


def evaluate_run(run_dir: Path, checkpoint: str, split: str) -> dict[str, float]:
    """Scores of `run_dir/checkpoints/<checkpoint>.ckpt` on the run's `split`."""
    data = RunDir(run_dir).load_config().data
    root = Path(data.root)
    names = load_splits(run_dir / "splits.json")[split]
    model = load_model(run_dir / "checkpoints" / f"{checkpoint}.ckpt", device="cpu", mode="whole")

    def predict(name: str) -> np.ndarray:
        image = read_image(root / data.images_dir / name, data.in_channels)
        return model.labels(image) > 0

    return score_predictions(predict, names, data, root)


def reference_rows(run_dir: Path, split: str) -> dict[str, dict[str, float]]:
    """The true masks scored as predictions: as stored, and with touching borders carved."""
    data = RunDir(run_dir).load_config().data
    root = Path(data.root)
    names = load_splits(run_dir / "splits.json")[split]

    def stored(name: str) -> np.ndarray:
        return read_instances(root / data.instances_dir / name) > 0

    def carved(name: str) -> np.ndarray:
        return separate_touching(read_instances(root / data.instances_dir / name)) > 0

    return {
        "true mask as stored": score_predictions(stored, names, data, root),
        "true mask, touching borders carved": score_predictions(carved, names, data, root),
    }


COLUMNS = (("dice", "pixel Dice"), ("true_objects", "true objects"),
           ("matched", "matched (IoU > 0.5)"), ("merged", "merged"), ("split", "split"),
           ("missed", "missed"), ("false_positives", "false pos."),
           ("touching", "touching objects"), ("touching_matched", "touching matched"),
           ("touching_pairs", "touching pairs"),
           ("touching_pairs_separated", "pairs separated"))  # fmt: skip


def table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| prediction | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]  # fmt: skip
    for name, row in rows.items():
        cells = [f"{row[k]:.4f}" if k == "dice" else str(int(row[k])) for k, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="extra train overrides (both arms)")
    parser.add_argument("--out", type=Path, default=Path("outputs/touching_cells"))
    parser.add_argument("--results", type=Path, default=HERE)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    commands, seconds, rows, metrics = {}, {}, {}, {}
    for arm in ARMS:
        run_dir = args.out / arm
        command = train_command(arm, run_dir, args.overrides)
        commands[arm] = shlex.join(command)
        log.info("training: %s", commands[arm])
        start = time.perf_counter()
        subprocess.run([sys.executable, *command[1:]], check=True)
        seconds[arm] = time.perf_counter() - start
        metrics[arm] = json.loads((run_dir / "metrics.json").read_text())
        for ckpt in ("last", "best"):
            rows[f"{arm}, {ckpt}.ckpt"] = evaluate_run(run_dir, ckpt, args.split)
    rows.update(reference_rows(args.out / "ce_dice", args.split))

    args.results.mkdir(parents=True, exist_ok=True)
    result = {"commands": commands, "train_seconds": seconds, "rows": rows,
              "run_metrics": metrics, "split": args.split}  # fmt: skip
    (args.results / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    timing = "\n".join(f"- `{commands[k]}`: {seconds[k] / 60:.1f} min wall" for k in ARMS)
    threads = os.environ.get("OMP_NUM_THREADS")
    me = shlex.join(["python", "experiments/touching_cells/run.py", *args.overrides])
    me = f"OMP_NUM_THREADS={threads} {me}" if threads else me
    text = (f"# Touching cells: results ({args.split} split)\n\n"
            f"Written by `{me}`.\n\n{timing}\n\n{table(rows)}\n")  # fmt: skip
    (args.results / "results.md").write_text(text)
    log.info("\n%s", text)


if __name__ == "__main__":
    main()
