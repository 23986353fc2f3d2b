"""Fine-tuning with few annotated images: a U-Net from scratch vs one started from a model
trained on other nuclei (`init_from=`), on 1, 2, 4 and 8 target training images.

- Source: the default U-Net (`scale=small`) trained on the synthetic nuclei (`data=synthetic`,
  64x64 uint8 images, nuclei of radius ~5-16 px), once.
- Target: a domain this script writes (`make_target`): the same generator rendered at twice
  the size and shrunk, so nuclei have a radius of ~2.5-8 px; lower contrast, added noise,
  stored as 16-bit PNGs in a low range (443..2361 of 0..65535 over the 44 images), read with
  `data.intensity.mode=percentile`. 8 training candidates, 4 validation, 32 test images.
- Each target run trains for the same epochs whatever its training set, with
  `data.train_repeats = 16 / k` (16 patches an epoch) and is scored on its last weights
  (`final_ckpt=last`: with a handful of images there is no validation set worth picking an
  epoch with). Arms: from scratch; fine-tuned with the defaults (no frozen encoder, one
  learning rate); fine-tuned with the encoder frozen for the first third of the epochs.

    OMP_NUM_THREADS=1 python experiments/finetune/run.py              # everything, then the table
    OMP_NUM_THREADS=1 python experiments/finetune/run.py --seeds 0    # fewer runs

A run directory that already holds a finished run is not trained again. Writes `results.md`
and `results.json` beside this file (or `--results DIR`).
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
from pathlib import Path

import cv2
import numpy as np

from unet_seg.data.splits import save_splits
from unet_seg.data.synthetic import render_sample, sample_name

log = logging.getLogger("finetune")
HERE = Path(__file__).parent
SIZE = 64
CANDIDATES, VAL, TEST = 8, 4, 32
PATCHES_PER_EPOCH = 16


def make_target(root: Path, seed: int = 1234) -> Path:
    """Write the target domain: `root/images/*.png` (uint16) and `root/masks/*.png` (0/255)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(CANDIDATES + VAL + TEST):
        rng = np.random.default_rng([seed, i])
        image, instances = render_sample(rng, 2 * SIZE)  # nuclei of radius 5-16 px, shrunk:
        small = cv2.resize(image / 255, (SIZE, SIZE), interpolation=cv2.INTER_AREA)  # 2.5-8 px
        mask = cv2.resize(instances, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST) > 0
        low_contrast = 0.15 + 0.35 * small + rng.normal(0, 0.03, small.shape)  # and noisier
        counts = np.clip(np.round(300 + 4000 * low_contrast), 0, 65535).astype(np.uint16)
        cv2.imwrite(str(root / "images" / sample_name(i)), counts)
        cv2.imwrite(str(root / "masks" / sample_name(i)), mask.astype(np.uint8) * 255)
    return root


def source_command(out: Path, epochs: int) -> list[str]:
    return ["python", "-m", "unet_seg.train", f"hydra.run.dir={out / 'source'}",
            f"data.root={out / 'source_data'}", f"data.synthetic.size={SIZE}",
            f"data.crop_size={SIZE}", f"trainer.max_epochs={epochs}", "logger=none"]  # fmt: skip


def arm_overrides(arm: str, out: Path, epochs: int) -> list[str]:
    """What an arm adds to a target run: nothing (scratch), the source's weights (finetuned),
    and those with the encoder frozen for the first third of the epochs (frozen)."""
    start = [f"init_from={out / 'source'}"]
    return {"scratch": [], "finetuned": start,
            "frozen": [*start, f"finetune.freeze_encoder_epochs={epochs // 3}"]}[arm]  # fmt: skip


def target_command(out: Path, k: int, seed: int, arm: str, epochs: int) -> list[str]:
    command = [
        "python", "-m", "unet_seg.train", f"hydra.run.dir={out / f'k{k}_seed{seed}_{arm}'}",
        "data=folder", f"data.root={out / 'target'}", "data.in_channels=1",
        "data.intensity.mode=percentile", "data.class_names=[background,nucleus]",
        f"data.crop_size={SIZE}", "data.batch_size=4", "data.num_workers=0",
        f"data.split_file={out / 'splits' / f'k{k}.json'}",
        f"data.train_repeats={PATCHES_PER_EPOCH // k}", f"trainer.max_epochs={epochs}",
        f"seed={seed}", "final_ckpt=last", "logger=none",
    ]  # fmt: skip
    return command + arm_overrides(arm, out, epochs)


