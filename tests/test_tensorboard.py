"""The real TensorBoard server, on a loopback port, serves a finished run's scalars and images."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import compose_train
from unet_seg.train import train

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base: str, path: str, **params: str) -> bytes:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


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
