"""A synthetic 4-class "EM organelle" dataset with two rare classes, for the data-plan check.

Grey images stored as grey + alpha PNG (alpha fully opaque, as the real dataset it mimics
had), masks as class indices (8-bit PNG):

- 0 background: mid grey with a smooth, low-frequency texture;
- 1 common class (about 20-30% of pixels): large dark ellipses with a granular texture
  ("cytoplasm" / "vesicle" like);
- 2 rare and thin (under 1% of pixels): very dark curvilinear membranes, 1 or 3 px wide,
  drawn with `cv2.polylines` along smooth random curves;
- 3 rare and small (under 1% of pixels): bright dots of radius 2-4 px.

The image is rendered from the label map (a mean grey level and a texture per class), then
mildly blurred and given noise, so every class differs from the background in intensity
and/or texture yet not trivially. A fixed share of images (`--absent`) holds no membrane,
and another no dot, as in real data where rare classes miss from some images. The output
is deterministic for `--seed` and `--n` (image `i` draws from its own stream, seeded by
`--seed` and `i`; which images lack a rare class depends on `--n` too).

    python experiments/plan/make_multiclass.py --out outputs/plan_data/multiclass \
        --n 24 --size 256 --seed 0

Also writes `<out>_preview.png` (beside the output folder): three images above their
colour-coded masks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

NUM_CLASSES = 4
CLASS_NAMES = ("background", "cytoplasm", "membrane", "dot")
MEAN_GREY = np.array([150.0, 95.0, 35.0, 230.0])  # per class, before texture, blur and noise
RARE_CAP = 0.009  # per-image share ceiling of each rare class
PREVIEW_COLOURS = np.array(  # BGR, per class: black, blue, red, yellow
    [[0, 0, 0], [200, 110, 40], [40, 40, 255], [0, 230, 255]], dtype=np.uint8
)


def smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth zero-mean, unit-scale noise: a `cells` x `cells` random grid upsampled."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def draw_blobs(rng: np.random.Generator, labels: np.ndarray, target: float) -> None:
    """Paint filled random ellipses of class 1 until `target` of the pixels are class 1."""
    size = labels.shape[0]
    for _ in range(200):
        if (labels == 1).mean() >= target:
            return
        centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        axes = (int(rng.integers(size // 14, size // 6)), int(rng.integers(size // 14, size // 6)))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(labels, centre, axes, angle, 0, 360, color=1, thickness=-1)


def random_curve(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random curve (int32 points, `(N, 1, 2)` for cv2): a walk of 2 px steps
    whose heading turns with a slowly varying rate."""
    steps = int(rng.integers(size // 4, size // 2))
    turn = np.convolve(rng.normal(0, 0.12, steps + 20), np.ones(21) / 21, mode="valid")[:steps]
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(turn)
    start = rng.uniform(0.15 * size, 0.85 * size, 2)
    points = start + np.cumsum(2.0 * np.stack([np.cos(heading), np.sin(heading)], 1), 0)
    return np.rint(points).astype(np.int32).reshape(-1, 1, 2)


def add_rare(
    rng: np.random.Generator, labels: np.ndarray, cls: int, count: int, shape: str
) -> None:
    """Add up to `count` membranes (`shape="curve"`) or dots (`"dot"`) of class `cls`, each
    kept only if the class stays under `RARE_CAP` of the image."""
    size = labels.shape[0]
    for _ in range(count):
        layer = np.zeros_like(labels)
        if shape == "curve":
            thickness = int(rng.choice([1, 1, 2]))  # cv2 thickness 1 -> 1 px, 2 -> 3 px wide
            cv2.polylines(layer, [random_curve(rng, size)], False, 1, thickness, cv2.LINE_8)
        else:
            centre = (int(rng.integers(4, size - 4)), int(rng.integers(4, size - 4)))
            cv2.circle(layer, centre, int(rng.integers(2, 5)), 1, -1, cv2.LINE_8)
        if ((labels == cls) | (layer > 0)).mean() <= RARE_CAP:
            labels[layer > 0] = cls


def make_labels(rng: np.random.Generator, size: int, membranes: bool, dots: bool) -> np.ndarray:
    """A class-index map: blobs first, then membranes, then dots on top."""
    labels = np.zeros((size, size), np.uint8)
    draw_blobs(rng, labels, target=float(rng.uniform(0.20, 0.30)))
    if membranes:
        add_rare(rng, labels, 2, int(rng.integers(1, 4)), "curve")
    if dots:
        add_rare(rng, labels, 3, int(rng.integers(4, 12)), "dot")
    return labels


def render(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """The 8-bit grey image of a label map: class grey levels and textures, blur, noise."""
    size = labels.shape[0]
    image = MEAN_GREY[labels].astype(np.float32)
    image += 14 * smooth_field(rng, size, 6) + 6 * smooth_field(rng, size, 24)  # background
    granules = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 1.5)
    image += np.where(labels == 1, 30 * granules, 0)  # cytoplasm: granular texture
    image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.7, 1.0)))
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-12, 12)  # per-image exposure
    image = gain * image + offset + rng.normal(0, 10, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def absent_sets(n: int, absent: float, seed: int) -> tuple[set[int], set[int]]:
    """The images without membranes and those without dots: `round(absent * n)` each."""
    rng = np.random.default_rng([seed, 1_000_003])
    k = round(absent * n)
    return set(rng.permutation(n)[:k].tolist()), set(rng.permutation(n)[:k].tolist())


def make_pair(
    seed: int, index: int, size: int, membranes: bool, dots: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) of image `index`; depends only on the arguments."""
    rng = np.random.default_rng([seed, index])
    labels = make_labels(rng, size, membranes, dots)
    return render(rng, labels), labels


def write_dataset(
    out: Path, n: int, size: int, seed: int, absent: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Write `out/images/NNN.png` (LA) and `out/masks/NNN.png`; return the (image, labels)."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    no_membrane, no_dot = absent_sets(n, absent, seed)
    pairs = []
    for i in range(n):
        image, labels = make_pair(seed, i, size, i not in no_membrane, i not in no_dot)
        grey_alpha = np.stack([image, np.full_like(image, 255)], axis=-1)
        Image.fromarray(grey_alpha).save(out / "images" / f"{i:03d}.png")
        Image.fromarray(labels).save(out / "masks" / f"{i:03d}.png")
        pairs.append((image, labels))
    return pairs


def class_stats(pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, float]]:
    """Per class: pixel share over the dataset, images holding it, and grey mean/std."""
    images = np.stack([p[0] for p in pairs]).astype(np.float64)
    labels = np.stack([p[1] for p in pairs])
    stats = []
    for cls in range(NUM_CLASSES):
        where = labels == cls
        stats.append({
            "share": float(where.mean()),
            "present": int(where.any(axis=(1, 2)).sum()),
            "mean": float(images[where].mean()) if where.any() else float("nan"),
            "std": float(images[where].std()) if where.any() else float("nan"),
        })  # fmt: skip
    return stats


def check(stats: list[dict[str, float]], n: int) -> None:
    """Assert the rare classes are rare (< 1%) yet in most images, and class 1 is common."""
    for cls in (2, 3):
        assert stats[cls]["share"] < 0.01, f"class {cls} share {stats[cls]['share']:.4f} >= 1%"
        assert stats[cls]["present"] >= 0.75 * n, f"class {cls} in too few images"
    assert 0.15 <= stats[1]["share"] <= 0.35, f"class 1 share {stats[1]['share']:.3f}"


def preview(pairs: list[tuple[np.ndarray, np.ndarray]], path: Path, zoom: int = 2) -> None:
    """Three images (top row) above their colour-coded masks, each zoomed `zoom` times."""
    picks = pairs[:3]
    top = np.hstack([cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) for img, _ in picks])
    bottom = np.hstack([PREVIEW_COLOURS[lab] for _, lab in picks])
    strip = np.vstack([top, bottom])
    strip = cv2.resize(strip, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), strip)


def main() -> None:
    """Parse arguments, write the dataset and preview, print and check the class shares."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/plan_data/multiclass"))
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--absent",
        type=float,
        default=0.1,
        help="share of images without membranes (and, others, without dots)",
    )
    parser.add_argument("--preview", type=Path, default=None,
                        help="preview PNG (default: <out>_preview.png)")  # fmt: skip
    args = parser.parse_args()
    pairs = write_dataset(args.out, args.n, args.size, args.seed, args.absent)
    preview_path = args.preview or args.out.with_name(args.out.name + "_preview.png")
    preview(pairs, preview_path)
    stats = class_stats(pairs)
    sys.stdout.write(f"{args.n} images of {args.size}x{args.size} in {args.out}\n")
    for cls, s in enumerate(stats):
        sys.stdout.write(
            f"class {cls} {CLASS_NAMES[cls]:<10} share {100 * s['share']:6.3f}%  "
            f"in {s['present']:>3}/{args.n} images  grey {s['mean']:6.1f} ± {s['std']:5.1f}\n"
        )
    check(stats, args.n)
    sys.stdout.write(f"checks passed; preview: {preview_path}\n")


if __name__ == "__main__":
    main()
