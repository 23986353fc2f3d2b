"""Epoch-pooled Dice and IoU against hand counts and an independent NumPy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unet_seg.metrics import SegmentationScores


def test_hand_computed_binary_case() -> None:
    target = torch.tensor([[[1, 1, 0, 0]]])
    preds = torch.tensor([[[1, 0, 1, 0]]])
    m = SegmentationScores(["background", "cell"])
    m.update(preds, target)
    s = m.compute()
    # cell: TP 1, FP 1, FN 1 -> Dice 2/4, IoU 1/3; background the same by symmetry
    assert s["dice/cell"].item() == pytest.approx(0.5)
    assert s["iou/cell"].item() == pytest.approx(1 / 3)
    assert s["dice"].item() == pytest.approx(0.5)  # mean over foreground = the cell class
    assert s["pixel_error"].item() == pytest.approx(0.5)  # 2 of 4 pixels wrong


def test_pooled_over_the_epoch_not_averaged_per_batch() -> None:
    m = SegmentationScores(["bg", "fg"])
    # batch 1: a tiny object, missed entirely (Dice 0); batch 2: large object, perfect
    m.update(torch.zeros(1, 1, 4, dtype=torch.long), torch.tensor([[[1, 0, 0, 0]]]))
    m.update(torch.ones(1, 1, 9, dtype=torch.long), torch.ones(1, 1, 9, dtype=torch.long))
    # pooled: TP 9, FN 1, FP 0 -> 18/19; the mean of per-batch values would be 0.5
    assert m.compute()["dice"].item() == pytest.approx(18 / 19)


def test_matches_numpy_on_random_multiclass_data() -> None:
    g = torch.Generator().manual_seed(0)
    names = ["bg", "a", "b", "c"]
    m = SegmentationScores(names)
    all_p, all_t = [], []
    for _ in range(3):
        p = torch.randint(0, 4, (2, 9, 11), generator=g)
        t = torch.randint(0, 4, (2, 9, 11), generator=g)
        t[0, :2] = -1  # ignored
        m.update(p, t)
        all_p.append(p.numpy())
        all_t.append(t.numpy())
    p, t = np.concatenate(all_p), np.concatenate(all_t)
    valid = t >= 0
    s = m.compute()
    dices = []
    for c, name in enumerate(names):
        pc, tc = (p == c) & valid, (t == c) & valid
        tp = (pc & tc).sum()
        dice = 2 * tp / (pc.sum() + tc.sum())
        iou = tp / (pc | tc).sum()
        assert s[f"dice/{name}"].item() == pytest.approx(dice, rel=1e-6)
        assert s[f"iou/{name}"].item() == pytest.approx(iou, rel=1e-6)
        dices.append(dice)
    assert s["dice"].item() == pytest.approx(np.mean(dices[1:]), rel=1e-6)
    assert s["pixel_error"].item() == pytest.approx(np.mean(p[valid] != t[valid]), rel=1e-6)


def test_ignored_pixels_and_absent_classes() -> None:
    m = SegmentationScores(["bg", "fg", "other"])
    preds = torch.tensor([[[0, 1, 1]]])
    target = torch.tensor([[[0, 1, -1]]])  # the wrong prediction lies on an ignored pixel
    m.update(preds, target)
    s = m.compute()
    assert s["dice/fg"].item() == 1.0
    # "other" is absent from truth and prediction: scored 1 by the stated rule
    assert s["dice/other"].item() == 1.0
    m.reset()
    m.update(torch.tensor([[[2, 0, 0]]]), torch.tensor([[[1, 0, 0]]]))
    s = m.compute()
    assert s["dice/fg"].item() == 0.0 and s["dice/other"].item() == 0.0


def test_scores_never_exceed_one() -> None:
    g = torch.Generator().manual_seed(1)
    m = SegmentationScores(["bg", "fg"])
    for _ in range(5):
        t = torch.randint(0, 2, (2, 8, 8), generator=g)
        m.update(t.clone(), t)
    s = m.compute()
    assert all(0 <= v.item() <= 1 for v in s.values())
    assert s["dice"].item() == 1.0


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differ"):
        SegmentationScores(["bg", "fg"]).update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3))


def test_without_a_background_the_means_count_class_0() -> None:
    """data.background=false (CamVid's sky is class 0): Dice and IoU are the mean over all
    classes; by default class 0 is left out."""
    preds = torch.tensor([[[0, 0, 1, 2], [0, 1, 1, 2]]])
    target = torch.tensor([[[0, 1, 1, 2], [0, 1, 2, 2]]])
    names = ["sky", "road", "car"]
    every, foreground = SegmentationScores(names, background=False), SegmentationScores(names)
    every.update(preds, target)
    foreground.update(preds, target)
    got, fg = every.compute(), foreground.compute()
    iou = [2 / 3, 2 / 4, 2 / 3]  # sky: TP 2 FP 1; road: TP 2, FP 1, FN 1; car: TP 2, FN 1
    for name, value in zip(names, iou, strict=True):
        assert got[f"iou/{name}"].item() == pytest.approx(value)
    assert got["iou"].item() == pytest.approx(sum(iou) / 3)
    assert fg["iou"].item() == pytest.approx(sum(iou[1:]) / 2)
