"""ISBI 2012 side by side, one time budget: a plain MONAI peer, then unet-seg's budgeted recipe.

The peer is what a careful user writes by hand: MONAI `BasicUNet` (features
16,16,32,64,128,16), MONAI `DiceCELoss` (softmax, one-hot), Adam 1e-3, random
256x256 crops with flips and 90-degree rotations, batch 8, trained on slices 0..23
until the budget is spent, then scored at full size on slices 24..29. unet-seg then
runs `experiment=isbi2012_cv data.fold=4` (the same slices: fold 4 of the contiguous
folds holds out 24..29) with `trainer.budget` equal to the same budget, its final
evaluation included. Both are scored the same way: the pixel error over the six
held-out slices at full size (`unet_seg.metrics.pixel_error`).

    python experiments/isbi2012/peer.py --budget 15m        # needs: pip install -e ".[bench]"

Run it on a quiet machine: both sides share the CPU with nothing else.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from unet_seg.budget import parse_duration
from unet_seg.metrics import confusion_counts, pixel_error

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "isbi2012"
TRAIN, TEST = range(0, 24), range(24, 30)


def load(data: Path, slices: range) -> tuple[np.ndarray, np.ndarray]:
    """Images `[N, 1, H, W]` float32 in 0..1 and class indices `[N, H, W]` (1 = cell)."""
    images = [cv2.imread(str(data / "images" / f"{i}.png"), cv2.IMREAD_GRAYSCALE) for i in slices]
    masks = [cv2.imread(str(data / "masks" / f"{i}.png"), cv2.IMREAD_GRAYSCALE) for i in slices]
    x = np.stack(images)[:, None].astype(np.float32) / 255.0
    return x, (np.stack(masks) > 127).astype(np.int64)


def peer(data: Path, seconds: float, seed: int = 0) -> dict[str, float]:
    """Train the MONAI peer for `seconds`, score it on the held-out slices."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x, y = load(data, TRAIN)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2,
                    features=(16, 16, 32, 64, 128, 16))  # fmt: skip
    loss_fn = DiceCELoss(softmax=True, to_onehot_y=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    start, steps = time.monotonic(), 0
    net.train()
    while time.monotonic() - start < seconds:
        idx = rng.integers(0, len(x), 8)
        top, left = rng.integers(0, x.shape[2] - 256 + 1, (2, 8))
        crops = list(zip(idx, top, left, strict=True))
        xb = np.stack([x[i, :, t : t + 256, s : s + 256] for i, t, s in crops])
        yb = np.stack([y[i, t : t + 256, s : s + 256] for i, t, s in crops])
        for b in range(8):  # flips and 90-degree rotations
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            xb[b], yb[b] = np.rot90(xb[b], k, (1, 2)), np.rot90(yb[b], k)
            if flip:
                xb[b], yb[b] = xb[b][:, :, ::-1], yb[b][:, ::-1]
        logits = net(torch.from_numpy(np.ascontiguousarray(xb)))
        loss = loss_fn(logits, torch.from_numpy(np.ascontiguousarray(yb))[:, None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    trained = time.monotonic() - start
    net.eval()
    xt, yt = load(data, TEST)
    counts = 0
    with torch.no_grad():
        for image, truth in zip(xt, yt, strict=True):
            pred = net(torch.from_numpy(image)[None]).argmax(1)[0]
            counts = counts + confusion_counts(pred, torch.from_numpy(truth), 2)
    return {"pixel_error": float(pixel_error(counts)), "steps": steps,
            "minutes": (time.monotonic() - start) / 60, "train_minutes": trained / 60}  # fmt: skip


def ours(data: Path, budget: str, run_dir: Path, extra: list[str]) -> dict[str, float]:
    """unet-seg's budgeted recipe on fold 4 (slices 24..29 held out), scored by its final
    evaluation of the last weights at full size."""
    command = [sys.executable, "-m", "unet_seg.train", "experiment=isbi2012_cv", "data.fold=4",
               f"data.root={data}", f"trainer.budget={budget}", f"hydra.run.dir={run_dir}",
               *extra]  # fmt: skip
    start = time.monotonic()
    subprocess.run(command, check=True, cwd=ROOT)
    minutes = (time.monotonic() - start) / 60
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"pixel_error": metrics["val/pixel_error"], "steps": metrics["global_step"],
            "minutes": minutes}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="15m", help="time for each side, e.g. 15m")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "isbi2012_peer")
    parser.add_argument("--only", choices=("peer", "ours"), default=None)
    parser.add_argument("overrides", nargs="*", help="extra unet-seg overrides (key=value)")
    args = parser.parse_args()
    seconds = parse_duration(args.budget)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    if args.only in (None, "peer"):
        results["MONAI BasicUNet + DiceCELoss (plain loop)"] = peer(args.data, seconds)
    if args.only in (None, "ours"):
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        results["unet-seg experiment=isbi2012_cv data.fold=4 " + " ".join(args.overrides)] = ours(
            args.data, args.budget, args.out / f"ours_{stamp}", args.overrides
        )
    lines = [
        f"budget {args.budget} each, slices 0..23 -> 24..29, torch threads "
        f"{torch.get_num_threads()}",
        "",
        "| side | held-out pixel error | steps | minutes (all in) |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['pixel_error']:.4f} | {r['steps']} | {r['minutes']:.1f} |")
    text = "\n".join(lines) + "\n"
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
