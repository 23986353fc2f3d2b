"""Segmentation networks: U-Net (Ronneberger et al., 2015), UNet++ (Zhou et al., 2018),
Attention U-Net (Oktay et al., 2018), a residual U-Net (Zhang et al., 2018), and for
volumes the 3-D U-Net (Cicek et al., 2016) and a 3-D UNet++ from the same blocks."""

from unet_seg.models.attention_unet import AttentionUNet
from unet_seg.models.blocks import AttentionGate, DoubleConv, ResidualBlock
from unet_seg.models.encoder_unet import EncoderUNet
from unet_seg.models.nested_unet import NestedUNet
from unet_seg.models.nested_unet3d import NestedUNet3D
from unet_seg.models.res_unet import ResUNet
from unet_seg.models.unet import UNet
from unet_seg.models.unet3d import UNet3D

__all__ = [
    "AttentionGate",
    "AttentionUNet",
    "DoubleConv",
    "EncoderUNet",
    "NestedUNet",
    "NestedUNet3D",
    "ResUNet",
    "ResidualBlock",
    "UNet",
    "UNet3D",
]
