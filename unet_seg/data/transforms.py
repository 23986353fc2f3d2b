"""Augmentation pipelines (albumentations) and the one place images are normalised."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from unet_seg.data.masks import IGNORE_INDEX, PAD_LABEL


def build_train_transform(augment: dict | None) -> A.Compose | None:
    """Random augmentation for training: flips, 90-degree rotations, affine, elastic,
    brightness/contrast.

    Patches are cut before this (`SegDataset`), so augmentation works at patch size.

    Args:
        augment: probabilities and ranges (see `conf/data/folder.yaml`, key `augment`).
    Returns:
        The pipeline, or None when `augment` asks for nothing.
    """
    aug = augment or {}
    ops: list[A.BasicTransform] = []
    if aug.get("hflip", 0):
        ops.append(A.HorizontalFlip(p=aug["hflip"]))
    if aug.get("vflip", 0):
        ops.append(A.VerticalFlip(p=aug["vflip"]))
    if aug.get("rotate90", 0):
        ops.append(A.RandomRotate90(p=aug["rotate90"]))
    affine = aug.get("affine") or {}
    if affine.get("p", 0):
        ops.append(
            A.Affine(
                scale=tuple(affine.get("scale", (1.0, 1.0))),
                rotate=tuple(affine.get("rotate", (0.0, 0.0))),
                translate_percent=affine.get("translate", 0.0),
                border_mode=cv2.BORDER_REFLECT_101,
                p=affine["p"],
            )
        )
    elastic = aug.get("elastic") or {}
    if elastic.get("p", 0):  # the U-Net paper's smooth random deformations
        ops.append(
            A.ElasticTransform(
                alpha=float(elastic.get("alpha", 40.0)),
                sigma=float(elastic.get("sigma", 8.0)),
                border_mode=cv2.BORDER_REFLECT_101,
                p=elastic["p"],
            )
        )
    bc = aug.get("brightness_contrast") or {}
    if bc.get("p", 0):
        ops.append(
            A.RandomBrightnessContrast(
                brightness_limit=bc.get("brightness", 0.2),
                contrast_limit=bc.get("contrast", 0.2),
                p=bc["p"],
            )
        )
    return A.Compose(ops) if ops else None


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """`[H, W, C]` -> float32 `[C, H, W]`: scale to [0, 1], then (x - mean) / std.

    uint8 is divided by 255 and uint16 by 65535; float32 is taken as already in
    [0, 1] (see `readers.to_unit_range`). This is the only normalisation:
    datasets and inference both call it.
    """
    scales = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}
    if image.dtype not in scales:
        raise ValueError(f"expected a uint8, uint16 or float32 image, got {image.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()  # [C, H, W]
    channels = x.shape[0]
    m = torch.as_tensor(_per_channel(mean, channels), dtype=torch.float).view(-1, 1, 1)
    s = torch.as_tensor(_per_channel(std, channels), dtype=torch.float).view(-1, 1, 1)
    return (x / scales[image.dtype] - m) / s


def denormalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Inverse of `normalize` back to [0, 1] floats (for pictures). Shape `[C, H, W]`."""
    channels = x.shape[0]
    m = torch.as_tensor(_per_channel(mean, channels), dtype=x.dtype, device=x.device)
    s = torch.as_tensor(_per_channel(std, channels), dtype=x.dtype, device=x.device)
    return (x * s.view(-1, 1, 1) + m.view(-1, 1, 1)).clamp(0, 1)


def mask_to_tensor(indices: np.ndarray) -> Tensor:
    """uint8 class-index mask (PAD_LABEL = padding) -> int64 `[H, W]` with IGNORE_INDEX."""
    target = torch.from_numpy(np.ascontiguousarray(indices)).long()
    target[target == PAD_LABEL] = IGNORE_INDEX
    return target


def _per_channel(values: Sequence[float] | float, channels: int) -> list[float]:
    values = [float(values)] if isinstance(values, int | float) else [float(v) for v in values]
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise ValueError(f"normalisation has {len(values)} values for {channels} channels")
    return values
