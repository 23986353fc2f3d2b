"""The real TensorBoard server, on a loopback port, serves a finished run's scalars and images;
the validation picture it shows is drawn for inputs of any channel count."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from tests.conftest import compose_train
from unet_seg.callbacks import ValidationImages
from unet_seg.module import SegModule
from unet_seg.train import train
from unet_seg.visualize import composite_colours


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base: str, path: str, **params: str) -> bytes:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


@pytest.mark.slow
def test_tensorboard_serves_scalars_and_image_grids(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = compose_train([
        "data.synthetic.num_images=12", "data.synthetic.size=64", "data.crop_size=48",
        "arch.base_channels=4", "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
        f"data.root={tmp_path / 'data'}", f"run_dir={run_dir}",
    ])  # fmt: skip
    train(cfg)

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(run_dir / "tensorboard"),
         "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        tags: dict = {}
        while time.monotonic() < deadline:  # wait until it has read the event files
            try:
                tags = json.loads(get(base, "/data/plugin/scalars/tags"))
                if any("val/dice" in t for t in tags.values()):
                    break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            time.sleep(0.5)
        (run,) = [r for r, t in tags.items() if "val/dice" in t]
        assert {"train/loss", "val/loss", "val/iou", "lr-Adam"} <= set(tags[run])

        dice = json.loads(get(base, "/data/plugin/scalars/scalars", run=run, tag="val/dice"))
        values = [point[2] for point in dice]
        assert len(values) >= 2 and all(0 <= v <= 1 for v in values)
        lr = json.loads(get(base, "/data/plugin/scalars/scalars", run=run, tag="lr-Adam"))
        assert lr[0][2] == pytest.approx(1e-3)

        images = json.loads(get(base, "/data/plugin/images/tags"))
        assert "val/input_truth_prediction_errors" in images[run]
        listing = json.loads(get(base, "/data/plugin/images/images", run=run,
                                 tag="val/input_truth_prediction_errors", sample="0"))  # fmt: skip
        assert len(listing) >= 2  # one grid per validation epoch
        png = get(base, "/data/plugin/images/individualImage?" + listing[-1]["query"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        server.terminate()
        server.wait(timeout=30)


class Recorder:
    """A TensorBoard writer that keeps what it is given."""

    def __init__(self) -> None:
        self.images: dict[str, np.ndarray] = {}

    def add_image(self, tag: str, image: np.ndarray, step: int, dataformats: str) -> None:
        assert dataformats == "HWC"
        self.images[tag] = image


def two_channel_sample(volume: bool, size: int = 16) -> dict:
    """Two stains (or modalities) `[2, (Z,) H, W]`, normalised: channel 0 bright in the left
    quarter, channel 1 in the right quarter (through every slice of a volume); the mask
    marks both."""
    image = torch.full((2, size, size), -2.0)
    image[0, :, : size // 4] = 2.0
    image[1, :, -size // 4 :] = 2.0
    mask = torch.zeros(size, size, dtype=torch.long)
    mask[:, : size // 4] = mask[:, -size // 4 :] = 1
    if volume:
        image, mask = image[:, None].repeat(1, 8, 1, 1), mask[None].repeat(8, 1, 1)
    return {"image": image, "mask": mask}


@pytest.mark.parametrize("volume", [False, True], ids=["fluorescence-2d", "mri-volume-3d"])
def test_validation_picture_of_a_two_channel_input_shows_both_channels(
    tmp_path: Path, volume: bool
) -> None:
    """Two MRI modalities or two fluorescence stains: the picture is drawn (it was a
    traceback at the first validation), each channel in its own composite colour."""
    torch.manual_seed(0)
    arch = {"name": "unet3d" if volume else "unet", "in_channels": 2, "num_classes": 2,
            "base_channels": 2, "depth": 1}  # fmt: skip
    data = {"class_names": ["background", "tissue"], "in_channels": 2, "mask_values": [0, 1],
            "mean": [0.5, 0.5], "std": [0.25, 0.25]}  # fmt: skip
    if volume:
        data |= {"volume": True, "dims": 3, "patch": [8, 16, 16], "spacing": [1.0, 1.0, 1.0]}
    module = SegModule(arch=arch, loss={}, optimizer={"_target_": "torch.optim.SGD"}, data=data)
    module.eval()
    logger = TensorBoardLogger(str(tmp_path))
    logger._experiment = Recorder()
    samples = [two_channel_sample(volume)] * 2
    trainer = SimpleNamespace(
        sanity_checking=False, is_global_zero=True, current_epoch=0, global_step=0,
        loggers=[logger], datamodule=SimpleNamespace(datasets={"val": samples}),
    )  # fmt: skip
    ValidationImages(num_samples=2).on_validation_epoch_end(trainer, module)
    grid = logger._experiment.images["val/input_truth_prediction_errors"]
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    assert grid.shape[0] == 2 * (16 + 2) and grid.shape[1] == 4 * 16 + 3 * 2  # 2 rows, 4 panels
    green, magenta = composite_colours(2)
    assert grid[8, 1].tolist() == green.tolist()  # channel 0 (left quarter)
    assert grid[8, 14].tolist() == magenta.tolist()  # channel 1 (right quarter)
    assert grid[8, 8].tolist() == [0, 0, 0]  # neither
