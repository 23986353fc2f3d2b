"""CamVid's MONAI peer: what a careful user writes by hand, trained for a wall-clock budget.

MONAI `BasicUNet` (features 16,16,32,64,128,16), Dice + cross-entropy as MONAI's
`DiceCELoss` adds them (softmax, one-hot targets, each term weighted 1) with void (11)
left out of both terms, Adam 1e-3, trained on the 367 train images of the official
split until `--budget` is spent, then every test image predicted at full size, written
as a class-index PNG and scored by `score.py` (the scoring unet-seg's side gets).

Choices, as a careful user would make them for 360x480 road scenes on a CPU:
- 256x256 random crops: the largest multiple of 16 (BasicUNet halves four times) that
  fits the 360 px short side with room to move, so a crop still sees the scene's layout
  (road below, sky above) while a step stays affordable on a CPU.
- batch 8: 8 x 256^2 = 0.52 Mpx a step, about three whole frames, enough pixels of
  the rare classes (pole, sign, pedestrian, bicyclist: each about 1% of the labels) in
  most batches for the Dice term to see them; larger batches only lengthen the step.
- horizontal flips only: road scenes are not mirrored top to bottom nor rotated, so
  vertical flips and 90-degree rotations would teach views the test set never shows.
- intensities /255, then the training images' per-channel mean and std.
MONAI's `DiceCELoss` takes no ignore index, so the loss is its two terms written out:
`DiceLoss(softmax, to_onehot_y, ignore_index=11)` + `CrossEntropyLoss(ignore_index=11)`.

    python experiments/camvid/peer.py --budget 15m --data /work/data/camvid \
        --out outputs/camvid/peer_15m [--threads 1]

Writes OUT/masks/*.png, OUT/score.json (score.py's fields plus steps and minutes) and
OUT/peer.pt (the weights). Torch computes with `--threads`, else OMP_NUM_THREADS, else
torch's default. Run it on a quiet machine, or pinned to its own cores (run.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unet_seg.budget import parse_duration

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score import CLASSES, VOID, score_folder  # noqa: E402

CROP, BATCH = 256, 8


def load(data: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """RGB images `[N, 3, H, W]` uint8 and class indices `[N, H, W]` uint8 (11 = void)."""
    images = np.stack([np.asarray(Image.open(data / "images" / n).convert("RGB")) for n in names])
    masks = np.stack([np.asarray(Image.open(data / "masks" / n)) for n in names])
    return images.transpose(0, 3, 1, 2).copy(), masks


class VoidDiceCE(torch.nn.Module):
    """MONAI's Dice + cross-entropy (as `DiceCELoss` sums them) with void pixels in neither.

    Shape: `forward(logits [B, K, H, W], target [B, 1, H, W] int, void = `ignore_index`)`.
    """

    def __init__(self, ignore_index: int = VOID) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        self.dice = DiceLoss(softmax=True, to_onehot_y=True, ignore_index=ignore_index)
        self.ce = torch.nn.CrossEntropyLoss(ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, target) + self.ce(logits, target[:, 0].long())


def batch(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`BATCH` random `CROP`-square crops of random training images, each flipped left to
    right with probability 1/2: images `[B, 3, C, C]` uint8, masks `[B, 1, C, C]`."""
    idx = rng.integers(0, len(x), BATCH)
    tops = rng.integers(0, x.shape[2] - CROP + 1, BATCH)
    lefts = rng.integers(0, x.shape[3] - CROP + 1, BATCH)
    xb = np.stack(
        [x[i, :, t : t + CROP, s : s + CROP] for i, t, s in zip(idx, tops, lefts, strict=True)]
    )
    yb = np.stack(
        [y[i, t : t + CROP, s : s + CROP] for i, t, s in zip(idx, tops, lefts, strict=True)]
    )
    flip = rng.random(BATCH) < 0.5
    xb[flip], yb[flip] = xb[flip][..., ::-1], yb[flip][..., ::-1]
    return xb, yb[:, None]


def predict(
    net: torch.nn.Module, image: np.ndarray, mean: torch.Tensor, std: torch.Tensor
) -> np.ndarray:
    """Class indices `[H, W]` of one uint8 image `[3, H, W]` at full size: reflect-padded to
    a multiple of 16 for the net, the padding cut off again."""
    h, w = image.shape[1:]
    x = (torch.from_numpy(image).float()[None] / 255 - mean) / std
    x = torch.nn.functional.pad(x, (0, -w % 16, 0, -h % 16), mode="reflect")
    return net(x)[0, :, :h, :w].argmax(0).to(torch.uint8).numpy()


def train_and_predict(data: Path, out: Path, seconds: float, seed: int = 0) -> dict:
    """Train the peer for `seconds` of wall clock on the train split, predict the test
    split into `out/masks`, and return score.py's scores with the run's steps and times."""
    from monai.networks.nets import BasicUNet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    split = json.loads((data / "split.json").read_text())
    started = time.monotonic()
    x, y = load(data, split["train"])
    mean = torch.tensor(x.mean((0, 2, 3)) / 255, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(x.std((0, 2, 3)) / 255, dtype=torch.float32).view(1, 3, 1, 1)
    load_seconds = time.monotonic() - started
    net = BasicUNet(
        spatial_dims=2, in_channels=3, out_channels=len(CLASSES), features=(16, 16, 32, 64, 128, 16)
    )
    loss_fn = VoidDiceCE()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    start, steps = time.monotonic(), 0
    net.train()
    while time.monotonic() - start < seconds:
        xb, yb = batch(rng, x, y)
        inputs = (torch.from_numpy(np.ascontiguousarray(xb)).float() / 255 - mean) / std
        loss = loss_fn(net(inputs), torch.from_numpy(np.ascontiguousarray(yb)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    train_seconds = time.monotonic() - start
    del x, y
    net.eval()
    masks = out / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for name in split["test"]:
            image = np.asarray(Image.open(data / "images" / name).convert("RGB")).transpose(2, 0, 1)
            Image.fromarray(predict(net, image, mean, std)).save(masks / name)
    predict_seconds = time.monotonic() - start - train_seconds
    torch.save(net.state_dict(), out / "peer.pt")
    result = score_folder(masks, data, "test")
    result.update(
        {
            "steps": steps,
            "threads": torch.get_num_threads(),
            "crop": CROP,
            "batch": BATCH,
            "load_minutes": load_seconds / 60,
            "train_minutes": train_seconds / 60,
            "predict_minutes": predict_seconds / 60,
            "minutes": (time.monotonic() - started) / 60,
        }
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="15m", help="training wall clock, e.g. 15m, 1h")
    parser.add_argument("--data", type=Path, required=True, help="CamVid folder (prepare.py's)")
    parser.add_argument("--out", type=Path, required=True, help="run folder to write")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: OMP_NUM_THREADS, else torch's default)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=None, help="the run's name in the table")
    args = parser.parse_args()
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or None
    if threads:
        torch.set_num_threads(threads)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"name": args.name or f"MONAI peer {args.budget}", "budget": args.budget}
    result.update(train_and_predict(args.data, args.out, parse_duration(args.budget), args.seed))
    (args.out / "score.json").write_text(json.dumps(result, indent=1))
    sys.stdout.write(
        f"{result['name']}: {result['steps']} steps, mIoU {result['miou']:.4f}, pixel "
        f"accuracy {result['pixel_accuracy']:.4f} -> {args.out / 'score.json'}\n"
    )


if __name__ == "__main__":
    main()
