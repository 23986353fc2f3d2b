"""`SegNet`: the interface every registered net declares, so callers never probe a net.

A padded net (U-Net, UNet++, ...) keeps every default: its logits are the size of
its input, `margin` is 0, and `forward_same` and `forward_with_context` are
`forward`. A valid-convolution net (`ValidUNet`) sets `margin` and overrides them;
UNet++ sets `num_heads` (deep supervision) and pruned inference (`check_level`).
Each net names its encoder and its heads (`encoder_modules`, `head_modules`): fine-tuning
(`init_from=`) freezes the one and rebuilds the other by these, never by parameter names.
A new architecture subclasses `SegNet` and is added to `registry.ARCHITECTURES`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn


class SegNet(nn.Module):
    """Base class of the segmentation nets: `[B, C, H, W] -> [B, K, H', W']` logits.

    Attributes:
        depth: down-sampling steps; a padded net pads H and W to a multiple of `2 ** depth`.
        margin: pixels a net's logits lack on each side of its input (valid convolutions).
        supports_checkpointing: whether `checkpointing = True` recomputes activations in
            the backward pass (`fast=checkpointing`).
    """

    depth: int = 4
    margin: int = 0
    supports_checkpointing: bool = False

    @classmethod
    def margin_for_config(cls, **kwargs: Any) -> int:
        """The `margin` of the net these constructor arguments build, without building it
        (the data module cuts training patches with that much context)."""
        return cls.margin

    @property
    def num_heads(self) -> int:
        """Logit tensors `forward` returns: 1, or a list of that many, shallow to deep."""
        return 1

    @property
    def pad_multiple(self) -> int:
        """`2 ** depth`: H and W are padded to a multiple of this inside the net."""
        return 2**self.depth

    @property
    def min_side(self) -> int:
        """The smallest H and W the net (and its traced graph) takes."""
        return self.pad_multiple + self.margin

    def encoder_modules(self) -> list[nn.Module]:
        """The contracting path, down to and including the bottleneck: what
        `finetune.freeze_encoder_epochs` keeps fixed."""
        raise NotImplementedError(f"{type(self).__name__} does not name its encoder")

    def head_modules(self) -> list[nn.Module]:
        """The layers that turn features into logits (1x1 convolutions): their shapes follow
        the class count, so a fine-tuned run with another class count trains them anew."""
        raise NotImplementedError(f"{type(self).__name__} does not name its head")

    def parts(self) -> dict[str, Literal["encoder", "decoder", "head"]]:
        """Each `state_dict()` entry (parameters and buffers) -> the part of the net it is in:
        `encoder_modules`, `head_modules`, or the decoder (everything else)."""
        owner: dict[int, Literal["encoder", "head"]] = {}
        for part, modules in (("encoder", self.encoder_modules()), ("head", self.head_modules())):
            for module in modules:
                owner.update({id(t): part for t in (*module.parameters(), *module.buffers())})
        return {name: owner.get(id(t), "decoder")
                for name, t in self.state_dict(keep_vars=True).items()}  # fmt: skip

    def forward_with_context(self, x: Tensor) -> Tensor | list[Tensor]:
        """Logits for the centre of `x`, which carries `margin` pixels of context on each
        side (training patches): `[B, C, H, W] -> [B, K, H - 2m, W - 2m]` (or a list)."""
        return self(x)

    def forward_same(self, x: Tensor) -> Tensor | list[Tensor]:
        """Logits for every pixel of `x` (whole images): `[B, C, H, W] -> [B, K, H, W]`
        (or a list, one per head); a valid-convolution net mirrors the borders for context."""
        return self(x)

    def check_level(self, level: int | None) -> None:
        """Raise unless pruned inference at `level` is possible (None: the full net)."""
        if level is not None:
            raise ValueError(
                f"level={level} prunes UNet++ only (arch=nested with deep supervision); "
                f"this is a {type(self).__name__}"
            )

    def forward_level(self, x: Tensor, level: int) -> Tensor:
        """The logits of head `level` of a pruned net (see `check_level`)."""
        self.check_level(level)
        raise NotImplementedError  # check_level refused already

    def forward_traceable(self, x: Tensor, level: int | None = None) -> Tensor:
        """Final logits for any H, W >= `min_side`, with padding computed from the input's
        sizes so that a traced graph (ONNX, TorchScript) keeps H and W dynamic: reflect-pad to
        a multiple of `pad_multiple`, run (the deepest head, or head `level`), crop.

        Shape:
            [B, C, H, W] -> [B, K, H, W]
        """
        h, w = x.shape[-2], x.shape[-1]
        m = self.pad_multiple
        x = F.pad(x, [0, (m - w % m) % m, 0, (m - h % m) % m], mode="reflect")
        out = self(x) if level is None else self.forward_level(x, level)
        out = out[-1] if isinstance(out, list) else out  # deep supervision: the deepest head
        # cropped by a negative pad, not a slice: torch.export would guard on the slice being
        # a no-op or not, and so fix whether H and W are multiples of `pad_multiple`
        return F.pad(out, [0, w - out.shape[-1], 0, h - out.shape[-2]])
