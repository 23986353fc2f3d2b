"""Lightning callbacks: validation pictures in TensorBoard, atomic checkpoint writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import TensorBoardLogger

from unet_seg.data.transforms import denormalize
from unet_seg.visualize import prediction_grid, to_rgb8


class ValidationImages(pl.Callback):
    """Each validation epoch, log `input | truth | prediction | errors` for the first val images.

    The samples are fixed (the validation split is not shuffled), so the grid
    shows the same images improving epoch by epoch. Drawn on rank 0 only, and
    only when a TensorBoard logger is attached.
    """

    def __init__(self, num_samples: int = 4, every_n_epochs: int = 1) -> None:
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        dataset = getattr(trainer.datamodule, "datasets", {}).get("val")
        if not loggers or not dataset:
            return
        norm = pl_module.hparams.normalization
        rows = []
        with torch.no_grad():
            for i in range(min(self.num_samples, len(dataset))):
                sample = dataset[i]
                image = sample["image"].to(pl_module.device)
                pred = pl_module.labels(pl_module(image[None]))[0]
                picture = denormalize(image, norm["mean"], norm["std"]).float().cpu().numpy()
                rows.append((to_rgb8(picture), sample["mask"].numpy(), pred.cpu().numpy()))
        grid = prediction_grid(rows)
        loggers[0].experiment.add_image(
            "val/input_truth_prediction_errors", grid, trainer.global_step, dataformats="HWC"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file, fsync it, then rename it into place.

    A run killed mid-write leaves the previous checkpoint intact, never a torn file.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
