"""Train a segmentation net: `python -m unet_seg.train [arch=nested] [key=value ...]`.

`train(cfg)` reads top to bottom: seed, run directory, data, model, trainer,
fit (or resume), then a final evaluation of the best checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import hydra
import lightning.pytorch as pl
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from unet_seg.callbacks import AtomicCheckpointIO, GracefulStop, StopRequested
from unet_seg.config import (
    CONF_DIR,
    RUN_CONFIG,
    check_targets,
    load_run_config,
    save_run_config,
    to_plain,
)
from unet_seg.data.datamodule import SegDataModule, encoding_from_config
from unet_seg.files import atomic_write_text
from unet_seg.models.registry import context_margin
from unet_seg.module import SegModule

log = logging.getLogger(__name__)

CONFIG_GROUPS = (
    "data", "arch", "loss", "optimizer", "scheduler", "trainer", "logger", "callbacks", "paths",
    "hydra", "scale", "experiment",
)  # fmt: skip


def build_datamodule(cfg: DictConfig, run_dir: Path) -> SegDataModule:
    """The data module of `cfg.data`, keeping its split in `run_dir/splits.json`.

    `loss.weight_map` (loss=weighted_ce_dice) asks the data for per-pixel weight maps;
    a valid-convolution net (arch=unet_valid) for context around each training patch.
    """
    weight_map = to_plain((cfg.get("loss") or {}).get("weight_map"))
    return SegDataModule(
        **to_plain(cfg.data), splits_path=str(run_dir / "splits.json"), seed=cfg.seed,
        weight_map=weight_map, context=context_margin(to_plain(cfg.arch)),
    )  # fmt: skip


def build_module(cfg: DictConfig, datamodule: SegDataModule | None = None) -> SegModule:
    """The LightningModule of a composed config, from plain data only.

    `loss.class_weights: auto` weighs cross-entropy by median frequency balancing
    over the training masks of `datamodule` (weight_c = median(freq) / freq_c).
    """
    data = cfg.data
    encoding = encoding_from_config(
        to_plain(data.get("mask_values")), list(data.class_names),
        data.get("mask_format", "values"), to_plain(data.get("mask_colors")),
    )  # fmt: skip
    loss = to_plain(cfg.loss)
    if loss.get("class_weights") == "auto":
        if datamodule is None:
            raise ValueError("loss.class_weights=auto needs the data to count class frequencies")
        freq = datamodule.class_frequencies()
        if (freq == 0).any():
            raise ValueError(
                f"loss.class_weights=auto: classes {list(np.flatnonzero(freq == 0))} never occur "
                "in the training masks; give the weights explicitly"
            )
        loss["class_weights"] = [float(w) for w in np.median(freq) / freq]
        log.info("class weights (median frequency balancing): %s", loss["class_weights"])
    return SegModule(
        arch=to_plain(cfg.arch),
        loss=loss,
        optimizer=to_plain(cfg.optimizer),
        scheduler=to_plain(cfg.scheduler),
        class_names=list(data.class_names),
        mask_values=encoding.mask_values,
        normalization={"mean": list(data.mean), "std": list(data.std),
                       "intensity": to_plain(data.get("intensity")) or {"mode": "range"}},
        mask_format=data.get("mask_format", "values"),
        mask_colors=to_plain(data.get("mask_colors")),
        input_size=data.get("crop_size"),
    )  # fmt: skip


def resume_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The config a run started with, plus `key=value` overrides (e.g. trainer.max_epochs=50).

    Group choices (`arch=nested`) cannot change on resume: the checkpoint holds that net.
    """
    cfg = load_run_config(run_dir)
    for override in overrides:
        key, _, value = override.partition("=")
        if key == "resume":
            continue
        if key in CONFIG_GROUPS or key.startswith(("+", "~")) or not value:
            raise ValueError(
                f"cannot apply {override!r} when resuming: the run's config groups are fixed. "
                "Only key=value changes such as trainer.max_epochs=50 are allowed."
            )
        OmegaConf.update(cfg, key, OmegaConf.from_dotlist([f"v={value}"]).v, merge=False)
    cfg.resume = str(run_dir)
    return cfg


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain configs. A key that one side lacks
    counts only when the other side sets it: an option added to unet-seg later, null by
    default, does not make a run made before it "another config"."""
    differ = []
    for key in sorted(set(saved) | set(current), key=str):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differ += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differ.append(f"{prefix}{key}")
    return differ


def continue_run(cfg: DictConfig) -> dict | None:
    """For a run directory that already holds a run: its metrics if it finished, else None
    (resume it). A different config there is an error: nothing a user made is overwritten.
    """
    run_dir = Path(cfg.run_dir)
    saved = to_plain(load_run_config(run_dir))
    differ = config_differences({**saved, "resume": None}, {**to_plain(cfg), "resume": None})
    if differ:
        raise ValueError(
            f"{run_dir} already holds a run with another config ({run_dir / RUN_CONFIG}; "
            f"differs at {', '.join(differ[:5])}): choose another directory (hydra.run.dir / "
            f"hydra.sweep.dir), or continue that run with resume={run_dir}"
        )
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        log.info("%s already finished: its metrics.json is kept", run_dir)
        return json.loads(metrics.read_text())
    log.info("%s holds this run, unfinished: resuming it", run_dir)
    return None


class TrainingInterrupted(RuntimeError):
    """Training stopped on SIGTERM or Ctrl+C after saving `last.ckpt`."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def check_output_dir(run_dir: Path, module: SegModule) -> None:
    """Fail before training when the run directory cannot hold its checkpoints.

    Each checkpoint holds the weights and the optimizer's state (up to 3x the
    weights for Adam); best.ckpt, last.ckpt and one file being written need room.
    """
    checkpoints = run_dir / "checkpoints"
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


