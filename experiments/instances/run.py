"""Instances: does an instance target with watershed decoding separate touching nuclei?

Trains the default U-Net (`scale=small`) on the default synthetic nuclei four times
with the same seed, split and budget, as `experiments/touching_cells` does:
`loss=ce_dice` and `loss=weighted_ce_dice`, whose objects are the connected components
of the predicted foreground, and `data.target=instances` (background / interior /
boundary from the instance labels) without and with the U-Net weight map of the
objects' interiors (`data.instances.weight_map=false`; `loss=weighted_ce_dice`, the
same weights as `data.target=instances` alone), whose objects are decoded by the
seeded watershed of `unet_seg.instances`. Each checkpoint (last and best) predicts the test
images whole through `model.instances(image)`, and is scored against the instance
labels: pixel Dice of the objects' foreground against the masks as stored, AP over
IoU 0.5..0.95 (the 2018 Data Science Bowl metric), F1 at 0.5, panoptic quality, and
the object counts of `unet_seg.scores.object_counts`.

Then it times tiled prediction of 2048x2048 synthetic tiles with the instance run's
checkpoint: the net (tiles blended into probabilities) against the decoding.

    python experiments/instances/run.py                       # train the arms, then score
    python experiments/instances/run.py trainer.max_epochs=10  # extra train overrides

An arm whose run directory already holds `metrics.json` is not trained again (its
train command is the same). Writes `results.md` and `results.json` beside this file
(or `--results DIR`).
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
from unet_seg.data.synthetic import render_sample
from unet_seg.data.weight_map import read_instances, separate_touching
from unet_seg.instances import InstanceBook, components, decode_instances, instance_target
from unet_seg.run_dir import RunDir
from unet_seg.scores import OBJECT_COUNTS, object_counts

log = logging.getLogger("instances")
HERE = Path(__file__).parent
ARMS = {  # run directory name -> train overrides
    "ce_dice": ["loss=ce_dice"],
    "weighted_ce_dice": ["loss=weighted_ce_dice"],
    # the instance target without and with the U-Net weight map of the objects' interiors
    "instances": ["data.target=instances", "data.instances.weight_map=false"],
    "instances_weighted": ["data.target=instances", "loss=weighted_ce_dice"],
}
TIMED = "instances_weighted"
"""The arm whose last checkpoint predicts the large tiles."""
DECODING = {"ce_dice": "components", "weighted_ce_dice": "components",
            "instances": "watershed", "instances_weighted": "watershed"}  # fmt: skip


def train_command(arm: str, run_dir: Path, overrides: list[str]) -> list[str]:
    """The `python -m unet_seg.train` command line of one arm."""
    # the synthetic set is generated into the experiment's own folder
    return ["python", "-m", "unet_seg.train", *ARMS[arm], f"hydra.run.dir={run_dir}",
            f"data.root={run_dir.parent / 'data'}", *overrides]  # fmt: skip


def score_objects(objects_of, names: list[str], truth_of) -> dict[str, float]:
    """Pixel Dice of the objects' foreground (pooled), instance scores and summed object
    counts of `objects_of(name) -> int [H, W]` against `truth_of(name)` instance labels."""
    book, counts = InstanceBook(), Counter()
    tp = fp = fn = 0
    for name in names:
        objects, truth = objects_of(name), truth_of(name)
        pred, fg = objects > 0, truth > 0
        tp += int((pred & fg).sum())
        fp += int((pred & ~fg).sum())
        fn += int((~pred & fg).sum())
        book.add(objects, truth)
        counts.update(object_counts(objects, truth, labelled=True))
    summary = book.summary()
    row = {"dice": 2 * tp / max(1, 2 * tp + fp + fn)}
    for key in ("ap", "f1@0.5", "pq", "sq", "rq"):
        row[f"{key}/image_mean"] = summary[f"instances/{key}/image_mean"]
        row[f"{key}/pooled"] = summary[f"instances/{key}/pooled"]
    row.update({k: counts[k] for k in OBJECT_COUNTS})
    return row


def split_reader(run_dir: Path, split: str):
    """(image names of `split`, image reader, instance label reader) of a run's data."""
    data = RunDir(run_dir).load_config().data
    root = Path(data.root)
    names = load_splits(run_dir / "splits.json")[split]
    instances_dir = root / (data.instances_dir or "instances")

    def image_of(name: str) -> np.ndarray:
        return read_image(root / data.images_dir / name, data.in_channels)

    def truth_of(name: str) -> np.ndarray:
        return read_instances(instances_dir / name)

    return names, image_of, truth_of


def evaluate_run(run_dir: Path, checkpoint: str, split: str) -> dict[str, float]:
    """Scores of `run_dir/checkpoints/<checkpoint>.ckpt` on the run's `split`."""
    names, image_of, truth_of = split_reader(run_dir, split)
    model = load_model(run_dir / "checkpoints" / f"{checkpoint}.ckpt", device="cpu", mode="whole")
    return score_objects(lambda name: model.instances(image_of(name)), names, truth_of)


def reference_rows(run_dir: Path, split: str) -> dict[str, dict[str, float]]:
    """The true labels as predictions: the stored masks' components, the carved masks'
    components, and the instance target decoded as if a net had predicted it exactly."""
    names, _, truth_of = split_reader(run_dir, split)

    def exact_target(name: str) -> np.ndarray:
        target = instance_target(truth_of(name))
        return decode_instances(np.stack([target == c for c in range(3)]).astype(np.float32))

    return {
        "reference: true masks as stored, components":
            score_objects(lambda n: components(truth_of(n)), names, truth_of),
        "reference: true masks, touching borders carved, components":
            score_objects(lambda n: components(separate_touching(truth_of(n))), names, truth_of),
        "reference: exact instance target, watershed":
            score_objects(exact_target, names, truth_of),
    }  # fmt: skip


