"""trainer.budget: durations, the fitted learning-rate schedule, the step plan, and a budgeted
run that is killed, resumed, and still ends within its budget."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import compose_train, write_folder
from unet_seg.budget import ProgressLR, TimeBudget, budget_scheduler, parse_duration
from unet_seg.callbacks import StopRequested
from unet_seg.train import TrainingInterrupted, train


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900), ("2h", 7200), ("1h30m", 5400), ("90s", 90), ("45", 45), (120, 120),
     ("1.5h", 5400), ("10min", 600), (" 2m 30s ", 150)],
)  # fmt: skip
def test_parse_duration(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15 minutes", "m", "-5m", "0", "1d"])
def test_parse_duration_refuses_with_the_form(text) -> None:
    with pytest.raises(ValueError, match="trainer.budget"):
        parse_duration(text)


def _rates(scheduler: ProgressLR, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_progress_lr_shapes_reach_their_end_value_at_total_steps() -> None:
    cosine = ProgressLR(_optimizer(), total_steps=10, shape="cosine", eta_min=0.01)
    rates = _rates(cosine, 11)
    assert rates[0] == 1.0 and rates[10] == pytest.approx(0.01)
    assert rates[5] == pytest.approx(0.01 + 0.99 * 0.5)
    assert all(a > b for a, b in zip(rates[:10], rates[1:11], strict=True))
    poly = ProgressLR(_optimizer(), total_steps=10, shape="poly", power=2.0)
    assert _rates(poly, 11)[4] == pytest.approx(0.6**2) and poly.get_last_lr()[0] == 0.0
    warm = ProgressLR(_optimizer(), total_steps=12, shape="cosine", warmup_steps=4)
    assert _rates(warm, 5) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


def test_progress_lr_follows_a_new_total() -> None:
    """A re-planned total moves the schedule; the rate is the new schedule's at this step."""
    scheduler = ProgressLR(_optimizer(), total_steps=100, shape="cosine")
    _rates(scheduler, 50)
    assert scheduler.get_last_lr()[0] == pytest.approx(0.5)
    scheduler.total_steps = 200
    scheduler.set_rates()
    assert scheduler.get_last_lr()[0] == pytest.approx(0.5 * (1 + 2**-0.5))
    assert scheduler.optimizer.param_groups[0]["lr"] == scheduler.get_last_lr()[0]


def test_budget_scheduler_keeps_the_shape_and_refuses_epoch_counts() -> None:
    cosine = {"scheduler": {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
                            "T_max": 20, "eta_min": 1e-6}, "interval": "epoch"}  # fmt: skip
    fitted = budget_scheduler(cosine, 100)
    assert fitted["interval"] == "step"
    assert fitted["scheduler"]["shape"] == "cosine" and fitted["scheduler"]["eta_min"] == 1e-6
    poly = {"scheduler": {"_target_": "torch.optim.lr_scheduler.PolynomialLR", "power": 0.9}}
    assert budget_scheduler(poly, 100)["scheduler"]["power"] == 0.9
    assert budget_scheduler({"scheduler": None}, 100)["scheduler"]["shape"] == "constant"
    for target in ("MultiStepLR", "ReduceLROnPlateau"):
        with pytest.raises(ValueError, match="scheduler=cosine"):
            budget_scheduler({"scheduler": {"_target_": f"torch.optim.lr_scheduler.{target}"}}, 9)


def test_plan_fits_whole_epochs_then_a_part_worth_its_validation() -> None:
    """100 s left, 1 s a step, 10 steps and 5 s of validation an epoch: this epoch (15 s),
    five whole epochs (75 s), then 5 steps and their validation (10 s) = 100 s."""
    assert TimeBudget._fit(100, 10, 10, 1.0, 5.0) == 10 + 50 + 5
    # after this epoch's validation, 90 s: six whole epochs, nothing left for a part
    assert TimeBudget._fit(90, 0, 10, 1.0, 5.0, epoch_ended=True) == 60
    # a part of one step is not worth a validation
    assert TimeBudget._fit(100 - 4, 10, 10, 1.0, 5.0) == 10 + 50
    # too little left for this epoch: stop within it, leaving time to validate
    assert TimeBudget._fit(8, 10, 10, 1.0, 5.0) == 3
    assert TimeBudget._fit(2, 10, 10, 1.0, 5.0) == 0


