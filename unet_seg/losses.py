"""Segmentation losses: cross-entropy + soft Dice, and deep-supervision weighting.

Each loss is a pure function plus a thin `nn.Module`. Shapes everywhere:
logits `[B, C, *S]` (C = 1 means binary with a sigmoid), target `[B, *S]`
int64 class indices, for any spatial shape `S`: `H, W` for images, `D, H, W` for
volumes (a voxel is a pixel here). `IGNORE_INDEX` marks pixels that count for nothing
(padding, unlabelled pixels of `data.ignore_value`): they enter no term, so a
loss equals the same loss computed on the labelled pixels alone. The math runs
in float32 even under mixed precision. An optional third argument, per-pixel
weights `[B, *S]` (the U-Net weight map of `loss=weighted_ce_dice`, see
`unet_seg.data.weight_map`), weighs the cross-entropy term; Dice is never weighted.
Every term pools over the batch and all pixels, so a loss depends on the set of
(logit, label, weight) pixels only, not on how they are laid out in `S`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unet_seg.data.masks import IGNORE_INDEX


def class_probabilities(logits: Tensor) -> Tensor:
    """Per-class probabilities in float32: softmax, or `[1 - p, p]` for one sigmoid channel.

    Shape: `[B, C, *S]` -> `[B, max(C, 2), *S]`.
    """
    logits = logits.float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)  # [B, 2, *S]
    return torch.softmax(logits, dim=1)


def soft_dice_per_class(
    probs: Tensor, target: Tensor, smooth: float = 1.0, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Soft Dice of each class, pooled over the batch and all valid pixels.

    dice_c = (2 * sum(p_c * t_c) + smooth) / (sum(p_c) + sum(t_c) + smooth)

    Args:
        probs: `[B, C, *S]` class probabilities (float), `S` any spatial shape.
        target: `[B, *S]` class indices; `ignore_index` pixels are left out.
        smooth: additive smoothing, keeps empty classes at 1 instead of 0/0.
    Returns:
        `[C]` Dice per class.
    """
    num_classes = probs.shape[1]
    if target.shape != probs.shape[:1] + probs.shape[2:]:
        raise ValueError(
            f"target {tuple(target.shape)} does not match probabilities "
            f"{tuple(probs.shape)}: need [B, *S] for [B, C, *S]"
        )
    valid = (target != ignore_index).unsqueeze(1)  # [B, 1, *S]
    onehot = F.one_hot(target.clamp(min=0), num_classes).movedim(-1, 1)  # [B, C, *S]
    onehot = onehot.to(probs.dtype) * valid
    probs = probs * valid
    dims = (0, *range(2, probs.ndim))  # the batch and every spatial axis
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    return (2 * intersection + smooth) / (denominator + smooth)


def dice_loss(
    logits: Tensor,
    target: Tensor,
    include_background: bool = False,
    smooth: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """1 - mean soft Dice over classes (class 0, the background, optionally excluded)."""
    dice = soft_dice_per_class(class_probabilities(logits), target, smooth, ignore_index)
    if not include_background:
        dice = dice[1:]
    return 1 - dice.mean()


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    class_weights: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    pixel_weights: Tensor | None = None,
) -> Tensor:
    """Cross-entropy over valid pixels; BCE-with-logits when there is one output channel.

    Shapes: logits `[B, C, *S]`, target and `pixel_weights` `[B, *S]` (`S` any spatial
    shape: `H, W` or `D, H, W`).

    The mean is a weighted mean over valid pixels, `sum(w * ce) / sum(w)`, where `w` is
    the per-pixel weight (`pixel_weights` `[B, *S]`, the U-Net weight map; else 1) and
    `ce` already includes the class weights (softmax: `w` is then `pixel_weight *
    class_weight` of the true class in the denominator too, as `F.cross_entropy` does;
    BCE: the class weights act through `pos_weight` and the denominator is `sum(w)`).
    Without pixel weights this is `F.cross_entropy`'s mean, and uniform pixel weights
    give exactly the unweighted loss. A batch without a valid pixel (or whose valid
    weights sum to 0) has loss 0, not NaN. No value is read back to the host.
    """
    logits = logits.float()
    valid = target != ignore_index  # [B, *S]
    w = valid.float() if pixel_weights is None else pixel_weights.float() * valid
    if logits.shape[1] == 1:
        pos_weight = None
        if class_weights is not None:  # [w_background, w_foreground]
            pos_weight = class_weights[1] / class_weights[0]
        ce = F.binary_cross_entropy_with_logits(  # [B, *S]
            logits[:, 0], valid * target.float(), pos_weight=pos_weight, reduction="none"
        )
        w_den = w
    else:
        ce = F.cross_entropy(  # [B, *S], class weight included, 0 on ignored pixels
            logits, target, weight=class_weights, ignore_index=ignore_index, reduction="none"
        )
        w_den = w if class_weights is None else w * class_weights[target.clamp(min=0)]
    return (w * ce).sum() / w_den.sum().clamp_min(torch.finfo(torch.float).tiny)


