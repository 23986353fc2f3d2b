"""Attention U-Net (Oktay et al., 2018, "Attention U-Net: Learning Where to Look for
the Pancreas"): a U-Net whose skip connections pass through additive attention gates.

Each decoder step upsamples the coarser feature, uses it as the gating signal of an
:class:`~unet_seg.models.blocks.AttentionGate` on the skip, and concatenates the
gated skip with it. Encoder, widths and head are those of :class:`~unet_seg.models.UNet`
(Ronneberger et al., 2015); the paper's 3D setting, deep supervision and coarse-grid
gating are not reproduced (see :class:`AttentionGate` for the gate's differences).
"""

from __future__ import annotations

import torch
from torch import nn

from unet_seg.models.blocks import (
    AttentionGate,
    ConvBlock,
    DoubleConv,
    Size,
    crop_to,
    pad_like,
    pad_to_multiple,
    upsampler,
)
from unet_seg.models.unet import UNet


class AttentionUp(nn.Module):
    """Decoder step: upsample the deeper feature, gate the skip with it, concatenate,
    :class:`DoubleConv`. Channels as in :class:`~unet_seg.models.blocks.Up`: the
    upsampled feature and the skip both have ``in_channels // 2``.

    Args:
        in_channels: channels after concatenation [gated skip, up].
        out_channels: channels of the output.
        bilinear: bilinear upsampling instead of a transposed conv.
        block: the conv block after concatenation (:class:`DoubleConv` by default).
        scale: the upsampling factor: 2, or one per axis.
        spatial_dims: 2 (images) or 3 (volumes).

    Shape:
        deeper [B, C_d, h, w], skip [B, in_channels // 2, H, W] with H in {2h, 2h + 1}
        -> (out [B, out_channels, H, W], alpha [B, 1, H, W])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bilinear: bool = False,
        block: ConvBlock = DoubleConv,
        scale: Size = 2,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        half = in_channels // 2
        self.up = upsampler(in_channels, half, bilinear, scale, spatial_dims)
        self.gate = AttentionGate(half, half, spatial_dims=spatial_dims)
        self.conv = block(in_channels, out_channels, half if bilinear else None)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        up = pad_like(self.up(x), skip)
        gated, alpha = self.gate(up, skip)
        x = torch.cat([gated, up], dim=1)  # [B, C_skip + C_up, H, W]
        return self.conv(x), alpha


class AttentionUNet(UNet):
    """U-Net with attention-gated skips (Oktay et al., 2018), returning per-pixel logits.

    :class:`~unet_seg.models.UNet` with :class:`AttentionUp` as its decoder step: same
    arguments, widths and padding rule; only `forward` differs (it gathers the gates'
    coefficients). The gates add
    ``C**2 + 2.5 C + 2`` parameters per skip of ``C`` channels.

    Args:
        in_channels: channels of the input image.
        num_classes: channels of the output logits.
        base_channels: width of the first level; level ``i`` has ``base * 2 ** i``.
        depth: number of down-sampling steps.
        bilinear: bilinear upsampling instead of ``ConvTranspose2d``.

    Shape:
        [B, in_channels, H, W] -> [B, num_classes, H, W]
    """

    up_step = AttentionUp

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits, and with ``return_attention`` the gates' coefficients.

        Returns:
            Logits [B, num_classes, H, W]; with ``return_attention`` also a list of
            ``depth`` attention maps, shallow to deep: level ``i`` is
            [B, 1, ceil(H / 2**i), ceil(W / 2**i)], values in [0, 1].
        """
        h, w = x.shape[-2:]
        x, size = pad_to_multiple(x, self.pad_multiples)
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        alphas = []
        for up in self.ups:
            x, alpha = up(x, skips.pop())
            alphas.append(alpha)
        logits = crop_to(self.head(x), size)
        if not return_attention:
            return logits
        levels = range(len(alphas))  # alphas run deep to shallow; level i is 1 / 2**i
        crops = [(-(-h // 2**i), -(-w // 2**i)) for i in levels]
        return logits, [crop_to(a, s) for a, s in zip(alphas[::-1], crops, strict=True)]
