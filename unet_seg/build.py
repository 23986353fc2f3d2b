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
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf, open_dict

from unet_seg import finetune
from unet_seg.budget import TimeBudget, budget_scheduler, budget_seconds, is_budgeted
from unet_seg.callbacks import EMA, AtomicCheckpointIO, EpochLog, GracefulStop, LogInterval
from unet_seg.config import CONF_DIR, to_plain
from unet_seg.data.checks import median_frequency_weights
from unet_seg.data.contract import DataContract
from unet_seg.data.datamodule import SegDataModule
from unet_seg.data.plan import (
    PLANNED_KEYS,
    VOLUME_KEYS,
    has_auto,
    is_volume_config,
    plan_data_config,
    plan_pretrained_normalisation,
    rare_subject,
)
from unet_seg.data.volume_datamodule import VolumeDataModule
from unet_seg.instances import INSTANCE_CLASSES
from unet_seg.models.registry import context_margin, weight_problems
from unet_seg.module import SegModule, check_net_fits
from unet_seg.problems import problem_list
from unet_seg.quiet import silence_known_noise
from unet_seg.run_dir import RunDir
from unet_seg.threads import ThreadCount, check_threads

log = logging.getLogger(__name__)


def plan_config(cfg: DictConfig) -> tuple[DictConfig, dict | None]:
    """Fill the `auto` keys of `cfg.data` (data=auto) from the folder's fingerprint, then
    the classes of an instance target (`target_classes`).

    Returns:
        `(cfg with the plan in force, the plan record)`, or `(cfg, None)` when nothing is
        left to the plan. The fingerprint is cached under `paths.output_dir/.cache`.
    """
    data = to_plain(cfg.data)
    if not has_auto(data):
        return target_classes(choose_net(cfg, None)), None
    cache = str(Path(cfg.paths.output_dir) / ".cache") if cfg.get("paths") else None
    planned, record = plan_data_config(data, cache, _gpu_memory_gb(cfg))
    weights = (cfg.get("arch") or {}).get("encoder_weights")
    if weights is not None and not is_volume_config(planned):  # ImageNet's mean and std
        plan_pretrained_normalisation(planned, record, str(weights))
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for key in (*PLANNED_KEYS, *VOLUME_KEYS, "images_dir", "masks_dir"):  # folders: layouts
            if key in planned:
                cfg.data[key] = planned[key]
    trainer = cfg.get("trainer") or {}
    if is_budgeted(cfg):
        record["epochs"] = {
            "value": f"budget {trainer.budget}",
            "why": "trainer.budget: the steps are sized at run time from the measured step "
            "time; expected_steps (the first plan), steps and epochs are filled in when the "
            "run ends",
        }
    elif trainer:
        record["epochs"] = {"value": trainer.get("max_epochs"),
                            "why": "trainer.max_epochs, as configured"}  # fmt: skip
    else:  # check_data: no trainer yet
        why = "the train command's trainer.max_epochs or trainer.budget"
        record["epochs"] = {"value": "at train time", "why": why}
    return target_classes(choose_net(cfg, record)), record


# the 3-D net that trains where the default 2-D one was left in place
NET_FOR_3D = {"unet": "unet3d", "nested": "nested3d"}


def arch_given() -> bool:
    """Whether this command named `arch` (`arch=...` on the command line, or an experiment
    config that sets it); False outside a Hydra command (a composed config in a test)."""
    if not HydraConfig.initialized():
        return False
    task = HydraConfig.get().overrides.task
    named = any(o.split("=")[0].lstrip("+~") in ("arch", "experiment") for o in task)
    return named


def choose_net(cfg: DictConfig, record: dict | None) -> DictConfig:
    """The net that trains on the data: 3-D patches (`data.dims=3`) with the default 2-D
    net (`arch` not named on the command line) train the 3-D twin (unet -> unet3d, nested ->
    nested3d, from conf/arch/ with this run's `base_channels`); the plan records why.
    A net the user named is kept (`check_net_fits` then says what contradicts the data)."""
    data = cfg.get("data") or {}
    arch = cfg.get("arch") or {}
    twin = NET_FOR_3D.get(str(arch.get("name")))
    if twin is None or data.get("dims") != 3 or not data.get("volume") or arch_given():
        return cfg
    chosen = OmegaConf.load(Path(CONF_DIR) / "arch" / f"{twin}.yaml")
    paper = OmegaConf.load(Path(CONF_DIR) / "arch" / f"{arch.name}.yaml")
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        if arch.get("base_channels") != paper.get("base_channels"):  # scale=small, or typed
            chosen.base_channels = arch.base_channels
        cfg.arch = chosen
    why = (
        f"3-D patches train a 3-D net: arch={twin} in place of the default arch="
        f"{arch.name} (name arch= to choose another, or data.dims=2 to train slices)"
    )
    log.info("net: %s", why)
    if record is not None:
        record["plan"]["arch"] = {"value": twin, "why": why}
    return cfg