def seed_sweep(run_dir: Path, split: str = "val") -> dict[str, dict[str, float]]:
    """Scores of the run's last checkpoint on `split` for seed thresholds 0.5..0.95: how
    `data.instances.seed_threshold` was chosen (on validation images, not test ones)."""
    names, image_of, truth_of = split_reader(run_dir, split)
    model = load_model(run_dir / "checkpoints" / "last.ckpt", device="cpu", mode="whole")
    probs = {name: model.probabilities(image_of(name)) for name in names}
    return {
        f"{run_dir.name}, last.ckpt, {split} split, seed_threshold={t}": score_objects(
            lambda name, t=t: decode_instances(probs[name], seed_threshold=t), names, truth_of)
        for t in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    }  # fmt: skip


def time_large_tiles(run_dir: Path, count: int = 2, side: int = 2048) -> dict[str, float]:
    """Seconds per `side` x `side` synthetic tile: the net (tiled, blended probabilities)
    and the watershed decoding, with the run's last checkpoint on the CPU."""
    model = load_model(run_dir / "checkpoints" / "last.ckpt", device="cpu", tile_size=512)
    net = decode = 0.0
    objects = 0
    for i in range(count):
        image, truth = render_sample(np.random.default_rng([1000, i]), side)
        start = time.perf_counter()
        ((labels, probs),) = model.run([image], probabilities=True)
        middle = time.perf_counter()
        found = model.module.instances(probs)
        end = time.perf_counter()
        net, decode = net + middle - start, decode + end - middle
        objects += int(found.max())
        log.info("tile %d: %d objects found, %d true; net %.1f s, decode %.2f s", i,
                 found.max(), truth.max(), middle - start, end - middle)  # fmt: skip
    return {"tiles": count, "side": side, "net_s": net / count, "decode_s": decode / count,
            "objects_per_tile": objects / count}  # fmt: skip


COLUMNS = (("dice", "pixel Dice"), ("ap/image_mean", "AP@0.5:0.95"),
           ("f1@0.5/pooled", "F1@0.5"), ("pq/pooled", "PQ"), ("sq/pooled", "SQ"),
           ("rq/pooled", "RQ"), ("matched", "matched"), ("merged", "merged"),
           ("split", "split"), ("missed", "missed"), ("false_positives", "false pos."),
           ("touching_pairs_separated", "pairs separated"))  # fmt: skip


def table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| prediction | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]  # fmt: skip
    for name, row in rows.items():
        cells = [f"{row[k]:.4f}" if isinstance(row[k], float) else str(row[k])
                 for k, _ in COLUMNS]  # fmt: skip
        pairs = row["touching_pairs"]
        cells[-1] += f" of {pairs} ({row['touching_pairs_separated'] / max(1, pairs):.0%})"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="extra train overrides (every arm)")
    parser.add_argument("--out", type=Path, default=Path("outputs/instances"))
    parser.add_argument("--results", type=Path, default=HERE)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    commands, seconds, rows = {}, {}, {}
    for arm in ARMS:
        run_dir = args.out / arm
        command = train_command(arm, run_dir, args.overrides)
        commands[arm] = shlex.join(command)
        if not (run_dir / "metrics.json").is_file():
            log.info("training: %s", commands[arm])
            start = time.perf_counter()
            subprocess.run([sys.executable, *command[1:]], check=True)
            seconds[arm] = time.perf_counter() - start
        for ckpt in ("last", "best"):
            rows[f"{arm}, {ckpt}.ckpt, {DECODING[arm]}"] = evaluate_run(run_dir, ckpt, args.split)
    rows.update(reference_rows(args.out / "ce_dice", args.split))
    sweep = {}
    for arm in ("instances", "instances_weighted"):
        sweep.update(seed_sweep(args.out / arm))
    timing = time_large_tiles(args.out / TIMED)

    args.results.mkdir(parents=True, exist_ok=True)
    result = {"commands": commands, "train_seconds": seconds, "rows": rows,
              "seed_thresholds": sweep, "large_tiles": timing, "split": args.split}  # fmt: skip
    (args.results / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    trained = "\n".join(f"- `{commands[k]}`" + (f": {seconds[k] / 60:.1f} min wall"
                        if k in seconds else " (trained before this run)")
                        for k in ARMS)  # fmt: skip
    threads = os.environ.get("OMP_NUM_THREADS")
    me = shlex.join(["python", "experiments/instances/run.py", *args.overrides])
    me = f"OMP_NUM_THREADS={threads} {me}" if threads else me
    speed = (f"Tiled prediction of {timing['tiles']} synthetic {timing['side']}x"
             f"{timing['side']} tiles ({TIMED}, last.ckpt, CPU, tile_size=512): net "
             f"{timing['net_s']:.1f} s per tile, watershed decoding {timing['decode_s']:.2f} s "
             f"per tile ({timing['objects_per_tile']:.0f} objects per tile).")  # fmt: skip
    text = (f"# Instances: results ({args.split} split)\n\nWritten by `{me}`.\n\n{trained}\n\n"
            f"{table(rows)}\n\nThe watershed's seed threshold on the validation split "
            f"(objects decoded with `seed_threshold` in place of the default):\n\n"
            f"{table(sweep)}\n\n{speed}\n")  # fmt: skip
    (args.results / "results.md").write_text(text)
    log.info("\n%s", text)


if __name__ == "__main__":
    main()
