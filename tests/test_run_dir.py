"""`RunDir`: the one module that names a run's files; resume and continue decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import compose_train
from unet_seg.run_dir import RunDir, find_runs


def test_the_configs_write_where_run_dir_looks(tmp_path: Path) -> None:
    """Checkpoint callbacks and the TensorBoard logger are configured in YAML: they must put
    their files exactly where `RunDir` (resume, evaluate, report) looks for them."""
    cfg = compose_train([f"run_dir={tmp_path}"])
    run = RunDir(cfg.run_dir)
    for key, which in (("model_checkpoint", "best"), ("last_checkpoint", "last")):
        callback = cfg.callbacks[key]
        assert Path(callback.dirpath) / f"{callback.filename}.ckpt" == run.checkpoint(which)
    tb = cfg.logger.tensorboard
    assert Path(tb.save_dir) / tb.name / tb.version == run.tensorboard


def test_paths_state_and_files(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert not run.holds_run and not run.finished
    with pytest.raises(FileNotFoundError, match="is not a unet-seg run directory"):
        run.load_config()
    with pytest.raises(ValueError, match="choose 'best' or 'last'"):
        run.checkpoint("final")
    run.save_config(compose_train([f"run_dir={run}"]))
    assert run.holds_run and run.load_config().run_dir == str(run)
    run.save_splits({"train": ["a.png"], "val": ["b.png"], "test": []})
    assert run.split("val") == ["b.png"]
    with pytest.raises(ValueError, match="the test split is empty"):
        run.split("test")
    run.save_metrics({"checkpoint": "last weights", "val/dice": 0.5})
    assert run.finished and run.load_metrics()["val/dice"] == 0.5
    assert run.scored_checkpoint() == run.last  # the run scored its last weights
    run.save_metrics({"checkpoint": "/moved/elsewhere/checkpoints/best.ckpt"})
    assert run.scored_checkpoint() == run.best  # found in the run, wherever it was trained
    assert RunDir.of_checkpoint(run.best).path == run.path.resolve()
    assert RunDir.of_checkpoint(tmp_path / "loose.ckpt") is None


def test_find_runs_lists_finished_runs_only(tmp_path: Path) -> None:
    for name, finished in (("a", True), ("b", False), ("c/d", True)):
        run = RunDir(tmp_path / name)
        run.save_config(compose_train([f"run_dir={run}"]))
        if finished:
            run.save_metrics({})
    assert [r.path for r in find_runs([tmp_path])] == [tmp_path / "a", tmp_path / "c/d"]
    with pytest.raises(FileNotFoundError, match="no finished runs"):
        find_runs([tmp_path / "b"])