def target_classes(cfg: DictConfig) -> DictConfig:
    """`data.target=instances`: `data.num_classes` and `data.class_names` set to the
    target's three classes (background, interior, boundary), which the net's logits follow
    (`arch.num_classes: ${data.num_classes}`); a semantic target is returned as it is."""
    data = cfg.get("data") or {}
    if data.get("target", "semantic") != "instances":
        return cfg
    names = list(INSTANCE_CLASSES)
    if data.get("num_classes") == len(names) and list(data.get("class_names") or []) == names:
        return cfg
    log.info("data.target=instances: the net learns the classes %s (in place of "
             "data.num_classes=%s, class_names=%s)", names, data.get("num_classes"),
             list(data.get("class_names") or []))  # fmt: skip
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.data.num_classes = len(names)
        cfg.data.class_names = names
    return cfg


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
    (the data contract, the net against it, the loss against the data, the files, the
    `init_from` checkpoint), before anything is written. A single problem is raised as it is.

    Returns:
        The checked data module, to train with (its files are not read again in `setup`).
    """
    problems: list[Exception] = finetune.problems(cfg) + trainer_problems(cfg)
    problems += weight_problems(to_plain(cfg.arch))  # arch.encoder_weights: keys by name
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
        heading = f"{len(problems)} problems, all to fix before training (nothing was written)"
        raise DataProblems(problem_list(heading, problems))
    return datamodule


def trainer_problems(cfg: DictConfig) -> list[Exception]:
    """What is wrong with the keys `build_trainer` applies itself: `trainer.threads`,
    `trainer.budget` and the schedule a budget fits to its steps."""
    problems: list[Exception] = []
    trainer = cfg.get("trainer") or {}
    checks = [lambda: check_threads(trainer.get("threads", "auto"), "trainer.threads")]
    if is_budgeted(cfg):
        checks += [lambda: budget_seconds(cfg),
                   lambda: budget_scheduler(to_plain(cfg.get("scheduler")), 1)]  # fmt: skip
    for check in checks:
        try:
            check()
        except ValueError as err:
            problems.append(err)
    return problems


def build_datamodule(cfg: DictConfig, run_dir: str | Path | RunDir) -> SegDataModule:
    """The data module of `cfg.data`, keeping its split in the run directory's splits file.

    `loss.weight_map` (loss=weighted_ce_dice) asks the data for per-pixel weight maps;
    a valid-convolution net (arch=unet_valid) for context around each training patch.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    weight_map = to_plain((cfg.get("loss") or {}).get("weight_map"))
    if is_volume_config(to_plain(cfg.data)):
        return VolumeDataModule(
            **to_plain(cfg.data), splits_path=str(run.splits_path), seed=cfg.seed,
            weight_map=weight_map, context=context_margin(to_plain(cfg.arch)),
        )  # fmt: skip
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
    freq = None
    if loss.get("class_weights") == "rare":
        rare = cfg.data.get("rare_classes") if "data" in cfg else None
        loss["class_weights"] = None
        if rare and datamodule is not None and not is_volume_config(to_plain(cfg.data)):
            said = rare_subject(list(rare), contract.class_names)
            freq = datamodule.class_frequencies()
            absent = [int(c) for c in (freq == 0).nonzero()[0]]
            if absent:  # a default, not the user's choice: train unweighted rather than refuse
                missing = rare_subject(absent, contract.class_names)
                log.warning("%s rare (data.rare_classes), but %s never in the training "
                            "masks: the cross-entropy is not weighed (loss.class_weights=rare)",
                            said, missing)  # fmt: skip
            else:
                log.info("%s rare (data.rare_classes): loss.class_weights=rare", said)
                loss["class_weights"] = "auto"
    if loss.get("class_weights") == "auto":
        if datamodule is None:
            raise ValueError("loss.class_weights=auto needs the data to count class frequencies")
        freq = datamodule.class_frequencies() if freq is None else freq
        if (freq == 0).any():
            raise ValueError(
                f"loss.class_weights=auto: classes {[int(c) for c in (freq == 0).nonzero()[0]]} "
                "never occur in the training masks; give the weights explicitly"
            )
        loss["class_weights"] = median_frequency_weights(freq)
        log.info("class weights (median frequency balancing): %s",
                 ", ".join(f"{w:.3g}" for w in loss["class_weights"]))  # fmt: skip
    scheduler = to_plain(cfg.get("scheduler"))
    if is_budgeted(cfg):  # the schedule follows the steps the budget allows
        scheduler = budget_scheduler(scheduler, initial_steps=10**6)
    return SegModule(
        arch=to_plain(cfg.arch),
        loss=loss,
        optimizer=to_plain(cfg.optimizer),
        scheduler=scheduler,
        data=contract.to_dict(),
    )


