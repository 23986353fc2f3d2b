"""Score cross-validation folds and their ensemble on the test split they share:
`python -m unet_seg.ensemble SWEEP_DIR` after `python -m unet_seg.train -m data.num_folds=5
data.fold=0,1,2,3,4` (with `data.test_fraction` > 0, the folds keep one common test split).

Each fold's model is scored alone, then the ensemble, whose class probabilities
are the mean of the models'. Scores are pooled over the pixels of the test images.
Prediction is `evaluate`'s (tiling, `--tta`), and so is scoring (`ScoreBook`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from unet_seg.api import load_model
from unet_seg.files import write_json
from unet_seg.run_dir import find_runs
from unet_seg.scores import ScoreBook

log = logging.getLogger(__name__)


def ensemble(
    folders: Sequence[str | Path], split: str = "test", device: str = "cpu", **inference
) -> dict:
    """Scores of each run's model and of their mean-probability ensemble on `split`.

    Every model predicts as `evaluate` does (`load_model`: `mode`, `tile_size`,
    `overlap`, `tta`, ... in `inference`), and is scored by the same `ScoreBook`.

    Returns `{"models": [{"run", "checkpoint", "dice", ...}], "ensemble": {...}, "images"}`.
    """
    runs = find_runs(folders)
    splits = [r.load_splits()[split] for r in runs]
    if any(s != splits[0] for s in splits) or not splits[0]:
        raise ValueError(
            f"the runs do not share one non-empty {split} split: train the folds with "
            "data.test_fraction > 0 so that they hold out the same test images"
        )
    checkpoints = [r.scored_checkpoint() for r in runs]
    models = [load_model(c, device=device, **inference) for c in checkpoints]
    contract = models[0].contract
    if contract.instance_target:
        raise ValueError(
            f"{checkpoints[0]} predicts objects (data.target=instances), which this pixel-class "
            "ensemble does not decode: score each fold with python -m unet_seg.evaluate"
        )
    folders_ = contract.class_names[1:] if contract.mask_format == "folders" else None
    pairs = runs[0].split_pairs(split, folders_)
    books = [ScoreBook(contract.class_names, background=contract.background)
             for _ in range(len(models) + 1)]  # fmt: skip
    for image_path, mask_path in tqdm(pairs, desc="ensemble", unit="image"):
        image, truth = contract.read_pair(image_path, mask_path)
        probs = [m.run([image], probabilities=True)[0][1] for m in models]  # each [K, H, W]
        for book, p in zip(books, probs, strict=False):
            book.add(image_path.name, p.argmax(0), truth)
        books[-1].add(image_path.name, np.mean(probs, axis=0).argmax(0), truth)

    def pooled(book: ScoreBook) -> dict[str, float]:
        summary = book.summary()
        mean = book.mean_name
        scores = {"dice": summary[f"dice/pooled/{mean}"], "iou": summary[f"iou/pooled/{mean}"],
                  "pixel_error": summary["pixel_error/pooled"]}  # fmt: skip
        for name in contract.class_names:
            scores[f"dice/{name}"] = summary[f"dice/pooled/{name}"]
            scores[f"iou/{name}"] = summary[f"iou/pooled/{name}"]
        return scores

    return {
        "split": split,
        "images": len(pairs),
        "models": [
            {"run": str(r), "checkpoint": str(c), **pooled(b)}
            for r, c, b in zip(runs, checkpoints, books, strict=False)
        ],
        "ensemble": pooled(books[-1]),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="sweep or run directories (the folds)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=None, help="default: FIRST_FOLDER/ensemble.json")
    parser.add_argument("--mode", default="tile", help="tile | whole | resize (as in evaluate)")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--tta", default="none", help="none | flips | d4")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    result = ensemble(args.folders, args.split, args.device, mode=args.mode,
                      tile_size=args.tile_size, overlap=args.overlap, tta=args.tta)  # fmt: skip
    lines = [f"{'model':<40}{'Dice':>8}{'IoU':>8}{'pixel err':>11}"]
    for m in result["models"]:
        name = Path(m["run"]).name
        lines.append(f"{name:<40}{m['dice']:>8.4f}{m['iou']:>8.4f}{m['pixel_error']:>11.4f}")
    e = result["ensemble"]
    lines.append(f"{'ensemble (mean probability)':<40}{e['dice']:>8.4f}{e['iou']:>8.4f}"
                 f"{e['pixel_error']:>11.4f}")  # fmt: skip
    log.info("%s split, %d images, pooled over pixels:\n%s", result["split"], result["images"],
             "\n".join(lines))  # fmt: skip
    output = Path(args.output) if args.output else Path(args.folders[0]) / "ensemble.json"
    write_json(result, output)
    log.info("wrote %s", output)


if __name__ == "__main__":
    main()
