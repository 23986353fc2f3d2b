"""CamVid scoring, the one both sides use: per-class IoU, mIoU and pixel accuracy on a split.

One confusion matrix is accumulated over every pixel of the split's images (void, 11,
left out), and the scores come from it: IoU = TP / (TP + FP + FN) per class, mIoU the
mean over the 11 classes (sky included: CamVid has no background class), pixel
accuracy = sum(TP) / labelled pixels. The per-class counts go through unet-seg's own
`unet_seg.metrics` (`ratio_scores`, `pixel_error`), so the figures mean what the
framework's evaluation means; `experiments/camvid/test_score.py` checks the matrix against
`confusion_counts`.

    python experiments/camvid/score.py --pred outputs/camvid/ours_15m/test_masks \
        --data /work/data/camvid --out outputs/camvid/ours_15m/score.json \
        --name "unet-seg 15m" [--run-dir outputs/camvid/ours_15m] [--info key=value ...]

Predicted masks are PNGs of class indices 0..10 named like the test images (a palette
PNG's indices, as `unet_seg.predict` writes them for these masks, or a grey PNG).
`--run-dir` (a unet-seg run directory) adds its `metrics.json` step count to the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from unet_seg.metrics import pixel_error, ratio_scores

CLASSES = [
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
]
VOID = 11


def read_indices(path: Path) -> np.ndarray:
    """A mask PNG as class indices `[H, W]`: a palette PNG's indices, a grey PNG's values."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L", "I;16", "I"):
            raise ValueError(
                f"{path}: a {image.mode} image, not class indices; write masks as palette or "
                "grey PNGs of indices 0..10 (unet_seg.predict does for data.mask_values 0..10)"
            )
        return np.asarray(image).astype(np.int64)


def confusion_matrix(
    pred: np.ndarray, truth: np.ndarray, num_classes: int = len(CLASSES), void: int = VOID
) -> np.ndarray:
    """`[K, K]` int64 pixel counts, rows the truth class, columns the predicted class;
    pixels whose truth is `void` are left out.

    Raises:
        ValueError: shapes differ, or a prediction outside 0..K-1 on a labelled pixel.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    valid = truth != void
    p, t = pred[valid], truth[valid]
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(
            f"predicted indices {np.unique(p)[:12].tolist()} outside 0..{num_classes - 1}"
        )
    if t.size and t.max() >= num_classes:
        raise ValueError(
            f"truth indices {np.unique(t)[:12].tolist()} outside 0..{num_classes - 1} "
            f"and not void ({void})"
        )
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def scores(matrix: np.ndarray) -> dict:
    """Per-class IoU, mIoU (mean over every class) and pixel accuracy from a confusion
    matrix `[truth, pred]`, through `unet_seg.metrics`."""
    tp = np.diag(matrix)
    counts = np.stack([tp, matrix.sum(0) - tp, matrix.sum(1) - tp])  # rows tp, fp, fn
    iou = ratio_scores(counts, empty=float("nan"))["iou"]  # a class absent everywhere: NaN
    return {
        "iou": {name: float(v) for name, v in zip(CLASSES, iou, strict=True)},
        "miou": float(np.nanmean(iou)),
        "pixel_accuracy": float(1 - pixel_error(counts)),
    }


def score_folder(pred_dir: Path, data: Path, split: str = "test") -> dict:
    """Score the predicted masks in `pred_dir` against `data/masks` on `split` of
    `data/split.json`; every image of the split must have a prediction."""
    names = json.loads((data / "split.json").read_text())[split]
    missing = [n for n in names if not (pred_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{pred_dir}: no prediction for {len(missing)} of {len(names)} {split} images "
            f"(e.g. {missing[:3]}); predict every image of the split into this folder, "
            "same file names"
        )
    matrix = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    for name in names:
        try:
            matrix += confusion_matrix(
                read_indices(pred_dir / name), read_indices(data / "masks" / name)
            )
        except ValueError as err:
            raise ValueError(f"{pred_dir / name}: {err}") from err
    result = scores(matrix)
    result.update(
        {
            "split": split,
            "images": len(names),
            "pixels": int(matrix.sum()),
            "confusion": matrix.tolist(),
        }
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pred", type=Path, required=True, help="folder of predicted masks")
    parser.add_argument(
        "--data", type=Path, required=True, help="CamVid folder (masks/, split.json)"
    )
    parser.add_argument("--out", type=Path, required=True, help="score JSON to write")
    parser.add_argument("--name", default=None, help="the run's name in the table")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="a unet-seg run directory: its metrics.json gives the steps",
    )
    parser.add_argument(
        "--info",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="more fields for the JSON (budget=15m, threads=1)",
    )
    args = parser.parse_args()
    result = {"name": args.name or args.pred.parent.name}
    for item in args.info:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--info {item}: give KEY=VALUE")
        result[key] = value
    if args.run_dir is not None:
        metrics_file = args.run_dir / "metrics.json"
        if not metrics_file.is_file():
            sys.exit(
                f"{metrics_file} not found: give --run-dir the run directory of a finished run"
            )
        result["steps"] = json.loads(metrics_file.read_text()).get("global_step")
    result.update(score_folder(args.pred, args.data, args.split))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    per_class = " ".join(f"{k} {v:.3f}" for k, v in result["iou"].items())
    sys.stdout.write(
        f"{result['name']}: mIoU {result['miou']:.4f} pixel accuracy "
        f"{result['pixel_accuracy']:.4f} ({per_class}) -> {args.out}\n"
    )


if __name__ == "__main__":
    main()