class Clock:
    """A clock the test moves by hand: the budget's arithmetic without wall time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Ranks:
    """A strategy whose other rank offers `other` steps when the plans are agreed."""

    root_device = torch.device("cpu")

    def __init__(self, other: int) -> None:
        self.other, self.calls, self.interval_calls = other, 0, 0

    def reduce(self, tensor: torch.Tensor, reduce_op: str) -> torch.Tensor:
        if reduce_op == "max":  # the validation interval: the other rank offers 2 epochs
            self.interval_calls += 1
            return torch.maximum(tensor, torch.tensor(2.0, dtype=tensor.dtype))
        assert reduce_op == "min"
        self.calls += 1
        return torch.minimum(tensor, torch.tensor(float(self.other), dtype=tensor.dtype))


def fake_trainer(batches: int, accumulate: int = 1, strategy: Ranks | None = None):
    """The few Trainer attributes `TimeBudget` reads, with a cosine `ProgressLR`."""
    scheduler = ProgressLR(_optimizer(), total_steps=10**6, shape="cosine")
    return SimpleNamespace(
        global_step=0, current_epoch=0, num_training_batches=batches,
        accumulate_grad_batches=accumulate, should_stop=False, sanity_checking=False,
        world_size=1 if strategy is None else 2, strategy=strategy, datamodule=None,
        lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)], callbacks=[],
        check_val_every_n_epoch=1,
    )  # fmt: skip


def drive(budget: TimeBudget, trainer, clock: Clock, batch_s: float, val_s: float,
          load_s: float = 0.0, epoch_start_s: float = 0.0) -> float:  # fmt: skip
    """Run the budget's hooks as Lightning calls them, each micro-batch taking `batch_s` of
    the clock (plus `load_s` waiting for it), each validation `val_s`; return the seconds
    the fit took."""
    start = clock.now
    trainer.validated = []  # the epochs that validated
    budget.on_train_start(trainer, None)
    while not trainer.should_stop:
        assert clock.now - start < 10 * budget.seconds, "the budget never stopped the run"
        budget.on_train_epoch_start(trainer, None)
        clock.now += epoch_start_s  # the loader's start-up
        for i in range(trainer.num_training_batches):
            clock.now += load_s
            budget.on_train_batch_start(trainer, None, None, i)
            clock.now += batch_s
            last = i == trainer.num_training_batches - 1
            stepped = (i + 1) % trainer.accumulate_grad_batches == 0 or last  # Lightning's rule
            if stepped:
                trainer.global_step += 1
                for config in trainer.lr_scheduler_configs:
                    config.scheduler.optimizer.step()
            budget.on_train_batch_end(trainer, None, None, None, i)
            if stepped:  # after the callbacks, as Lightning does
                for config in trainer.lr_scheduler_configs:
                    config.scheduler.step()
            if trainer.should_stop:
                break
        every = trainer.check_val_every_n_epoch  # Lightning's rule: this epoch, or a stop
        if (trainer.current_epoch + 1) % every == 0 or trainer.should_stop:
            budget.on_validation_start(trainer, None)
            clock.now += val_s
            trainer.validated.append(trainer.current_epoch)
            budget.on_validation_end(trainer, None)
        budget.on_train_epoch_end(trainer, None)
        trainer.current_epoch += 1
    return clock.now - start


def test_an_epoch_of_one_batch_stops_within_its_budget() -> None:
    """`data=folder` with at most 4 images: every epoch is one batch, and each batch is the
    first of its epoch (it used to go untimed, and the run never stopped)."""
    clock = Clock()
    budget = TimeBudget(60.0, final_eval=False, clock=clock)
    trainer = fake_trainer(batches=1)
    took = drive(budget, trainer, clock, batch_s=1.0, val_s=0.5, epoch_start_s=0.2)
    assert budget.step_time == pytest.approx(1.0)  # the batch, not the loader's start-up
    assert budget.overhead == pytest.approx(0.2)  # the loader's start-up, per epoch
    assert budget.val_every == 5  # 0.5 s of validation per 1 s epoch: every 5th, a tenth
    assert 55 <= took <= 60 and trainer.global_step == budget.total_steps
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == pytest.approx(0.0)


def test_validation_is_thinned_to_a_tenth_of_the_training_time_and_runs_at_the_stop() -> None:
    """CamVid on one CPU core: 92 steps of 0.35 s an epoch (32 s) and 25 s to validate the
    101 validation images at full size. Validating every epoch would spend 44% of the budget
    on it; the run validates every 8th epoch and where it stops, and still ends in time."""
    clock = Clock()
    budget = TimeBudget(900.0, final_eval=False, clock=clock)
    trainer = fake_trainer(batches=92)
    took = drive(budget, trainer, clock, batch_s=0.35, val_s=25.0)
    assert budget.val_every == 8 and trainer.check_val_every_n_epoch == 1  # reset at the stop
    last = trainer.current_epoch - 1
    assert trainer.validated == [0, 7, 15, last] or trainer.validated == [0, 7, 15, 23]
    assert trainer.validated[-1] == last  # the state it stops with is validated
    assert 840 <= took <= 900
    assert trainer.global_step >= 1.3 * 900 / (92 * 0.35 + 25) * 92  # 30% more steps, at least


def test_a_configured_validation_interval_is_the_least_the_budget_uses() -> None:
    clock = Clock()
    budget = TimeBudget(300.0, final_eval=False, clock=clock)
    trainer = fake_trainer(batches=10)
    trainer.check_val_every_n_epoch = 3  # given; validation is cheap here (0.1 s)
    drive(budget, trainer, clock, batch_s=1.0, val_s=0.1)
    assert budget.val_every == 3 and trainer.validated[:2] == [2, 5]


def test_a_step_of_accumulated_batches_is_timed_whole() -> None:
    """accumulate_grad_batches=4: a step is four micro-batches (and the loading of three of
    them); the plan counts steps, so a step's time is theirs together."""
    clock = Clock()
    budget = TimeBudget(120.0, final_eval=False, clock=clock)
    trainer = fake_trainer(batches=10, accumulate=4)  # steps of 4, 4 and 2 batches
    took = drive(budget, trainer, clock, batch_s=0.2, val_s=1.0, load_s=0.05)
    assert 100 <= took <= 120
    # timed per micro-batch, the first plan was 379 steps for the 101 it got: the schedule
    # then runs at a rate for 3.7 times the run and drops to its end value at the stop.
    # Timed per step it is 166 for 131: the first steps timed are the short ones of 2
    # micro-batches, and thinned validation leaves more steps to misjudge
    assert budget.first_plan <= 1.35 * trainer.global_step
    assert 0.5 <= budget.step_time <= 1.0  # a step of 2 or 4 micro-batches, 0.25 s each
    assert budget._steps_in(trainer) == 3  # the epoch's last batches step too


