"""Residual U-Net: the U-Net of Ronneberger et al., 2015 with every DoubleConv replaced
by a residual block (He et al., 2016, "Deep Residual Learning for Image Recognition").

The idea follows Zhang et al., 2018, "Road Extraction by Deep Residual U-Net"
(ResUnet). Where this net differs from theirs, to stay a drop-in comparison with
:class:`~unet_seg.models.UNet` (only the block changes):

* post-activation residual blocks (conv-BN-ReLU-conv-BN, add, ReLU) as in He et al.,
  where ResUnet uses pre-activation units (BN-ReLU-conv);
* 2x2 max pooling and transposed-conv (or bilinear) upsampling, where ResUnet
  downsamples with stride-2 convolutions;
* U-Net's depth 4 and widths (64 doubling to 1024), where ResUnet has three levels
  of 64-256 channels and a 512-channel bridge.
"""

from __future__ import annotations

import torch
from torch import nn

from unet_seg.models.blocks import (
    Down,
    ResidualBlock,
    Up,
    crop_to,
    pad_to_multiple,
    unet_channels,
)


class ResUNet(nn.Module):
    """U-Net with residual blocks (Zhang et al., 2018; He et al., 2016), returning logits.

    Same arguments, widths and padding rule as :class:`~unet_seg.models.UNet`; each
    block whose channels change adds a 1x1 projection shortcut (``C_in * C_out + 2 C_out``
    parameters), the others an identity.

    Args:
        in_channels: channels of the input image.
        num_classes: channels of the output logits.
        base_channels: width of the first level; level ``i`` has ``base * 2 ** i``.
        depth: number of down-sampling steps.
        bilinear: bilinear upsampling instead of ``ConvTranspose2d``.

    Shape:
        [B, in_channels, H, W] -> [B, num_classes, H, W]
    """

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

        self.inc = ResidualBlock(in_channels, base_channels)
        self.downs = nn.ModuleList(Down(c_in, c_out, ResidualBlock) for c_in, c_out in downs)
        self.ups = nn.ModuleList(Up(c_in, c_out, bilinear, ResidualBlock) for c_in, c_out in ups)
        self.head = nn.Conv2d(base_channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, 2**self.depth)
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return crop_to(self.head(x), size)
