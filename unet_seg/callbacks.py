"""Lightning callbacks: validation pictures, graceful stops, atomic checkpoint writes."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.optim.swa_utils import get_ema_avg_fn

from unet_seg.budget import clock, find_budget
from unet_seg.data.transforms import denormalize
from unet_seg.models.attention_unet import AttentionUNet
from unet_seg.visualize import attention_strip, prediction_grid, to_rgb8


class ValidationImages(pl.Callback):
    """Each validation epoch, log `input | truth | prediction | errors` for the first val images.

    The samples are fixed (the validation split is not shuffled), so the grid
    shows the same images improving epoch by epoch. Drawn on rank 0 only, and
    only when a TensorBoard logger is attached. Inputs of any channel count are drawn
    (`to_rgb8`): 3 and 4 channels of 2-D images as RGB(A), a volume's channels
    (modalities) and other counts as a composite, one colour per channel.
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
        contract = pl_module.contract
        rows = []
        if contract.volume:  # a slice through each of the first volumes
            with torch.no_grad():
                rows = [volume_row(pl_module, dataset[i])
                        for i in range(min(self.num_samples, len(dataset), 2))]  # fmt: skip
            loggers[0].experiment.add_image("val/input_truth_prediction_errors",
                                            prediction_grid(rows), trainer.global_step,
                                            dataformats="HWC")  # fmt: skip
            return
        with torch.no_grad():
            for i in range(min(self.num_samples, len(dataset))):
                sample = dataset[i]
                image = sample["image"].to(pl_module.device)
                pred = pl_module.labels(pl_module(image[None]))[0]
                picture = denormalize(image, contract.mean, contract.std).float().cpu().numpy()
                rows.append((to_rgb8(picture, colour=True), sample["mask"].numpy(),
                             pred.cpu().numpy()))  # fmt: skip
        grid = prediction_grid(rows)
        loggers[0].experiment.add_image(
            "val/input_truth_prediction_errors", grid, trainer.global_step, dataformats="HWC"
        )
        if isinstance(pl_module.net, AttentionUNet):  # where each gate lets the skip through
            with torch.no_grad():
                image = dataset[0]["image"].to(pl_module.device)
                _, alphas = pl_module.net(image[None], return_attention=True)
            strip = attention_strip(rows[0][0], [a[0, 0].float().cpu().numpy() for a in alphas])
            loggers[0].experiment.add_image(
                "val/attention_gates", strip, trainer.global_step, dataformats="HWC"
            )


def volume_row(pl_module: pl.LightningModule, sample: dict) -> tuple:
    """`(picture, truth, prediction)` of one validation volume: the slice along the contract's
    slice axis (z for 3-D nets) holding the most foreground, the picture stretched between
    its 0.5 and 99.5 percentiles (several channels, modalities rather than colours: a
    composite, see `to_rgb8`)."""
    contract = pl_module.contract
    axis = contract.slice_axis if contract.dims != 3 else 0
    probs = pl_module.volume_probabilities(sample["image"])  # [K, Z, Y, X] on the CPU
    truth = sample["mask"].movedim(axis, 0)  # [S, H, W]
    pred = probs.argmax(0).movedim(axis, 0)
    index = int((truth > 0).flatten(1).sum(1).argmax())
    image = sample["image"].movedim(axis + 1, 1)[:, index].float()  # [C, H, W]
    lo, hi = torch.quantile(image.flatten(), torch.tensor([0.005, 0.995]))
    picture = ((image - lo) / (hi - lo).clamp_min(1e-6)).numpy()
    return to_rgb8(picture, colour=False), truth[index].numpy(), pred[index].numpy()


log = logging.getLogger(__name__)

epoch_log = logging.getLogger("unet_seg.epochs")
"""One plain line per epoch: in the run's train.log always; on a console only when it is not
a terminal (a batch job, `> file`), where the progress bar cannot be seen."""


