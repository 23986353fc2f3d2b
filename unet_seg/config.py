"""Config helpers shared by the entry points: resolvers, run directories, saved run configs."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
"""The `conf/` folder of this checkout (absolute, so entry points work however launched)."""


def _resume_or(resume: str | None, fresh: str) -> str:
    """Hydra's run directory: the resumed run's own directory, or a fresh one."""
    return str(resume) if resume else fresh


def _unless_resume(resume: str | None, value: str) -> str | None:
    """`value` for a fresh run, None when resuming (keeps the run's original `.hydra/`)."""
    return None if resume else value


def register_resolvers() -> None:
    """Register the project's OmegaConf resolvers (idempotent)."""
    for name, fn in {"resume_or": _resume_or, "unless_resume": _unless_resume}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def save_run_config(cfg: DictConfig, run_dir: Path) -> Path:
    """Write the resolved config of a run to `run_dir/config.yaml`; return the path."""
    path = Path(run_dir) / RUN_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tmp.replace(path)
    return path


def load_run_config(run_dir: str | Path) -> DictConfig:
    """Read the config a run was started with, with a clear error if it is not a run directory."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {run_dir} is not a unet-seg run directory "
            "(expected the folder `python -m unet_seg.train` wrote, holding config.yaml, "
            "splits.json and checkpoints/)."
        )
    return OmegaConf.load(path)


ALLOWED_TARGET_PREFIXES = ("torch.optim.", "lightning.pytorch.", "unet_seg.")
"""Modules whose callables a config's `_target_` may name (extend this tuple in code)."""


def check_targets(cfg: DictConfig | dict | list, where: str = "") -> None:
    """Refuse any `_target_` outside `ALLOWED_TARGET_PREFIXES`, before anything is built.

    Configs (including a run's saved config.yaml, read on resume) name classes to
    build; this keeps a tampered or mistaken file from calling arbitrary code.
    """
    items = cfg.items() if hasattr(cfg, "items") else enumerate(cfg)
    for key, value in items:
        path = f"{where}.{key}" if where else str(key)
        if key == "_target_" and not str(value).startswith(ALLOWED_TARGET_PREFIXES):
            raise ValueError(
                f"{path}={value!r} is not allowed: targets must start with one of "
                f"{list(ALLOWED_TARGET_PREFIXES)} (see unet_seg.config.ALLOWED_TARGET_PREFIXES)"
            )
        if isinstance(value, dict | list) or OmegaConf.is_config(value):
            check_targets(value, path)


def to_plain(cfg: DictConfig | dict | None) -> dict | None:
    """A resolved config node as plain Python containers (safe to store in a checkpoint)."""
    if cfg is None:
        return None
    if isinstance(cfg, dict):
        return cfg
    return OmegaConf.to_container(cfg, resolve=True)