def train(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, float | str]:
    """Fit (or resume) a run and score its best checkpoint; return the final metrics.

    Args:
        cfg: composed `conf/train.yaml`.
        overrides: command-line `key=value` overrides, applied on resume.
    Returns:
        The flat metrics also written to `run_dir/metrics.json`.
    """
    resuming = bool(cfg.get("resume"))
    if resuming:
        cfg = resume_config(cfg.resume, overrides)
    elif (Path(cfg.run_dir) / RUN_CONFIG).is_file():
        # this directory already holds this run (a sweep run again after an interruption)
        finished = continue_run(cfg)
        if finished is not None:
            return finished
        cfg, resuming = load_run_config(cfg.run_dir), True
    check_targets(cfg)
    run_dir = Path(cfg.run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = None
    if resuming and last.is_file():
        ckpt_path = last
    elif resuming:
        log.warning("%s has no checkpoint yet (stopped in epoch 0): starting it over", run_dir)
    pl.seed_everything(cfg.seed, workers=True)
    save_run_config(cfg, run_dir)
    log.info("run directory: %s%s", run_dir, " (resumed)" if ckpt_path else "")

    datamodule = build_datamodule(cfg, run_dir)
    module = build_module(cfg, datamodule)
    check_output_dir(run_dir, module)
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values()]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if not loggers:  # nothing to log the learning rate to (it refuses to run without)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(GracefulStop(last.parent))
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )

    if ckpt_path:  # the checkpoint folder is ours and meant to be reused
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empt")
    try:
        trainer.fit(module, datamodule, ckpt_path=ckpt_path, weights_only=True)
    except (StopRequested, SIGTERMException) as err:
        signum = getattr(err, "signum", signal.SIGTERM)
        raise TrainingInterrupted(
            f"{signal.Signals(signum).name}: training stopped at epoch {trainer.current_epoch}, "
            f"step {trainer.global_step}, saved in {last}. Continue with: "
            f"python -m unet_seg.train resume={run_dir}",
            signum,
        ) from None

    metrics: dict[str, float | str] = {
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
    }
    if cfg.get("final_eval", True):
        metrics.update(final_evaluation(trainer, module, datamodule, cfg.get("final_ckpt", "best")))
        log_hparams_with_scores(trainer, cfg, metrics)
    if trainer.is_global_zero:
        write_json(metrics, run_dir / "metrics.json")
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


def write_json(data: dict, path: Path) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@hydra.main(config_path=CONF_DIR, config_name="train", version_base=None)
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg, overrides=HydraConfig.get().overrides.task)
    except TrainingInterrupted as stop:
        log.warning("%s", stop)
        sys.exit(128 + stop.signum)
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
