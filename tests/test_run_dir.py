"""`RunDir`: the one module that names a run's files; resume and continue decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import compose_train
from tests.forked import Forker
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


def test_a_refused_run_removes_only_what_it_wrote(tmp_path: Path, forker: Forker) -> None:
    """A command refused before training, pointed at a folder of the user's: Hydra's record and
    the command's log lines go; the user's own files (another log, lines already in
    train.log) stay."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "other.log").write_text("the user's own log\n")
    (folder / "train.log").write_text("an earlier line\n")
    proc = forker.run(
        ["-m", "unet_seg.train", f"hydra.run.dir={folder}",
         "data=folder", f"data.root={tmp_path / 'absent'}"],
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "absent" in proc.stdout + proc.stderr  # the refusal was shown
    assert (folder / "other.log").read_text() == "the user's own log\n"
    assert (folder / "train.log").read_text() == "an earlier line\n"
    assert sorted(p.name for p in folder.iterdir()) == ["other.log", "train.log"]  # no .hydra/

    fresh = tmp_path / "fresh"
    proc = forker.run(
        ["-m", "unet_seg.train", f"hydra.run.dir={fresh}",
         "data=folder", f"data.root={tmp_path / 'absent'}"],
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1 and not fresh.exists()  # a folder of its own: all gone


def test_discard_beside_another_refused_command_in_the_same_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two refused commands started in the same second share Hydra's timestamped folder: the
    second to discard finds the folder, `.hydra/` or its log already gone, or the folder
    still holding the other's files, and is not an error for it (CI saw a FileNotFoundError
    traceback from exactly this)."""
    folder = tmp_path / "2026-12-04_12-11-47"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("a: 1\n")
    (folder / "check_data.log").write_text("refused\n")
    first, second = RunDir(folder), RunDir(folder)
    first.discard(folder / "check_data.log", 0)
    assert not folder.exists()
    second.discard(folder / "check_data.log", 0)  # all gone already: nothing to do
    second.discard(folder / "check_data.log", 8)  # nor when its log was to be cut back

    # the interleaving CI met: the other command empties and removes the folder between
    # this one's look at it and its rmdir
    (folder / ".hydra").mkdir(parents=True)
    rmdir = Path.rmdir

    def the_other_goes_first(self: Path) -> None:
        monkeypatch.setattr(Path, "rmdir", rmdir)
        RunDir(folder).discard(None)
        rmdir(self)

    monkeypatch.setattr(Path, "rmdir", the_other_goes_first)
    RunDir(folder).discard(None)
    assert not folder.exists()

    folder.mkdir()
    (folder / "other.log").write_text("still being written\n")
    RunDir(folder).discard(None)  # the other command's file keeps the folder
    assert (folder / "other.log").read_text() == "still being written\n"

    (folder / "config.yaml").write_text("a: 1\n")  # a started run is never discarded
    with pytest.raises(RuntimeError, match="holds a run"):
        RunDir(folder).discard(None)


def test_a_resumed_run_leaves_no_warning_filter_behind(tmp_path: Path) -> None:
    import warnings

    from unet_seg.train import train

    tiny = ["data.synthetic.num_images=8", "data.synthetic.size=32", "data.crop_size=32",
            "data.batch_size=4", "arch.base_channels=4", "arch.depth=2", "logger=none",
            "trainer.max_epochs=1", "final_eval=false", f"data.root={tmp_path / 'data'}",
            f"run_dir={tmp_path / 'run'}"]  # fmt: skip
    train(compose_train(tiny))
    more = ["trainer.max_epochs=2"]
    assert train(compose_train([f"resume={tmp_path / 'run'}", *more]), more)["epochs"] == 2
    # the resumed run ignored Lightning's "Checkpoint directory ... exists" while it ran only
    assert not [f for f in warnings.filters if f[1] is not None
                and "Checkpoint directory" in f[1].pattern]  # fmt: skip


def test_as_planned_takes_what_the_plan_and_the_target_filled_in() -> None:
    from omegaconf import OmegaConf

    from unet_seg.config import to_plain
    from unet_seg.run_dir import as_planned, config_differences

    names = ["background", "interior", "boundary"]
    saved = {"seed": 1, "arch": {"in_channels": 3, "num_classes": 3},
             "data": {"root": "d", "in_channels": 3, "num_classes": 3, "class_names": names,
                      "target": "instances", "crop_size": 64}}  # fmt: skip
    plan = {"plan": {"in_channels": {"value": 3}, "crop_size": {"value": 64}}}
    current = OmegaConf.create({
        "seed": 1, "arch": {"in_channels": "${data.in_channels}",
                            "num_classes": "${data.num_classes}"},
        "data": {"root": "d", "in_channels": "auto", "num_classes": 2, "class_names": ["a", "b"],
                 "target": "instances", "crop_size": "auto"}})  # fmt: skip
    assert "arch.in_channels" in config_differences(saved, to_plain(current))
    assert config_differences(saved, to_plain(as_planned(current, saved, plan))) == []
    current.data.crop_size = 32  # given now, planned then: another run
    assert config_differences(saved, to_plain(as_planned(current, saved, plan))) == [
        "data.crop_size"
    ]
    current.data.target = "semantic"  # the classes are the command's own again
    assert config_differences(saved, to_plain(as_planned(current, saved, plan))) == [
        "arch.num_classes", "data.class_names", "data.crop_size", "data.num_classes",
        "data.target"]  # fmt: skip
