"""Train a segmentation net: `python -m unet_seg.train [arch=nested] [key=value ...]`.

`train(cfg)` reads top to bottom: seed, run directory, data, model (from a checkpoint's
weights with `init_from=`), trainer, fit (or resume), then a final evaluation of the best
checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from unet_seg.budget import find_budget, process_start
from unet_seg.build import (
    build_datamodule,
    build_module,
    build_trainer,
    plan_config,
    preflight,
)
from unet_seg.callbacks import StopRequested
from unet_seg.config import CONF_DIR, check_targets, to_plain
from unet_seg.data.datamodule import SegDataModule
from unet_seg.data.plan import plan_table
from unet_seg.finetune import init_encoder, init_from_checkpoint
from unet_seg.module import SegModule
from unet_seg.run_dir import RunDir, hydra_log_file, open_run

log = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """Training stopped on SIGTERM or Ctrl+C after saving `last.ckpt`."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def check_output_dir(run: RunDir | str | Path, module: SegModule) -> None:
    """Fail before training when the run directory cannot hold its checkpoints.

    Each checkpoint holds the weights and the optimizer's state (up to 3x the
    weights for Adam); best.ckpt, last.ckpt and one file being written need room.
    """
    checkpoints = (run if isinstance(run, RunDir) else RunDir(run)).checkpoints
    try:
        checkpoints.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=checkpoints) as probe:  # unique: ranks run this too
            probe.write(b"ok")
    except OSError as err:
        raise OSError(
            f"cannot write to {checkpoints}: {err.strerror or err}. "
            "Choose a writable paths.output_dir (or hydra.run.dir)."
        ) from err
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    needed = 3 * 3 * weights
    free = shutil.disk_usage(checkpoints).free
    if free < needed:
        raise OSError(
            f"{checkpoints}: {free / 2**20:.0f} MiB free, but checkpoints of this model need "
            f"about {needed / 2**20:.0f} MiB. Free disk space or choose another paths.output_dir."
        )


def train(
    cfg: DictConfig, overrides: Sequence[str] = (), started: float | None = None
) -> dict[str, float | str]:
    """Fit (or resume) a run and score its best checkpoint; return the final metrics.

    Args:
        cfg: composed `conf/train.yaml`.
        overrides: command-line `key=value` overrides, applied on resume.
        started: `time.monotonic()` when the run began (a `trainer.budget` counts from it);
            default now.
    Returns:
        The flat metrics also written to `run_dir/metrics.json`.
    """
    started = time.monotonic() if started is None else started  # a budget counts from here
    cfg, ckpt_path, finished = open_run(cfg, overrides)
    if finished is not None:  # this directory already holds this run, finished
        return finished
    check_targets(cfg)
    run = RunDir(cfg.run_dir)
    cfg, plan = plan_config(cfg)  # data=auto: the folder's fingerprint fills the data keys
    # every problem at once, before anything is written (a resumed run was checked at its start)
    datamodule = preflight(cfg, run) if ckpt_path is None else None
    pl.seed_everything(cfg.seed, workers=True)
    run.save_config(cfg)
    if plan is not None:
        run.save_plan(plan)
        log.info("data plan for %s (%s):\n%s", cfg.data.root, run.path / RunDir.PLAN,
                 plan_table(plan))  # fmt: skip
    log.info("run directory: %s%s", run, " (resumed)" if ckpt_path else "")

    datamodule = datamodule or build_datamodule(cfg, run)
    module = build_module(cfg, datamodule)
    init_encoder(module, cfg, run, resumed=ckpt_path is not None)  # arch.encoder_weights
    if cfg.get("init_from"):  # fine-tuning: a new run that starts from a checkpoint's weights
        init_from_checkpoint(module, cfg, run, resumed=ckpt_path is not None)
    check_output_dir(run, module)
    trainer = build_trainer(cfg, run, started)

    try:
        with warnings.catch_warnings():  # this run's filter only: gone when it returns
            if ckpt_path:  # the checkpoint folder is ours and meant to be reused
                warnings.filterwarnings(
                    "ignore", message=r"Checkpoint directory .* exists and is not empt"
                )
            trainer.fit(module, datamodule, ckpt_path=ckpt_path, weights_only=True)
    except (StopRequested, SIGTERMException) as err:
        signum = getattr(err, "signum", signal.SIGTERM)
        raise TrainingInterrupted(
            f"{signal.Signals(signum).name}: training stopped at epoch {trainer.current_epoch}, "
            f"step {trainer.global_step}, saved in {run.last}. Continue with: "
            f"python -m unet_seg.train resume={run}",
            signum,
        ) from None

    metrics: dict[str, float | str] = {
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
    }
    budget = find_budget(trainer)
    if cfg.get("final_eval", True):
        metrics.update(final_evaluation(trainer, module, datamodule, cfg.get("final_ckpt", "best")))
        log_hparams_with_scores(trainer, cfg, metrics)
    if budget is not None:  # how the budget was used, the final evaluation included
        metrics.update({"budget_s": budget.seconds, "budget_steps": budget.total_steps or 0,
                        "budget_spent_s": round(budget.spent(), 1)})  # fmt: skip
        log.info("time budget %.0f s: %.0f s used, %d steps", budget.seconds, budget.spent(),
                 trainer.global_step)  # fmt: skip
        if plan is not None and trainer.is_global_zero:  # the plan states the steps it got
            plan["epochs"].update(expected_steps=budget.first_plan, steps=trainer.global_step,
                                  epochs=trainer.current_epoch)  # fmt: skip
            run.save_plan(plan)
    if trainer.is_global_zero:
        run.save_metrics(metrics)
    return metrics


