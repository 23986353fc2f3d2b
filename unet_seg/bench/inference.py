"""Inference: images per second and peak memory of `Predictor.run` (what `predict` calls,
without reading and writing files) in resize mode and tiling mode, with and without
test-time augmentation."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from unet_seg.bench.measure import peak_memory, synchronize
from unet_seg.inference import TTA_TRANSFORMS, Predictor
from unet_seg.module import SegModule

log = logging.getLogger(__name__)


def passes_per_image(mode: str, image_size: int, size: int, overlap: float, tta_passes: int) -> int:
    """Forward passes of one square image: 1 (resize) or its tiles, times the TTA passes."""
    if mode != "tile" or image_size <= size:
        return tta_passes
    stride = max(1, round(size * (1 - overlap)))
    per_side = math.ceil((image_size - size) / stride) + 1
    return per_side**2 * tta_passes


def measure_inference(
    module: SegModule,
    device: torch.device,
    size: int,
    image_size: int,
    images: int,
    batch: int,
    overlap: float,
    tta: str,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Rows for resize and tile modes, each without TTA and with `tta`.

    Args:
        module: a `SegModule` (its weights do not matter for speed).
        size: the net's input in resize mode and the tile side in tile mode.
        image_size: side of the square test images.
        images: images per timed run (after an untimed warm-up run over the same images).
    """
    module = module.to(device).eval()
    in_channels = module.hparams.arch["in_channels"]
    rng = np.random.default_rng(seed)
    shape = (image_size, image_size, in_channels)
    data = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(images)]
    rows = []
    for mode in ("resize", "tile"):
        for aug in dict.fromkeys(("none", tta)):
            predictor = Predictor(
                module, mode=mode, tile_size=size, overlap=overlap, tta=aug, batch_size=batch,
                size=size,
            )  # fmt: skip
            predictor.run(data)  # warm-up: the same batches, so the same kernels
            synchronize(device)
            start = time.perf_counter()
            predictor.run(data)
            synchronize(device)
            seconds = time.perf_counter() - start
            with peak_memory(device) as mem:
                predictor.run(data[:1])
            passes = passes_per_image(mode, image_size, size, overlap, len(TTA_TRANSFORMS[aug]))
            rows.append({
                "mode": mode, "tta": aug, "image_size": image_size, "net_input": size,
                "passes_per_image": passes, "images_per_s": images / seconds,
                "peak_mib": mem.bytes / 2**20, "memory_method": mem.method,
            })  # fmt: skip
            log.info("inference: %s tta=%s %.2f img/s", mode, aug, rows[-1]["images_per_s"])
    return rows
