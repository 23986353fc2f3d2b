"""unet-seg: U-Net and UNet++ semantic segmentation with PyTorch Lightning and Hydra."""

from unet_seg.config import register_resolvers

register_resolvers()

__version__ = "0.1.0"
