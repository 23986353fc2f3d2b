"""3-D UNet++: :class:`~unet_seg.models.NestedUNet` (Zhou et al., 2018, "UNet++: A
Nested U-Net Architecture for Medical Image Segmentation") with 3-D convolutions.

The same nodes ``x0_0 .. x0_4``, deep supervision and pruned inference as the 2-D net;
the journal version (Zhou et al., 2019, "UNet++: Redesigning Skip Connections to Exploit
Multiscale Features in Image Segmentation") applies it to volumes (liver, lung nodules).
With a ``spacing``, thick slices are pooled and convolved in-plane first (nnU-Net's
rule, :mod:`~unet_seg.models.anisotropy`).
"""

from __future__ import annotations

from unet_seg.models.nested_unet import NestedUNet


class NestedUNet3D(NestedUNet):
    """3-D UNet++ with dense nested skips, optional deep supervision and pruning.

    Args:
        in_channels: channels of the input volume.
        num_classes: channels of the output logits.
        base_channels: width ``b`` of level 0; levels have ``[b, 2b, 4b, 8b, 16b]``.
        deep_supervision: one 1x1x1 head on each of ``x0_1 .. x0_4`` (else only ``x0_4``).
        bilinear: trilinear upsampling instead of ``ConvTranspose3d``.
        checkpointing: recompute the decoder nodes in the backward pass (training only).
        spacing: (keyword) voxel size ``(z, y, x)`` in mm for anisotropic pooling and
            kernels; None: isotropic. The constructor is :class:`NestedUNet`'s.

    Shape:
        [B, in_channels, D, H, W] -> [B, num_classes, D, H, W] (or a list of 4 of them)
    """

    spatial_dims = 3
