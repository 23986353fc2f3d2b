"""A run prints what the user needs: known third-party noise is silenced, narrowly."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from unet_seg.data.synthetic import ensure_synthetic
from unet_seg.quiet import LIGHTNING_RANK_ZERO_LOGGERS, silence_known_noise

ROOT = Path(__file__).parents[1]

NOISE = (
    "litlogger",  # Lightning's advertisement for its cloud logger
    "LeafSpec",  # PyTorch deprecating what Lightning's _pytree helper uses
    "Total FLOPs: 0",  # the model summary without an example input
    "smaller than the logging interval",  # log_every_n_steps above the batches of an epoch
    "not supported by the model summary",  # bf16-mixed (trainer=gpu): its weights are float32
    "overridden `transfer_batch_to_device`",  # SegModule's own hook, and the only one
)


def test_only_the_named_messages_are_silenced(caplog: pytest.LogCaptureFixture) -> None:
    silence_known_noise()
    silence_known_noise()  # twice: still one filter each
    leaf = "`isinstance(treespec, LeafSpec)` is deprecated"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()  # simplefilter above reset the filters
        for module in ("lightning.pytorch.utilities._pytree", "someone_else"):
            warnings.warn_explicit(leaf, FutureWarning, f"{module}.py", 21, module=module)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
        sync = "It is recommended to use `self.log('{}', ..., sync_dist=True)` when logging"
        result = "lightning.pytorch.trainer.connectors.logger_connector.result"
        for key in ("val/dice", "test/loss", "train/loss_epoch"):
            warnings.warn_explicit(sync.format(key), UserWarning, "result.py", 433, module=result)
    # Lightning's LeafSpec warning goes; the same words from another module, and others, stay
    assert [(str(w.message), w.filename) for w in caught] == [
        (leaf, "someone_else.py"),
        ("something else is deprecated", __file__),
        (sync.format("train/loss_epoch"), "result.py"),  # not a torchmetrics value: shown
    ]
    logger = logging.getLogger(LIGHTNING_RANK_ZERO_LOGGERS[0])
    assert len(logger.filters) == len(set(logger.filters))
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("💡 Tip: try installing [litlogger](https://pypi.org/project/litlogger/)")
        logger.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


@pytest.mark.slow
def test_a_tiny_run_prints_none_of_the_known_noise(tmp_path: Path) -> None:
    data = ensure_synthetic(tmp_path / "data", num_images=12, size=64)
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-m", "unet_seg.train", f"data.root={data}",
         "data.synthetic.num_images=12", "data.synthetic.size=64", "data.crop_size=48",
         "data.batch_size=4", "arch.base_channels=4", "trainer.max_epochs=1",
         "callbacks.validation_images.num_samples=1", "paths.output_dir=out",
         "trainer.precision=bf16-mixed"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "epoch 1/1 | step 3 |" in output  # the run's own progress still shows
    assert output.count("is up to date") == 1  # prepare_data and setup used to say it twice
    for noise in NOISE:
        assert noise not in output, f"{noise!r} in:\n{output}"
