"""Mixed precision trains without NaN; a non-finite loss stops the run with a clear message."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.conftest import compose_train
from tests.test_isbi2012 import ISBI
from unet_seg.train import train

pytestmark = pytest.mark.slow

TINY = ["data.synthetic.num_images=12", "data.synthetic.size=64", "data.crop_size=48",
        "data.batch_size=4", "arch.base_channels=4", "trainer.max_epochs=2"]  # fmt: skip


@pytest.mark.parametrize("arch", ["unet", "nested"])
def test_bf16_mixed_trains_without_nan_on_synthetic_data(tmp_path: Path, arch: str) -> None:
    # float16 mixed precision (16-mixed) needs a GPU; bfloat16 runs on the CPU too
    cfg = compose_train([*TINY, f"arch={arch}", "arch.base_channels=4",
                         "trainer.precision=bf16-mixed", f"data.root={tmp_path / 'data'}",
                         f"run_dir={tmp_path / 'run'}"])  # fmt: skip
    metrics = train(cfg)
    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    assert 0 <= metrics["val/dice"] <= 1


@pytest.mark.skipif(not (ISBI / "images").is_dir(), reason=f"ISBI 2012 data not found at {ISBI}")
def test_bf16_mixed_on_isbi(tmp_path: Path) -> None:
    cfg = compose_train(["data=isbi2012", f"data.root={ISBI}", "data.crop_size=64",
                         "data.val_fraction=0.1", "data.test_fraction=0.0",
                         "arch.base_channels=4", "trainer.max_epochs=1",
                         "trainer.precision=bf16-mixed", "data.num_workers=0",
                         f"run_dir={tmp_path / 'run'}"])  # fmt: skip
    metrics = train(cfg)
    assert math.isfinite(metrics["val/loss"]) and 0 <= metrics["val/pixel_error"] <= 1


def test_non_finite_loss_stops_with_a_clear_message(tmp_path: Path) -> None:
    cfg = compose_train([*TINY, "optimizer=sgd", "optimizer.lr=1e12", "scheduler=none",
                         f"data.root={tmp_path / 'data'}",
                         f"run_dir={tmp_path / 'run'}"])  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"loss is not finite.*debug=anomaly"):
        train(cfg)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_debug_anomaly_config_runs(tmp_path: Path) -> None:
    no_epochs = [o for o in TINY if not o.startswith("trainer.max_epochs")]
    cfg = compose_train([*no_epochs, "debug=anomaly", f"data.root={tmp_path / 'data'}",
                         f"run_dir={tmp_path / 'run'}"])  # fmt: skip
    assert cfg.trainer.detect_anomaly is True
    assert train(cfg)["epochs"] == 1
