"""Segmentation networks: U-Net (Ronneberger et al., 2015), UNet++ (Zhou et al., 2018),
Attention U-Net (Oktay et al., 2018) and a residual U-Net (Zhang et al., 2018)."""

from unet_seg.models.attention_unet import AttentionUNet
from unet_seg.models.blocks import AttentionGate, DoubleConv, ResidualBlock
from unet_seg.models.nested_unet import NestedUNet
from unet_seg.models.res_unet import ResUNet
from unet_seg.models.unet import UNet

__all__ = [
    "AttentionGate",
    "AttentionUNet",
    "DoubleConv",
    "NestedUNet",
    "ResUNet",
    "ResidualBlock",
    "UNet",
]
