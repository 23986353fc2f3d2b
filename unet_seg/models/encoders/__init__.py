"""Pretrained backbones for `EncoderUNet`: each a feature pyramid (a list, shallow to deep)
with declared `out_channels` and `strides`, and torchvision's parameter names so that its
published weights load as they are (`weights.load_encoder_weights`)."""

from __future__ import annotations

from torch import nn

from unet_seg.models.encoders.convnext import CONVNEXTS, ConvNeXtEncoder
from unet_seg.models.encoders.resnet import RESNETS, ResNetEncoder

Encoder = ResNetEncoder | ConvNeXtEncoder
"""An encoder: `forward(x) -> list[Tensor]`, `out_channels`, `strides`, `first_conv`."""

ENCODERS: tuple[str, ...] = (*RESNETS, *CONVNEXTS)
"""The encoder names `arch.encoder` takes."""

HEAD_PREFIXES: dict[str, str] = {**dict.fromkeys(RESNETS, "fc."),
                                 **dict.fromkeys(CONVNEXTS, "classifier.")}  # fmt: skip
"""The classifier each published state dict carries and the encoder does not build: its
keys are ignored when loading."""


def build_encoder(name: str, in_channels: int = 3) -> Encoder:
    """The encoder `name` (one of `ENCODERS`), randomly initialised, taking `in_channels`."""
    if name in RESNETS:
        return ResNetEncoder(name, in_channels)
    if name in CONVNEXTS:
        return ConvNeXtEncoder(name, in_channels)
    raise ValueError(f"arch.encoder={name}: unknown encoder; choose one of {', '.join(ENCODERS)}")


def is_encoder(module: nn.Module) -> bool:
    """Whether `module` is one of the encoders here."""
    return isinstance(module, ResNetEncoder | ConvNeXtEncoder)


__all__ = ["ENCODERS", "HEAD_PREFIXES", "ConvNeXtEncoder", "Encoder", "ResNetEncoder",
           "build_encoder", "is_encoder"]  # fmt: skip
