"""Building blocks shared by U-Net, UNet++, Attention U-Net and the residual U-Net.

Follows the encoder/decoder blocks of Ronneberger et al., 2015,
"U-Net: Convolutional Networks for Biomedical Image Segmentation",
with batch normalisation after every 3x3 convolution. :class:`ResidualBlock`
(He et al., 2016) is a drop-in for :class:`DoubleConv`; :class:`AttentionGate`
is the additive skip gate of Oktay et al., 2018.

Every block takes ``spatial_dims``: 2 for images ``[B, C, H, W]`` (the default, building
exactly the 2-D modules), 3 for volumes ``[B, C, D, H, W]`` (Cicek et al., 2016, "3D
U-Net"), with kernel sizes, pooling strides and upsampling factors given as one int or one
per axis (thick slices: ``(1, 3, 3)`` kernels, ``(1, 2, 2)`` pooling; see
:mod:`~unet_seg.models.anisotropy`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Size = int | tuple[int, ...]
"""A kernel size, stride or scale: one int for every axis, or one per spatial axis."""


def compact(size: Size) -> Size:
    """`size` as one int when every axis has the same value (`(2, 2)` -> `2`), else a tuple:
    the 2-D nets then build exactly the modules they always did (`MaxPool2d(2)`)."""
    if isinstance(size, int):
        return size
    values = tuple(int(v) for v in size)
    return values[0] if len(set(values)) == 1 else values


def conv_nd(spatial_dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    """`nn.Conv2d` or `nn.Conv3d`, for `spatial_dims` 2 or 3."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[_check_dims(spatial_dims)]


def batch_norm_nd(spatial_dims: int) -> type[nn.BatchNorm2d] | type[nn.BatchNorm3d]:
    """`nn.BatchNorm2d` or `nn.BatchNorm3d`, for `spatial_dims` 2 or 3."""
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[_check_dims(spatial_dims)]


def max_pool(stride: Size = 2, spatial_dims: int = 2) -> nn.Module:
    """Max pooling with kernel = stride (`2`: 2x2 or 2x2x2; `(1, 2, 2)`: in-plane only).

    Shape:
        [B, C, *S] -> [B, C, *(S // stride)]
    """
    pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[_check_dims(spatial_dims)]
    return pool(compact(stride))


def _check_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return spatial_dims


