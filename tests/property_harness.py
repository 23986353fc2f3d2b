"""Run `check_data` and a one-step `train data=auto` on a folder, in this process, and judge
whether they agree (tests/test_data_property.py).

Both entry points run through their `@hydra.main` functions with `sys.argv` set, as the
command line runs them; `HYDRA_FULL_ERROR=1` lets an uncaught exception escape, so that it
is seen as the traceback a user would get.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

ONE_STEP = [
    "logger=none", "arch.base_channels=4", "trainer.accelerator=cpu", "trainer.threads=1",
    "trainer.max_epochs=1", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0", "final_eval=false", "data.num_workers=0",
    "callbacks.validation_images.num_samples=1",
]  # fmt: skip
"""Overrides that keep `train` to one training and one validation step, planning untouched."""

FIX_WORDS = ("set data.", "save ", "convert", "remove", "rename", "replace", "flatten", "give ",
             "choose", "use ", "list ", "split ", "add ", "move ", "crop", "resize", "store ",
             "pad", "write ", "fix ", "delete", "provide", "drop", "re-export", "export ",
             "feed ")  # fmt: skip
"""Words a refusal's fix starts with (a message that names no fix has none of them)."""


@dataclass
class Outcome:
    """How one command ended: exit status 0 or 1 (None: an exception escaped), its text."""

    status: int | None
    text: str

    @property
    def traceback(self) -> bool:
        return self.status is None or "Traceback (most recent call last)" in self.text


def run_main(module: str, argv: list[str]) -> Outcome:
    """Run `python -m <module> <argv>` in this process: the exit status and all it printed."""
    import importlib

    main = importlib.import_module(module).main
    out = io.StringIO()
    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [module.rsplit(".", 1)[-1] + ".py", *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    status: int | None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                main()
                status = 0
            except SystemExit as stop:
                status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None
                                                                         else 1)  # fmt: skip
            except Exception:  # noqa: BLE001 - what a user would see as a traceback
                status = None
                out.write(traceback.format_exc())
    finally:
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
        for handler in logging.getLogger().handlers[:]:  # Hydra's handlers hold our buffer
            if getattr(handler, "stream", None) is out:
                logging.getLogger().removeHandler(handler)
    return Outcome(status, out.getvalue())


def check_and_train(root: Path, work: Path, overrides: list[str]) -> tuple[Outcome, Outcome, Path]:
    """`check_data` and a one-step `train` of the folder `root`, both `data=auto`.

    Returns:
        `(check_data's outcome, train's outcome, train's run directory)`.
    """
    common = ["data=auto", f"data.root={root}", *overrides, f"paths.output_dir={work / 'out'}"]
    check = run_main("unet_seg.check_data",
                     [*common, f"hydra.run.dir={work / 'check'}"])  # fmt: skip
    run = work / "run"
    train = run_main("unet_seg.train", [*common, *ONE_STEP, f"hydra.run.dir={run}"])
    return check, train, run


def refusal(text: str) -> str:
    """The refusal in a command's output: from its error line (train), or from the list of
    problems (check_data), to the end."""
    start = max(text.rfind("][ERROR] - "), text.rfind("  problems: "))
    return text[start:] if start >= 0 else ""


def disagreements(root: Path, check: Outcome, train: Outcome, run: Path) -> list[str]:
    """What is wrong with this pair of outcomes (empty when they agree and are clean)."""
    wrong = []
    for name, outcome in (("check_data", check), ("train", train)):
        if outcome.traceback:
            wrong.append(f"{name}: a traceback")
        elif outcome.status not in (0, 1):
            wrong.append(f"{name}: exit status {outcome.status}")
    if wrong:
        return wrong
    if check.status != train.status:
        wrong.append(f"check_data exits {check.status} but train exits {train.status}")
    names = [str(root)] + [p.name for p in root.rglob("*") if p.is_file()]
    for name, outcome in (("check_data", check), ("train", train)):
        if outcome.status == 1:
            said = refusal(outcome.text)
            if not any(n in said for n in names):
                wrong.append(f"{name} refuses without naming a file of the folder: {said!r}")
            if not any(w in said.lower() for w in FIX_WORDS):
                wrong.append(f"{name} refuses without saying the fix: {said!r}")
    if train.status == 1 and run.exists() and any(run.iterdir()):
        wrong.append(f"train refused but left {sorted(p.name for p in run.iterdir())}")
    return wrong
