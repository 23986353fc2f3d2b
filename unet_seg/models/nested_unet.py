"""UNet++ (Zhou et al., 2018, "UNet++: A Nested U-Net Architecture for Medical
Image Segmentation").

Node ``x{i}_{j}`` sits at encoder level ``i`` (resolution ``1 / 2**i``) and
decoder column ``j``. Encoder nodes ``x{i}_0`` are a DoubleConv (after 2x2
max pooling for ``i > 0``); every other node is

    x{i}_{j} = DoubleConv(cat[x{i}_0, ..., x{i}_{j-1}, up(x{i+1}_{j-1})])

Deep supervision attaches a 1x1 head to each of ``x0_1 .. x0_4``; pruned
inference at level ``L`` evaluates only the nodes with ``i + j <= L``.

With ``checkpointing`` the decoder nodes keep only their inputs during training
and recompute the rest in the backward pass (Chen et al., 2016, "Training Deep
Nets with Sublinear Memory Cost"): less memory for about one more decoder forward.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from unet_seg.models.anisotropy import conv_kernels, pool_strides, total_strides
from unet_seg.models.base import SegNet
from unet_seg.models.blocks import (
    DoubleConv,
    Size,
    conv_nd,
    crop_to,
    max_pool,
    pad_like,
    pad_to_multiple,
    upsampler,
)

DEPTH = 4


class NestedNode(nn.Module):
    """A decoder node ``x{i}_{j}`` (j >= 1) of UNet++ (Zhou et al., 2018).

    Args:
        skip_channels: total channels of the same-level nodes ``x{i}_0 .. x{i}_{j-1}``.
        deep_channels: channels of ``x{i+1}_{j-1}``.
        out_channels: channels of this node.
        bilinear: bilinear upsampling (keeps ``deep_channels``) instead of a
            transposed conv (maps ``deep_channels`` to ``out_channels``).
        scale: the upsampling factor of ``deep``: 2, or one per axis (level i's stride).
        spatial_dims: 2 (images) or 3 (volumes).
        kernel_size: the conv kernel of level ``i``: 3, or one per axis.

    Shape:
        skips [B, C_k, H, W] each, deep [B, deep_channels, H / 2, W / 2]
        -> [B, out_channels, H, W] (volumes: [B, C, D, H, W], each axis by its scale)
    """

    def __init__(
        self,
        skip_channels: int,
        deep_channels: int,
        out_channels: int,
        bilinear: bool,
        scale: Size = 2,
        spatial_dims: int = 2,
        kernel_size: Size = 3,
    ) -> None:
        super().__init__()
        self.up = upsampler(deep_channels, out_channels, bilinear, scale, spatial_dims)
        up_channels = deep_channels if bilinear else out_channels
        self.conv = DoubleConv(
            skip_channels + up_channels, out_channels, None, spatial_dims, kernel_size
        )
        self.checkpointing = False

    def forward(self, skips: list[torch.Tensor], deep: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            recompute = lambda: (nullcontext(), frozen_batch_norm_stats(self))  # noqa: E731
            return checkpoint(self._node, skips, deep, use_reentrant=False, context_fn=recompute)
        return self._node(skips, deep)

    def _node(self, skips: list[torch.Tensor], deep: torch.Tensor) -> torch.Tensor:
        up = pad_like(self.up(deep), skips[0])
        x = torch.cat([*skips, up], dim=1)  # [B, sum(C_k) + C_up, *S]
        return self.conv(x)


class NestedUNet(SegNet):
    """UNet++ with dense nested skip pathways, optional deep supervision and pruning.

    Args:
        in_channels: channels of the input image.
        num_classes: channels of the output logits.
        base_channels: width ``b`` of level 0; levels have ``[b, 2b, 4b, 8b, 16b]``.
        deep_supervision: one 1x1 head on each of ``x0_1 .. x0_4`` (else only ``x0_4``).
        bilinear: bilinear upsampling instead of ``ConvTranspose2d``.
        checkpointing: recompute the decoder nodes in the backward pass (training only)
            instead of storing their activations; also settable later as an attribute.
        spacing: pixel (voxel) size per axis in mm for anisotropic pooling and kernels
            (:mod:`~unet_seg.models.anisotropy`); None, the default, pools every axis.

    Shape:
        [B, in_channels, H, W] -> [B, num_classes, H, W] (or a list of 4 of them)
    """

    depth = DEPTH
    supports_checkpointing = True

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_channels: int = 32,
        deep_supervision: bool = False,
        bilinear: bool = True,
        checkpointing: bool = False,
        *,
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        c0, c1, c2, c3, c4 = (base_channels * 2**i for i in range(DEPTH + 1))
        dims = self.spatial_dims
        self.strides = pool_strides(spacing, DEPTH, dims)  # s[i]: level i -> i + 1
        k = conv_kernels(spacing, DEPTH, dims)  # k[i]: the kernel of level i
        s = self.strides
        # x{i+1}_0 = conv{i+1}_0(pools[i](x{i}_0)): the pools hold no weights
        self.pools = nn.ModuleList(max_pool(stride, dims) for stride in s)

        # Encoder (backbone) nodes x{i}_0.
        self.conv0_0 = DoubleConv(in_channels, c0, None, dims, k[0])
        self.conv1_0 = DoubleConv(c0, c1, None, dims, k[1])
        self.conv2_0 = DoubleConv(c1, c2, None, dims, k[2])
        self.conv3_0 = DoubleConv(c2, c3, None, dims, k[3])
        self.conv4_0 = DoubleConv(c3, c4, None, dims, k[4])
        # Column 1.
        self.conv0_1 = NestedNode(c0, c1, c0, bilinear, s[0], dims, k[0])
        self.conv1_1 = NestedNode(c1, c2, c1, bilinear, s[1], dims, k[1])
        self.conv2_1 = NestedNode(c2, c3, c2, bilinear, s[2], dims, k[2])
        self.conv3_1 = NestedNode(c3, c4, c3, bilinear, s[3], dims, k[3])
        # Column 2.
        self.conv0_2 = NestedNode(2 * c0, c1, c0, bilinear, s[0], dims, k[0])
        self.conv1_2 = NestedNode(2 * c1, c2, c1, bilinear, s[1], dims, k[1])
        self.conv2_2 = NestedNode(2 * c2, c3, c2, bilinear, s[2], dims, k[2])
        # Column 3.
        self.conv0_3 = NestedNode(3 * c0, c1, c0, bilinear, s[0], dims, k[0])
        self.conv1_3 = NestedNode(3 * c1, c2, c1, bilinear, s[1], dims, k[1])
        # Column 4.
        self.conv0_4 = NestedNode(4 * c0, c1, c0, bilinear, s[0], dims, k[0])

        n_heads = DEPTH if deep_supervision else 1
        self.heads = nn.ModuleList(
            conv_nd(dims)(c0, num_classes, kernel_size=1) for _ in range(n_heads)
        )
        self.checkpointing = checkpointing

    @property
    def checkpointing(self) -> bool:
        """Whether decoder nodes are recomputed in the backward pass (activation checkpointing)."""
        return all(node.checkpointing for node in self._decoder_nodes())

    @checkpointing.setter
    def checkpointing(self, on: bool) -> None:
        for node in self._decoder_nodes():
            node.checkpointing = bool(on)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.conv0_0, self.conv1_0, self.conv2_0, self.conv3_0, self.conv4_0]

    def head_modules(self) -> list[nn.Module]:
        return [self.heads]

    @property
    def pad_multiples(self) -> tuple[int, ...]:
        return total_strides(self.strides, self.spatial_dims)

    def _decoder_nodes(self) -> Iterator[NestedNode]:
        return (m for m in self.modules() if isinstance(m, NestedNode))

    @property
    def num_heads(self) -> int:
        """Logit tensors returned by the full forward (4 with deep supervision)."""
        return len(self.heads)

    def forward(
        self, x: torch.Tensor, level: int | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """Run the network, optionally pruned to ``level``.

        Args:
            x: input batch [B, in_channels, H, W] ([B, in_channels, D, H, W] in 3-D).
            level: ``None`` for the full network; ``L`` in 1..4 to evaluate only
                nodes ``x{i}_{j}`` with ``i + j <= L`` and return head ``L``.

        Returns:
            Logits [B, num_classes, H, W]; with deep supervision and ``level=None``,
            a list of 4 of them ordered shallow (``x0_1``) to deep (``x0_4``).
        """
        self.check_level(level)
        stop = DEPTH if level is None else level
        x, size = pad_to_multiple(x, self.pad_multiples)
        pool1, pool2, pool3, pool4 = self.pools

        # Stage 1: x0_0, x1_0 -> x0_1
        x0_0 = self.conv0_0(x)
        x1_0 = self.conv1_0(pool1(x0_0))
        x0_1 = self.conv0_1([x0_0], x1_0)
        if stop == 1:
            return self._output([x0_1], level, size)

        # Stage 2: x2_0 -> x1_1 -> x0_2
        x2_0 = self.conv2_0(pool2(x1_0))
        x1_1 = self.conv1_1([x1_0], x2_0)
        x0_2 = self.conv0_2([x0_0, x0_1], x1_1)
        if stop == 2:
            return self._output([x0_1, x0_2], level, size)

        # Stage 3: x3_0 -> x2_1 -> x1_2 -> x0_3
        x3_0 = self.conv3_0(pool3(x2_0))
        x2_1 = self.conv2_1([x2_0], x3_0)
        x1_2 = self.conv1_2([x1_0, x1_1], x2_1)
        x0_3 = self.conv0_3([x0_0, x0_1, x0_2], x1_2)
        if stop == 3:
            return self._output([x0_1, x0_2, x0_3], level, size)

        # Stage 4: x4_0 -> x3_1 -> x2_2 -> x1_3 -> x0_4
        x4_0 = self.conv4_0(pool4(x3_0))
        x3_1 = self.conv3_1([x3_0], x4_0)
        x2_2 = self.conv2_2([x2_0, x2_1], x3_1)
        x1_3 = self.conv1_3([x1_0, x1_1, x1_2], x2_2)
        x0_4 = self.conv0_4([x0_0, x0_1, x0_2, x0_3], x1_3)
        return self._output([x0_1, x0_2, x0_3, x0_4], level, size)

    def parameters_at_level(self, level: int) -> int:
        """Number of parameters used by pruned inference at ``level`` (nodes + head)."""
        self.check_level(level)
        modules = [m for stage in self._stages()[:level] for m in stage] + [self._head(level)]
        return sum(p.numel() for m in modules for p in m.parameters())

    def _stages(self) -> list[list[nn.Module]]:
        """Nodes added by each pruning level, i.e. those with ``i + j == L``."""
        return [
            [self.conv0_0, self.conv1_0, self.conv0_1],
            [self.conv2_0, self.conv1_1, self.conv0_2],
            [self.conv3_0, self.conv2_1, self.conv1_2, self.conv0_3],
            [self.conv4_0, self.conv3_1, self.conv2_2, self.conv1_3, self.conv0_4],
        ]

    def _head(self, level: int) -> nn.Module:
        return self.heads[level - 1] if self.deep_supervision else self.heads[0]

    def forward_level(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """The logits of head `level` (1..4), running only the nodes it needs."""
        return self(x, level=level)

    def check_level(self, level: int | None) -> None:
        if level is None:
            return
        if not 1 <= level <= DEPTH:
            raise ValueError(f"level must be in 1..{DEPTH} or None, got {level}")
        if level < DEPTH and not self.deep_supervision:
            raise ValueError(
                f"pruned inference at level {level} needs deep_supervision=True "
                f"(without it only level {DEPTH} has a head)"
            )

    def _output(
        self, tops: list[torch.Tensor], level: int | None, size: tuple[int, ...]
    ) -> torch.Tensor | list[torch.Tensor]:
        """Apply the head(s) to the top-row nodes ``x0_1 ..`` and crop to ``size``."""
        if level is None and self.deep_supervision:
            return [crop_to(head(t), size) for head, t in zip(self.heads, tops, strict=True)]
        return crop_to(self._head(len(tops))(tops[-1]), size)


@contextmanager
def frozen_batch_norm_stats(module: nn.Module) -> Iterator[None]:
    """Batch norm of `module` normalises as in training but leaves its running statistics
    as they were: a recomputed forward must not count the batch a second time."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in norms]  # fmt: skip
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
