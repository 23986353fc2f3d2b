"""The original U-Net, with valid (unpadded) convolutions (Ronneberger et al., 2015).

Every 3x3 convolution drops a pixel on each side, so the logits cover only the
centre of the input: a 572x572 input gives 388x388 logits, and each skip is
centre-cropped to the size of the upsampled feature it joins. Nothing in the
output sees zero padding: every output pixel has its full receptive field, which
is what makes the paper's overlap-tile prediction seamless (tiles of the output
plus `margin` pixels of real, or at the image border mirrored, context).

Where this follows the paper and where it does not:

* valid 3x3 convolutions, 2x2 max pooling, 2x2 up-convolutions (or bilinear
  upsampling), centre-cropped skips, 64 channels doubling to 1024: as in the paper;
* batch normalisation after every convolution, as in this project's other nets
  (the paper predates it); the parameter count is then the padded `UNet`'s,
  31,036,546 for one input channel and two classes.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unet_seg.models.base import SegNet
from unet_seg.models.blocks import conv_pair_layers, unet_channels, upsampler


def valid_double_conv(
    in_channels: int, out_channels: int, mid_channels: int | None = None
) -> nn.Sequential:
    """Two (3x3 valid conv -> BatchNorm -> ReLU): `[B, C, H, W] -> [B, out, H - 4, W - 4]`."""
    return nn.Sequential(*conv_pair_layers(in_channels, out_channels, mid_channels, padding=0))


def valid_output_size(size: int, depth: int) -> int | None:
    """Output side of a valid U-Net of `depth` for an input side `size`, or None when the
    input does not fit (a side that is odd before a pooling step, or shrinks to nothing)."""
    n = size
    for _ in range(depth):
        n -= 4
        if n < 2 or n % 2:
            return None
        n //= 2
    n -= 4  # the bottom level
    if n < 1:
        return None
    for _ in range(depth):
        n = 2 * n - 4
    return n if n >= 1 else None


@functools.cache
def smallest_valid_size(depth: int) -> int:
    """The smallest input side a valid U-Net of `depth` accepts (188 at depth 4); the others
    are this plus multiples of `2 ** depth`."""
    return next(n for n in itertools.count(1) if valid_output_size(n, depth) is not None)


def valid_padding(size, depth: int):
    """Pixels to add to a side of at least `smallest_valid_size(depth)` to make it accepted.

    Plain arithmetic on `size`, so that it also works on the symbolic sizes of a traced
    graph (`unet_seg.export`)."""
    return (smallest_valid_size(depth) - size) % 2**depth


def next_valid_size(size: int, depth: int) -> int:
    """The smallest input side >= `size` that a valid U-Net of `depth` accepts."""
    return max(size + valid_padding(size, depth), smallest_valid_size(depth))


def mirror_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Mirror `x` across its borders (`reflect`: the edge pixel is not repeated), by any amount:
    pads wider than the image mirror the mirrored image again, as the U-Net paper extrapolates.

    Shape:
        [B, C, H, W] -> [B, C, top + H + bottom, left + W + right]
    """
    pads = [left, right, top, bottom]
    h, w = x.shape[-2:]
    if w < 2 or h < 2:  # a side of one pixel has nothing to mirror: repeat it
        edge = [*(pads[:2] if w < 2 else [0, 0]), *(pads[2:] if h < 2 else [0, 0])]
        x = F.pad(x, edge, mode="replicate")
        pads = [p - e for p, e in zip(pads, edge, strict=True)]
    while any(pads):
        h, w = x.shape[-2:]
        step = [min(p, w - 1) for p in pads[:2]] + [min(p, h - 1) for p in pads[2:]]
        x = F.pad(x, step, mode="reflect")
        pads = [p - s for p, s in zip(pads, step, strict=True)]
    return x


def valid_input_sizes(depth: int, up_to: int) -> list[int]:
    """Every input side up to `up_to` that a valid U-Net of `depth` accepts."""
    return [n for n in range(1, up_to + 1) if valid_output_size(n, depth) is not None]


