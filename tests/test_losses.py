"""Losses against hand-computed cases and an independent NumPy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unet_seg.losses import (
    CEDiceLoss,
    DeepSupervisionLoss,
    build_loss,
    cross_entropy,
    deep_supervision_weights,
    dice_loss,
    soft_dice_per_class,
)


def numpy_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def numpy_dice(probs: np.ndarray, target: np.ndarray, smooth: float) -> np.ndarray:
    """Per-class soft Dice pooled over batch and pixels, written out with loops."""
    dice = []
    for c in range(probs.shape[1]):
        t = (target == c).astype(np.float64)
        p = probs[:, c]
        dice.append((2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth))
    return np.array(dice)


def test_soft_dice_hand_computed() -> None:
    # one image of two pixels; P(class 1) = 0.8 and 0.4; truth: pixel 0 is class 1
    probs = torch.tensor([[[[0.2, 0.6]], [[0.8, 0.4]]]])  # [1, 2, 1, 2]
    target = torch.tensor([[[1, 0]]])
    dice = soft_dice_per_class(probs, target, smooth=0.0)
    # class 1: 2 * 0.8 / (1.2 + 1); class 0: 2 * 0.6 / (0.8 + 1)
    assert dice.tolist() == pytest.approx([1.2 / 1.8, 1.6 / 2.2])


def test_dice_loss_matches_numpy_and_excludes_background() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 7, generator=g)
    target = torch.randint(0, 3, (2, 5, 7), generator=g)
    ref = numpy_dice(numpy_softmax(logits.numpy().astype(np.float64)), target.numpy(), 1.0)
    got = dice_loss(logits, target, include_background=True, smooth=1.0)
    assert got.item() == pytest.approx(1 - ref.mean(), rel=1e-5)
    got_fg = dice_loss(logits, target, include_background=False, smooth=1.0)
    assert got_fg.item() == pytest.approx(1 - ref[1:].mean(), rel=1e-5)


def test_perfect_prediction_has_zero_dice_loss() -> None:
    target = torch.randint(0, 2, (2, 8, 8), generator=torch.Generator().manual_seed(1))
    logits = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 50
    assert dice_loss(logits, target, smooth=0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_cross_entropy_matches_numpy() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    p = numpy_softmax(logits.numpy().astype(np.float64))
    picked = np.take_along_axis(p, target.numpy()[:, None], axis=1)
    assert cross_entropy(logits, target).item() == pytest.approx(-np.log(picked).mean(), rel=1e-5)


def test_binary_sigmoid_losses_match_numpy() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 6, 6, generator=g)
    target = torch.randint(0, 2, (2, 6, 6), generator=g)
    s = 1 / (1 + np.exp(-logits.numpy()[:, 0].astype(np.float64)))
    y = target.numpy()
    bce = -(y * np.log(s) + (1 - y) * np.log(1 - s)).mean()
    assert cross_entropy(logits, target).item() == pytest.approx(bce, rel=1e-5)
    fg = (2 * (s * y).sum() + 1) / (s.sum() + y.sum() + 1)
    assert dice_loss(logits, target).item() == pytest.approx(1 - fg, rel=1e-5)
    combined = CEDiceLoss(ce_weight=0.3, dice_weight=0.7)(logits, target)
    assert combined.item() == pytest.approx(0.3 * bce + 0.7 * (1 - fg), rel=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_ignored_pixels_count_for_nothing(channels: int) -> None:
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(1, channels, 6, 6, generator=g)
    target = torch.randint(0, max(channels, 2), (1, 6, 6), generator=g)
    padded_logits = torch.cat([logits, torch.randn(1, channels, 6, 3, generator=g)], dim=3)
    padded_target = torch.cat([target, torch.full((1, 6, 3), -1)], dim=2)
    loss = CEDiceLoss()
    assert loss(padded_logits, padded_target).item() == pytest.approx(loss(logits, target).item())


def test_half_precision_logits_give_float32_loss() -> None:
    logits = torch.randn(1, 2, 4, 4).half()
    target = torch.randint(0, 2, (1, 4, 4))
    loss = CEDiceLoss()(logits, target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(CEDiceLoss()(logits.float(), target).item())


def test_class_weights_change_cross_entropy() -> None:
    logits = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    target = torch.randint(0, 2, (1, 4, 4), generator=torch.Generator().manual_seed(6))
    plain = CEDiceLoss(1.0, 0.0)(logits, target)
    weighted = CEDiceLoss(1.0, 0.0, class_weights=[1.0, 5.0])(logits, target)
    expected = torch.nn.functional.cross_entropy(logits, target, weight=torch.tensor([1.0, 5.0]))
    assert weighted.item() == pytest.approx(expected.item())
    assert weighted.item() != pytest.approx(plain.item())


def test_deep_supervision_weights() -> None:
    assert deep_supervision_weights("equal", 4) == pytest.approx([0.25] * 4)
    assert deep_supervision_weights("halving", 4) == pytest.approx([1 / 15, 2 / 15, 4 / 15, 8 / 15])
    assert deep_supervision_weights([1, 1, 2, 0], 4) == pytest.approx([0.25, 0.25, 0.5, 0.0])
    with pytest.raises(ValueError, match="equal"):
        deep_supervision_weights("deepest", 4)
    with pytest.raises(ValueError, match="4"):
        deep_supervision_weights([1, 1], 4)


def test_deep_supervision_sums_every_head() -> None:
    base = CEDiceLoss()
    target = torch.randint(0, 2, (1, 8, 8), generator=torch.Generator().manual_seed(7))
    heads = [torch.randn(1, 2, 8, 8, requires_grad=True) for _ in range(4)]
    loss = DeepSupervisionLoss(base, deep_supervision_weights("halving", 4))(heads, target)
    expected = sum(w * base(h, target) for w, h in zip([1, 2, 4, 8], heads, strict=True)) / 15
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in heads)


def test_build_loss_wraps_for_deep_supervision() -> None:
    cfg = {"ce_weight": 0.5, "dice_weight": 0.5, "deep_supervision_weights": "halving"}
    assert isinstance(build_loss(cfg, num_heads=1), CEDiceLoss)
    wrapped = build_loss(cfg, num_heads=4)
    assert isinstance(wrapped, DeepSupervisionLoss)
    assert wrapped.weights == pytest.approx([1 / 15, 2 / 15, 4 / 15, 8 / 15])


def test_bad_loss_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="ce_weight"):
        CEDiceLoss(ce_weight=0.0, dice_weight=0.0)


# --------------------------------------------------------------------------- volumes (N-D)


@pytest.mark.parametrize("channels", [1, 3])
def test_volume_losses_equal_the_same_voxels_laid_out_in_2d(channels: int) -> None:
    """A `[B, K, D, H, W]` batch and the same voxels as `[B, K, D*H, W]` give one loss (CE,
    Dice, CE + Dice, weighted CE, deep supervision), ignored voxels included."""
    g = torch.Generator().manual_seed(8)
    b, d, h, w = 2, 3, 4, 5
    logits = torch.randn(b, channels, d, h, w, generator=g, requires_grad=True)
    target = torch.randint(0, max(channels, 2), (b, d, h, w), generator=g)
    target[torch.rand(b, d, h, w, generator=g) < 0.2] = -1  # unlabelled voxels
    weights = torch.rand(b, d, h, w, generator=g) + 0.5
    flat = (logits.reshape(b, channels, d * h, w), target.reshape(b, d * h, w))
    flat_w = weights.reshape(b, d * h, w)
    combined = CEDiceLoss(0.3, 0.7)
    deep = DeepSupervisionLoss(combined, [0.25, 0.75])
    pairs = [
        (cross_entropy(logits, target), cross_entropy(*flat)),
        (cross_entropy(logits, target, pixel_weights=weights),
         cross_entropy(*flat, pixel_weights=flat_w)),
        (dice_loss(logits, target), dice_loss(*flat)),
        (combined(logits, target, weights), combined(*flat, flat_w)),
        (deep([logits, 2 * logits], target), deep([flat[0], 2 * flat[0]], flat[1])),
    ]  # fmt: skip
    for volume, image in pairs:
        assert torch.isfinite(volume)
        assert abs(volume.item() - image.item()) < 1e-6
    # and the ignored voxels count for nothing: the loss of the labelled voxels alone
    keep = target.reshape(-1) != -1
    labelled = logits.movedim(1, -1).reshape(-1, channels)[keep]  # [N, K]
    alone = (labelled.T[None, :, :, None], target.reshape(-1)[keep][None, :, None])  # [1,K,N,1]
    assert abs(combined(logits, target).item() - combined(*alone).item()) < 1e-6
    combined(logits, target, weights).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_dice_refuses_a_target_of_another_shape() -> None:
    with pytest.raises(ValueError, match=r"need \[B, \*S\]"):
        dice_loss(torch.randn(1, 2, 4, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
