"""Residual U-Net: the U-Net of Ronneberger et al., 2015 with every DoubleConv replaced
by a residual block (He et al., 2016, "Deep Residual Learning for Image Recognition").

The idea follows Zhang et al., 2018, "Road Extraction by Deep Residual U-Net"
(ResUnet). Where this net differs from theirs, to stay a drop-in comparison with
:class:`~unet_seg.models.UNet` (only the block changes):

* post-activation residual blocks (conv-BN-ReLU-conv-BN, add, ReLU) as in He et al.,
  where ResUnet uses pre-activation units (BN-ReLU-conv);
* 2x2 max pooling and transposed-conv (or bilinear) upsampling, where ResUnet
  downsamples with stride-2 convolutions;
* U-Net's depth 4 and widths (64 doubling to 1024), where ResUnet has three levels
  of 64-256 channels and a 512-channel bridge.
"""

from __future__ import annotations

from unet_seg.models.blocks import ResidualBlock
from unet_seg.models.unet import UNet


class ResUNet(UNet):
    """U-Net with residual blocks (Zhang et al., 2018; He et al., 2016), returning logits.

    :class:`~unet_seg.models.UNet` with :class:`~unet_seg.models.blocks.ResidualBlock`
    as its conv block: same arguments, widths and padding rule. Each block whose
    channels change adds a 1x1 projection shortcut (``C_in * C_out + 2 C_out``
    parameters), the others an identity.

    Args:
        in_channels: channels of the input image.
        num_classes: channels of the output logits.
        base_channels: width of the first level; level ``i`` has ``base * 2 ** i``.
        depth: number of down-sampling steps.
        bilinear: bilinear upsampling instead of ``ConvTranspose2d``.

    Shape:
        [B, in_channels, H, W] -> [B, num_classes, H, W]
    """

    block = ResidualBlock