def build_trainer(cfg: DictConfig, run: RunDir, started: float | None = None) -> pl.Trainer:
    """The Trainer of `cfg.trainer` with the configured loggers and callbacks, plus
    graceful stops (SIGTERM, Ctrl+C: save `last.ckpt`) and atomic checkpoint writes.

    With `trainer.budget` the run trains until its time budget (counted from `started`,
    a `time.monotonic()` value) is used up instead of for `trainer.max_epochs`.
    """
    silence_known_noise()
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values()]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if not loggers:  # nothing to log the learning rate to (it refuses to run without)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks = [c for c in callbacks if c is not None and not (isinstance(c, EMA) and not c.decay)]
    trainer, threads = thread_count(cpu_safe(cfg.trainer))
    trainer = gpu_settings(resolve_precision(trainer))
    callbacks += [GracefulStop(run.last), EpochLog(), LogInterval(), threads]
    seconds = budget_seconds(cfg)
    with open_dict(trainer):
        trainer.pop("budget", None)
        if seconds is not None:  # the budget decides when to stop
            trainer.max_epochs, trainer.max_steps, trainer.max_time = -1, -1, None
            callbacks.append(TimeBudget(seconds, started, bool(cfg.get("final_eval", True))))
    built = instantiate(
        trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    threads.start(ranks=built.num_devices)  # the processes of this run on this node share
    return built


def thread_count(trainer: DictConfig) -> tuple[DictConfig, ThreadCount]:
    """`trainer` without `trainer.threads` (no Trainer argument), and the callback that sets
    torch's CPU threads from it (`auto`: the free cores this process may use, decided again
    each epoch; fixed for `trainer.deterministic`; see `unet_seg.threads`). The threads are
    set by its `start`, once the Trainer knows how many processes share the node."""
    trainer = copy.deepcopy(trainer)
    with open_dict(trainer):
        setting = trainer.pop("threads", "auto")
    fixed = str(trainer.get("deterministic", False)).lower() not in ("false", "none", "0")
    return trainer, ThreadCount(setting, fixed=fixed)


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


def native_bf16(device: str) -> str | None:
    """What makes `device` (`cpu` or `cuda`) compute bfloat16 natively, or None when it would
    be emulated (slower than float32): AMX or AVX512-BF16 on a CPU (oneDNN's bfloat16
    convolutions use them), a GPU from Ampere on."""
    if device == "cuda":
        return "a GPU with bfloat16" if torch.cuda.is_bf16_supported(False) else None
    probes = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    for name, probe in probes:
        if getattr(torch.cpu, probe, lambda: False)():  # private probes of torch.cpu
            return name
    return None


def resolve_precision(trainer: DictConfig) -> DictConfig:
    """`trainer` with `precision: auto` decided and logged: bf16-mixed (bfloat16 autocast,
    weights and loss in float32) where the device computes bfloat16 natively, 32-true where
    it does not. On this project's CPU (AMX) bf16-mixed with channels-last made the 16-channel
    U-Net's training step 2.6x faster than float32 at 256 px (docs/performance.md)."""
    if str(trainer.get("precision")) != "auto":
        return trainer
    device = "cuda" if _uses_gpu(trainer) else "cpu"
    why = native_bf16(device)
    trainer = copy.deepcopy(trainer)
    with open_dict(trainer):
        trainer.precision = "bf16-mixed" if why else "32-true"
    where = "GPU" if device == "cuda" else "CPU"
    log.info(
        "trainer.precision=auto: %s (%s; trainer.precision=32-true for full float32)",
        trainer.precision,
        f"this {where} computes bfloat16 natively: {why}"
        if why
        else f"this {where} has no native bfloat16, which would run slower than float32",
    )
    return trainer


def gpu_settings(trainer: DictConfig) -> DictConfig:
    """`trainer` without `matmul_precision`, which a GPU run applies: float32 matmuls in TF32
    (`high`, Ampere and later) or full float32 (`highest`). bf16-mixed on a GPU without
    bfloat16 (before Ampere) falls back to 16-mixed, said in the log."""
    trainer = copy.deepcopy(trainer)
    with open_dict(trainer):
        matmul = trainer.pop("matmul_precision", None)
    if matmul not in (None, "highest", "high", "medium"):
        raise ValueError(f"trainer.matmul_precision={matmul!r}: choose highest, high or medium")
    if not _uses_gpu(trainer):
        return trainer
    if matmul:
        torch.set_float32_matmul_precision(str(matmul))
    precision = str(trainer.get("precision"))
    if precision.startswith("bf16") and not torch.cuda.is_bf16_supported(including_emulation=False):
        log.warning("trainer.precision=%s: this GPU has no bfloat16, using 16-mixed", precision)
        with open_dict(trainer):
            trainer.precision = "16-mixed"
    return trainer
