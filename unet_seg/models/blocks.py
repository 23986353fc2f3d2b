"""Building blocks shared by U-Net and UNet++.

Follows the encoder/decoder blocks of Ronneberger et al., 2015,
"U-Net: Convolutional Networks for Biomedical Image Segmentation",
with batch normalisation after every 3x3 convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Module):
    """Two (3x3 conv -> BatchNorm -> ReLU) layers.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        mid_channels: channels between the two convs (default: ``out_channels``).

    Shape:
        [B, in_channels, H, W] -> [B, out_channels, H, W]
    """

    def __init__(
        self, in_channels: int, out_channels: int, mid_channels: int | None = None
    ) -> None:
        super().__init__()
        mid = out_channels if mid_channels is None else mid_channels
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Down(nn.Module):
    """Encoder step: 2x2 max pooling then :class:`DoubleConv`.

    Shape:
        [B, in_channels, H, W] -> [B, out_channels, H // 2, W // 2]
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


def upsampler(channels: int, out_channels: int, bilinear: bool) -> nn.Module:
    """x2 upsampling: parameter-free bilinear, or a learned 2x2 transposed conv.

    Args:
        channels: channels of the feature to upsample.
        out_channels: output channels of the transposed conv (ignored if bilinear;
            bilinear upsampling keeps ``channels``).
        bilinear: choose bilinear interpolation over ``ConvTranspose2d``.
    """
    if bilinear:
        return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
    return nn.ConvTranspose2d(channels, out_channels, kernel_size=2, stride=2)


class Up(nn.Module):
    """Decoder step: upsample the deeper feature, concatenate the skip, :class:`DoubleConv`.

    ``in_channels`` counts the channels *after* concatenation (skip + upsampled),
    as in the classic layout (Ronneberger et al., 2015):

    * transposed: deeper has ``in_channels``, is mapped to ``in_channels // 2`` by
      ``ConvTranspose2d``; the skip has ``in_channels // 2``.
    * bilinear: deeper and skip both have ``in_channels // 2``; the DoubleConv's
      middle width is ``in_channels // 2``.

    Args:
        in_channels: channels after concatenation [skip, up].
        out_channels: channels of the output.
        bilinear: bilinear upsampling instead of a transposed conv.

    Shape:
        deeper [B, C_d, h, w], skip [B, C_s, H, W] with H in {2h, 2h + 1}
        -> [B, out_channels, H, W]
    """

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool = False) -> None:
        super().__init__()
        half = in_channels // 2
        self.up = upsampler(in_channels, half, bilinear)
        mid = half if bilinear else None
        self.conv = DoubleConv(in_channels, out_channels, mid)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = pad_like(self.up(x), skip)
        x = torch.cat([skip, x], dim=1)  # [B, C_skip + C_up, H, W]
        return self.conv(x)


def pad_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Zero-pad ``x`` (split evenly on both sides) to the spatial size of ``ref``.

    Shape:
        [B, C, h, w] -> [B, C, H, W] where (H, W) = ref.shape[-2:] and h <= H, w <= W
    """
    dh = ref.shape[-2] - x.shape[-2]
    dw = ref.shape[-1] - x.shape[-1]
    if dh == 0 and dw == 0:
        return x
    return F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W (bottom/right) up to a multiple of ``multiple``.

    Reflect padding is used when the input is large enough, else replicate.

    Args:
        x: input batch.
        multiple: the required divisor of H and W (``2 ** depth`` for a U-Net).

    Returns:
        The padded tensor and the original ``(H, W)`` for :func:`crop_to`.

    Shape:
        [B, C, H, W] -> [B, C, ceil(H / m) * m, ceil(W / m) * m]
    """
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, [0, pw, 0, ph], mode=mode), (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the bottom/right padding added by :func:`pad_to_multiple`.

    Shape:
        [B, C, H', W'] -> [B, C, H, W] where (H, W) = size
    """
    h, w = size
    return x[..., :h, :w]


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The central `size` (H, W) of `x`'s last two dimensions (the U-Net paper's skip crop).

    Shape:
        [..., H', W'] -> [..., H, W] with H <= H', W <= W'; `x` itself when the size matches
    """
    h, w = int(size[0]), int(size[1])
    dh, dw = x.shape[-2] - h, x.shape[-1] - w
    if dh == 0 and dw == 0:
        return x
    if dh < 0 or dw < 0:
        raise ValueError(f"cannot centre-crop {tuple(x.shape[-2:])} to the larger {(h, w)}")
    return x[..., dh // 2 : dh // 2 + h, dw // 2 : dw // 2 + w]
