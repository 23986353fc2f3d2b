"""U-Net decoder over a pretrained encoder's feature pyramid (Ronneberger et al., 2015,
with an ImageNet backbone as in segmentation_models_pytorch's `Unet`): `arch=unet_encoder
arch.encoder=resnet34 arch.encoder_weights=imagenet|PATH|null`.

The encoder (:mod:`~unet_seg.models.encoders`) returns features at strides 2..32 (ResNet)
or 4..32 (ConvNeXt). The decoder climbs from stride 32 to 1 in five x2 steps; each step
upsamples, concatenates the encoder feature of that stride if there is one, and applies a
:class:`~unet_seg.models.blocks.DoubleConv`; a 1x1 head gives full-resolution logits.
What every net on such an encoder shares (building it, naming it for fine-tuning, loading
its weights) is :class:`EncoderNet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unet_seg.models.base import SegNet
from unet_seg.models.blocks import DoubleConv, crop_to, pad_to_multiple
from unet_seg.models.encoders import build_encoder
from unet_seg.models.encoders.weights import load_encoder_weights

STEPS = 5
"""x2 decoder steps from the encoder's stride 32 to the input's resolution."""


class DecoderStep(nn.Module):
    """Upsample x2 (nearest), concatenate the skip (if any), DoubleConv.

    Shape:
        x [B, c_in, h, w], skip [B, c_skip, 2h, 2w] or None -> [B, c_out, 2h, 2w]
    """

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.conv = DoubleConv(c_in + c_skip, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)  # [B, c_in + c_skip, 2h, 2w]
        return self.conv(x)


def decoder_widths(base_channels: int, decoder_channels: Sequence[int] | None) -> list[int]:
    """The width of each of the `STEPS` decoder levels, deep to shallow (strides 16 .. 1):
    `decoder_channels` as given, else `base_channels * 2 ** (4 - i)` (256, ..., 16 at 16)."""
    if decoder_channels is None:  # 256, 128, 64, 32, 16 at base 16
        return [base_channels * 2 ** (STEPS - 1 - i) for i in range(STEPS)]
    if len(decoder_channels) != STEPS:
        raise ValueError(
            f"arch.decoder_channels={list(decoder_channels)}: give {STEPS} widths, one "
            "per x2 decoder step (deep to shallow), e.g. [256, 128, 64, 32, 16]"
        )
    return list(decoder_channels)


class EncoderNet(SegNet):
    """What every net on a (pretrained) ResNet or ConvNeXt encoder shares: the encoder, built
    from its name (random weights: the constructor never reads a file, so a checkpoint
    rebuilds the net without the file or the internet), named for fine-tuning
    (`encoder_modules`), and `load_encoder_weights`, which a training run calls
    (`unet_seg.finetune.init_encoder`; see `unet_seg.models.encoders.weights`).

    Args:
        in_channels: channels of the input image (a pretrained first conv is adapted).
        encoder: `resnet18`, `resnet34`, `resnet50` or `convnext_tiny`.
        encoder_weights: None (random initialisation), `imagenet` (torchvision's published
            weights, downloaded once) or the path of a `.pth`/`.safetensors` state dict.
    """

    depth = STEPS  # pads H and W to a multiple of 32

    def __init__(self, in_channels: int, encoder: str, encoder_weights: str | None) -> None:
        super().__init__()
        self.encoder_name = encoder
        self.encoder_weights = None if encoder_weights is None else str(encoder_weights)
        self.encoder = build_encoder(encoder, in_channels)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.encoder]

    def load_encoder_weights(self, url: str | None = None) -> dict | None:
        """Load `encoder_weights` into the encoder (refused by name when they do not fit).

        Returns:
            What was loaded (`weights.load_encoder_weights`), or None without weights.
        """
        if self.encoder_weights is None:
            return None
        source = self.encoder_weights
        if source != "imagenet":
            source = str(Path(source).expanduser())
        return load_encoder_weights(self.encoder, self.encoder_name, source, url)

    def pyramid(self, x: torch.Tensor, deepest: int | None = None) -> dict[int, torch.Tensor]:
        """The encoder's features by stride: `{2: [B, C, H/2, W/2], ..., 32: ...}` (ResNet;
        ConvNeXt from stride 4), or only to stride `deepest`. H and W are multiples of 32."""
        return dict(zip(self.encoder.strides, self.encoder(x, deepest), strict=False))


class EncoderUNet(EncoderNet):
    """A U-Net whose contracting path is a (pretrained) ResNet or ConvNeXt.

    The encoder and its weights are :class:`EncoderNet`'s (shared with UNet++'s nested
    decoder on the same pyramid, `unetpp_encoder.EncoderNestedUNet`).

    Args:
        in_channels: channels of the input image (a pretrained first conv is adapted).
        num_classes: channels of the output logits.
        encoder: `resnet18`, `resnet34`, `resnet50` or `convnext_tiny`.
        encoder_weights: None (random initialisation), `imagenet` (torchvision's published
            weights, downloaded once) or the path of a `.pth`/`.safetensors` state dict.
        base_channels: the decoder's width at full resolution; step i (deep to shallow)
            has `base_channels * 2 ** (4 - i)`: 256, 128, 64, 32, 16 at 16, as
            segmentation_models_pytorch's U-Net.
        decoder_channels: the width of each of the 5 decoder steps, deep to shallow, in
            place of those `base_channels` gives.
        deep_supervision: a 1x1 head on each of the last 4 decoder steps (strides 8, 4,
            2, 1), upsampled to full size; the list runs coarse to fine (the final last).

    Shape:
        [B, in_channels, H, W] -> [B, num_classes, H, W] (or a list of 4 of them)
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder: str = "resnet34",
        encoder_weights: str | None = None,
        base_channels: int = 16,
        decoder_channels: Sequence[int] | None = None,
        deep_supervision: bool = False,
    ) -> None:
        decoder_channels = decoder_widths(base_channels, decoder_channels)
        super().__init__(in_channels, encoder, encoder_weights)
        self.deep_supervision = deep_supervision
        by_stride = dict(zip(self.encoder.strides, self.encoder.out_channels, strict=True))
        # step i ends at stride 2 ** (4 - i): 16, 8, 4, 2, 1; its skip is the feature there
        c_in = self.encoder.out_channels[-1]
        steps = []
        for i, c_out in enumerate(decoder_channels):
            steps.append(DecoderStep(c_in, by_stride.get(2 ** (STEPS - 1 - i), 0), c_out))
            c_in = c_out
        self.decoder = nn.ModuleList(steps)
        supervised = decoder_channels[1:] if deep_supervision else decoder_channels[-1:]
        self.heads = nn.ModuleList(nn.Conv2d(c, num_classes, kernel_size=1) for c in supervised)

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    def head_modules(self) -> list[nn.Module]:
        return [self.heads]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x, size = pad_to_multiple(x, self.pad_multiples)
        skips = self.pyramid(x)
        y = skips[2**STEPS]  # stride 32
        outputs = []
        for i, step in enumerate(self.decoder):
            y = step(y, skips.get(2 ** (STEPS - 1 - i)))
            if i >= STEPS - len(self.heads):
                outputs.append(y)
        logits = []
        for head, y in zip(self.heads, outputs, strict=True):
            out = head(y)
            if out.shape[2:] != x.shape[2:]:  # a coarse deep-supervision head
                out = F.interpolate(out, size=x.shape[2:], mode="bilinear", align_corners=False)
            logits.append(crop_to(out, size))
        return logits if self.deep_supervision else logits[0]
