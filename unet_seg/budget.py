"""Train to a wall-clock budget: `trainer.budget=15m`.

The run measures its own speed (seconds per training step, and per epoch the
time of validation, checkpoints and loader start-up) and sizes the total number
of steps so that the whole run, the final evaluation included, ends within the
budget. The learning-rate schedule (`ProgressLR`: cosine or polynomial decay,
optional linear warm-up) follows the share of those steps done, so the rate
reaches its end value when the budget runs out. The plan is re-made after every
step from the latest measurements: a machine that slows down gets fewer steps.

A step is an optimizer step: with `trainer.accumulate_grad_batches` its time is
that of all its micro-batches. An epoch of one batch is timed too (the batch from its
start; the loader's start-up counts in the epoch's overhead). Under DDP the ranks agree
on the plan after every step (the smallest of their plans), so all of them stop at the
same step with the same learning rate.

Validation is thinned to fit the budget: once a validation pass and the steps are
timed, the run validates every n-th epoch, n chosen so that validation takes about
`VAL_SHARE` (a tenth) of the training time (`trainer.check_val_every_n_epoch`, as configured
or larger), and always validates where it stops, so that `best.ckpt` can be the last state.
On a small CPU a validation pass over full images can cost as much as an epoch of patches
(CamVid: 25 s against 30 s): validating every epoch would spend half the budget on it.

A run stops at a step boundary; Lightning then validates and saves `last.ckpt`,
so the budget is overrun by at most that validation when the measurements were
wrong. The time already spent is saved in every checkpoint: `resume=RUN`
continues with the budget that is left.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

log = logging.getLogger(__name__)

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(value: str | float | int) -> float:
    """Seconds in `value`: a number of seconds, or text such as `15m`, `2h`, `1h30m`, `90s`."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        match = _DURATION.match(text) if text else None
        if text.replace(".", "", 1).isdigit():
            seconds = float(text)
        elif match and any(match.groups()):
            hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
            seconds = hours * 3600 + minutes * 60 + secs
        else:
            raise ValueError(
                f"trainer.budget={value!r} is not a duration: write e.g. 15m, 2h, 1h30m or 90s"
            )
    if not seconds > 0:
        raise ValueError(f"trainer.budget={value!r}: a budget must be longer than 0 seconds")
    return seconds


def budget_seconds(cfg: Mapping) -> float | None:
    """`trainer.budget` of a config in seconds, or None when the run trains for
    `trainer.max_epochs`: the one test of "is this run budgeted"."""
    budget = (cfg.get("trainer") or {}).get("budget")
    return None if budget is None else parse_duration(budget)


def is_budgeted(cfg: Mapping) -> bool:
    """Whether a config trains to `trainer.budget` (its value is not checked here)."""
    return (cfg.get("trainer") or {}).get("budget") is not None


def find_budget(trainer: pl.Trainer) -> TimeBudget | None:
    """The `TimeBudget` callback of a trainer, or None for a run of `trainer.max_epochs`."""
    return next((c for c in trainer.callbacks if isinstance(c, TimeBudget)), None)


class ProgressLR(LRScheduler):
    """A learning rate that follows the share of training done, `step / total_steps`.

    `total_steps` may change while training (the time budget re-plans it); the
    rate is always the schedule's value at the current share, and stays at its
    end value past the end. Stepped once per optimizer step.

    Args:
        shape: `cosine` (to `eta_min`), `poly` (`(1 - share) ** power`, to 0) or `constant`.
        total_steps: the planned number of optimizer steps.
        warmup_steps: linear warm-up from 0 over these first steps.
    """

    SHAPES = ("cosine", "poly", "constant")

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        shape: str = "cosine",
        eta_min: float = 0.0,
        power: float = 0.9,
        warmup_steps: int = 0,
        last_epoch: int = -1,
    ) -> None:
        if shape not in self.SHAPES:
            raise ValueError(f"ProgressLR shape={shape!r}: choose one of {self.SHAPES}")
        self.total_steps = max(1, int(total_steps))
        self.shape, self.eta_min, self.power = shape, eta_min, power
        self.warmup_steps = int(warmup_steps)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The share of the base rate (cosine: before `eta_min` is added) at `step`."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        share = min(1.0, (step - self.warmup_steps) / span)
        if self.shape == "cosine":
            return 0.5 * (1 + math.cos(math.pi * share))
        if self.shape == "poly":
            return (1 - share) ** self.power
        return 1.0

    def set_rates(self) -> None:
        """Apply the rate of the current step again (after `total_steps` changed)."""
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        if self.shape == "cosine" and self.last_epoch >= self.warmup_steps:
            return [self.eta_min + (base - self.eta_min) * f for base in self.base_lrs]
        return [base * f for base in self.base_lrs]