def test_a_budget_spent_before_any_step_was_timed_stops_at_once() -> None:
    clock = Clock()
    budget = TimeBudget(10.0, started=clock.now - 11, final_eval=False, clock=clock)
    trainer = fake_trainer(batches=50)
    budget.on_train_start(trainer, None)
    budget.on_train_epoch_start(trainer, None)
    budget.on_train_batch_start(trainer, None, None, 0)
    trainer.global_step = 1
    budget.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.should_stop and budget.step_time is None and budget.total_steps == 1


def test_ranks_follow_the_plan_of_fewest_steps() -> None:
    """Under DDP each rank times its own steps: they agree on the smallest plan after every
    step, so all stop at that step with its learning rate."""
    clock = Clock()
    ranks = Ranks(other=40)
    budget = TimeBudget(100.0, final_eval=False, clock=clock)
    trainer = fake_trainer(batches=20, strategy=ranks)
    drive(budget, trainer, clock, batch_s=1.0, val_s=1.0)  # alone it would plan about 90
    assert trainer.global_step == budget.total_steps == 40
    assert ranks.calls == 40 + 2  # after each step and at the end of each epoch
    assert ranks.interval_calls == 2 and budget.val_every == 2  # each validation: the largest
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == 40 and scheduler.get_last_lr()[0] == pytest.approx(0.0)


