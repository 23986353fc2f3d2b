"""3-D U-Net (Cicek et al., 2016, "3D U-Net: Learning Dense Volumetric Segmentation from
Sparse Annotation"): :class:`~unet_seg.models.UNet` with 3-D convolutions.

Where this follows the paper and where it does not:

* 3x3x3 convolutions with batch normalisation and ReLU, 2x2x2 max pooling, 2x2x2
  up-convolutions (``bilinear=False``), 3 down-sampling steps and 32 base channels: as
  in the paper;
* the widths are the 2-D U-Net's, doubling per level (32, 64, 128, 256 at depth 3),
  where the paper doubles inside each level's block (32 -> 64, 64 -> 128, 128 -> 256,
  256 -> 512), and the convolutions are padded (logits the size of the input) where the
  paper's are valid;
* with a ``spacing``, thick slices are pooled and convolved in-plane first (nnU-Net's
  rule, :mod:`~unet_seg.models.anisotropy`); the paper's data were near-isotropic.

Unlabelled voxels (the paper's sparse annotation) are ``-1`` in the masks and count in no
term of the losses, as in the paper's weighted loss with weight 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from unet_seg.models.unet import UNet


class UNet3D(UNet):
    """3-D U-Net (Cicek et al., 2016): per-voxel logits of a volume.

    Args:
        in_channels: channels of the input volume (modalities).
        num_classes: channels of the output logits (1: a sigmoid binary task).
        base_channels: width of the first level; level ``i`` has ``base * 2 ** i``.
        depth: number of down-sampling steps (3 in the paper).
        bilinear: trilinear upsampling instead of ``ConvTranspose3d``.
        spacing: voxel size ``(z, y, x)`` in mm; an axis much coarser than the others is
            pooled and convolved later (:mod:`~unet_seg.models.anisotropy`). None:
            isotropic, every axis pooled by 2 at every level.

    Shape:
        [B, in_channels, D, H, W] -> [B, num_classes, D, H, W]; each side is padded
        inside the net to a multiple of its ``pad_multiples`` and cropped back.
    """

    spatial_dims = 3

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_channels: int = 32,
        depth: int = 3,
        bilinear: bool = False,
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes, base_channels, depth, bilinear, spacing=spacing)
