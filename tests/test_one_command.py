"""One command for any folder: `train data=auto data.root=DIR` trains, validates (TensorBoard
panels included) and evaluates two-modality isotropic volumes, and 2-channel and 4-channel
2-D image folders, with nothing but the run's size on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from omegaconf import OmegaConf

from tests.conftest import compose_train
from tests.test_choose_net import iso_folder
from unet_seg.evaluate import evaluate
from unet_seg.train import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# the run's size only: a tiny net, one epoch, one picture
QUICK = ["arch.base_channels=4", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
         "callbacks.validation_images.num_samples=1", "data.num_workers=0"]  # fmt: skip


def image_tags(run_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = []
    for events in (run_dir / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        tags += acc.Tags()["images"]
    return tags


def check_run(run_dir: Path, tmp_path: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["val/dice"] <= 1
    assert image_tags(run_dir), "no validation picture in TensorBoard"
    out = tmp_path / "eval" / "evaluation.json"
    results = evaluate(OmegaConf.create({
        "run_dir": str(run_dir), "ckpt": None, "split": "val", "data_root": None,
        "device": "cpu", "output": str(out), "worst": 2, "tta": "none"}))  # fmt: skip
    assert out.is_file() and out.with_name("evaluation_worst.png").is_file()
    return results


def test_two_modality_isotropic_volumes_train_and_evaluate(tmp_path: Path) -> None:
    data = iso_folder(tmp_path / "mri", n=4, shape=(32, 32, 32), channels=2)
    run_dir = tmp_path / "run"
    train(compose_train([*QUICK, "data=auto", f"data.root={data}", f"run_dir={run_dir}",
                         f"paths.output_dir={tmp_path}/out"]))  # fmt: skip
    plan = json.loads((run_dir / "plan.json").read_text())["plan"]
    assert plan["dims"]["value"] == 3 and plan["in_channels"]["value"] == 2
    assert plan["arch"]["value"] == "unet3d"
    results = check_run(run_dir, tmp_path)
    assert results["volumes"] >= 1


@pytest.mark.parametrize("channels", [2, 4])
def test_multichannel_tiff_folders_train_and_evaluate(tmp_path: Path, channels: int) -> None:
    """ImageJ hyperstacks with axes CYX (fluorescence channels), not grey+alpha or RGBA."""
    rng = np.random.default_rng(channels)
    data = tmp_path / "cells"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for i in range(6):
        mask = np.zeros((48, 48), np.uint8)
        y, x = rng.integers(4, 28, 2)
        mask[y : y + 16, x : x + 16] = 1
        image = np.stack([(mask.astype(np.int32) * (800 + 300 * c) + rng.integers(0, 200, (48, 48)))
                          for c in range(channels)]).astype(np.uint16)  # fmt: skip
        tifffile.imwrite(data / "images" / f"c{i}.tif", image, imagej=True,
                         metadata={"axes": "CYX"})  # fmt: skip
        tifffile.imwrite(data / "masks" / f"c{i}.tif", mask)
    run_dir = tmp_path / "run"
    train(compose_train([*QUICK, "data=auto", f"data.root={data}", f"run_dir={run_dir}",
                         f"paths.output_dir={tmp_path}/out"]))  # fmt: skip
    plan = json.loads((run_dir / "plan.json").read_text())["plan"]
    assert plan["in_channels"]["value"] == channels
    check_run(run_dir, tmp_path)