class CEDiceLoss(nn.Module):
    """`ce_weight * CE + dice_weight * (1 - soft Dice)`, the usual U-Net training loss."""

    def __init__(
        self,
        ce_weight: float = 0.5,
        dice_weight: float = 0.5,
        include_background: bool = False,
        smooth: float = 1.0,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise ValueError(
                f"loss weights must be >= 0 and not both 0, got ce_weight={ce_weight}, "
                f"dice_weight={dice_weight}"
            )
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.include_background = include_background
        self.smooth = smooth
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float)
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        """Logits `[B, C, *S]`, target `[B, *S]`; `weights`: optional per-pixel CE weights
        `[B, *S]`; Dice stays unweighted."""
        loss = logits.new_zeros((), dtype=torch.float)
        if self.ce_weight:
            ce = cross_entropy(logits, target, self.class_weights, pixel_weights=weights)
            loss = loss + self.ce_weight * ce
        if self.dice_weight:
            dice = dice_loss(logits, target, self.include_background, self.smooth)
            loss = loss + self.dice_weight * dice
        return loss


def deep_supervision_weights(scheme: str | Sequence[float], num_heads: int) -> list[float]:
    """Weights of the deep-supervision heads, shallow to deep, summing to 1.

    `equal`: 1/n each. `halving`: each head weighs half the next deeper one
    (the deepest, final head weighs most). A list is normalised as given.
    """
    if isinstance(scheme, str):
        if scheme == "equal":
            raw = [1.0] * num_heads
        elif scheme == "halving":
            raw = [0.5 ** (num_heads - 1 - i) for i in range(num_heads)]
        else:
            raise ValueError(
                f"unknown deep-supervision weighting {scheme!r}: use 'equal', 'halving' "
                "or a list of one weight per head"
            )
    else:
        raw = [float(w) for w in scheme]
        if len(raw) != num_heads or any(w < 0 for w in raw) or sum(raw) == 0:
            raise ValueError(f"need {num_heads} non-negative deep-supervision weights, got {raw}")
    total = sum(raw)
    return [w / total for w in raw]


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of a loss over every head's logits (a list, shallow to deep).

    Every head's logits have the target's size (UNet++'s heads all sit on the full-size
    row `x0_j`, in 2-D and 3-D alike), so the target is used as it is.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float]) -> None:
        super().__init__()
        self.loss = loss
        self.weights = list(weights)

    def forward(
        self, outputs: Sequence[Tensor], target: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        """`outputs`: `[B, C, *S]` each; `weights`: optional per-pixel weights `[B, *S]`,
        passed to every head's loss."""
        if len(outputs) != len(self.weights):
            raise ValueError(f"expected {len(self.weights)} heads, got {len(outputs)}")
        extra = () if weights is None else (weights,)
        return sum(
            w * self.loss(out, target, *extra) for w, out in zip(self.weights, outputs, strict=True)
        )


def build_loss(cfg: dict, num_heads: int = 1) -> nn.Module:
    """The loss described by a `conf/loss/*.yaml` node (plain dict).

    `weight_map` (loss=weighted_ce_dice) configures the data pipeline, which
    computes the per-pixel weights; the loss itself only receives them.
    """
    cfg = dict(cfg)
    scheme = cfg.pop("deep_supervision_weights", "equal")
    cfg.pop("weight_map", None)
    if cfg.get("class_weights") == "rare":  # weights only when the data has rare classes,
        cfg["class_weights"] = None  # which `unet_seg.build.build_module` looks at; none here
    if isinstance(cfg.get("class_weights"), str):
        raise ValueError(
            f"loss.class_weights={cfg['class_weights']}: counted from the training masks "
            "when a run is built (unet_seg.build.build_module); give a list of weights here"
        )
    loss = CEDiceLoss(**cfg)
    if num_heads > 1:
        return DeepSupervisionLoss(loss, deep_supervision_weights(scheme, num_heads))
    return loss
