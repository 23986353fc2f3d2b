"""Inference helpers shared by `evaluate` and `predict`: load, pick a device, run the net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unet_seg.data.transforms import normalize
from unet_seg.module import SegModule


def resolve_device(device: str) -> torch.device:
    """`auto` -> the GPU when there is one, else the CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_for_inference(
    ckpt: str | Path, device: str = "auto", level: int | None = None
) -> SegModule:
    """A `SegModule` in eval mode on `device`, optionally UNet++-pruned to `level`."""
    module = SegModule.from_checkpoint(ckpt).to(resolve_device(device))
    if level is not None:
        if module.hparams.arch.get("name") != "nested":
            raise ValueError(
                f"level={level} prunes UNet++ only; {ckpt} holds a {module.hparams.arch['name']}"
            )
        module.net.check_level(level)
        module.inference_level = int(level)
    return module


@torch.no_grad()
def predict_labels(module: SegModule, image: np.ndarray) -> np.ndarray:
    """One image `[H, W, C]` (uint8/uint16, as read) -> class indices `[H, W]`, full size."""
    norm = module.hparams.normalization
    x = normalize(image, norm["mean"], norm["std"])[None].to(module.device)  # [1, C, H, W]
    return module.labels(module(x))[0].cpu().numpy()
