"""Scores from pixel counts, and Dice and IoU accumulated over a whole epoch.

`confusion_counts`, `ratio_scores` and `pixel_error` are the one place where class
indices become per-class counts and counts become scores: the training metric
(`SegmentationScores`, tensors on any device) and evaluation (`unet_seg.scores`,
NumPy arrays) both use them. Each takes a tensor or a NumPy array and answers in kind.

The metric's state is the per-class count of true positives, false positives and false
negatives over every valid pixel seen (summed across devices), so the epoch's Dice is
the pooled Dice of all its pixels, not a mean of per-batch values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from unet_seg.data.masks import IGNORE_INDEX

Array = TypeVar("Array", Tensor, np.ndarray)
"""A tensor or a NumPy array: the functions below answer with the kind they are given."""


def _tensor(x: Tensor | np.ndarray, dtype: torch.dtype) -> Tensor:
    """`x` as a tensor of `dtype`; a NumPy array becomes a CPU tensor."""
    if isinstance(x, Tensor):
        return x.to(dtype)
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype)


def confusion_counts(
    pred: Array, truth: Array, num_classes: int, ignore_index: int | None = None
) -> Array:
    """Per-class true positives, false positives and false negatives.

    Args:
        pred, truth: class indices, one shape (e.g. `[H, W]` or `[B, H, W]`).
        ignore_index: truth value of pixels left out; None leaves none out.
    Returns:
        `[3, K]` int64, rows tp, fp, fn (on the tensors' device).
    """
    if pred.shape != truth.shape:
        raise ValueError(
            f"prediction {tuple(pred.shape)} and truth {tuple(truth.shape)} differ in shape"
        )
    p, t = _tensor(pred, torch.long), _tensor(truth, torch.long)
    if ignore_index is not None:
        valid = t != ignore_index
        p, t = p[valid], t[valid]
    k = num_classes
    pairs = t.reshape(-1) * k + p.reshape(-1)
    confusion = torch.bincount(pairs, minlength=k * k).view(k, k)  # [true, pred]
    tp = confusion.diagonal()
    counts = torch.stack([tp, confusion.sum(0) - tp, confusion.sum(1) - tp])
    return counts if isinstance(truth, Tensor) else counts.numpy()


def ratio_scores(counts: Array, empty: float = float("nan")) -> dict[str, Array]:
    """Per-class Dice = 2TP / (2TP + FP + FN), IoU = TP / (TP + FP + FN), precision =
    TP / (TP + FP) and recall = TP / (TP + FN), from `[3, K]` counts (rows tp, fp, fn).

    A class absent from both truth and prediction (TP + FP + FN = 0) scores `empty`: 1 for
    the training metric and pooled evaluation (nothing to find, nothing found), NaN per
    image (left out of the mean). Otherwise a ratio with a zero denominator is 0.

    Returns:
        `{metric: [K] float64}`.
    """
    tp, fp, fn = _tensor(counts, torch.float64)
    absent = tp + fp + fn == 0

    def ratio(num: Tensor, den: Tensor) -> Tensor:
        return torch.where(absent, empty, num / den.clamp(min=1))  # counts: den 0 or >= 1

    scores = {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }
    return scores if isinstance(counts, Tensor) else {k: v.numpy() for k, v in scores.items()}


def pixel_error(counts: Array) -> Array:
    """The share of misclassified pixels, `1 - sum(TP) / sum(TP + FN)` (as the ISBI 2012
    challenge scores it), from `[3, K]` counts; 1 when there are no pixels. Returns a
    float64 scalar (0-d)."""
    tp, _, fn = _tensor(counts, torch.float64)
    error = 1 - tp.sum() / (tp + fn).sum().clamp(min=1)  # every pixel, once
    return error if isinstance(counts, Tensor) else error.numpy()


class SegmentationScores(Metric):
    """Pooled per-class Dice and IoU, their mean over the foreground classes 1..K-1 (over
    all K without a background), and the pixel error (the share of misclassified pixels, as
    the ISBI 2012 challenge scores it).

    Args:
        class_names: one name per class index.
        ignore_index: target value of pixels left out.
        background: class 0 is the background, left out of the means (`data.background`).
    Shape:
        `update(preds [B, H, W] int, target [B, H, W] int)`.
    """

    full_state_update = False

    def __init__(
        self, class_names: Sequence[str], ignore_index: int = IGNORE_INDEX, background: bool = True
    ) -> None:
        super().__init__()
        if len(class_names) < 2:
            raise ValueError(f"need at least two class names, got {list(class_names)}")
        self.class_names = list(class_names)
        self.first_scored = 1 if background else 0  # the means leave a background out
        self.num_classes = len(class_names)
        self.ignore_index = ignore_index
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.zeros(self.num_classes, dtype=torch.long), "sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        tp, fp, fn = confusion_counts(preds, target, self.num_classes, self.ignore_index)
        self.tp += tp
        self.fp += fp
        self.fn += fn

    def compute(self) -> dict[str, Tensor]:
        counts = torch.stack([self.tp, self.fp, self.fn])
        ratios = ratio_scores(counts, empty=1.0)
        dice, iou = ratios["dice"], ratios["iou"]
        scores = {
            "dice": dice[self.first_scored :].mean().float(),
            "iou": iou[self.first_scored :].mean().float(),
            "pixel_error": pixel_error(counts).float(),
        }
        for c, name in enumerate(self.class_names):
            scores[f"dice/{name}"] = dice[c].float()
            scores[f"iou/{name}"] = iou[c].float()
        return scores
