"""Segmentation networks: U-Net (Ronneberger et al., 2015) and UNet++ (Zhou et al., 2018)."""

from unet_seg.models.blocks import DoubleConv
from unet_seg.models.nested_unet import NestedUNet
from unet_seg.models.unet import UNet

__all__ = ["DoubleConv", "NestedUNet", "UNet"]
