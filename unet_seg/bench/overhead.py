"""Framework overhead: training steps through `unet_seg.train.train` (Trainer.fit with the
project's module, callbacks, loggers and checkpointing at their defaults) against a plain
PyTorch loop over the same model, data and optimizer.

Both are timed over the same window, from the start of batch `warmup` to the start of
batch `warmup + steps` of the first epoch, so data loading, logging, progress bar and
callback hooks inside the loop count, and start-up and the epoch end do not. The epoch
end (validation, checkpoints, pictures) is timed separately.

On a CPU each step is also timed alone: the median step is what other jobs on a shared
machine disturb least. (On a GPU that would need a synchronisation per step, which is
what the window avoids.)
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, open_dict

from unet_seg.bench.measure import AUTOCAST, HostReads, synchronize
from unet_seg.build import build_datamodule, build_module
from unet_seg.train import train

log = logging.getLogger(__name__)


class StepTimer(pl.Callback):
    """Times training batches `warmup .. warmup + steps` of the first epoch, counts the host
    reads of `count_steps` more, times the epoch end, and writes the figures to `output`.

    Added to a training config as `callbacks.bench_timer` by `fit_rate`.
    """

    def __init__(self, output: str, warmup: int, steps: int, count_steps: int = 2) -> None:
        self.output = Path(output)
        self.warmup, self.steps, self.count_steps = warmup, steps, count_steps
        self.times: dict[str, float] = {}
        self.starts: list[float] = []  # each timed batch's start, on a CPU
        self.reads: HostReads | None = None
        self.read_count: int | None = None
        self.read_names: list[str] = []

    @property
    def batches(self) -> int:
        """Training batches the first epoch needs (`trainer.limit_train_batches`)."""
        return self.warmup + self.steps + self.count_steps + 1

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch:
            return
        cpu = pl_module.device.type == "cpu"
        if cpu and self.warmup < batch_idx < self.warmup + self.steps:
            self.starts.append(time.perf_counter())
        if batch_idx == self.warmup:
            synchronize(pl_module.device)
            self.times["start"] = time.perf_counter()
            self.starts = [self.times["start"]] if cpu else []
        elif batch_idx == self.warmup + self.steps:
            synchronize(pl_module.device)
            self.times["stop"] = time.perf_counter()
            self.starts += [self.times["stop"]] if cpu else []
            self.reads = HostReads(pl_module.device, trainer.optimizers).__enter__()
        elif batch_idx == self.warmup + self.steps + self.count_steps:
            self._stop_counting()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        self.times["last_batch_end"] = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.times["validation_start"] = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.times["validation_end"] = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_counting()
        t = self.times
        if "stop" not in t:
            raise RuntimeError(
                f"the timed window needs {self.batches} training batches in the first epoch; "
                f"only {trainer.num_training_batches} ran: use more images or fewer steps"
            )
        val = getattr(trainer.datamodule, "datasets", {}).get("val")
        result = {
            "seconds_per_step": (t["stop"] - t["start"]) / self.steps,
            "step_seconds": step_seconds(self.starts),
            "host_reads_per_step": (self.read_count or 0) / self.count_steps,
            "host_read_kinds": self.read_names,
            "epoch_end_s": time.perf_counter() - t["last_batch_end"],
            "validation_s": t.get("validation_end", 0.0) - t.get("validation_start", 0.0),
            "val_images": len(val) if val is not None else 0,
        }
        self.output.write_text(json.dumps(result))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, err: Any) -> None:
        self._stop_counting()

    def _stop_counting(self) -> None:
        if self.reads is not None:
            self.reads.__exit__(None, None, None)
            self.read_count, self.read_names = self.reads.count, sorted(set(self.reads.names))
            self.reads = None


def fit_rate(
    cfg: DictConfig, run_dir: Path, warmup: int, steps: int, count_steps: int = 2
) -> dict[str, float]:
    """One epoch of `train(cfg)` with a `StepTimer`; its figures (see `StepTimer`)."""
    cfg = copy.deepcopy(cfg)
    output = run_dir / "step_timer.json"
    timer = {
        "_target_": f"{StepTimer.__module__}.StepTimer",
        "output": str(output),
        "warmup": warmup,
        "steps": steps,
        "count_steps": count_steps,
    }
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
        cfg.final_eval = False
        cfg.trainer.max_epochs = 1
        cfg.trainer.limit_train_batches = warmup + steps + count_steps + 1
        if cfg.get("callbacks"):
            cfg.callbacks.bench_timer = timer
        else:
            cfg.callbacks = {"bench_timer": timer}
    train(cfg)
    return json.loads(output.read_text())


def plain_rate(
    cfg: DictConfig,
    run_dir: Path,
    device: torch.device,
    warmup: int,
    steps: int,
    count_steps: int = 2,
) -> dict[str, float]:
    """The same steps as `fit_rate` in a plain loop: forward, loss, backward, step.

    The model, its initial weights (same seed), the optimizer and the batches (same
    DataLoader, sampler and augmentation seeds) are those `train(cfg)` uses.
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg, run_dir)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg).to(device).train()
    optimizer = module.configure_optimizers()["optimizer"]
    dtype = AUTOCAST.get(str(cfg.trainer.get("precision")))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    reads: HostReads | None = None
    starts: list[float] = []
    for i, batch in enumerate(datamodule.train_dataloader()):
        edge = i in (warmup, warmup + steps)
        if edge:
            synchronize(device)
        if edge or (warmup < i < warmup + steps and device.type == "cpu"):
            starts.append(time.perf_counter())
        if i == warmup + steps:
            reads = HostReads(device, [optimizer]).__enter__()
        elif i == warmup + steps + count_steps:
            break
        images = batch["image"].to(device, non_blocking=True)
        masks = batch["mask"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = module.loss_fn(module.net(images), masks)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        raise RuntimeError(
            f"the timed window needs {warmup + steps + count_steps + 1} training batches; "
            "the training split has fewer: use more images or fewer steps"
        )
    reads.__exit__(None, None, None)
    return {
        "seconds_per_step": (starts[-1] - starts[0]) / steps,
        "step_seconds": step_seconds(starts) if device.type == "cpu" else [],
        "host_reads_per_step": reads.count / count_steps,
        "host_read_kinds": sorted(set(reads.names)),
    }


def measure_overhead(
    cfg: DictConfig,
    work_dir: Path,
    device: torch.device,
    warmup: int,
    steps: int,
    repeats: int,
    count_steps: int = 2,
) -> dict[str, Any]:
    """Plain loop and `Trainer.fit`, alternated `repeats` times; the best time of each.

    Returns:
        `plain` and `fit`, each with `seconds_per_step` (the best repeat's mean),
        `median_step_s` (of every timed step on a CPU, else None), `steps_per_s`,
        `images_per_s`, `host_reads_per_step`, the mean of every repeat (fit also
        `epoch_end_s`, `validation_s`, `val_images`); `overhead_pct` (means),
        `overhead_median_pct` (median steps, CPU) and `framework_ms_per_step` (fit - plain,
        median steps where there are).
    """
    batch = int(cfg.data.batch_size)
    runs: dict[str, list[dict]] = {"plain": [], "fit": []}
    for r in range(repeats):
        run_dir = work_dir / f"overhead_{r}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a stale splits.json would change the data
        runs["plain"].append(plain_rate(cfg, run_dir, device, warmup, steps, count_steps))
        runs["fit"].append(fit_rate(cfg, run_dir / "fit", warmup, steps, count_steps))
        log.info(
            "overhead repeat %d: plain %.3f s/step, fit %.3f s/step", r,
            runs["plain"][-1]["seconds_per_step"], runs["fit"][-1]["seconds_per_step"],
        )  # fmt: skip
    result: dict[str, Any] = {}
    for name, rs in runs.items():
        best = min(rs, key=lambda x: x["seconds_per_step"])
        steps_s = [t for x in rs for t in x.pop("step_seconds")]
        result[name] = {
            **best,
            "median_step_s": statistics.median(steps_s) if steps_s else None,
            "steps_per_s": 1 / best["seconds_per_step"],
            "images_per_s": batch / best["seconds_per_step"],
            "repeats_s_per_step": [x["seconds_per_step"] for x in rs],
        }
    plain, fit = result["plain"], result["fit"]
    result["overhead_pct"] = 100 * (fit["seconds_per_step"] / plain["seconds_per_step"] - 1)
    result["overhead_median_pct"] = (
        100 * (fit["median_step_s"] / plain["median_step_s"] - 1)
        if plain["median_step_s"]
        else None
    )
    median = result["overhead_median_pct"] is not None
    key = "median_step_s" if median else "seconds_per_step"
    result["framework_ms_per_step"] = 1e3 * (fit[key] - plain[key])
    return result


def step_seconds(starts: list[float]) -> list[float]:
    """Durations of consecutive steps from their start times."""
    return [b - a for a, b in zip(starts, starts[1:], strict=False)]
