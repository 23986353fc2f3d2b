"""Train a tiny model, resume it, evaluate it and predict with it: in-process and via the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import compose_train, write_folder
from tests.forked import Forker
from unet_seg.evaluate import evaluate
from unet_seg.predict import predict
from unet_seg.train import train

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]

TINY = [
    "data.synthetic.num_images=12",
    "data.synthetic.size=64",
    "data.crop_size=48",
    "data.batch_size=4",
    "arch.base_channels=4",
    "trainer.log_every_n_steps=1",
    "callbacks.validation_images.num_samples=2",
]


def tensorboard_scalars(log_dir: Path) -> dict[str, list]:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    return {
        "scalars": {t: acc.Scalars(t) for t in tags["scalars"]},
        "images": tags["images"],
        "hparams": acc.PluginTagToContent("hparams"),
    }


def test_train_resume_evaluate_predict(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    data = tmp_path / "synthetic"
    cfg = compose_train([*TINY, f"run_dir={run_dir}", f"data.root={data}", "trainer.max_epochs=1"])
    first = train(cfg)

    for name in ("config.yaml", "splits.json", "metrics.json", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["val/dice"] <= 1 and 0 <= metrics["test/dice"] <= 1
    assert metrics["checkpoint"].endswith("best.ckpt")
    splits = json.loads((run_dir / "splits.json").read_text())
    assert sum(len(v) for v in splits.values()) == 12
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # plain data only
    assert ckpt["hyper_parameters"]["data"]["mask_values"] == [0, 255]
    steps_after_first = first["global_step"]
    assert steps_after_first == ckpt["global_step"] > 0

    # resume: same directory, one more epoch, the step count continues
    resumed_cfg = compose_train([f"resume={run_dir}"])
    second = train(resumed_cfg, overrides=[f"resume={run_dir}", "trainer.max_epochs=2"])
    assert second["epochs"] == 2
    assert second["global_step"] == 2 * steps_after_first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "synthetic"]  # no second run
    assert json.loads((run_dir / "splits.json").read_text()) == splits
    assert OmegaConf.load(run_dir / "config.yaml").trainer.max_epochs == 2

    tb = tensorboard_scalars(run_dir / "tensorboard")
    steps = [e.step for e in tb["scalars"]["train/loss"]]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) == 2 * steps_after_first
    assert {"val/dice", "val/iou", "val/loss", "val/dice/nucleus"} <= set(tb["scalars"])
    assert any(t.startswith("lr-") for t in tb["scalars"])
    assert "val/input_truth_prediction_errors" in tb["images"]
    assert "_hparams_/session_start_info" in tb["hparams"]  # the HParams tab has the run
    assert "hp/val/dice" in tb["scalars"]

    # evaluate the run's test split
    eval_cfg = OmegaConf.create({"run_dir": str(run_dir), "ckpt": None, "split": "test",
                                 "data_root": None, "level": None, "device": "cpu",
                                 "output": None})  # fmt: skip
    scores = evaluate(eval_cfg)
    assert scores["images"] == len(splits["test"])
    saved = json.loads((run_dir / "evaluation_test.json").read_text())
    assert saved["dice"] == pytest.approx(scores["dice"])
    # the test pass inside train() scored the same checkpoint on the same images
    assert scores["dice"] == pytest.approx(second["test/dice"], abs=1e-6)

    # predict from the checkpoint alone, copied away from its run, on odd-sized images
    alone = tmp_path / "elsewhere" / "model.ckpt"
    alone.parent.mkdir()
    shutil.copy(run_dir / "checkpoints" / "best.ckpt", alone)
    inputs = tmp_path / "new"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("a.png", (50, 70)), ("b.tif", (33, 41))):
        cv2.imwrite(str(inputs / name), rng.integers(0, 255, shape, dtype=np.uint8))
    (inputs / "broken.png").write_bytes(b"garbage")
    out = tmp_path / "masks"
    pred_cfg = OmegaConf.create({"ckpt": str(alone), "input": str(inputs), "output": str(out),
                                 "level": None, "device": "cpu"})  # fmt: skip
    written = predict(pred_cfg)
    assert sorted(p.name for p in written) == ["a.png", "b.png"]
    for name, shape in (("a.png", (50, 70)), ("b.png", (33, 41))):
        mask = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert mask.shape == shape and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) <= {0, 255}


def test_nested_deep_supervision_on_a_folder_then_pruned_prediction(tmp_path: Path) -> None:
    data = write_folder(tmp_path / "rgb", n=8, channels=3)
    run_dir = tmp_path / "run"
    cfg = compose_train([
        "data=folder", f"data.root={data}", "data.in_channels=3", "data.crop_size=32",
        "data.batch_size=4", "data.num_workers=0", "arch=nested", "arch.base_channels=4",
        "trainer.max_epochs=1", f"run_dir={run_dir}", "loss.deep_supervision_weights=halving",
    ])  # fmt: skip
    metrics = train(cfg)
    assert 0 <= metrics["val/dice"] <= 1
    out = tmp_path / "masks"
    for level in (1, 4):
        pred_cfg = OmegaConf.create({"ckpt": str(run_dir / "checkpoints" / "best.ckpt"),
                                     "input": str(data / "images" / "*.png"),
                                     "output": str(out / str(level)), "level": level,
                                     "device": "cpu"})  # fmt: skip
        assert len(predict(pred_cfg)) == 8
    eval_cfg = OmegaConf.create({"run_dir": None, "ckpt": str(run_dir / "checkpoints/best.ckpt"),
                                 "split": "test", "data_root": str(data), "level": 2,
                                 "device": "cpu", "output": str(tmp_path / "e.json")})  # fmt: skip
    assert evaluate(eval_cfg)["images"] == 8


def run_cli(forker: Forker, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m ARGS` in a process of its own (a fork of one that imported torch once)."""
    proc = forker.run(["-m", *args], cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_cli_train_resume_and_multirun(tmp_path: Path, forker: Forker) -> None:
    """Hydra's own run directories: resume reuses the run, a sweep makes one per job."""
    common = [*TINY, "data.synthetic.num_images=8", f"data.root={tmp_path / 'data'}",
              "paths.output_dir=outputs", "final_eval=false"]  # fmt: skip
    run_cli(forker, "unet_seg.train", *common, "trainer.max_epochs=1", cwd=tmp_path)
    (run_dir,) = (tmp_path / "outputs" / "train").iterdir()
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    steps = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    run_cli(forker, "unet_seg.train", f"resume={run_dir}", "trainer.max_epochs=2", cwd=tmp_path)
    assert [run_dir] == list((tmp_path / "outputs" / "train").iterdir())
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == overrides  # kept as run
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 * steps  # a second epoch was trained on top of the first

    run_cli(forker, "unet_seg.train", "-m", *common, "trainer.max_epochs=1", "optimizer=adam,sgd",
            cwd=tmp_path)  # fmt: skip
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    assert OmegaConf.load(sweep / "1" / "config.yaml").optimizer._target_ == "torch.optim.SGD"
    for job in jobs:
        assert (sweep / job / "checkpoints" / "best.ckpt").is_file()


def test_cli_errors_are_clear(tmp_path: Path, forker: Forker) -> None:
    proc = forker.run(["-m", "unet_seg.predict", f"ckpt={tmp_path / 'x.ckpt'}", "input=nowhere"],
                      cwd=tmp_path, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    assert "input=nowhere: no images found" in proc.stderr
    not_ckpt = tmp_path / "notes.ckpt"
    not_ckpt.write_text("hello")
    write_folder(tmp_path / "d", n=1)
    args = ["-m", "unet_seg.predict", f"ckpt={not_ckpt}", f"input={tmp_path / 'd' / 'images'}"]
    proc = forker.run(args, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0 and "not a loadable unet-seg checkpoint" in proc.stderr


def test_training_without_a_logger_and_the_crop_size_in_the_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    cfg = compose_train([*TINY, "logger=none", "trainer.max_epochs=1", f"run_dir={run_dir}",
                         f"data.root={tmp_path / 'data'}"])  # fmt: skip
    with caplog.at_level("INFO", logger="unet_seg.epochs"):
        assert 0 <= train(cfg)["val/dice"] <= 1
    lines = [r.getMessage() for r in caplog.records if r.name == "unet_seg.epochs"]
    assert len(lines) == 1 and lines[0].startswith("epoch 1/1 | step ")  # one plain line an epoch
    assert "train loss " in lines[0] and "val dice " in lines[0] and "left" in lines[0]
    assert not (run_dir / "tensorboard").exists()
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["data"]["crop_size"] == 48  # resize-mode inference needs it
