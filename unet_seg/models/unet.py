"""U-Net (Ronneberger et al., 2015, "U-Net: Convolutional Networks for Biomedical
Image Segmentation")."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from unet_seg.models.anisotropy import conv_kernels, pool_strides, total_strides
from unet_seg.models.base import SegNet
from unet_seg.models.blocks import (
    ConvBlock,
    DoubleConv,
    Down,
    Up,
    conv_nd,
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
        spacing: pixel (voxel) size per axis in mm for anisotropic pooling and kernels
            (:mod:`~unet_seg.models.anisotropy`); None, the default, pools every axis.

    Shape:
        [B, in_channels, H, W] -> [B, num_classes, H, W]

    Variants of the family change the class attributes, not the layout:
    :class:`~unet_seg.models.res_unet.ResUNet` the conv block,
    :class:`~unet_seg.models.attention_unet.AttentionUNet` the decoder step,
    :class:`~unet_seg.models.unet3d.UNet3D` the convolution dimension (``spatial_dims``).
    """

    block: ConvBlock = DoubleConv
    """The conv block of every level: `(in_channels, out_channels, mid_channels) -> module`,
    taking `spatial_dims` and `kernel_size` keywords."""
    up_step: type[nn.Module] = Up
    """The decoder step: `(in_channels, out_channels, bilinear, block, scale, spatial_dims)
    -> module`."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_channels: int = 64,
        depth: int = 4,
        bilinear: bool = False,
        *,
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        dims = self.spatial_dims
        self.strides = pool_strides(spacing, depth, dims)  # per Down, shallow to deep
        kernels = conv_kernels(spacing, depth, dims)  # per level 0..depth
        blocks = [partial(type(self).block, spatial_dims=dims, kernel_size=k) for k in kernels]
        downs, ups = unet_channels(base_channels, depth, bilinear)

        self.inc = blocks[0](in_channels, base_channels, None)
        self.downs = nn.ModuleList(
            Down(c_in, c_out, blocks[i + 1], self.strides[i], dims)
            for i, (c_in, c_out) in enumerate(downs)
        )
        levels = range(depth - 1, -1, -1)  # the level each decoder step returns to
        self.ups = nn.ModuleList(
            self.up_step(c_in, c_out, bilinear, blocks[i], self.strides[i], dims)
            for i, (c_in, c_out) in zip(levels, ups, strict=True)
        )
        self.head = conv_nd(dims)(base_channels, num_classes, kernel_size=1)

    @property
    def pad_multiples(self) -> tuple[int, ...]:
        return total_strides(self.strides, self.spatial_dims)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.inc, self.downs]

    def head_modules(self) -> list[nn.Module]:
        return [self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, self.pad_multiples)
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return crop_to(self.head(x), size)
