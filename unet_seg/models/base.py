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
        spatial_dims: 2 for images (`[B, C, H, W]`), 3 for volumes (`[B, C, D, H, W]`,
            logits `[B, K, D, H, W]`): what callers read to tell the nets apart.
        depth: down-sampling steps; a padded net pads H and W to a multiple of `2 ** depth`
            (per axis `pad_multiples` when the pooling is anisotropic).
        margin: pixels a net's logits lack on each side of its input (valid convolutions).
        supports_checkpointing: whether `checkpointing = True` recomputes activations in
            the backward pass (`fast=checkpointing`).
    """

    spatial_dims: int = 2
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
    def pad_multiples(self) -> tuple[int, ...]:
        """Per spatial axis (`(H, W)` or `(D, H, W)`), the multiple the net pads that side to:
        the product of its pooling strides, `2 ** depth` unless the pooling is anisotropic."""
        return (2**self.depth,) * self.spatial_dims

    @property
    def pad_multiple(self) -> int:
        """`2 ** depth`: H and W are padded to a multiple of this inside the net. For a net
        whose axes differ (anisotropic pooling), the largest of `pad_multiples`: a side
        that is a multiple of it is a multiple of every axis's (they are powers of 2)."""
        return max(self.pad_multiples)

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
                f"level={level} prunes UNet++ only (arch=nested or unetpp_encoder, with deep "
                f"supervision); this is a {type(self).__name__}"
            )

    def forward_level(self, x: Tensor, level: int) -> Tensor:
        """The logits of head `level` of a pruned net (see `check_level`)."""
        self.check_level(level)
        raise NotImplementedError  # check_level refused already

    def forward_traceable(self, x: Tensor, level: int | None = None) -> Tensor:
        """Final logits for any sides >= `min_side`, with padding computed from the input's
        sizes so that a traced graph (ONNX, TorchScript) keeps them dynamic: reflect-pad each
        spatial axis to a multiple of its `pad_multiples`, run (the deepest head, or head
        `level`), crop.

        Shape:
            [B, C, H, W] -> [B, K, H, W]; a 3-D net: [B, C, D, H, W] -> [B, K, D, H, W]
        """
        sizes = x.shape[2:]
        if len(sizes) != self.spatial_dims:
            raise ValueError(
                f"{type(self).__name__} takes {self.spatial_dims}-D inputs "
                f"[B, C, {'D, H, W' if self.spatial_dims == 3 else 'H, W'}], got {tuple(x.shape)}"
            )
        multiples = self.pad_multiples
        pads = [
            p
            for n, m in zip(sizes[::-1], multiples[::-1], strict=True)
            for p in (0, (m - n % m) % m)
        ]
        x = F.pad(x, pads, mode="reflect")  # last axis first, at the end only
        out = self(x) if level is None else self.forward_level(x, level)
        out = out[-1] if isinstance(out, list) else out  # deep supervision: the deepest head
        # cropped by a negative pad, not a slice: torch.export would guard on the slice being
        # a no-op or not, and so fix whether H and W are multiples of `pad_multiple`
        crops = [p for n, o in zip(sizes[::-1], out.shape[:1:-1], strict=True) for p in (0, n - o)]
        return F.pad(out, crops)