def run(command: list[str]) -> float:
    """Run a command line (`python` = this interpreter); return its wall time in seconds."""
    log.info("%s", shlex.join(command))
    start = time.perf_counter()
    subprocess.run([sys.executable, *command[1:]], check=True)
    return time.perf_counter() - start


LABELS = {"scratch": "from scratch", "finetuned": "fine-tuned",
          "frozen": "fine-tuned, encoder frozen for the first third"}  # fmt: skip


def table(dice: dict, sizes: list[int], seeds: list[int], arms: list[str]) -> str:
    """Test Dice per training-set size: each arm's mean and its seeds, and each fine-tuned
    arm's difference to scratch."""
    tuned = [a for a in arms if a != "scratch"]
    lines = ["| target training images | " + " | ".join(LABELS[a] for a in arms)
             + "".join(f" | {LABELS[a]} - scratch" for a in tuned) + " |",
             "|---" * (1 + len(arms) + len(tuned)) + "|"]  # fmt: skip
    for k in sizes:
        cells, means = [], {}
        for arm in arms:
            values = [dice[f"k{k}_seed{s}_{arm}"] for s in seeds]
            means[arm] = float(np.mean(values))
            cells.append(f"{means[arm]:.3f} ({', '.join(f'{v:.3f}' for v in values)})")
        cells += [f"{means[a] - means['scratch']:+.3f}" for a in tuned]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/finetune"))
    parser.add_argument("--results", type=Path, default=HERE)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=30, help="epochs of each target run")
    parser.add_argument("--source-epochs", type=int, default=10)
    parser.add_argument("--arms", nargs="+", default=list(LABELS), choices=list(LABELS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    make_target(args.out / "target")
    names = [sample_name(i) for i in range(CANDIDATES + VAL + TEST)]
    val, test = names[CANDIDATES : CANDIDATES + VAL], names[CANDIDATES + VAL :]
    for k in args.sizes:
        save_splits({"train": names[:k], "val": val, "test": test},
                    args.out / "splits" / f"k{k}.json")  # fmt: skip

    commands = {"source": source_command(args.out, args.source_epochs)}
    for k in args.sizes:
        for seed in args.seeds:
            for arm in args.arms:
                commands[f"k{k}_seed{seed}_{arm}"] = target_command(args.out, k, seed, arm,
                                                                    args.epochs)  # fmt: skip
    seconds = {name: run(command) for name, command in commands.items()}
    metrics = {name: json.loads((args.out / name / "metrics.json").read_text())
               for name in commands}  # fmt: skip
    dice = {name: m["test/dice"] for name, m in metrics.items() if name != "source"}

    args.results.mkdir(parents=True, exist_ok=True)
    result = {"commands": {n: shlex.join(c) for n, c in commands.items()},
              "train_seconds": seconds, "test_dice": dice, "run_metrics": metrics}  # fmt: skip
    (args.results / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    threads = os.environ.get("OMP_NUM_THREADS")
    me = shlex.join(["python", "experiments/finetune/run.py", *sys.argv[1:]])
    me = f"OMP_NUM_THREADS={threads} {me}" if threads else me
    source = metrics["source"]
    text = (
        f"# Fine-tuning: results\n\nWritten by `{me}` in {sum(seconds.values()) / 60:.1f} min "
        f"(wall, on a CPU shared with other jobs).\n\nSource model: test Dice "
        f"{source['test/dice']:.3f} on its own synthetic nuclei "
        f"({seconds['source'] / 60:.1f} min).\n\nTest Dice (nucleus, {TEST} target test "
        f"images, last weights after {args.epochs} epochs of {PATCHES_PER_EPOCH} patches): mean "
        f"over seeds {args.seeds}, each seed in brackets.\n\n"
        f"{table(dice, args.sizes, args.seeds, args.arms)}\n"
    )
    (args.results / "results.md").write_text(text)
    log.info("\n%s", text)


if __name__ == "__main__":
    main()
