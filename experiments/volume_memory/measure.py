"""Peak memory (RSS) of training on a volume set several times the memory budget, with the
volumes in memory (`data.cache=true`) and memory-mapped from preprocessed copies on disk
(`data.cache=auto` deciding disk for a budget below the set's float32 size).

    OMP_NUM_THREADS=1 python experiments/volume_memory/measure.py --root /tmp/volmem

Each mode runs in a fresh process (`ru_maxrss`/VmHWM is a process's peak): imports, a small
3-D U-Net and one warm-up step on a zero batch, then the baseline (VmRSS); then the data
module's `check()` (every case read once; on disk: written to its copy) and `setup()`, and
`--steps` training steps from `train_dataloader()` (no workers: all in this process). The
figure is the peak (VmHWM) minus the baseline.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def status_kib(key: str) -> int:
    """A `/proc/self/status` line in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def make_cases(root: Path, cases: int, shape: tuple[int, int, int]) -> None:
    """`cases` volumes of `shape`, 1 mm isotropic, uncompressed NIfTI: noise around a
    brighter sphere (class 1) with a core (class 2)."""
    from unet_seg.data.volumes import VolumeMeta, write_volume

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    meta = VolumeMeta(shape, (1.0, 1.0, 1.0), tuple(map(tuple, np.eye(4))), "nifti")
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for i in range(cases):
        if (root / "masks" / f"case_{i:02d}.nii").exists():
            continue
        rng = np.random.default_rng(i)
        centre = [rng.integers(n // 3, 2 * n // 3) for n in shape]
        r2 = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
        labels = np.where(r2 < 30**2, 1, 0).astype(np.uint8)
        labels[r2 < 10**2] = 2
        image = rng.normal(100, 20, shape).astype(np.float32) + 50 * labels
        write_volume(root / "images" / f"case_{i:02d}.nii", image, meta)
        write_volume(root / "masks" / f"case_{i:02d}.nii", labels, meta, labels=True)


def train(root: Path, mode: str, budget: int, steps: int, patch: list[int]) -> dict:
    """One mode's run in this process: its figures."""
    import torch

    from unet_seg.data.plan import CACHE_SHARE
    from unet_seg.data.volume_datamodule import VolumeDataModule
    from unet_seg.models.unet3d import UNet3D

    torch.manual_seed(0)
    net = UNet3D(1, 3, base_channels=8, depth=2)
    optimiser = torch.optim.Adam(net.parameters(), 1e-3)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        loss = torch.nn.functional.cross_entropy(net(x), y, ignore_index=-100)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return float(loss)

    step(torch.zeros(2, 1, *patch), torch.zeros(2, *patch, dtype=torch.long))  # warm-up
    after_imports = status_kib("VmRSS")
    cache = {"cache": True} if mode == "memory" else {
        "cache": "auto", "cache_memory": int(budget / CACHE_SHARE)}  # fmt: skip
    run = root.parent / f"{root.name}_run_{mode}"
    dm = VolumeDataModule(
        root=str(root), in_channels=1, num_classes=3, class_names=["bg", "a", "b"],
        mask_values=[0, 1, 2], intensity={"mode": "zscore"}, mean=[0.0], std=[1.0],
        crop_size=None, dims=3, slab=1, slice_axis=0, spacing=[1.0, 1.0, 1.0], patch=patch,
        batch_size=2, train_repeats=4, foreground_crop=0.33, val_fraction=0.2, test_fraction=0.1,
        splits_path=str(run / "splits.json"), **cache,
    )  # fmt: skip
    start = time.perf_counter()
    assert dm.check() == []
    dm.setup()
    ready = time.perf_counter() - start
    losses, start = [], time.perf_counter()
    for i, batch in enumerate(dm.train_dataloader()):
        if i == steps:
            break
        losses.append(step(batch["image"], batch["mask"]))
    sizes = [dm.datasets[s].case(0).image.nbytes + dm.datasets[s].case(0).labels.nbytes
             for s in ("train",)]  # fmt: skip
    cases = sum(len(d) for d in dm.datasets.values())
    return {
        "mode": mode,
        "memory_mapped": bool(dm.datasets["train"].memory_mapped),
        "cases": cases,
        "set_mib": round(sizes[0] * cases / 2**20, 1),
        "budget_mib": round(budget / 2**20, 1),
        "baseline_mib": round(after_imports / 1024, 1),
        "peak_mib": round(status_kib("VmHWM") / 1024, 1),
        "peak_minus_baseline_mib": round((status_kib("VmHWM") - after_imports) / 1024, 1),
        "read_s": round(ready, 1),
        "steps": len(losses),
        "step_s": round((time.perf_counter() - start) / max(1, len(losses)), 2),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/volmem/data"))
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 256, 256])
    parser.add_argument("--budget-mb", type=float, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64])
    parser.add_argument("--mode", choices=["memory", "disk"], help="one run (internal)")
    args = parser.parse_args()
    budget = int(args.budget_mb * 2**20)
    if args.mode:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        sys.stdout.write(json.dumps(train(args.root, args.mode, budget, args.steps,
                                          args.patch)) + "\n")  # fmt: skip
        return
    make_cases(args.root, args.cases, tuple(args.shape))
    for mode in ("memory", "disk"):
        shutil.rmtree(args.root.parent / f"{args.root.name}_run_{mode}", ignore_errors=True)
        out = subprocess.run(
            [sys.executable, __file__, "--root", str(args.root), "--mode", mode,
             "--budget-mb", str(args.budget_mb), "--steps", str(args.steps),
             "--patch", *map(str, args.patch)],
            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        sys.stderr.write("".join(line + "\n" for line in out.stderr.splitlines()
                                 if "data.cache" in line or "Error" in line))  # fmt: skip
        done = out.returncode == 0
        sys.stdout.write(
            (out.stdout.strip().splitlines()[-1] if done else out.stderr[-3000:]) + "\n"
        )


if __name__ == "__main__":
    main()
