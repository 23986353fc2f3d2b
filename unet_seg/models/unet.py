"""U-Net (Ronneberger et al., 2015, "U-Net: Convolutional Networks for Biomedical
Image Segmentation")."""

from __future__ import annotations

import torch
from torch import nn

from unet_seg.models.base import SegNet
from unet_seg.models.blocks import (
    ConvBlock,
    DoubleConv,
    Down,
    Up,
    crop_to,
    pad_to_multiple,
    unet_channels,
)


class UNet(SegNet):
    """Encoder-decoder with skip connections, returning per-pixel logits.

    With ``bilinear=True`` the deepest level and the decoder use half the channels
    (parameter-free upsampling), so the network is smaller than the transposed one.
    Inputs whose sides are not multiples of ``2 ** depth`` are padded, and the
    logits are cropped back to the input size.

    Args:
        in_channels: channels of the input image.
        num_classes: channels of the output logits.
        base_channels: width of the first level; level ``i`` has ``base * 2 ** i``.
        depth: number of down-sampling steps.
        bilinear: bilinear upsampling instead of ``ConvTranspose2d``.

    Shape:
        [B, in_channels, H, W] -> [B, num_classes, H, W]

    Variants of the family change the class attributes, not the layout:
    :class:`~unet_seg.models.res_unet.ResUNet` the conv block,
    :class:`~unet_seg.models.attention_unet.AttentionUNet` the decoder step.
    """

    block: ConvBlock = DoubleConv
    """The conv block of every level: `(in_channels, out_channels, mid_channels) -> module`."""
    up_step: type[nn.Module] = Up
    """The decoder step: `(in_channels, out_channels, bilinear, block) -> module`."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_channels: int = 64,
        depth: int = 4,
        bilinear: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        downs, ups = unet_channels(base_channels, depth, bilinear)

        self.inc = self.block(in_channels, base_channels, None)
        self.downs = nn.ModuleList(Down(c_in, c_out, self.block) for c_in, c_out in downs)
        self.ups = nn.ModuleList(
            self.up_step(c_in, c_out, bilinear, self.block) for c_in, c_out in ups
        )
        self.head = nn.Conv2d(base_channels, num_classes, kernel_size=1)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.inc, self.downs]

    def head_modules(self) -> list[nn.Module]:
        return [self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, 2**self.depth)
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return crop_to(self.head(x), size)
