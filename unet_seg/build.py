"""The objects a composed training config describes: the data module, the `SegModule`
and the Lightning `Trainer`.

Used by `train` and the benchmark, so both build exactly the same run.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, open_dict

from unet_seg.callbacks import AtomicCheckpointIO, EpochLog, GracefulStop
from unet_seg.config import to_plain
from unet_seg.data.checks import median_frequency_weights
from unet_seg.data.contract import DataContract
from unet_seg.data.datamodule import SegDataModule
from unet_seg.data.plan import PLANNED_KEYS, has_auto, plan_data_config
from unet_seg.models.registry import context_margin
from unet_seg.module import SegModule, check_net_fits
from unet_seg.run_dir import RunDir

log = logging.getLogger(__name__)


def plan_config(cfg: DictConfig) -> tuple[DictConfig, dict | None]:
    """Fill the `auto` keys of `cfg.data` (data=auto) from the folder's fingerprint.

    Returns:
        `(cfg with the plan in force, the plan record)`, or `(cfg, None)` when nothing is
        left to the plan. The fingerprint is cached under `paths.output_dir/.cache`.
    """
    data = to_plain(cfg.data)
    if not has_auto(data):
        return cfg, None
    cache = str(Path(cfg.paths.output_dir) / ".cache") if cfg.get("paths") else None
    planned, record = plan_data_config(data, cache, _gpu_memory_gb(cfg))
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for key in PLANNED_KEYS:
            cfg.data[key] = planned[key]
    epochs = (cfg.get("trainer") or {}).get("max_epochs")
    record["epochs"] = {"value": epochs, "why": "trainer.max_epochs, as configured"}
    return cfg, record


def _gpu_memory_gb(cfg: DictConfig) -> float | None:
    """Memory of the GPU a run will train on, or None for a CPU run."""
    if not _uses_gpu(cfg.get("trainer") or {}):
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def _uses_gpu(trainer: DictConfig | dict) -> bool:
    """Whether a trainer config runs on a GPU (`auto` does when one is there)."""
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator == "auto":
        return torch.cuda.is_available()
    return accelerator in ("gpu", "cuda") and torch.cuda.is_available()


class DataProblems(ValueError):
    """Problems found before training, listed together; nothing of the run was written."""


def preflight(cfg: DictConfig, run: RunDir) -> SegDataModule:
    """Raise once, listing every problem a run of `cfg` would meet in its data and config
    (the data contract, the net against it, the loss against the data, the files), before
    anything is written. A single problem is raised as it is.

    Returns:
        The checked data module, to train with (its files are not read again in `setup`).
    """
    problems: list[Exception] = []
    try:
        datamodule = build_datamodule(cfg, run)
    except (ValueError, FileNotFoundError) as err:
        problems.append(err)
        # the files can still be checked: channels, sizes and folders do not need the classes
        neutral = {"num_classes": 2, "mask_format": "values", "mask_values": [0, 1],
                   "mask_colors": None, "class_names": ["class0", "class1"],
                   "ignore_value": None}  # fmt: skip
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            folders = cfg.data.get("mask_format") == "folders"
            cfg.data.update(neutral if not folders else {"ignore_value": None})
            cfg.loss.weight_map = None
        try:
            datamodule = build_datamodule(cfg, run)
        except (ValueError, FileNotFoundError):
            datamodule = None
    else:
        try:
            check_net_fits(to_plain(cfg.arch), datamodule.contract)
        except ValueError as err:
            problems.append(err)
    if datamodule is not None:
        problems += [ValueError(p) for p in datamodule.check()]
    if len(problems) == 1:
        raise problems[0]
    if problems:
        shown = "\n  ".join(str(p).replace("\n", "\n    ") for p in problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        raise DataProblems(
            f"{len(problems)} problems, all to fix before training (nothing was written):"
            f"\n  {shown}{more}"
        )
    return datamodule


def build_datamodule(cfg: DictConfig, run_dir: str | Path | RunDir) -> SegDataModule:
    """The data module of `cfg.data`, keeping its split in the run directory's splits file.

    `loss.weight_map` (loss=weighted_ce_dice) asks the data for per-pixel weight maps;
    a valid-convolution net (arch=unet_valid) for context around each training patch.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    weight_map = to_plain((cfg.get("loss") or {}).get("weight_map"))
    return SegDataModule(
        **to_plain(cfg.data), splits_path=str(run.splits_path), seed=cfg.seed,
        weight_map=weight_map, context=context_margin(to_plain(cfg.arch)),
    )  # fmt: skip


def build_module(cfg: DictConfig, datamodule: SegDataModule | None = None) -> SegModule:
    """The LightningModule of a composed config, from plain data only.

    The data contract is the data module's (built without one when none is given).
    `loss.class_weights: auto` weighs cross-entropy by median frequency balancing
    over the training masks of `datamodule` (weight_c = median(freq) / freq_c).
    """
    if datamodule is None:
        contract = DataContract.from_config(cfg.data)
    else:
        contract = datamodule.contract
    loss = to_plain(cfg.loss)
    if loss.get("class_weights") == "auto":
        if datamodule is None:
            raise ValueError("loss.class_weights=auto needs the data to count class frequencies")
        freq = datamodule.class_frequencies()
        if (freq == 0).any():
            raise ValueError(
                f"loss.class_weights=auto: classes {[int(c) for c in (freq == 0).nonzero()[0]]} "
                "never occur in the training masks; give the weights explicitly"
            )
        loss["class_weights"] = median_frequency_weights(freq)
        log.info("class weights (median frequency balancing): %s", loss["class_weights"])
    return SegModule(
        arch=to_plain(cfg.arch),
        loss=loss,
        optimizer=to_plain(cfg.optimizer),
        scheduler=to_plain(cfg.scheduler),
        data=contract.to_dict(),
    )


def build_trainer(cfg: DictConfig, run: RunDir) -> pl.Trainer:
    """The Trainer of `cfg.trainer` with the configured loggers and callbacks, plus
    graceful stops (SIGTERM, Ctrl+C: save `last.ckpt`) and atomic checkpoint writes."""
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values()]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if not loggers:  # nothing to log the learning rate to (it refuses to run without)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks += [GracefulStop(run.last), EpochLog()]
    return instantiate(
        cpu_safe(cfg.trainer), callbacks=callbacks, logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )  # fmt: skip


def cpu_safe(trainer: DictConfig) -> DictConfig:
    """`trainer` with `sync_batchnorm` off, said in the log, when the run has no GPU to sync
    on (PyTorch's SyncBatchNorm works on GPUs only: `trainer=ddp trainer.accelerator=cpu`)."""
    if not trainer.get("sync_batchnorm") or _uses_gpu(trainer):
        return trainer
    accelerator = str(trainer.get("accelerator", "auto"))
    log.warning(
        "trainer.sync_batchnorm=true needs GPUs (PyTorch's SyncBatchNorm); it is off for this "
        "%s run: each process normalises with its own batch statistics",
        "CPU" if accelerator == "cpu" else "GPU-less",
    )
    trainer = copy.deepcopy(trainer)
    with open_dict(trainer):
        trainer.sync_batchnorm = False
    return trainer