class ValidUNet(SegNet):
    """U-Net with valid convolutions: `[B, C, H, W] -> [B, K, H - 2m, W - 2m]`, `m = margin`.

    Args:
        in_channels: channels of the input image.
        num_classes: channels of the output logits.
        base_channels: width of the first level; level `i` has `base * 2 ** i`.
        depth: number of down-sampling steps (4 in the paper: margin 92).
        bilinear: bilinear upsampling instead of 2x2 up-convolutions (halves the
            deepest level and the decoder, as in `UNet`).

    Attributes:
        margin: pixels lost on each side, `6 * 2 ** depth - 4` (92 for depth 4).

    Shape:
        [B, in_channels, H, W] -> [B, num_classes, H - 2 * margin, W - 2 * margin], for H
        and W in `valid_input_sizes(depth, ...)` (572 -> 388 at depth 4).
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
        self.margin = self.margin_for(depth)
        downs, ups = unet_channels(base_channels, depth, bilinear)

        self.inc = valid_double_conv(in_channels, base_channels)
        self.pool = nn.MaxPool2d(2)
        self.downs = nn.ModuleList(valid_double_conv(c_in, c_out) for c_in, c_out in downs)
        # decoder step i: upsample the deeper feature, concatenate the cropped skip, convolve;
        # channel bookkeeping as in `unet_seg.models.blocks.Up`
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for c_in, c_out in ups:
            half = c_in // 2
            self.ups.append(upsampler(c_in, half, bilinear))
            self.up_convs.append(valid_double_conv(c_in, c_out, half if bilinear else None))
        self.head = nn.Conv2d(base_channels, num_classes, kernel_size=1)
        self.skip_crops = self.skip_crops_for(depth)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.inc, self.downs]

    def head_modules(self) -> list[nn.Module]:
        return [self.head]

    @staticmethod
    def skip_crops_for(depth: int) -> list[int]:
        """Pixels cropped from each side of each skip, deepest first, the same for every accepted
        input size: 4, 16, 40, 88 at depth 4 (for 572: 64 -> 56, 136 -> 104, 280 -> 200 and
        568 -> 392, as in the paper's figure 1). Constants rather than sizes read at run time,
        so that a traced graph (ONNX) stays correct at every input size."""
        n = smallest_valid_size(depth)
        encoder = []
        for _ in range(depth):
            encoder.append(n - 4)
            n = (n - 4) // 2
        n -= 4
        crops = []
        for skip in encoder[::-1]:
            crops.append((skip - 2 * n) // 2)
            n = 2 * n - 4
        return crops

    @classmethod
    def margin_for_config(cls, **kwargs: Any) -> int:
        return cls.margin_for(int(kwargs.get("depth", 4)))

    @staticmethod
    def margin_for(depth: int) -> int:
        """Pixels a valid U-Net of `depth` loses on each side: two 3x3 convs per level on the
        way down and up, at scale 2 ** level, and two at the bottom."""
        return 6 * 2**depth - 4

    def check_size(self, height: int, width: int) -> None:
        """Raise with the nearest accepted sides when `height x width` does not fit."""
        for side in (height, width):
            if valid_output_size(side, self.depth) is None:
                sizes = valid_input_sizes(self.depth, max(side, 4 * self.margin) + 2**self.depth)
                below = [n for n in sizes if n < side][-1:]
                above = [n for n in sizes if n > side][:1]
                raise ValueError(
                    f"input side {side} does not fit a valid-convolution U-Net of depth "
                    f"{self.depth} (it loses {self.margin} pixels on each side and must halve "
                    f"evenly {self.depth} times): nearest sides {below + above}, e.g. 572 -> 388 "
                    "at depth 4. With arch=unet_valid, data.crop_size is the output side."
                )

    def forward_with_context(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for the centre of an input of any size that carries `margin` pixels of
        context on each side: mirror-pads the bottom and right up to the next accepted side,
        then drops the logits of that padding.

        Shape:
            [B, C, H, W] -> [B, K, H - 2 * margin, W - 2 * margin], H, W > 2 * margin
        """
        h, w = x.shape[-2:]
        out_h, out_w = h - 2 * self.margin, w - 2 * self.margin
        if out_h < 1 or out_w < 1:
            raise ValueError(
                f"input {h}x{w} is no larger than twice the context margin {self.margin}"
            )
        ph = next_valid_size(h, self.depth) - h
        pw = next_valid_size(w, self.depth) - w
        # the net's pooling grid starts at the top-left corner, so padding the bottom and the
        # right changes no logit of the kept [:out_h, :out_w] corner
        logits = self(mirror_pad(x, 0, pw, 0, ph) if ph or pw else x)
        return logits[..., :out_h, :out_w]

    def forward_same(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for every pixel of an input of any size, its borders mirrored for context
        (the paper's overlap-tile strategy for one tile).

        Shape:
            [B, C, H, W] -> [B, K, H, W]
        """
        m = self.margin
        return self.forward_with_context(mirror_pad(x, m, m, m, m))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_size(x.shape[-2], x.shape[-1])
        return self.forward_unchecked(x)

    def forward_traceable(self, x: torch.Tensor, level: int | None = None) -> torch.Tensor:
        """Logits for every pixel of any H, W >= `min_side`, for tracing: mirror `margin`
        pixels around, pad the bottom and right to an accepted side, crop.

        Shape:
            [B, C, H, W] -> [B, K, H, W]
        """
        self.check_level(level)
        h, w = x.shape[-2], x.shape[-1]
        m = self.margin
        ph, pw = valid_padding(h + 2 * m, self.depth), valid_padding(w + 2 * m, self.depth)
        x = F.pad(x, [m, m + pw, m, m + ph], mode="reflect")
        return self.forward_unchecked(x)[:, :, :h, :w]

    def forward_unchecked(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` without the size check (for tracing with symbolic sizes)."""
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(self.pool(skips[-1])))
        x = skips.pop()
        for up, conv, c in zip(self.ups, self.up_convs, self.skip_crops, strict=True):
            x = up(x)
            x = torch.cat([skips.pop()[..., c:-c, c:-c], x], dim=1)  # the skip's centre
            x = conv(x)
        return self.head(x)
