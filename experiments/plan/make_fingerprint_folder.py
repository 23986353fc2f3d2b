"""A large, simple folder (default 1,000 pairs of 512x512 PNGs) for timing a one-pass data
fingerprint.

Each pair: an 8-bit grey image (noisy dark background, a few bright round blobs) and its
0/255 mask of those blobs, `images/NNNN.png` and `masks/NNNN.png`. Written fast: the
blobs are drawn for all of an image's blobs at once with numpy broadcasting, the noise is
vectorised, and PNGs are written by `cv2.imwrite` at a low compression level. Pair `i`
depends only on `--seed` and `i`.

    python experiments/plan/make_fingerprint_folder.py --out outputs/plan_data/thousand \
        --n 1000 --size 512 --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]


def blob_mask(rng: np.random.Generator, size: int, max_blobs: int = 6) -> np.ndarray:
    """A boolean `[size, size]` mask of 2..`max_blobs` random discs (all tested at once)."""
    count = int(rng.integers(2, max_blobs + 1))
    centres = rng.uniform(0, size, (count, 2))
    radii = rng.uniform(size / 40, size / 12, count)
    axis = np.arange(size, dtype=np.float32)
    dy = (axis[None, :] - centres[:, :1]) ** 2  # [count, size] squared row distances
    dx = (axis[None, :] - centres[:, 1:]) ** 2  # [count, size] squared column distances
    inside = dy[:, :, None] + dx[:, None, :] <= (radii**2)[:, None, None]
    return inside.any(axis=0)


def make_pair(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) of pair `index`: uint8 grey image and uint8 0/255 mask."""
    rng = np.random.default_rng([seed, index])
    mask = blob_mask(rng, size)
    noise = rng.integers(0, 24, (size, size), dtype=np.uint8)
    background, blob = rng.integers(35, 70), rng.integers(150, 200)  # per-image levels
    image = np.where(mask, np.uint8(blob), np.uint8(background)) + noise
    return image.astype(np.uint8), mask.astype(np.uint8) * 255


def write_folder(out: Path, n: int, size: int, seed: int) -> int:
    """Write the `n` pairs under `out`; return the total bytes written."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(n - 1)))
    total = 0
    for i in range(n):
        image, mask = make_pair(seed, i, size)
        for sub, array in (("images", image), ("masks", mask)):
            path = out / sub / f"{i:0{width}d}.png"
            if not cv2.imwrite(str(path), array, PNG_FAST):
                raise OSError(f"cannot write {path}")
            total += path.stat().st_size
    return total


def main() -> None:
    """Parse arguments, write the folder and print its size and the time taken."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/plan_data/thousand"))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    total = write_folder(args.out, args.n, args.size, args.seed)
    seconds = time.perf_counter() - start
    sys.stdout.write(
        f"{args.n} pairs of {args.size}x{args.size} in {args.out}: "
        f"{total / 2**20:.1f} MiB, {seconds:.1f} s\n"
    )


if __name__ == "__main__":
    main()
