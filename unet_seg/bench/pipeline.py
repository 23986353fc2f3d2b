"""Data pipeline: training images per second out of the project's DataLoader (read, decode,
augment, normalise, collate) for several worker counts, with nothing consuming them."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from unet_seg.data.datamodule import SegDataModule

log = logging.getLogger(__name__)


def _endless(loader: DataLoader) -> Iterator[dict]:
    """Batches of `loader`, epoch after epoch (the sampler's epoch advancing)."""
    epoch = 0
    while True:
        sampler = loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def loader_rate(datamodule: SegDataModule, workers: int, images: int) -> dict[str, Any]:
    """Images per second from `datamodule.train_dataloader()` with `workers` workers.

    The first batch (worker start-up) is not timed; then at least `images` images are
    drawn, across epochs if the split is smaller.
    """
    datamodule.num_workers = workers
    loader = datamodule.train_dataloader()
    batches = _endless(loader)
    next(batches)
    count = 0
    start = time.perf_counter()
    while count < images:
        count += len(next(batches)["image"])
    seconds = time.perf_counter() - start
    batches.close()  # ends the loader's iterator, and with it its worker processes
    return {"workers": workers, "images_per_s": count / seconds, "images": count}


def measure_pipeline(
    datamodule: SegDataModule, workers: list[int], images: int
) -> list[dict[str, Any]]:
    """`loader_rate` for each worker count, on one set-up data module."""
    default_workers = datamodule.num_workers
    datamodule.prepare_data()
    datamodule.setup("fit")
    rows = []
    try:
        for w in workers:
            rows.append(loader_rate(datamodule, w, images))
            log.info("data: %d workers %.1f img/s", w, rows[-1]["images_per_s"])
    finally:
        datamodule.num_workers = default_workers
    return rows
