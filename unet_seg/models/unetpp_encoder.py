"""UNet++'s nested decoder (Zhou et al., 2018, "UNet++: A Nested U-Net Architecture for
Medical Image Segmentation") over a pretrained encoder's feature pyramid: `arch=unetpp_encoder
arch.encoder=resnet34 arch.encoder_weights=imagenet|PATH|null`.

Level ``i`` is stride ``2**i`` (0: the input's resolution, 5: the encoder's stride 32). The
encoder nodes ``x{i}_0`` are the encoder's features: strides 2..32 for ResNet
(``x1_0 .. x5_0``), 4..32 for ConvNeXt (``x2_0 .. x5_0``); no encoder has ``x0_0``. Every
other node is, as in :class:`~unet_seg.models.nested_unet.NestedUNet`,

    x{i}_{j} = DoubleConv(cat[x{i}_0, ..., x{i}_{j-1}, up(x{i+1}_{j-1})])

over those of its same-level inputs that exist. A missing stride is handled as
:class:`~unet_seg.models.encoder_unet.EncoderUNet` handles it: the nodes at that stride
have no encoder skip. A node needs its deep input, so ``x{i}_{j}`` exists when the encoder
has stride ``2**(i + j)``: all 15 with ResNet; ConvNeXt has no ``x0_1`` (no ``x1_0``).

The top row ``x0_j`` is at full resolution; deep supervision puts a 1x1 head on each of its
nodes (ResNet ``x0_1 .. x0_5``, ConvNeXt ``x0_2 .. x0_5``), and pruned inference at level
``L`` evaluates only the decoder nodes with ``i + j <= L`` and returns head ``L``
(NestedUNet's mechanism), and the encoder only to stride ``2**L`` (its deeper stages, where
most of a ResNet's parameters are, are not run).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from unet_seg.models.blocks import crop_to, pad_to_multiple
from unet_seg.models.encoder_unet import STEPS, EncoderNet, decoder_widths
from unet_seg.models.nested_unet import NestedNode


class PyramidNode(NestedNode):
    """A decoder node ``x{i}_{j}`` whose same-level inputs may be none: at a stride the
    encoder lacks (stride 1 always, stride 2 for ConvNeXt) the first nodes of a row have
    only their deep input. Upsampling and activation checkpointing are NestedNode's.

    Shape:
        skips [B, C_k, H, W] each (possibly none), deep [B, deep_channels, H / 2, W / 2]
        -> [B, out_channels, H, W]
    """

    def _node(self, skips: list[torch.Tensor], deep: torch.Tensor) -> torch.Tensor:
        up = self.up(deep)  # H and W are multiples of 32: the sizes match without padding
        x = torch.cat([*skips, up], dim=1) if skips else up  # [B, sum(C_k) + C_up, H, W]
        return self.conv(x)


class EncoderNestedUNet(EncoderNet):
    """UNet++ whose backbone column ``x{i}_0`` is a (pretrained) ResNet or ConvNeXt.

    The encoder and its weights (`encoder_weights`, `load_encoder_weights`, the encoder
    named for fine-tuning) are :class:`~unet_seg.models.encoder_unet.EncoderNet`'s, as for
    `arch=unet_encoder`, so the same weight files load with the same refusals.

    Args:
        in_channels: channels of the input image (a pretrained first conv is adapted).
        num_classes: channels of the output logits.
        encoder: `resnet18`, `resnet34`, `resnet50` or `convnext_tiny`.
        encoder_weights: None (random initialisation), `imagenet` or a local file.
        base_channels: the width of the full-resolution row; the decoder nodes at strides
            16, 8, 4, 2, 1 have `base_channels * 2 ** (4 - i)`: 256, 128, 64, 32, 16 at 16,
            as `arch=unet_encoder`'s decoder steps.
        decoder_channels: the widths of the nodes at strides 16, 8, 4, 2, 1, in place of
            those `base_channels` gives.
        deep_supervision: a 1x1 head on every top node ``x0_j`` (5 with ResNet, 4 with
            ConvNeXt), which also allows pruned inference; else one on ``x0_5``.
        bilinear: bilinear upsampling instead of a transposed convolution.
        checkpointing: recompute the decoder nodes in the backward pass (training only)
            instead of storing their activations; also settable later as an attribute.

    Shape:
        [B, in_channels, H, W] -> [B, num_classes, H, W] (or a list of `num_heads` of
        them, shallow to deep, the final head last)
    """

    supports_checkpointing = True

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder: str = "resnet34",
        encoder_weights: str | None = None,
        base_channels: int = 16,
        decoder_channels: Sequence[int] | None = None,
        deep_supervision: bool = True,
        bilinear: bool = True,
        checkpointing: bool = False,
    ) -> None:
        widths = decoder_widths(base_channels, decoder_channels)[::-1]  # strides 1 .. 16
        super().__init__(in_channels, encoder, encoder_weights)
        self.deep_supervision = deep_supervision
        self.bilinear = bilinear
        by_stride = dict(zip(self.encoder.strides, self.encoder.out_channels, strict=True))
        self._encoder_widths = [by_stride.get(2**i, 0) for i in range(STEPS + 1)]  # 0: none
        self._widths = widths
        # the pruning levels: L where the top node x0_L exists (the encoder has stride 2**L)
        self.levels = [level for level in range(1, STEPS + 1) if 2**level in by_stride]
        # Column 1.
        self.conv0_1 = self._build(0, 1)
        self.conv1_1 = self._build(1, 1)
        self.conv2_1 = self._build(2, 1)
        self.conv3_1 = self._build(3, 1)
        self.conv4_1 = self._build(4, 1)
        # Column 2.
        self.conv0_2 = self._build(0, 2)
        self.conv1_2 = self._build(1, 2)
        self.conv2_2 = self._build(2, 2)
        self.conv3_2 = self._build(3, 2)
        # Column 3.
        self.conv0_3 = self._build(0, 3)
        self.conv1_3 = self._build(1, 3)
        self.conv2_3 = self._build(2, 3)
        # Column 4.
        self.conv0_4 = self._build(0, 4)
        self.conv1_4 = self._build(1, 4)
        # Column 5.
        self.conv0_5 = self._build(0, 5)

        n_heads = len(self.levels) if deep_supervision else 1
        self.heads = nn.ModuleList(
            nn.Conv2d(widths[0], num_classes, kernel_size=1) for _ in range(n_heads)
        )
        self.checkpointing = checkpointing

    def _exists(self, i: int, j: int) -> bool:
        """Whether node ``x{i}_{j}`` exists: an encoder node when the encoder has stride
        ``2**i``; a decoder node when its deep input does, i.e. stride ``2**(i + j)``."""
        return self._encoder_widths[i + j] > 0

    def _build(self, i: int, j: int) -> PyramidNode | None:
        """Node ``x{i}_{j}`` (j >= 1) with its channel bookkeeping, or None where it cannot
        exist: same-level inputs ``x{i}_0 .. x{i}_{j-1}`` (those that exist), deep input
        ``x{i+1}_{j-1}`` (the encoder's feature for j = 1)."""
        if not self._exists(i, j):
            return None
        skip = self._encoder_widths[i] + sum(
            self._widths[i] for k in range(1, j) if self._exists(i, k)
        )
        deep = self._encoder_widths[i + 1] if j == 1 else self._widths[i + 1]
        return PyramidNode(skip, deep, self._widths[i], self.bilinear)

    @property
    def checkpointing(self) -> bool:
        """Whether decoder nodes are recomputed in the backward pass (activation checkpointing)."""
        return all(node.checkpointing for node in self._decoder_nodes())

    @checkpointing.setter
    def checkpointing(self, on: bool) -> None:
        for node in self._decoder_nodes():
            node.checkpointing = bool(on)

    def _decoder_nodes(self) -> Iterator[PyramidNode]:
        return (m for m in self.modules() if isinstance(m, PyramidNode))

    @property
    def num_heads(self) -> int:
        """Logit tensors returned by the full forward (one per top node with deep supervision)."""
        return len(self.heads)

    def head_modules(self) -> list[nn.Module]:
        return [self.heads]

    def forward(
        self, x: torch.Tensor, level: int | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """Run the network, optionally pruned to ``level``.

        Args:
            x: input batch [B, in_channels, H, W].
            level: ``None`` for the full network; ``L`` in `levels` to evaluate only the
                decoder nodes ``x{i}_{j}`` with ``i + j <= L`` and return head ``L``.

        Returns:
            Logits [B, num_classes, H, W]; with deep supervision and ``level=None``, a list
            of `num_heads` of them ordered shallow (``x0_1`` or ``x0_2``) to deep (``x0_5``).
        """
        self.check_level(level)
        stop = STEPS if level is None else level
        x, size = pad_to_multiple(x, self.pad_multiples)
        features = self.pyramid(x, None if level is None else 2**stop)
        x1_0, x2_0, x3_0, x4_0, x5_0 = (features.get(2**i) for i in range(1, STEPS + 1))
        node = self._node  # x0_0 is never there: no encoder has a stride-1 feature

        # Stage 1 (ResNet only): x1_0 -> x0_1
        x0_1 = node(self.conv0_1, [], x1_0)
        if stop == 1:
            return self._output([x0_1], level, size)

        # Stage 2: x2_0 -> x1_1 -> x0_2
        x1_1 = node(self.conv1_1, [x1_0], x2_0)
        x0_2 = node(self.conv0_2, [x0_1], x1_1)
        if stop == 2:
            return self._output([x0_1, x0_2], level, size)

        # Stage 3: x3_0 -> x2_1 -> x1_2 -> x0_3
        x2_1 = node(self.conv2_1, [x2_0], x3_0)
        x1_2 = node(self.conv1_2, [x1_0, x1_1], x2_1)
        x0_3 = node(self.conv0_3, [x0_1, x0_2], x1_2)
        if stop == 3:
            return self._output([x0_1, x0_2, x0_3], level, size)

        # Stage 4: x4_0 -> x3_1 -> x2_2 -> x1_3 -> x0_4
        x3_1 = node(self.conv3_1, [x3_0], x4_0)
        x2_2 = node(self.conv2_2, [x2_0, x2_1], x3_1)
        x1_3 = node(self.conv1_3, [x1_0, x1_1, x1_2], x2_2)
        x0_4 = node(self.conv0_4, [x0_1, x0_2, x0_3], x1_3)
        if stop == 4:
            return self._output([x0_1, x0_2, x0_3, x0_4], level, size)

        # Stage 5: x5_0 -> x4_1 -> x3_2 -> x2_3 -> x1_4 -> x0_5
        x4_1 = node(self.conv4_1, [x4_0], x5_0)
        x3_2 = node(self.conv3_2, [x3_0, x3_1], x4_1)
        x2_3 = node(self.conv2_3, [x2_0, x2_1, x2_2], x3_2)
        x1_4 = node(self.conv1_4, [x1_0, x1_1, x1_2, x1_3], x2_3)
        x0_5 = node(self.conv0_5, [x0_1, x0_2, x0_3, x0_4], x1_4)
        return self._output([x0_1, x0_2, x0_3, x0_4, x0_5], level, size)

    @staticmethod
    def _node(
        module: PyramidNode | None, skips: list[torch.Tensor | None], deep: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Node ``module`` on the inputs that exist; None for a node that does not."""
        if module is None:
            return None
        return module([s for s in skips if s is not None], deep)

    def check_level(self, level: int | None) -> None:
        if level is None:
            return
        if level not in self.levels:
            raise ValueError(
                f"level must be one of {self.levels} (the strides 2**L of the "
                f"{self.encoder_name} encoder) or None, got {level}"
            )
        if level < STEPS and not self.deep_supervision:
            raise ValueError(
                f"pruned inference at level {level} needs deep_supervision=True "
                f"(without it only level {STEPS} has a head)"
            )

    def forward_level(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """The logits of head `level`, running only the decoder nodes it needs."""
        return self(x, level=level)

    def parameters_at_level(self, level: int) -> int:
        """Number of parameters used by pruned inference at ``level``: the encoder to stride
        ``2**level``, the decoder nodes with ``i + j <= level`` and head ``level``."""
        self.check_level(level)
        nodes = [m for stage in self._stages()[:level] for m in stage if m is not None]
        modules = [*self.encoder.modules_to(2**level), *nodes, self._head(level)]
        return sum(p.numel() for m in modules for p in m.parameters())

    def _stages(self) -> list[list[PyramidNode | None]]:
        """Decoder nodes added by each pruning level 1..5, i.e. those with ``i + j == L``."""
        return [
            [self.conv0_1],
            [self.conv1_1, self.conv0_2],
            [self.conv2_1, self.conv1_2, self.conv0_3],
            [self.conv3_1, self.conv2_2, self.conv1_3, self.conv0_4],
            [self.conv4_1, self.conv3_2, self.conv2_3, self.conv1_4, self.conv0_5],
        ]

    def _head(self, level: int) -> nn.Module:
        return self.heads[self.levels.index(level)] if self.deep_supervision else self.heads[0]

    def _output(
        self, tops: list[torch.Tensor | None], level: int | None, size: tuple[int, ...]
    ) -> torch.Tensor | list[torch.Tensor]:
        """Apply the head(s) to the top-row nodes that exist and crop to ``size``."""
        tops = [t for t in tops if t is not None]
        if level is None and self.deep_supervision:
            return [crop_to(head(t), size) for head, t in zip(self.heads, tops, strict=True)]
        return crop_to(self._head(level or STEPS)(tops[-1]), size)
