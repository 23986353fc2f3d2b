"""Sweeps: an Optuna search that resumes where it stopped, and the parallel joblib launcher."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from tests.forked import Forker
from unet_seg.report import report

pytestmark = pytest.mark.slow

TINY = ["data.synthetic.num_images=12", "data.synthetic.size=64", "data.crop_size=48",
        "data.batch_size=4", "arch.base_channels=4", "trainer.max_epochs=1"]  # fmt: skip


def train_cli(forker: Forker, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m unet_seg.train -m ...` as a fork of the session's fork server."""
    proc = forker.run(["-m", "unet_seg.train", "-m", *TINY, f"data.root={cwd / 'data'}", *args],
                      cwd=cwd, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="hparams_search=optuna needs the sweep extra (pip install -e '.[sweep]'): the Optuna "
    "sweeper plugin pins Optuna 2, so '.[dev]' leaves it out",
)
def test_optuna_search_resumes_where_it_stopped(tmp_path: Path, forker: Forker) -> None:
    import optuna

    sweep = tmp_path / "sweep"
    common = ["hparams_search=optuna", f"hydra.sweep.dir={sweep}"]
    train_cli(forker, *common, "optuna_trials=2", cwd=tmp_path)
    study = optuna.load_study(study_name="unet_seg", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    first = [t.params for t in study.trials]

    train_cli(forker, *common, "optuna_trials=3", cwd=tmp_path)  # as after an interruption
    study = optuna.load_study(study_name="unet_seg", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert len(study.trials) == 3  # one more, not three more
    assert study.trials[2].params not in first  # a new point, not the first one again
    values = [t.value for t in study.trials]
    assert all(0 <= v <= 1 for v in values)  # val/dice of each trial
    assert len(list(sweep.glob("trial_*/metrics.json"))) == 3  # no trial overwrote another
    result = report([sweep], tmp_path / "report")
    assert sum(g["n"] for g in result["groups"]) == 3


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path: Path, forker: Forker) -> None:
    sweep = tmp_path / "sweep"
    train_cli(forker, "hydra=joblib", f"hydra.sweep.dir={sweep}", "optimizer=adam,sgd",
              "final_eval=false", cwd=tmp_path)  # fmt: skip
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert all((sweep / j / "checkpoints" / "last.ckpt").is_file() for j in ("0", "1"))


def test_cross_validation_folds_and_their_ensemble(tmp_path: Path, forker: Forker) -> None:
    import json

    from unet_seg.ensemble import ensemble

    sweep = tmp_path / "cv"
    train_cli(forker, f"hydra.sweep.dir={sweep}", "data.num_folds=2", "data.fold=0,1",
              "data.test_fraction=0.25", "trainer.max_epochs=2", cwd=tmp_path)  # fmt: skip
    result = ensemble([sweep])
    assert result["images"] == 3 and len(result["models"]) == 2
    for model in result["models"]:  # each fold alone scores as its own final test did
        logged = json.loads((Path(model["run"]) / "metrics.json").read_text())
        assert model["dice"] == pytest.approx(logged["test/dice"], abs=1e-6)
    assert 0 <= result["ensemble"]["dice"] <= 1
    folds = report([sweep], tmp_path / "report")
    assert folds["setting"] == [] and folds["groups"][0]["n"] == 2  # folds are replicates


def test_a_grid_run_again_skips_finished_jobs_and_resumes_the_rest(
    tmp_path: Path, forker: Forker
) -> None:
    import torch

    sweep = tmp_path / "grid"
    args = [f"hydra.sweep.dir={sweep}", "optimizer=adam,sgd", "final_eval=false"]
    train_cli(forker, *args, cwd=tmp_path)
    done = (sweep / "0" / "metrics.json").stat().st_mtime_ns
    (sweep / "1" / "metrics.json").unlink()  # as if job 1 was killed after its last epoch
    steps = torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    train_cli(forker, *args, cwd=tmp_path)  # the same command again
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == done  # kept, not retrained
    assert (sweep / "1" / "metrics.json").is_file()  # finished from its checkpoint
    last = torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == steps  # nothing trained twice
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]


def test_a_run_directory_holding_another_run_is_refused(tmp_path: Path) -> None:
    from tests.conftest import compose_train
    from unet_seg.train import train

    run_dir = tmp_path / "run"
    common = [*TINY, f"data.root={tmp_path / 'data'}", f"run_dir={run_dir}", "final_eval=false"]
    train(compose_train(common))
    with pytest.raises(ValueError, match="already holds a run with another config"):
        train(compose_train([*common, "optimizer=sgd"]))
    assert train(compose_train(common))["epochs"] == 1  # the same config: its metrics back


def test_config_differences_names_keys_and_tolerates_new_options() -> None:
    """A run made before an option existed (absent from its config.yaml, whatever its
    default now: `finetune.pretrained_lr_scale: 1.0`, `callbacks.ema`) is still the same run;
    any value that both sides hold and that differs is named."""
    from unet_seg.run_dir import config_differences

    saved = {"seed": 1, "data": {"root": "d", "fold": 0}, "arch": {"name": "unet"}}
    assert config_differences(saved, {**saved, "data": {**saved["data"],
                                                        "instances_dir": None}}) == []  # fmt: skip
    assert config_differences(saved, {**saved, "data": {"root": "d", "fold": 1}}) == ["data.fold"]
    assert config_differences(saved, {**saved, "data": {**saved["data"], "new": "x"}}) == []
    assert config_differences(saved, {**saved, "finetune": {"pretrained_lr_scale": 1.0}}) == []
    assert config_differences(saved, {"seed": 2, "data": saved["data"], "arch": "unet"}) == [
        "arch", "seed"
    ]  # fmt: skip


def test_a_planned_or_instance_target_run_again_is_the_same_run(tmp_path: Path) -> None:
    """The saved config holds the plan (data=auto) and the target's classes; the command run
    again leaves them to the plan and the target: the same run, not 'another config'."""
    import cv2
    import numpy as np

    from tests.conftest import compose_train
    from unet_seg.data.synthetic import render_sample
    from unet_seg.train import train

    root = tmp_path / "tiles"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(6):
        image, objects = render_sample(np.random.default_rng([5, i]), 48)
        cv2.imwrite(str(root / "images" / f"{i}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{i}.png"), objects.astype(np.uint16))
    tiny = ["arch.base_channels=4", "arch.depth=2", "trainer.max_epochs=1", "final_eval=false",
            "logger=none", "callbacks.validation_images.num_samples=0",
            f"paths.output_dir={tmp_path}"]  # fmt: skip
    for given in (["data=auto", "data.target=instances"],  # planned keys and target classes
                  ["data=folder", "data.mask_format=instances", "data.target=instances",
                   "data.crop_size=32", "data.in_channels=1"]):  # fmt: skip
        run_dir = tmp_path / "_".join(given).replace("=", "-")
        cfg = [*tiny, *given, f"data.root={root}", f"run_dir={run_dir}"]
        first = train(compose_train(cfg))
        assert train(compose_train(cfg)) == first, given  # its metrics back, nothing retrained