def budget_scheduler(scheduler: dict | None, initial_steps: int) -> dict:
    """The scheduler config of a budgeted run: the configured schedule's shape as a
    `ProgressLR` stepped per optimizer step (cosine keeps `eta_min`, poly its power; no
    scheduler is a constant rate). A schedule counted in epochs cannot be fitted to a
    budget, nor one that reacts to a metric, and is refused."""
    inner = (scheduler or {}).get("scheduler") or {}
    target = str(inner.get("_target_", "")).rsplit(".", 1)[-1]
    fitted = {"_target_": f"{__name__}.ProgressLR", "_partial_": True,
              "total_steps": int(initial_steps)}  # fmt: skip
    if not target:
        fitted["shape"] = "constant"
    elif target in ("CosineAnnealingLR", "ProgressLR") and inner.get("shape", "cosine") == "cosine":
        fitted.update(shape="cosine", eta_min=float(inner.get("eta_min", 0.0)))
    elif target in ("PolynomialLR", "ProgressLR") and inner.get("shape", "poly") == "poly":
        fitted.update(shape="poly", power=float(inner.get("power", 1.0)))
    else:
        raise ValueError(
            f"trainer.budget fits the learning-rate schedule to the time, which {target} cannot "
            "follow (it counts epochs or watches a metric): use scheduler=cosine, "
            "scheduler=poly or scheduler=none with a budget, or drop trainer.budget"
        )
    if inner.get("warmup_steps"):
        fitted["warmup_steps"] = int(inner["warmup_steps"])
    return {"scheduler": fitted, "interval": "step", "monitor": None}


