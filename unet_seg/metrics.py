"""Dice and IoU accumulated over a whole epoch, as a torchmetrics `Metric`.

The state is the per-class count of true positives, false positives and false
negatives over every valid pixel seen (summed across devices), so the epoch's
Dice is the pooled Dice of all its pixels, not a mean of per-batch values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from unet_seg.data.masks import IGNORE_INDEX


def dice_iou_from_counts(tp: Tensor, fp: Tensor, fn: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class Dice = 2TP / (2TP + FP + FN) and IoU = TP / (TP + FP + FN).

    A class absent from both truth and prediction (TP + FP + FN = 0) scores 1:
    nothing to find, nothing found.
    """
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    union = tp + fp + fn
    empty = union == 0
    dice = torch.where(empty, 1.0, 2 * tp / (2 * tp + fp + fn).clamp(min=1))
    iou = torch.where(empty, 1.0, tp / union.clamp(min=1))
    return dice, iou


class SegmentationScores(Metric):
    """Pooled per-class Dice and IoU, their mean over the foreground classes 1..K-1, and the
    pixel error (the share of misclassified pixels, as the ISBI 2012 challenge scores it).

    Args:
        class_names: one name per class index; class 0 is the background.
        ignore_index: target value of pixels left out.
    Shape:
        `update(preds [B, H, W] int, target [B, H, W] int)`.
    """

    full_state_update = False

    def __init__(self, class_names: Sequence[str], ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if len(class_names) < 2:
            raise ValueError(f"need at least two class names, got {list(class_names)}")
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.ignore_index = ignore_index
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.zeros(self.num_classes, dtype=torch.long), "sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ")
        valid = target != self.ignore_index
        k = self.num_classes
        pairs = target[valid].long() * k + preds[valid].long()
        confusion = torch.bincount(pairs, minlength=k * k).view(k, k)  # [true, pred]
        tp = confusion.diagonal()
        self.tp += tp
        self.fp += confusion.sum(0) - tp
        self.fn += confusion.sum(1) - tp

    def compute(self) -> dict[str, Tensor]:
        dice, iou = dice_iou_from_counts(self.tp, self.fp, self.fn)
        total = (self.tp + self.fn).sum().clamp(min=1)  # every valid pixel, once
        scores = {
            "dice": dice[1:].mean().float(),
            "iou": iou[1:].mean().float(),
            "pixel_error": (1 - self.tp.sum() / total).float(),  # share of wrong pixels
        }
        for c, name in enumerate(self.class_names):
            scores[f"dice/{name}"] = dice[c].float()
            scores[f"iou/{name}"] = iou[c].float()
        return scores