def conv_pair_layers(
    in_channels: int,
    out_channels: int,
    mid_channels: int | None = None,
    padding: int = 1,
    spatial_dims: int = 2,
    kernel_size: Size = 3,
) -> list[nn.Module]:
    """The layers of two (3x3 conv -> BatchNorm -> ReLU): six modules, in order.

    `padding=1` keeps the size (:class:`DoubleConv`); `padding=0` is the U-Net paper's
    valid convolution, 4 pixels smaller. :class:`ResidualBlock` takes all but the last
    ReLU, which it applies after the shortcut is added.

    Args:
        spatial_dims: 2 (`Conv2d`, `BatchNorm2d`) or 3 (`Conv3d`, `BatchNorm3d`).
        kernel_size: 3, or one size per axis: `(1, 3, 3)` convolves in-plane only
            (thick slices); an axis of kernel 1 is never padded.
    """
    mid = out_channels if mid_channels is None else mid_channels
    conv, norm = conv_nd(spatial_dims), batch_norm_nd(spatial_dims)
    kernels = (kernel_size,) * spatial_dims if isinstance(kernel_size, int) else kernel_size
    if len(kernels) != spatial_dims:
        raise ValueError(f"kernel_size {kernel_size} has not one size per axis of {spatial_dims}")
    k, pad = compact(kernels), compact(tuple(padding * (k // 2) for k in kernels))
    return [
        conv(in_channels, mid, kernel_size=k, padding=pad, bias=False),
        norm(mid),
        nn.ReLU(inplace=True),
        conv(mid, out_channels, kernel_size=k, padding=pad, bias=False),
        norm(out_channels),
        nn.ReLU(inplace=True),
    ]


class DoubleConv(nn.Module):
    """Two (3x3 conv -> BatchNorm -> ReLU) layers.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        mid_channels: channels between the two convs (default: ``out_channels``).
        spatial_dims: 2 (images) or 3 (volumes).
        kernel_size: 3, or one size per axis (see :func:`conv_pair_layers`).

    Shape:
        [B, in_channels, *S] -> [B, out_channels, *S] (S = H, W or D, H, W)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int | None = None,
        spatial_dims: int = 2,
        kernel_size: Size = 3,
    ) -> None:
        super().__init__()
        layers = conv_pair_layers(
            in_channels, out_channels, mid_channels, spatial_dims=spatial_dims,
            kernel_size=kernel_size,
        )  # fmt: skip
        self.block = nn.Sequential(*layers)

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
        spatial_dims: 2 (images) or 3 (volumes).
        kernel_size: 3, or one size per axis (see :func:`conv_pair_layers`).

    Shape:
        [B, in_channels, *S] -> [B, out_channels, *S]
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int | None = None,
        spatial_dims: int = 2,
        kernel_size: Size = 3,
    ) -> None:
        super().__init__()
        # conv-BN-ReLU-conv-BN: the ReLU comes after the shortcut is added
        layers = conv_pair_layers(
            in_channels, out_channels, mid_channels, spatial_dims=spatial_dims,
            kernel_size=kernel_size,
        )  # fmt: skip
        self.body = nn.Sequential(*layers[:-1])
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv_nd(spatial_dims)(in_channels, out_channels, kernel_size=1, bias=False),
                batch_norm_nd(spatial_dims)(out_channels),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


ConvBlock = Callable[[int, int, int | None], nn.Module]
"""``(in_channels, out_channels, mid_channels) -> module``: :class:`DoubleConv` or
:class:`ResidualBlock` (for volumes or other kernels, a ``functools.partial`` of one with
``spatial_dims`` and ``kernel_size``)."""


class Down(nn.Module):
    """Encoder step: max pooling (2x2 by default) then a conv block (:class:`DoubleConv`).

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        block: the conv block after pooling.
        stride: the pooling's kernel and stride: 2, or one per axis (`(1, 2, 2)`).
        spatial_dims: 2 (images) or 3 (volumes).

    Shape:
        [B, in_channels, *S] -> [B, out_channels, *(S // stride)]
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block: ConvBlock = DoubleConv,
        stride: Size = 2,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.pool = max_pool(stride, spatial_dims)
        self.conv = block(in_channels, out_channels, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


def upsampler(
    channels: int, out_channels: int, bilinear: bool, scale: Size = 2, spatial_dims: int = 2
) -> nn.Module:
    """Upsampling by `scale`: parameter-free (bi/trilinear), or a learned transposed conv
    whose kernel is its stride (2x2, 2x2x2, or `(1, 2, 2)` for an axis not pooled).

    Args:
        channels: channels of the feature to upsample.
        out_channels: output channels of the transposed conv (ignored if bilinear;
            bilinear upsampling keeps ``channels``).
        bilinear: choose bilinear (trilinear for volumes) interpolation over a
            ``ConvTranspose2d`` / ``ConvTranspose3d``.
        scale: the factor: 2, or one per axis (the stride of the matching pooling).
        spatial_dims: 2 (images) or 3 (volumes).
    """
    scale = compact(scale)
    if bilinear:
        mode = {2: "bilinear", 3: "trilinear"}[_check_dims(spatial_dims)]
        factor = scale if isinstance(scale, int) else tuple(float(s) for s in scale)
        return nn.Upsample(scale_factor=factor, mode=mode, align_corners=False)
    transposed = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[_check_dims(spatial_dims)]
    return transposed(channels, out_channels, kernel_size=scale, stride=scale)


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
        scale: the upsampling factor: 2, or one per axis (the matching pooling's stride).
        spatial_dims: 2 (images) or 3 (volumes).

    Shape:
        deeper [B, C_d, h, w], skip [B, C_s, H, W] with H in {2h, 2h + 1}
        -> [B, out_channels, H, W] (and likewise per axis for volumes)
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
        mid = half if bilinear else None
        self.conv = block(in_channels, out_channels, mid)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = pad_like(self.up(x), skip)
        x = torch.cat([skip, x], dim=1)  # [B, C_skip + C_up, *S]
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
        spatial_dims: 2 (images) or 3 (volumes: the paper's own setting).

    Shape:
        g [B, gate_channels, H, W], x [B, skip_channels, H, W]
        -> (gated x [B, skip_channels, H, W], alpha [B, 1, H, W])
    """

    def __init__(
        self,
        gate_channels: int,
        skip_channels: int,
        inter_channels: int | None = None,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        inter = max(skip_channels // 2, 1) if inter_channels is None else inter_channels
        conv, norm = conv_nd(spatial_dims), batch_norm_nd(spatial_dims)
        self.w_g = nn.Sequential(conv(gate_channels, inter, kernel_size=1, bias=False), norm(inter))
        self.w_x = nn.Sequential(conv(skip_channels, inter, kernel_size=1, bias=False), norm(inter))
        self.psi = nn.Sequential(conv(inter, 1, kernel_size=1, bias=False), norm(1), nn.Sigmoid())

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.psi(F.relu(self.w_g(g) + self.w_x(x)))  # [B, 1, H, W]
        return x * alpha, alpha


def pad_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Zero-pad ``x`` (split evenly on both sides of each axis) to the spatial size of ``ref``.

    Shape:
        [B, C, *s] -> [B, C, *S] where S = ref.shape[2:] and s <= S per axis (2-D or 3-D)
    """
    diffs = [r - n for r, n in zip(ref.shape[2:], x.shape[2:], strict=True)]
    if not any(diffs):
        return x
    pads = [p for d in reversed(diffs) for p in (d // 2, d - d // 2)]  # last axis first
    return F.pad(x, pads)


def pad_to_multiple(
    x: torch.Tensor, multiple: int | Sequence[int]
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the spatial axes (at their end) up to a multiple of ``multiple``.

    Reflect padding is used when the input is large enough, else replicate.

    Args:
        x: input batch.
        multiple: the required divisor of H and W (``2 ** depth`` for a U-Net), or one
            per spatial axis (the last ``len(multiple)`` axes: ``(d, h, w)`` for volumes).

    Returns:
        The padded tensor and the original sizes (``(H, W)``, or one per axis of
        ``multiple``) for :func:`crop_to`.

    Shape:
        [B, C, H, W] -> [B, C, ceil(H / m) * m, ceil(W / m) * m] (likewise per axis)
    """
    multiples = (multiple, multiple) if isinstance(multiple, int) else tuple(multiple)
    sizes = tuple(x.shape[-len(multiples) :])  # no int(): traced sizes stay symbolic
    extra = [-n % m for n, m in zip(sizes, multiples, strict=True)]
    if not any(extra):
        return x, sizes
    mode = "reflect" if all(p < n for p, n in zip(extra, sizes, strict=True)) else "replicate"
    pads = [p for e in reversed(extra) for p in (0, e)]  # last axis first, at the end only
    return F.pad(x, pads, mode=mode), sizes


def crop_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop the end padding added by :func:`pad_to_multiple`.

    Shape:
        [B, C, H', W'] -> [B, C, H, W] where (H, W) = size (one size per trailing axis)
    """
    return x[(..., *(slice(0, n) for n in size))]


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
