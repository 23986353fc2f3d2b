"""Score a checkpoint: `python -m unet_seg.evaluate run_dir=RUN_DIR` (its test split)
or `python -m unet_seg.evaluate ckpt=PATH data_root=DIR` (every image/mask pair in DIR).

Dice and IoU are pooled over all pixels of the evaluated images, per class,
and averaged over the foreground classes (1..K-1).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tqdm import tqdm

from unet_seg.config import load_run_config
from unet_seg.data.dataset import SegDataset, find_pairs
from unet_seg.data.masks import MaskEncoding
from unet_seg.data.splits import load_splits
from unet_seg.inference import load_for_inference
from unet_seg.train import write_json

log = logging.getLogger(__name__)


def _pairs_and_checkpoint(cfg: DictConfig) -> tuple[list, Path, str]:
    """(image/mask pairs, checkpoint, a label for what is evaluated) from the config."""
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
        run_cfg = load_run_config(run_dir)
        ckpt = Path(cfg.ckpt) if cfg.ckpt else run_dir / "checkpoints" / "best.ckpt"
        data = run_cfg.data
        pairs = find_pairs(data.root, data.images_dir, data.masks_dir, data.mask_suffix)
        names = load_splits(run_dir / "splits.json")[cfg.split]
        if not names:
            raise ValueError(
                f"{run_dir}/splits.json: the {cfg.split} split is empty; "
                "choose split=val or split=train"
            )
        by_name = {img.name: (img, mask) for img, mask in pairs}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise FileNotFoundError(f"{data.root}: split images missing, e.g. {missing[:5]}")
        return [by_name[n] for n in names], ckpt, f"{cfg.split} split of {run_dir}"
    if not cfg.ckpt or not cfg.data_root:
        raise ValueError("give run_dir=RUN_DIR, or both ckpt=PATH and data_root=DIR")
    return find_pairs(cfg.data_root), Path(cfg.ckpt), str(cfg.data_root)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Score a checkpoint on images with masks; log a table and write JSON.

    Returns:
        Flat scores: `dice`, `iou`, `dice/<class>`, `iou/<class>`, `images`.
    """
    pairs, ckpt, what = _pairs_and_checkpoint(cfg)
    module = load_for_inference(ckpt, cfg.device, cfg.level)
    hp = module.hparams
    dataset = SegDataset(
        pairs, MaskEncoding(hp.mask_values), hp.arch["in_channels"],
        hp.normalization["mean"], hp.normalization["std"],
    )  # fmt: skip
    scores = module.test_scores
    scores.reset()
    with torch.no_grad():
        for i in tqdm(range(len(dataset)), desc="evaluate", unit="image"):
            sample = dataset[i]
            logits = module(sample["image"][None].to(module.device))
            scores.update(module.labels(logits)[0], sample["mask"].to(module.device))
    results = {k: float(v) for k, v in scores.compute().items()}
    results["images"] = len(dataset)

    lines = [f"{'class':<16}{'Dice':>8}{'IoU':>8}"]
    for name in scores.class_names:
        lines.append(f"{name:<16}{results[f'dice/{name}']:>8.4f}{results[f'iou/{name}']:>8.4f}")
    lines.append(f"{'mean (fg)':<16}{results['dice']:>8.4f}{results['iou']:>8.4f}")
    log.info("%s, %d images, pooled over pixels:\n%s", what, len(dataset), "\n".join(lines))

    output = Path(cfg.output) if cfg.output else _default_output(cfg)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json({"checkpoint": str(ckpt), "evaluated": what, **results}, output)
    log.info("wrote %s", output)
    return results


def _default_output(cfg: DictConfig) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir) / f"evaluation_{cfg.split}.json"
    return Path(HydraConfig.get().runtime.output_dir) / "evaluation.json"


@hydra.main(config_path="../conf", config_name="evaluate", version_base=None)
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
