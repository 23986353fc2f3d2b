"""Peak memory of `predict` on one large volume, three ways: the whole probabilities
(`probabilities=true`, which writes them and so needs them whole), labels decided band by
band from the input read whole (`stream=false`), and the input read, normalised, predicted
and written a band of slices at a time (`stream=true`).

Writes one synthetic NIfTI volume (float32, 1 mm, uncompressed), saves an untrained small
3-D U-Net (3 classes) as a checkpoint, and runs `python -m unet_seg.predict` on it in fresh
processes; prints each run's peak RSS (VmHWM, from the log line predict writes) and whether the
label volumes agree.

    OMP_NUM_THREADS=1 python experiments/volume_memory/predict.py --root /tmp/volpred

`--format zarr` writes the input as OME-Zarr (chunks of 64 x 256 x 256) in place of NIfTI.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import nibabel as nib
import numpy as np
import torch

from unet_seg.data.volumes import VolumeMeta, read_volume, write_volume
from unet_seg.module import SegModule


def checkpoint(path: Path, patch: list[int]) -> Path:
    torch.manual_seed(0)
    module = SegModule(
        arch={"name": "unet3d", "base_channels": 4, "depth": 2, "in_channels": 1,
              "num_classes": 3},
        loss={"deep_supervision_weights": "equal"},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True},
        data={"class_names": ["background", "a", "b"], "in_channels": 1,
              "mask_values": [0, 1, 2], "mean": [0.0], "std": [1.0], "volume": True,
              "dims": 3, "patch": patch, "spacing": [1.0, 1.0, 1.0],
              "intensity": {"mode": "zscore"}},
    )  # fmt: skip
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--shape", type=int, nargs=3, default=[160, 384, 384])
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64])
    parser.add_argument(
        "--format",
        choices=["nifti", "zarr"],
        default="nifti",
        help="the input's format: uncompressed NIfTI, or OME-Zarr",
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        default=["whole", "bands", "streamed"],
        choices=["whole", "bands", "streamed"],
        help="which runs (default all)",
    )
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    filename = "case.nii" if args.format == "nifti" else "case.ome.zarr"
    volume = args.root / "input" / filename
    volume.parent.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    z, y, x = args.shape
    data = rng.normal(100, 20, (x, y, z)).astype(np.float32)  # NIfTI's x, y, z
    if args.format == "nifti":
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(volume))
    else:  # the same voxels as [Z, Y, X]
        meta = VolumeMeta((z, y, x), (1.0, 1.0, 1.0), tuple(map(tuple, np.eye(4))), "zarr")
        write_volume(volume, np.ascontiguousarray(data.transpose(2, 1, 0)), meta)
    ckpt = checkpoint(args.root / "net.ckpt", args.patch)
    mib = data.nbytes / 2**20
    del data  # the children report their own peak (VmHWM), but keep this process small too
    print(f"volume {args.shape} float32: {mib:.0f} MiB; 3 classes; patch {args.patch}")  # noqa: T201
    results = {}
    arms = (("whole probabilities", ["probabilities=true"]), ("bands", ["stream=false"]),
            ("streamed", ["stream=true"]))  # fmt: skip
    arms = [(name, extra) for name, extra in arms if name.split()[0] in args.arms]
    for name, extra in arms:
        out = args.root / name.replace(" ", "_")
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "unet_seg.predict", f"ckpt={ckpt}", f"input={volume.parent}",
             f"output={out}", "threads=1", f"hydra.run.dir={out / 'hydra'}", *extra],
            capture_output=True, text=True,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        peak = re.search(r"peak memory \(RSS\) ([0-9.]+) GiB", proc.stdout + proc.stderr)
        labels = read_volume(out / filename)[0]
        results[name] = labels
        print(f"{name:22s} peak RSS {float(peak.group(1)):.2f} GiB  {seconds:.0f} s")  # noqa: T201
    first = arms[0][0]
    for name, _ in arms[1:]:
        same = np.mean(results[name] == results[first])
        print(f"{name}: labels agree with the {first}' on {100 * same:.4f}% of voxels")  # noqa: T201


if __name__ == "__main__":
    main()