class EpochLog(pl.Callback):
    """Log `epoch 3/20 | step 84 | train loss 0.41 | val loss 0.38 | val dice 0.91 (a 0.93,
    b 0.88) | next lr 9.5e-04 | 1m12s, about 6m30s left` at the end of each training epoch
    (`epoch 3/~20` under `trainer.budget`: the epochs the budget now expects to fit)."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.first_epoch = 0  # the epoch this fit started at (after a resume, not 0)
        self.val_epoch: int | None = None  # the epoch of the last validation

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_epoch = trainer.current_epoch

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.monotonic()
        if sys.stdout.isatty() or sys.stderr.isatty():  # the bar shows it: file only
            for handler in logging.getLogger().handlers:
                if type(handler) is logging.StreamHandler:
                    handler.addFilter(lambda record: record.name != epoch_log.name)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or self.start is None:
            return
        metrics = trainer.callback_metrics
        done, total = trainer.current_epoch + 1, trainer.max_epochs
        budget = find_budget(trainer)
        if budget is not None:  # trainer.budget: the epochs its current plan fits, an estimate
            total = budget.planned_epochs(trainer) or done  # re-made from each epoch's pace
        parts = [f"epoch {done}/{'~' if budget is not None else ''}{total}",
                 f"step {trainer.global_step}"]  # fmt: skip
        loss = pl_module.epoch_train_loss()
        if loss is not None:
            parts.append(f"train loss {loss:.4f}")
        # a run that validates every n-th epoch (a budget) repeats the last validation's
        # figures: say from which epoch
        when = ("" if self.val_epoch in (None, trainer.current_epoch)
                else f" (epoch {self.val_epoch + 1})")  # fmt: skip
        if "val/loss" in metrics:
            parts.append(f"val loss {float(metrics['val/loss']):.4f}{when}")
        if "val/dice" in metrics:
            names = pl_module.contract.scored_classes
            per_class = ", ".join(f"{n} {float(metrics[f'val/dice/{n}']):.3f}" for n in names
                                  if f"val/dice/{n}" in metrics)  # fmt: skip
            parts.append(f"val dice {float(metrics['val/dice']):.4f} ({per_class}){when}")
        if trainer.optimizers:
            groups = trainer.optimizers[0].param_groups
            named = len(groups) > 1  # fine-tuning: pretrained and new tensors at their own rates
            parts.append("next lr " + ", ".join(
                f"{g['lr']:.2e}" + (f" ({g.get('name', i)})" if named else "")
                for i, g in enumerate(groups)
            ))  # fmt: skip
        elapsed = time.monotonic() - self.start
        left = elapsed / max(1, done - self.first_epoch) * max(0, total - done)
        if budget is not None:
            left = max(0.0, budget.left())
        parts.append(f"{clock(elapsed)}, about {clock(left)} left")
        epoch_log.info("%s", " | ".join(parts))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.first_epoch = trainer.current_epoch


class LogInterval(pl.Callback):
    """Log training values at least once an epoch: `trainer.log_every_n_steps` is clamped to
    the training batches of an epoch (small data has fewer than the configured interval, and
    Lightning would warn about it every run)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        if datamodule is None or not trainer.log_every_n_steps:
            return
        batches = len(datamodule.train_dataloader())
        limit = trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        trainer.log_every_n_steps = max(1, min(trainer.log_every_n_steps, batches))


class StopRequested(Exception):
    """Raised at a batch boundary after SIGTERM or Ctrl+C asked training to stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class GracefulStop(pl.Callback):
    """SIGTERM (pre-emption, a time limit) or Ctrl+C: finish the batch, save `last.ckpt`, stop.

    The checkpoint is written to `path` (the run's `RunDir.last`, atomically, through
    the trainer's checkpoint IO), so `resume=RUN_DIR` continues from that step. A
    second Ctrl+C aborts at once, saving nothing more.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.signum: int | None = None
        self.active = False
        self._previous: dict[int, Any] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self._previous:
            return
        self.signum, self.active = None, True
        for sig in self.SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.active = False
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.active or self.signum is not None:
            # not training, or asked twice: behave as if we were not here
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        log.warning(
            "%s received: stopping after this batch and saving %s (Ctrl+C again to abort)",
            signal.Signals(signum).name, self.path,
        )  # fmt: skip

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.signum is not None:
            raise StopRequested(self.signum)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, StopRequested | SIGTERMException) and trainer.training:
            trainer.save_checkpoint(self.path, weights_only=False)
            log.warning("saved %s at epoch %d, step %d", self.path,
                        trainer.current_epoch, trainer.global_step)  # fmt: skip


class EMA(WeightAveraging):
    """An exponential moving average of the weights, `avg = decay * avg + (1 - decay) * w` after
    each optimizer step from `start_step` on; validation, checkpoints (`state_dict` holds the
    average, the raw weights ride along for resume) and the final evaluation use the average.

    `decay: null` turns it off (`build_trainer` leaves it out). The average spans about
    `1 / (1 - decay)` steps: 0.99 suits runs of hundreds of steps, 0.999 of many thousands.
    """

    def __init__(self, decay: float | None = None, start_step: int = 0) -> None:
        if decay is not None and not 0 < decay < 1:
            raise ValueError(f"callbacks.ema.decay={decay}: choose a value in (0, 1), e.g. 0.99")
        super().__init__(avg_fn=get_ema_avg_fn(decay) if decay else None)
        self.decay, self.start_step = decay, start_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self.start_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)  # the module now holds the average
        self._average_model = None  # validate/test after fit: nothing to swap

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self._average_model is not None:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self._average_model is not None:  # resuming a fit; evaluation reads state_dict as is
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


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
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            kept = f"the previous {path.name} is intact" if path.exists() else "nothing was saved"
            raise OSError(
                err.errno,
                f"could not write checkpoint {path}: {err.strerror or err}; {kept}. "
                "Free disk space or choose another paths.output_dir, then resume the run.",
            ) from err
