"""Score cross-validation folds and their ensemble on the test split they share:
`python -m unet_seg.ensemble SWEEP_DIR` after `python -m unet_seg.train -m data.num_folds=5
data.fold=0,1,2,3,4` (with `data.test_fraction` > 0, the folds keep one common test split).

Each fold's model is scored alone, then the ensemble, whose class probabilities
are the mean of the models'. Scores are pooled over the pixels of the test images.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from unet_seg.data.datamodule import encoding_from_config
from unet_seg.data.dataset import SegDataset
from unet_seg.data.splits import load_splits
from unet_seg.evaluate import run_split_pairs
from unet_seg.metrics import SegmentationScores
from unet_seg.module import SegModule
from unet_seg.report import find_runs

log = logging.getLogger(__name__)


def run_checkpoint(run: Path) -> Path:
    """The checkpoint a run's final scores came from (best.ckpt, or last.ckpt)."""
    metrics = json.loads((run / "metrics.json").read_text())
    recorded = metrics.get("checkpoint", "")
    path = Path(recorded) if recorded.endswith(".ckpt") else run / "checkpoints" / "last.ckpt"
    return path if path.is_file() else run / "checkpoints" / path.name


def ensemble(folders: Sequence[str | Path], split: str = "test", device: str = "cpu") -> dict:
    """Scores of each run's model and of their mean-probability ensemble on `split`.

    Returns `{"models": [{"run", "checkpoint", "dice", ...}], "ensemble": {...}, "images"}`.
    """
    runs = find_runs(folders)
    splits = [load_splits(r / "splits.json")[split] for r in runs]
    if any(s != splits[0] for s in splits) or not splits[0]:
        raise ValueError(
            f"the runs do not share one non-empty {split} split: train the folds with "
            "data.test_fraction > 0 so that they hold out the same test images"
        )
    models = [SegModule.from_checkpoint(run_checkpoint(r), device).to(device) for r in runs]
    hp = models[0].hparams
    class_folders = hp.class_names[1:] if hp.mask_format == "folders" else None
    pairs = run_split_pairs(runs[0], split, class_folders)
    encoding = encoding_from_config(hp.mask_values, hp.class_names, hp.mask_format, hp.mask_colors)
    norm = hp.normalization
    dataset = SegDataset(pairs, encoding, hp.arch["in_channels"],
                         norm["mean"], norm["std"], intensity=norm.get("intensity"))  # fmt: skip
    scores = [SegmentationScores(hp.class_names) for _ in range(len(models) + 1)]
    with torch.no_grad():
        for i in tqdm(range(len(dataset)), desc="ensemble", unit="image"):
            sample = dataset[i]
            x = sample["image"][None].to(device)  # [1, C, H, W]
            target = sample["mask"][None].to(device)  # [1, H, W]
            probs = [m.probabilities(m(x)) for m in models]  # each [1, K, H, W]
            for score, p in zip(scores, probs, strict=False):
                score.update(p.argmax(1), target)
            scores[-1].update(torch.stack(probs).mean(0).argmax(1), target)

    def flat(score: SegmentationScores) -> dict[str, float]:
        return {k: float(v) for k, v in score.compute().items()}

    return {
        "split": split,
        "images": len(dataset),
        "models": [
            {"run": str(r), "checkpoint": str(run_checkpoint(r)), **flat(s)}
            for r, s in zip(runs, scores, strict=False)
        ],  # fmt: skip
        "ensemble": flat(scores[-1]),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="sweep or run directories (the folds)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=None, help="default: FIRST_FOLDER/ensemble.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    result = ensemble(args.folders, args.split, args.device)
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
    output.write_text(json.dumps(result, indent=1) + "\n")
    log.info("wrote %s", output)


if __name__ == "__main__":
    main()