class TimeBudget(pl.Callback):
    """Stop training so that the run, its final evaluation included, ends within `seconds`.

    Args:
        seconds: the budget.
        started: `clock()` when the run began (planning and data checks count).
        final_eval: whether a final evaluation of validation and test follows the fit.
        clock: seconds of a monotonic clock (tests drive their own).
    """

    SKIP_STEPS = 2
    """Steps at the start of each fit not timed (warm-up of allocators and loaders)."""

    NO_PLAN = 2**52
    """The plan a rank without timings yet offers when the ranks agree (no limit)."""

    VAL_SHARE = 0.1
    """Validation's share of the training time that sets how often a budgeted run validates."""

    def __init__(
        self,
        seconds: float,
        started: float | None = None,
        final_eval: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = float(seconds)
        self.clock = clock
        self.started = clock() if started is None else started
        self.final_eval = final_eval
        self.spent_before = 0.0  # seconds spent by earlier sessions of a resumed run
        self.step_time: float | None = None  # seconds per optimizer step (moving average)
        self.overhead: float | None = None  # seconds per epoch besides its steps
        self.val_time: float | None = None  # seconds of one validation pass
        self.val_every: int | None = None  # validate every n-th epoch (None: as configured)
        self._configured_every: int | None = None  # trainer.check_val_every_n_epoch given
        self._validated = False  # the epoch in progress has validated
        self.total_steps: int | None = None
        self.first_plan: int | None = None  # the steps of the first plan made from timings
        self._batch_start = 0.0
        self._last_batch_end: float | None = None
        self._last_step: int | None = None  # global_step after the last optimizer step
        self._step_so_far = 0.0  # time of the micro-batches of the step in progress
        self._epoch_start = 0.0
        self._epoch_step_time = 0.0
        self._timed = 0
        self._val_start = 0.0
        self._epoch_steps = 0
        self._epoch_ended = False
        self._announced = False
        self._fitted = False
        self._stopping = False

    @property
    def state_key(self) -> str:
        return "TimeBudget"

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "spent": self.spent(), "step_time": self.step_time,
                "overhead": self.overhead, "val_time": self.val_time,
                "val_every": self.val_every, "total_steps": self.total_steps}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._fitted:  # the final evaluation loads a checkpoint: the clock runs on
            return
        self.spent_before = float(state.get("spent", 0.0))
        self.step_time = state.get("step_time")
        self.overhead = state.get("overhead")
        self.val_time = state.get("val_time")
        self.val_every = state.get("val_every")
        self.total_steps = state.get("total_steps")

    def spent(self) -> float:
        """Seconds of the budget used so far, earlier sessions of a resumed run included."""
        return self.spent_before + self.clock() - self.started

    def left(self) -> float:
        return self.seconds - self.spent()

    # -- measuring ---------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self.clock()  # a resumed run may start within an epoch
        self._last_step = trainer.global_step
        self._configured_every = trainer.check_val_every_n_epoch
        if self.val_every is not None and self._configured_every is not None:  # resumed
            trainer.check_val_every_n_epoch = max(self._configured_every, self.val_every)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = self.clock()
        if self._epoch_ended:  # the last epoch's time besides its timed steps and validation:
            # loader start-up, checkpoints (the last one is written after on_train_epoch_end)
            val = self.val_time if self._validated and self.val_time is not None else 0.0
            self.overhead = max(0.0, now - self._epoch_start - self._epoch_step_time - val)
        self._validated = False
        self._epoch_start = now
        self._epoch_step_time = 0.0
        self._last_batch_end = None  # the first batch of an epoch waits for the loader
        self._epoch_steps = 0
        self._epoch_ended = False

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._batch_start = self.clock()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        now = self.clock()
        # a batch takes from the end of the one before (its loading included); the first of
        # an epoch from its own start (the loader's start-up counts in the epoch's overhead)
        since = self._batch_start if self._last_batch_end is None else self._last_batch_end
        self._last_batch_end = now
        self._step_so_far += now - since
        self._epoch_step_time += now - since
        if trainer.global_step == self._last_step:  # a micro-batch of a step in progress
            return
        self._last_step = trainer.global_step
        dt, self._step_so_far = self._step_so_far, 0.0
        self._epoch_steps += 1
        self._timed += 1
        if self._timed > self.SKIP_STEPS:
            alpha = 0.2 if self.step_time is not None else 1.0
            self.step_time = (
                dt if self.step_time is None else ((1 - alpha) * self.step_time + alpha * dt)
            )
        self._check(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = self.clock()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._fitted:
            return
        self.val_time = self.clock() - self._val_start
        self._validated = True
        self._thin_validation(trainer)

    def _thin_validation(self, trainer: pl.Trainer) -> None:
        """Validate every n-th epoch, n such that validation costs about `VAL_SHARE` of the
        training time (never more often than configured; every process alike under DDP)."""
        per_epoch = self._steps_in(trainer)
        if self.step_time is None or not per_epoch or self._configured_every is None:
            return
        train = per_epoch * self.step_time
        every = max(self._configured_every, math.ceil(self.val_time / (self.VAL_SHARE * train)))
        if trainer.world_size > 1:  # the ranks' measurements differ: the largest n for all
            offer = torch.tensor(float(every), dtype=torch.float64,
                                 device=trainer.strategy.root_device)  # fmt: skip
            every = int(trainer.strategy.reduce(offer, reduce_op="max").item())
        if every != trainer.check_val_every_n_epoch:
            log.info(
                "time budget: validation takes %.1f s, an epoch's steps %.1f s: validating "
                "every %d epoch(s), and where the run stops", self.val_time, train, every,
            )  # fmt: skip
        self.val_every = every
        trainer.check_val_every_n_epoch = every

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fitted = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_ended = True
        self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        """Plan (once the steps are timed), agree on the plan across ranks, and stop when it
        is reached. A budget spent before any step was timed stops at once."""
        if self.step_time is not None:
            total = self.plan(trainer)
        elif self.left() - self.final_eval_time(trainer) <= 0:
            total = trainer.global_step
        else:
            total = None
        agreed = self.agree(trainer, total)
        if agreed is None:
            return
        if agreed != self.total_steps:  # another rank planned fewer steps: the same rate
            self._set_total(trainer, agreed)
        if agreed <= trainer.global_step:
            self._stop(trainer)

    def agree(self, trainer: pl.Trainer, total: int | None) -> int | None:
        """The plan all ranks follow: the fewest steps any of them planned (None: no rank has
        a plan yet). Every rank calls it at the same step, so they stop together with the
        same learning rate."""
        if trainer.world_size <= 1:
            return total
        offer = torch.tensor(float(self.NO_PLAN if total is None else total),
                             dtype=torch.float64, device=trainer.strategy.root_device)  # fmt: skip
        agreed = int(trainer.strategy.reduce(offer, reduce_op="min").item())
        return None if agreed >= self.NO_PLAN else agreed

    def _stop(self, trainer: pl.Trainer) -> None:
        """End training at this step (Lightning validates and saves first), the learning rate
        at its end value."""
        trainer.should_stop = True
        self._stopping = True
        if trainer.check_val_every_n_epoch is not None:
            trainer.check_val_every_n_epoch = 1  # validate where it stops (best.ckpt)
        self._set_total(trainer, trainer.global_step)
        for config in trainer.lr_scheduler_configs:  # the rate the checkpoint resumes with
            if isinstance(config.scheduler, ProgressLR):
                config.scheduler.set_rates()

    # -- planning ----------------------------------------------------------------------------

    @staticmethod
    def _steps_in(trainer: pl.Trainer) -> int | None:
        batches = trainer.num_training_batches
        if batches == float("inf"):  # an iterable dataset without a length
            return None
        per_step = max(1, trainer.accumulate_grad_batches)
        return max(1, math.ceil(int(batches) / per_step))  # the last batch always steps

    def final_eval_time(self, trainer: pl.Trainer) -> float:
        """Seconds the final evaluation will take: a validation pass per split it scores."""
        if not self.final_eval:
            return 0.0
        val = self.val_time if self.val_time is not None else self._guess_overhead(trainer)
        splits = getattr(trainer.datamodule, "splits", None) or {}
        n_val = len(splits.get("val") or []) or 1
        n_test = len(splits.get("test") or [])
        return 1.2 * val * (1 + n_test / n_val) + 2.0

    def _guess_overhead(self, trainer: pl.Trainer) -> float:
        """Before an epoch's overhead is measured: its validation and two steps' time for the
        loader and checkpoints; before a validation: a quarter of an epoch's steps."""
        step = self.step_time or 0.0
        if self.val_time is not None:
            return self.val_time + 2 * step
        return 0.25 * (self._steps_in(trainer) or 1) * step

    def plan(self, trainer: pl.Trainer) -> int:
        """Set `total_steps` to the most steps that fit in the time left; return it."""
        if self._stopping:
            return self.total_steps
        per_epoch = self._steps_in(trainer)
        step_time = max(self.step_time or 0.0, 1e-6)
        left = self.left() - self.final_eval_time(trainer)
        if self.overhead is None:
            overhead = self._guess_overhead(trainer)
        else:  # the epochs' own overhead, and their share of validation
            every = trainer.check_val_every_n_epoch or 1
            overhead = self.overhead + (self.val_time or 0.0) / every
            if every > 1:  # and the validation where it stops
                left -= self.val_time or 0.0
        now = trainer.global_step
        if per_epoch is None:  # an endless loader: steps only, one validation at the end
            total = now + max(0, math.floor((left - overhead) / step_time))
        else:
            done = min(per_epoch, self._epoch_steps)
            total = now + self._fit(left, per_epoch - done, per_epoch, step_time, overhead,
                                    epoch_ended=self._epoch_ended)  # fmt: skip
        self._set_total(trainer, max(total, now))
        return self.total_steps

    @staticmethod
    def _fit(
        left: float,
        in_epoch: int,
        per_epoch: int,
        step: float,
        overhead: float,
        epoch_ended: bool = False,
    ) -> int:
        """Steps that fit in `left` seconds: the rest of this epoch (`in_epoch` steps, then its
        validation unless `epoch_ended`), whole epochs, then part of one if it is worth its
        validation (at least a fifth of an epoch)."""
        this_epoch = 0.0 if epoch_ended else in_epoch * step + overhead
        if left < this_epoch:  # stop within this epoch
            return max(0, math.floor((left - overhead) / step))
        left -= this_epoch
        epoch = per_epoch * step + overhead
        whole = math.floor(left / epoch)
        part = math.floor((left - whole * epoch - overhead) / step)
        part = part if part >= per_epoch / 5 else 0
        return (0 if epoch_ended else in_epoch) + whole * per_epoch + min(part, per_epoch - 1)

    def _set_total(self, trainer: pl.Trainer, total: int) -> None:
        self.total_steps = total
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, ProgressLR):
                config.scheduler.total_steps = max(1, total)
        if not self._announced and self._timed > self.SKIP_STEPS + 3:
            self._announced = True
            self.first_plan = total
            per_epoch = self._steps_in(trainer)
            epochs = f" (about {total / per_epoch:.1f} epochs)" if per_epoch else ""
            log.info(
                "time budget %s: %.2f s per step measured, %s left -> %d steps in all%s",
                clock(self.seconds),
                self.step_time,
                clock(self.left()),
                total,
                epochs,
            )

    def planned_epochs(self, trainer: pl.Trainer) -> int | None:
        """Epochs the current plan trains (for the per-epoch log line)."""
        per_epoch = self._steps_in(trainer)
        if self.total_steps is None or not per_epoch:
            return None
        return math.ceil(self.total_steps / per_epoch)


def process_start() -> float:
    """`time.monotonic()` when this process started (Linux), so that a budget given on the
    command line counts the imports too; now where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = float(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic()
    return time.monotonic() - min(max(age, 0.0), 600.0)


def clock(seconds: float) -> str:
    """`1h05m` or `4m09s`: a duration for the log."""
    minutes, secs = divmod(max(0, int(round(seconds))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
