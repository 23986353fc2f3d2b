"""Config helpers shared by the entry points: resolvers, allowed targets, plain containers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
"""The `conf/` folder of this checkout (absolute, so entry points work however launched)."""


def _resume_or(resume: str | None, fresh: str) -> str:
    """Hydra's run directory: the resumed run's own directory, or a fresh one."""
    return str(resume) if resume else fresh


def _unless_resume(resume: str | None, value: str) -> str | None:
    """`value` for a fresh run, None when resuming (keeps the run's original `.hydra/`)."""
    return None if resume else value


def _optuna_storage(sweep_dir: str) -> str:
    """The SQLite URL of the Optuna study kept in `sweep_dir` (created if need be)."""
    path = Path(sweep_dir).resolve() / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _optuna_done(sweep_dir: str, study_name: str) -> int:
    """Trials the Optuna study in `sweep_dir` has completed (0 when there is none yet)."""
    path = Path(sweep_dir).resolve() / "optuna.db"
    if not path.is_file():
        return 0
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{path}")
    except KeyError:  # no study of that name yet
        return 0
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def _optuna_trials_left(sweep_dir: str, study_name: str, n_trials: int) -> int:
    """`n_trials` less the trials already completed: re-running an interrupted search
    runs only what is missing."""
    done = _optuna_done(sweep_dir, study_name)
    if done:
        log.info("Optuna study %r in %s: %d trial(s) done of %s", study_name, sweep_dir, done,
                 n_trials)  # fmt: skip
    return max(0, int(n_trials) - done)


def _optuna_seed(sweep_dir: str, study_name: str, seed: int) -> int:
    """The sampler's seed, moved on by the trials done, so a resumed search does not
    propose the same first points again."""
    return int(seed) + _optuna_done(sweep_dir, study_name)


def register_resolvers() -> None:
    """Register the project's OmegaConf resolvers (idempotent)."""
    resolvers = {
        "resume_or": _resume_or,
        "unless_resume": _unless_resume,
        "optuna_storage": _optuna_storage,
        "optuna_trials_left": _optuna_trials_left,
        "optuna_seed": _optuna_seed,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


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


def cli_value(value: object) -> str:
    """A value as it is typed on a Hydra command line: booleans `true`/`false`, `null`,
    lists and dicts in brackets and braces, quoted for the shell when they hold spaces,
    brackets, braces, commas or colons (`data.mask_values='[0, 255]'`)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list | tuple | dict):
        text = json.dumps(list(value) if isinstance(value, tuple) else value).replace('"', "")
    else:
        text = str(value)
    return f"'{text}'" if any(c in text for c in " {}[],:") else text
