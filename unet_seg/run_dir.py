"""The run directory: every file a training run writes, named in this one module.

    outputs/train/<time>/
      config.yaml       the resolved config, as run (resume and evaluate read it)
      .hydra/           Hydra's record of the command
      fingerprint.json  what the data looked like (data=auto: unet_seg.data.fingerprint)
      plan.json         the plan in force: each planned data key, its value and why
      splits.json       which images went to train/val/test
      init.json         init_from=CKPT: the checkpoint a fine-tuning run started from, and
                        which tensors it loaded, reset and froze (unet_seg.finetune)
      encoder_init.json arch.encoder_weights=imagenet|PATH: what the encoder loaded, what was
                        adapted and ignored (unet_seg.models.encoders.weights)
      checkpoints/      best.ckpt, last.ckpt
      tensorboard/      scalars, images, hparams
      metrics.json      final val/test scores (present once the run finished)
      evaluation_<split>.json (+ _per_image.csv, _worst.png): `python -m unet_seg.evaluate`

`resume_config`, `config_differences` and `continue_run` decide how a run directory
that already holds a run is continued.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from unet_seg.budget import is_budgeted
from unet_seg.config import to_plain
from unet_seg.data.dataset import find_pairs
from unet_seg.data.splits import load_splits, save_splits
from unet_seg.files import atomic_write_text, write_json

log = logging.getLogger(__name__)

CONFIG_GROUPS = (
    "data", "arch", "loss", "optimizer", "scheduler", "trainer", "logger", "callbacks", "paths",
    "hydra", "scale", "experiment",
)  # fmt: skip
"""Config groups a run is built from: fixed once it has started."""


class RunDir:
    """The paths of one run and the files in it.

    Args:
        path: the run directory (`run_dir` in the config; it need not exist yet).
    """

    CONFIG = "config.yaml"
    SPLITS = "splits.json"
    METRICS = "metrics.json"
    FINGERPRINT = "fingerprint.json"
    PLAN = "plan.json"
    INIT = "init.json"
    ENCODER_INIT = "encoder_init.json"
    CHECKPOINTS = "checkpoints"
    BEST = "best"
    LAST = "last"
    TENSORBOARD = "tensorboard"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def of_checkpoint(cls, ckpt: str | Path) -> RunDir | None:
        """The run directory a checkpoint sits in (`RUN/checkpoints/x.ckpt`), or None."""
        folder = Path(ckpt).resolve().parent
        run = cls(folder.parent)
        return run if folder.name == cls.CHECKPOINTS and run.holds_run else None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # ---- paths --------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def splits_path(self) -> Path:
        return self.path / self.SPLITS

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def init_path(self) -> Path:
        return self.path / self.INIT

    @property
    def encoder_init_path(self) -> Path:
        return self.path / self.ENCODER_INIT

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    def checkpoint(self, which: str = "best") -> Path:
        """`checkpoints/best.ckpt` or `checkpoints/last.ckpt`."""
        if which not in (self.BEST, self.LAST):
            raise ValueError(f"checkpoint {which!r}: choose {self.BEST!r} or {self.LAST!r}")
        return self.checkpoints / f"{which}.ckpt"

    @property
    def best(self) -> Path:
        return self.checkpoint(self.BEST)

    @property
    def last(self) -> Path:
        return self.checkpoint(self.LAST)

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    def evaluation(self, split: str) -> Path:
        """Where `python -m unet_seg.evaluate run_dir=...` writes its JSON for `split`."""
        return self.path / f"evaluation_{split}.json"

    # ---- state --------------------------------------------------------------------------

    @property
    def holds_run(self) -> bool:
        """Whether a run was started here (its config was saved)."""
        return self.config_path.is_file()

    @property
    def finished(self) -> bool:
        """Whether the run ended and wrote its final metrics."""
        return self.metrics_path.is_file()

    # ---- files --------------------------------------------------------------------------

    HYDRA_FILES = frozenset({"config.yaml", "hydra.yaml", "overrides.yaml"})
    """What Hydra writes in its output subfolder (`.hydra/`)."""

    def discard(self, log_file: str | Path | None = None, log_kept: int = 0) -> None:
        """Remove what a refused command wrote here, and nothing else: Hydra's `.hydra/`
        (when it holds only Hydra's own files) and the command's log `log_file`, cut back to
        its first `log_kept` bytes (what it held before the command) or removed when it held
        nothing; then the directory itself if it is left empty. Refuses a started run."""
        if self.holds_run:
            raise RuntimeError(f"{self} holds a run: it is not discarded")
        # Two refused commands started in the same second share Hydra's timestamped folder
        # and may discard it side by side: whatever the other one removed first is done.
        hydra = self.path / ".hydra"
        try:
            if {p.name for p in hydra.iterdir()} <= self.HYDRA_FILES:
                shutil.rmtree(hydra, ignore_errors=True)
        except FileNotFoundError:
            pass
        log_path = Path(log_file) if log_file else None
        if log_path is not None:
            try:
                if log_kept > 0:
                    with log_path.open("r+b") as handle:
                        handle.truncate(log_kept)
                else:
                    log_path.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
        try:
            self.path.rmdir()  # only when empty
        except FileNotFoundError:
            pass
        except OSError as not_empty:
            if not_empty.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise

    def save_config(self, cfg: DictConfig) -> Path:
        """Write the resolved config atomically; return its path."""
        return atomic_write_text(self.config_path, OmegaConf.to_yaml(cfg, resolve=True))

    def load_config(self) -> DictConfig:
        """The config the run was started with, with a clear error if this is not a run."""
        if not self.holds_run:
            raise FileNotFoundError(
                f"{self.config_path} not found: {self.path} is not a unet-seg run directory "
                f"(expected the folder `python -m unet_seg.train` wrote, holding {self.CONFIG}, "
                f"{self.SPLITS} and {self.CHECKPOINTS}/)."
            )
        return OmegaConf.load(self.config_path)

    def save_splits(self, splits: dict[str, list[str]]) -> None:
        save_splits(splits, self.splits_path)

    def load_splits(self) -> dict[str, list[str]]:
        return load_splits(self.splits_path)

    def split(self, name: str) -> list[str]:
        """The image names of one split, refusing an empty one."""
        names = self.load_splits()[name]
        if not names:
            raise ValueError(
                f"{self.splits_path}: the {name} split is empty; choose split=val or split=train"
            )
        return names

    def load_plan(self) -> dict:
        """plan.json (`save_plan`), or {} for a run that left nothing to the plan."""
        path = self.path / self.PLAN
        return json.loads(path.read_text()) if path.is_file() else {}

    def save_plan(self, record: dict) -> None:
        """Write a plan record (`unet_seg.data.plan.plan_data_config`): the fingerprint to
        fingerprint.json, the planned and given keys to plan.json."""
        write_json(record["fingerprint"], self.path / self.FINGERPRINT)
        write_json({k: v for k, v in record.items() if k != "fingerprint"}, self.path / self.PLAN)

    def save_init(self, record: dict) -> Path:
        """Write what a fine-tuning run took from its `init_from` checkpoint."""
        return write_json(record, self.init_path)

    def save_encoder_init(self, record: dict) -> Path:
        """Write what the encoder loaded from `arch.encoder_weights`."""
        return write_json(record, self.encoder_init_path)

    def load_init(self) -> dict:
        """The record `save_init` wrote, with a clear error when it is missing."""
        if not self.init_path.is_file():
            raise FileNotFoundError(
                f"{self.init_path} not found: {self.path} was started with init_from= but "
                f"lacks its record of the weights it loaded; start a new run instead of "
                f"resuming this one"
            )
        return json.loads(self.init_path.read_text())

    def split_pairs(self, name: str, class_folders: list[str] | None = None) -> list:
        """The (image, mask) paths of one split, found in the run's data folder."""
        data = self.load_config().data
        pairs = find_pairs(data.root, data.images_dir, data.masks_dir,
                           data.get("mask_suffix") or "", class_folders)  # fmt: skip
        by_name = {img.name: (img, mask) for img, mask in pairs}
        names = self.split(name)
        missing = [n for n in names if n not in by_name]
        if missing:
            raise FileNotFoundError(f"{data.root}: split images missing, e.g. {missing[:5]}")
        return [by_name[n] for n in names]

    def save_metrics(self, metrics: dict) -> Path:
        return write_json(metrics, self.metrics_path)

    def load_metrics(self) -> dict:
        return json.loads(self.metrics_path.read_text())

    def scored_checkpoint(self) -> Path:
        """The checkpoint the final metrics came from (best.ckpt, or last.ckpt when the run
        scored its last weights), found in this directory even if the run was moved."""
        recorded = str(self.load_metrics().get("checkpoint", ""))
        path = Path(recorded) if recorded.endswith(".ckpt") else self.last
        return path if path.is_file() else self.checkpoints / path.name


def find_runs(folders: Iterable[str | Path]) -> list[RunDir]:
    """Finished runs (config.yaml + metrics.json) at or below each folder, sorted by path."""
    runs: set[Path] = set()
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder")
        found = [p.parent for p in folder.rglob(RunDir.METRICS) if RunDir(p.parent).holds_run]
        if not found:
            raise FileNotFoundError(
                f"{folder}: no finished runs (folders with {RunDir.CONFIG} and "
                f"{RunDir.METRICS}) below it"
            )
        runs.update(found)
    return [RunDir(p) for p in sorted(runs)]


def resume_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The config a run started with, plus `key=value` overrides (e.g. trainer.max_epochs=50,
    also spelled `+key=value` or `++key=value`).

    Group choices (`arch=nested`) and deletions (`~key`) cannot change on resume: the
    checkpoint holds that net.
    """
    cfg = RunDir(run_dir).load_config()
    budgeted = is_budgeted(cfg)
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+")  # ++key=value and +key=value: ordinary Hydra spellings of a value
        if key == "resume":
            continue
        if key in CONFIG_GROUPS or key.startswith("~") or not value:
            raise ValueError(
                f"cannot apply {override!r} when resuming: the run's config groups are fixed. "
                "Only key=value changes such as trainer.max_epochs=50 are allowed."
            )
        OmegaConf.update(cfg, key, OmegaConf.from_dotlist([f"v={value}"]).v, merge=False)
    if is_budgeted(cfg) != budgeted:
        raise ValueError(
            f"{run_dir} was started {'with' if budgeted else 'without'} trainer.budget, and its "
            "learning-rate schedule counts "
            + ("steps of the budget" if budgeted else "epochs")
            + ": a resumed run keeps that. Change the budget's value, or start a new run."
        )
    _warn_schedule_ends(cfg)
    cfg.resume = str(run_dir)
    return cfg


def _warn_schedule_ends(cfg: DictConfig) -> None:
    """Say so when a resumed run will train past the end of its learning-rate schedule: the
    schedule's length was fixed when the run started (and its state is in the checkpoint),
    so a cosine schedule then climbs back up and a polynomial one stays at zero."""
    scheduler = (cfg.get("scheduler") or {}).get("scheduler") or {}
    length = scheduler.get("T_max", scheduler.get("total_iters"))
    epochs = (cfg.get("trainer") or {}).get("max_epochs")
    if is_budgeted(cfg):  # its schedule follows the budget
        return
    if length is None or epochs is None or int(epochs) <= int(length):
        return
    log.warning(
        "trainer.max_epochs=%s goes past the end of this run's learning-rate schedule (%s, "
        "%s epochs, fixed when the run started and restored from its checkpoint): after epoch "
        "%s a cosine schedule climbs back up and a polynomial one stays at 0. To train longer "
        "with a schedule that fits, start a new run with trainer.max_epochs=%s.",
        epochs, scheduler.get("_target_", "?").rsplit(".", 1)[-1], length, length, epochs,
    )  # fmt: skip


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain configs. A key that one side lacks
    does not count: an option added to unet-seg later (`trainer.budget`, `callbacks.ema`,
    `finetune`) does not make a run made before it "another config"."""
    differ = []
    for key in sorted(set(saved) & set(current), key=str):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differ += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differ.append(f"{prefix}{key}")
    return differ


def as_planned(cfg: DictConfig, saved: dict, plan: dict) -> DictConfig:
    """`cfg` (a command's config) with what a run's start fills in taken from that run's
    saved config `saved` (plain): the data keys `cfg` leaves to the plan (`auto`) that the
    run planned (`plan`, its plan.json), and an instance target's classes
    (`data.num_classes`, `class_names`, set by the target whatever was given). Keys that
    follow these (`arch.in_channels: ${data.in_channels}`) follow them here too."""
    data, before = saved.get("data") or {}, cfg.get("data") or {}
    filled = {k: data[k] for k in (plan.get("plan") or {}) if before.get(k) == "auto" and k in data}
    if data.get("target") == "instances" and before.get("target") == "instances":
        filled.update({k: data[k] for k in ("num_classes", "class_names") if k in data})
    if not filled:
        return cfg
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for key, value in filled.items():
            cfg.data[key] = value
    return cfg


def absolute_init_from(cfg: DictConfig) -> DictConfig:
    """`cfg` with a relative `init_from` resolved against the current directory, so that the
    run's config names the same checkpoint wherever it is resumed from."""
    init_from = cfg.get("init_from")
    if not init_from or Path(str(init_from)).is_absolute():
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.init_from = str(Path(str(init_from)).resolve())
    return cfg


def continue_run(cfg: DictConfig) -> dict | None:
    """For a run directory that already holds a run: its metrics if it finished, else None
    (resume it). A different config there is an error: nothing a user made is overwritten.
    The run's saved config holds its plan (data=auto) and an instance target's classes:
    the command's config takes them from there to be compared (`as_planned`).
    """
    run = RunDir(cfg.run_dir)
    saved = to_plain(absolute_init_from(run.load_config()))  # a run from before: relative
    current = to_plain(as_planned(cfg, saved, run.load_plan()))
    differ = config_differences({**saved, "resume": None}, {**current, "resume": None})
    if differ:
        raise ValueError(
            f"{run} already holds a run with another config ({run.config_path}; "
            f"differs at {', '.join(differ[:5])}): choose another directory (hydra.run.dir / "
            f"hydra.sweep.dir), or continue that run with resume={run}"
        )
    if run.finished:
        log.info("%s already finished: its %s is kept", run, RunDir.METRICS)
        return run.load_metrics()
    log.info("%s holds this run, unfinished: resuming it", run)
    return None


def open_run(
    cfg: DictConfig, overrides: Sequence[str] = ()
) -> tuple[DictConfig, Path | None, dict | None]:
    """Decide what `train(cfg)` does with its run directory.

    Returns:
        `(config to run, checkpoint to resume from or None, metrics or None)`: a fresh
        run; `resume=RUN_DIR` (its config plus `overrides`) from its `last.ckpt`; or,
        for a directory already holding this run (a sweep run again), the metrics it
        finished with, else a resume of it.
    """
    resuming = bool(cfg.get("resume"))
    if resuming:
        cfg = resume_config(cfg.resume, overrides)
    cfg = absolute_init_from(cfg)
    if not resuming and RunDir(cfg.run_dir).holds_run:
        finished = continue_run(cfg)
        if finished is not None:
            return cfg, None, finished
        cfg, resuming = RunDir(cfg.run_dir).load_config(), True
    run = RunDir(cfg.run_dir)
    if resuming and not run.last.is_file():
        log.warning("%s has no checkpoint yet (stopped in epoch 0): starting it over", run)
    return cfg, run.last if resuming and run.last.is_file() else None, None


def hydra_log_file() -> tuple[Path | None, int]:
    """The file Hydra logs this job to (`<job name>.log` in the run directory), or None, and
    its size now: what `RunDir.discard` cuts it back to if the command is refused."""
    handlers = OmegaConf.select(HydraConfig.get(), "job_logging.handlers") or {}
    filename = (handlers.get("file") or {}).get("filename")
    path = Path(filename) if filename else None
    return path, path.stat().st_size if path is not None and path.is_file() else 0
