"""Building blocks shared by U-Net, UNet++, Attention U-Net and the residual U-Net.

Follows the encoder/decoder blocks of Ronneberger et al., 2015,
"U-Net: Convolutional Networks for Biomedical Image Segmentation",
with batch normalisation after every 3x3 convolution. :class:`ResidualBlock`
(He et al., 2016) is a drop-in for :class:`DoubleConv`; :class:`AttentionGate`
is the additive skip gate of Oktay et al., 2018.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_pair_layers(
    in_channels: int, out_channels: int, mid_channels: int | None = None, padding: int = 1
) -> list[nn.Module]:
    """The layers of two (3x3 conv -> BatchNorm -> ReLU): six modules, in order.

    `padding=1` keeps the size (:class:`DoubleConv`); `padding=0` is the U-Net paper's
    valid convolution, 4 pixels smaller. :class:`ResidualBlock` takes all but the last
    ReLU, which it applies after the shortcut is added.
    """
    mid = out_channels if mid_channels is None else mid_channels
    return [
        nn.Conv2d(in_channels, mid, kernel_size=3, padding=padding, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, out_channels, kernel_size=3, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


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
        self.block = nn.Sequential(*conv_pair_layers(in_channels, out_channels, mid_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResidualBlock(nn.Module):
    """Residual unit (He et al., 2016, "Deep Residual Learning for Image Recognition").

    ``ReLU(BN(conv3x3(ReLU(BN(conv3x3(x))))) + shortcut(x))``, the post-activation
    form of the paper. The shortcut is the identity when the channels match, else a
    1x1 conv + BatchNorm projection (the paper's option B). Same arguments and conv
    widths as :class:`DoubleConv`, so it can replace it anywhere.

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
        # conv-BN-ReLU-conv-BN: the ReLU comes after the shortcut is added
        self.body = nn.Sequential(*conv_pair_layers(in_channels, out_channels, mid_channels)[:-1])
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


ConvBlock = Callable[[int, int, int | None], nn.Module]
"""``(in_channels, out_channels, mid_channels) -> module``: :class:`DoubleConv` or
:class:`ResidualBlock`."""


class Down(nn.Module):
    """Encoder step: 2x2 max pooling then a conv block (:class:`DoubleConv` by default).

    Shape:
        [B, in_channels, H, W] -> [B, out_channels, H // 2, W // 2]
    """

    def __init__(self, in_channels: int, out_channels: int, block: ConvBlock = DoubleConv) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = block(in_channels, out_channels, None)

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
    """Decoder step: upsample the deeper feature, concatenate the skip, a conv block.

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
        block: the conv block after concatenation (:class:`DoubleConv` by default).

    Shape:
        deeper [B, C_d, h, w], skip [B, C_s, H, W] with H in {2h, 2h + 1}
        -> [B, out_channels, H, W]
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bilinear: bool = False,
        block: ConvBlock = DoubleConv,
    ) -> None:
        super().__init__()
        half = in_channels // 2
        self.up = upsampler(in_channels, half, bilinear)
        mid = half if bilinear else None
        self.conv = block(in_channels, out_channels, mid)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = pad_like(self.up(x), skip)
        x = torch.cat([skip, x], dim=1)  # [B, C_skip + C_up, H, W]
        return self.conv(x)


def unet_channels(
    base_channels: int, depth: int, bilinear: bool
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The channel plan of a U-Net whose level ``i`` has ``base_channels * 2 ** i``.

    With ``bilinear`` the deepest level and the decoder outputs are halved, because
    parameter-free upsampling keeps the deeper feature's channels (see :class:`Up`).

    Returns:
        ``(downs, ups)``: ``(in, out)`` channels of each :class:`Down`, shallow to deep,
        and of each :class:`Up`, deep to shallow (``in`` counted after concatenation).
        The stem maps the input to ``base_channels``; the last ``Up`` returns them.
    """
    factor = 2 if bilinear else 1
    widths = [base_channels * 2**i for i in range(depth + 1)]
    enc_out = widths[1:-1] + [widths[-1] // factor]
    dec_out = [w // factor for w in widths[1:-1]][::-1] + [widths[0]]
    downs = list(zip(widths[:-1], enc_out, strict=True))
    ups = list(zip(widths[:0:-1], dec_out, strict=True))
    return downs, ups


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al., 2018, "Attention U-Net: Learning Where to
    Look for the Pancreas"): scales each pixel of a skip connection by a coefficient in
    [0, 1] computed from the skip ``x`` and a gating signal ``g`` from the coarser level.

        alpha = sigmoid(BN(psi(ReLU(BN(W_g g) + BN(W_x x)))))       (1x1 convs)
        out = alpha * x

    ``g`` is the decoder feature already upsampled to the skip's grid, so the gate
    works at the skip's resolution and ``alpha`` needs no resampling; the paper
    instead computes it at the coarse resolution (``W_x`` strided) and resamples it.
    The convs have no bias, since a BatchNorm follows each.

    Args:
        gate_channels: channels of ``g``.
        skip_channels: channels of ``x``.
        inter_channels: channels of ``W_g g`` and ``W_x x`` (the paper's F_int, which
            it leaves free); default ``skip_channels // 2`` (at least 1).

    Shape:
        g [B, gate_channels, H, W], x [B, skip_channels, H, W]
        -> (gated x [B, skip_channels, H, W], alpha [B, 1, H, W])
    """

    def __init__(
        self, gate_channels: int, skip_channels: int, inter_channels: int | None = None
    ) -> None:
        super().__init__()
        inter = max(skip_channels // 2, 1) if inter_channels is None else inter_channels
        self.w_g = nn.Sequential(
            nn.Conv2d(gate_channels, inter, kernel_size=1, bias=False), nn.BatchNorm2d(inter)
        )
        self.w_x = nn.Sequential(
            nn.Conv2d(skip_channels, inter, kernel_size=1, bias=False), nn.BatchNorm2d(inter)
        )
        self.psi = nn.Sequential(
            nn.Conv2d(inter, 1, kernel_size=1, bias=False), nn.BatchNorm2d(1), nn.Sigmoid()
        )

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.psi(F.relu(self.w_g(g) + self.w_x(x)))  # [B, 1, H, W]
        return x * alpha, alpha


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
