"""Pruned UNet++ (Zhou et al., 2018): parameters used, speed and Dice at levels 1..4 of one
trained run with deep supervision.

    python experiments/pruned_unetpp/run.py RUN_DIR [--split test] [--repeats 10]

Dice and HD95 come from `unet_seg.evaluate` (whole images, no TTA) on the run's split;
speed is forward passes of one whole image of that split (batch 1, float32, on the CPU
unless `--device cuda`), the median of `--repeats` timed passes after two warm-up passes.
Writes `results.md` beside this file and logs the same table.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from unet_seg.data.dataset import find_pairs, read_image
from unet_seg.data.splits import load_splits
from unet_seg.data.transforms import normalize
from unet_seg.evaluate import evaluate
from unet_seg.inference import load_for_inference
from unet_seg.run_dir import RunDir

log = logging.getLogger("pruned_unetpp")
HERE = Path(__file__).parent


def images_per_second(ckpt: Path, level: int, x: torch.Tensor, device: str, repeats: int) -> float:
    """Median speed of pruned forward passes on `x` `[1, C, H, W]`."""
    module = load_for_inference(ckpt, device, level)
    x = x.to(module.device)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            start = time.perf_counter()
            module(x)
            if module.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


def measure(run_dir: Path, split: str, repeats: int, device: str) -> list[dict]:
    """One row per level: parameters used, images/s, Dice and HD95 of the `split`."""
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    run_cfg = RunDir(run_dir).load_config()
    data = run_cfg.data
    pairs = dict((p.name, p) for p, _ in find_pairs(data.root, data.images_dir, data.masks_dir))
    first = pairs[load_splits(run_dir / "splits.json")[split][0]]
    image = read_image(first, data.in_channels)
    x = normalize(image, data.mean, data.std)[None]  # [1, C, H, W]
    net = load_for_inference(ckpt, "cpu").net
    rows = []
    for level in (1, 2, 3, 4):
        cfg = OmegaConf.create({
            "run_dir": str(run_dir), "ckpt": None, "split": split, "data_root": None,
            "level": level, "device": device, "mode": "whole", "worst": 0,
            "output": str(run_dir / "pruned" / f"evaluation_{split}_L{level}.json"),
        })  # fmt: skip
        scores = evaluate(cfg)
        names = list(data.class_names)
        rows.append({
            "level": level,
            "params": net.parameters_at_level(level),
            "images_per_s": images_per_second(ckpt, level, x, device, repeats),
            **{f"dice/{n}": scores[f"dice/pooled/{n}"] for n in names},
            **{f"hd95/{n}": scores[f"hd95/image_mean/{n}"] for n in names},
            "images": scores["images"],
        })  # fmt: skip
    return rows


def table(rows: list[dict], class_names: list[str], size: tuple[int, int]) -> str:
    full = rows[-1]
    head = ["level", "parameters used", "of L4", f"images/s ({size[0]}x{size[1]})", "speed-up"]
    head += [f"Dice {n} (pooled)" for n in class_names]
    head += [f"HD95 {class_names[-1]} (px, image mean)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            f"L{r['level']}", f"{r['params']:,}", f"{r['params'] / full['params']:.1%}",
            f"{r['images_per_s']:.2f}", f"{r['images_per_s'] / full['images_per_s']:.1f}x",
            *(f"{r[f'dice/{n}']:.4f}" for n in class_names), f"{r[f'hd95/{class_names[-1]}']:.2f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU model, its core count and torch's thread count."""
    name = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                  if ln.startswith("model name")]  # fmt: skip
        name = models[0] if models else name
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = measure(args.run_dir, args.split, args.repeats, args.device)
    data = RunDir(args.run_dir).load_config().data
    size = read_image(next(iter(find_pairs(data.root)))[0], data.in_channels).shape[:2]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name()
    text = (
        f"Run `{args.run_dir}`, {args.split} split ({rows[0]['images']} images), "
        f"device: {device}, torch {torch.__version__}.\n\n"
        + table(rows, list(data.class_names), size)
        + "\n"
    )
    (HERE / "results.md").write_text(text)
    log.info("%s", text)


if __name__ == "__main__":
    main()