def final_evaluation(
    trainer: pl.Trainer, module: SegModule, datamodule: SegDataModule, which: str = "best"
) -> dict[str, float | str]:
    """Validation and test scores of the best checkpoint, or of the last weights.

    `which="last"` scores the weights training ended with: use it when the
    validation split is also the held-out fold, so that picking the best epoch
    on it does not flatter the result.
    """
    if which not in ("best", "last"):
        raise ValueError(f"final_ckpt={which!r}: choose 'best' or 'last'")
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt = best if which == "best" and best else None
    metrics: dict[str, float | str] = {"checkpoint": ckpt or "last weights"}
    for stage, run in (("val", trainer.validate), ("test", trainer.test)):
        if not datamodule.splits or not datamodule.splits[stage]:
            continue
        (results,) = run(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        metrics.update({k: float(v) for k, v in results.items()})
    return metrics


def log_hparams_with_scores(trainer: pl.Trainer, cfg: DictConfig, metrics: dict) -> None:
    """Fill TensorBoard's HParams tab: the run's settings next to its final scores."""
    params = {k: v for k, v in to_plain(cfg).items() if k not in ("callbacks", "logger", "paths")}
    scores = {f"hp/{k}": metrics[k] for k in ("val/dice", "val/iou", "test/dice", "test/iou")
              if k in metrics}  # fmt: skip
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(params, metrics=scores)


@hydra.main(config_path=CONF_DIR, config_name="train", version_base=None)
def main(cfg: DictConfig) -> float | None:
    run = RunDir(cfg.run_dir)
    fresh = not cfg.get("resume") and not run.holds_run
    log_file, log_kept = hydra_log_file()  # cut back to this size if refused
    try:
        metrics = train(cfg, overrides=HydraConfig.get().overrides.task, started=process_start())
    except TrainingInterrupted as stop:
        log.warning("%s", stop)
        sys.exit(128 + stop.signum)
    except (ValueError, FileNotFoundError) as refused:
        if not fresh or run.holds_run:  # the run had started: show where it failed
            raise
        # refused before anything was written: a message, not a traceback, and nothing left
        log.debug("refused", exc_info=True)
        log.error("%s", refused)
        run.discard(log_file, log_kept)  # Hydra's .hydra/ and this command's log lines
        sys.exit(1)
    metric = cfg.get("optimized_metric")
    if metric is None:
        return None
    if metric not in metrics:
        raise KeyError(
            f"optimized_metric={metric!r} is not among the run's metrics {sorted(metrics)}"
        )
    return float(metrics[metric])


if __name__ == "__main__":
    main()
