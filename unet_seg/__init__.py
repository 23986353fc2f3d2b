"""unet-seg: U-Net and UNet++ semantic segmentation with PyTorch Lightning and Hydra."""

from unet_seg.config import register_resolvers

register_resolvers()

__version__ = "0.1.0"

__all__ = ["load_model"]


def __getattr__(name: str):
    """`from unet_seg import load_model`, imported on first use (torch is not loaded before)."""
    if name == "load_model":
        from unet_seg.api import load_model

        return load_model
    raise AttributeError(f"module 'unet_seg' has no attribute {name!r}")