TINY = [
    "data.synthetic.num_images=24",
    "data.synthetic.size=64",
    "data.crop_size=48",
    "data.batch_size=4",
    "arch.base_channels=4",
    "logger=none",
    "callbacks.validation_images.num_samples=1",
]
BUDGET = 15.0
KILLED_AT = 5.0
"""A third of the budget. (30 s and 10 s gave 1239 steps on a busy 2-core machine, so half
of it still trains hundreds of steps past the `> 50` below.)"""
TOLERANCE = 4.0
"""Seconds a budgeted run may end past its budget here: the last validation after a step
that a slower machine made late, and the process clock's resolution."""


@pytest.mark.slow
def test_killed_budget_run_resumes_and_ends_within_its_budget(tmp_path: Path, monkeypatch):
    """A 15 s budget, killed (as by SIGTERM) after 5 s and resumed: both sessions together
    take at most the budget, the restart and a small tolerance; the rate ends at eta_min."""
    run_dir = tmp_path / "run"
    overrides = [*TINY, f"data.root={tmp_path / 'data'}", f"run_dir={run_dir}",
                 f"trainer.budget={BUDGET:g}s"]  # fmt: skip
    compose_train(overrides)  # composed before the clock starts, as Hydra does
    plain_batch_end = TimeBudget.on_train_batch_end

    def killed_at_5s(self, trainer, *args):
        plain_batch_end(self, trainer, *args)
        if self.spent() > KILLED_AT:
            raise StopRequested(signal.SIGTERM)

    monkeypatch.setattr(TimeBudget, "on_train_batch_end", killed_at_5s)
    start = time.monotonic()
    with pytest.raises(TrainingInterrupted):
        train(compose_train(overrides), started=start)
    first = time.monotonic() - start
    assert KILLED_AT <= first < 2 * KILLED_AT
    monkeypatch.setattr(TimeBudget, "on_train_batch_end", plain_batch_end)

    resumed = [f"resume={run_dir}"]
    restart = time.monotonic()
    metrics = train(compose_train(resumed), overrides=resumed, started=restart)
    second = time.monotonic() - restart
    assert first + second <= BUDGET + TOLERANCE, (first, second)
    assert first + second >= BUDGET * 0.8, "the budget was not used"  # it trained on
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["budget_s"] == BUDGET and saved["budget_steps"] == metrics["global_step"]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == metrics["global_step"] > 50
    lr = last["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr == pytest.approx(1e-6), "the cosine schedule did not end at eta_min"


@pytest.mark.slow
def test_a_folder_of_four_images_trains_to_its_budget(tmp_path: Path, monkeypatch) -> None:
    """Fine-tuning on a few images: one batch an epoch, and the run still ends in time."""
    plain_batch_end = TimeBudget.on_train_batch_end

    def watched(self, trainer, *args):  # a run that never stops fails here, not hangs
        plain_batch_end(self, trainer, *args)
        assert self.spent() < 60, "the budget never stopped the run"

    monkeypatch.setattr(TimeBudget, "on_train_batch_end", watched)
    data = write_folder(tmp_path / "data", n=4)
    cfg = compose_train([
        "data=folder", f"data.root={data}", "data.in_channels=1", "data.crop_size=32",
        "data.batch_size=4", "data.num_workers=0", "data.val_fraction=0.25",
        "data.test_fraction=0", "arch.base_channels=4", "arch.depth=3", "logger=none",
        "callbacks.validation_images.num_samples=0", "trainer.threads=1",
        f"run_dir={tmp_path / 'run'}", "trainer.budget=8s",
    ])  # fmt: skip
    start = time.monotonic()
    metrics = train(cfg, started=start)
    took = time.monotonic() - start
    assert took <= 8 + TOLERANCE, took  # it used to train until killed
    assert metrics["budget_steps"] == metrics["global_step"] == metrics["epochs"] >= 5


def test_bad_threads_budget_and_schedule_are_refused_together_before_a_run(tmp_path: Path):
    """Keys the trainer does not take itself are checked with the data, before anything
    is written, all at once."""
    data = write_folder(tmp_path / "data", n=4)
    run_dir = tmp_path / "run"
    cfg = compose_train(["data=folder", f"data.root={data}", "data.in_channels=1",
                         "data.crop_size=32", f"run_dir={run_dir}", "trainer.threads=many",
                         "trainer.budget=forever", "scheduler=plateau"])  # fmt: skip
    with pytest.raises(ValueError) as refused:
        train(cfg)
    message = str(refused.value)
    assert "3 problems" in message and "trainer.threads='many'" in message
    assert "trainer.budget='forever'" in message and "scheduler=cosine" in message
    assert not (run_dir / "config.yaml").exists()


def test_the_epoch_line_says_which_epoch_repeated_validation_figures_are_from(caplog) -> None:
    """With validation every n-th epoch the epoch line repeats the last validation's figures,
    marked with its epoch; the epoch that validated shows them unmarked."""
    from unet_seg.callbacks import EpochLog

    log_cb = EpochLog()
    log_cb.start = 0.0
    trainer = SimpleNamespace(
        is_global_zero=True, current_epoch=0, max_epochs=3, global_step=10, callbacks=[],
        sanity_checking=False, optimizers=[], callback_metrics={"val/loss": torch.tensor(0.5)},
    )  # fmt: skip
    module = SimpleNamespace(epoch_train_loss=lambda: 0.7)
    with caplog.at_level("INFO", logger="unet_seg.epochs"):
        log_cb.on_validation_end(trainer, module)
        log_cb.on_train_epoch_end(trainer, module)
        trainer.current_epoch = 1  # no validation in this one
        log_cb.on_train_epoch_end(trainer, module)
    first, second = (r.getMessage() for r in caplog.records if r.name == "unet_seg.epochs")
    assert "val loss 0.5000 |" in first and "val loss 0.5000 (epoch 1) |" in second


def test_the_epoch_line_marks_a_budgets_epoch_count_as_an_estimate(caplog, monkeypatch) -> None:
    """Under trainer.budget the epochs are re-planned from each epoch's pace: `epoch 6/~25`,
    not a count that seems to jump; a run of max_epochs says `epoch 6/20`."""
    import unet_seg.callbacks as callbacks

    log_cb = callbacks.EpochLog()
    log_cb.start = 0.0
    trainer = SimpleNamespace(
        is_global_zero=True, current_epoch=5, max_epochs=20, global_step=60, callbacks=[],
        sanity_checking=False, optimizers=[], callback_metrics={},
    )  # fmt: skip
    module = SimpleNamespace(epoch_train_loss=lambda: 0.7)
    with caplog.at_level("INFO", logger="unet_seg.epochs"):
        log_cb.on_train_epoch_end(trainer, module)
        budget = SimpleNamespace(planned_epochs=lambda _: 25, left=lambda: 120.0)
        monkeypatch.setattr(callbacks, "find_budget", lambda _: budget)
        log_cb.on_train_epoch_end(trainer, module)
    plain, budgeted = (r.getMessage() for r in caplog.records if r.name == "unet_seg.epochs")
    assert plain.startswith("epoch 6/20 | step 60 |")
    assert budgeted.startswith("epoch 6/~25 | step 60 |") and "about 2m00s left" in budgeted
