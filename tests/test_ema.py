"""callbacks.ema.decay: an exponential moving average of the weights, in checkpoints and the
final scores, resumable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import compose_train
from unet_seg.callbacks import EMA
from unet_seg.train import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

TINY = ["data.synthetic.num_images=12", "data.synthetic.size=64", "data.crop_size=48",
        "data.batch_size=4", "arch.base_channels=4", "logger=none"]  # fmt: skip


def test_ema_checkpoints_hold_the_average_and_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = [*TINY, f"data.root={tmp_path / 'data'}", f"run_dir={run_dir}",
                 "trainer.max_epochs=2", "callbacks.ema.decay=0.5"]  # fmt: skip
    first = train(compose_train(overrides))
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    average, raw = last["state_dict"], last["current_model_state"]
    assert average.keys() == raw.keys()
    floats = [k for k in average if average[k].is_floating_point()]
    assert any(not torch.equal(average[k], raw[k]) for k in floats)
    # decay 0.5: the average is (mostly) the last steps' weights, close to the raw ones
    key = next(k for k in average if k.endswith("weight") and average[k].dim() == 4)
    gap = (average[key] - raw[key]).abs().max()
    assert 0 < gap < raw[key].abs().max()

    resumed = [f"resume={run_dir}", "trainer.max_epochs=3"]
    second = train(compose_train(resumed), overrides=resumed)
    assert second["global_step"] == first["global_step"] * 3 // 2


def test_ema_is_off_without_a_decay_and_checks_it() -> None:
    with pytest.raises(ValueError, match="callbacks.ema.decay"):
        EMA(decay=1.5)
    assert EMA().decay is None
