"""GPU defaults: trainer=gpu trains in bf16-mixed with TF32 matmuls; neither touches a CPU run."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import compose_train
from unet_seg import build
from unet_seg.build import gpu_settings


def test_gpu_config_is_bf16_mixed_with_tf32_matmuls() -> None:
    for group in ("gpu", "ddp"):
        trainer = compose_train([f"trainer={group}"]).trainer
        assert trainer.precision == "bf16-mixed" and trainer.matmul_precision == "high"
    assert compose_train([]).trainer.precision == "32-true"  # the default stays full float32


def test_a_cpu_run_drops_the_key_and_leaves_torch_alone() -> None:
    before = torch.get_float32_matmul_precision()
    cfg = compose_train(["trainer=cpu", "trainer.matmul_precision=medium"])
    trainer = gpu_settings(cfg.trainer)
    assert "matmul_precision" not in trainer  # not a Trainer argument
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(ValueError, match="trainer.matmul_precision='tf32': choose highest"):
        gpu_settings(compose_train(["trainer.matmul_precision=tf32"]).trainer)


def test_a_gpu_run_sets_tf32_and_falls_back_without_bfloat16(monkeypatch) -> None:
    """On a (pretend) GPU before Ampere: TF32 asked for, bf16-mixed becomes 16-mixed."""
    before = torch.get_float32_matmul_precision()
    monkeypatch.setattr(build, "_uses_gpu", lambda trainer: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    try:
        trainer = gpu_settings(compose_train(["trainer=gpu"]).trainer)
        assert torch.get_float32_matmul_precision() == "high"
        assert trainer.precision == "16-mixed" and "matmul_precision" not in trainer
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
        assert gpu_settings(compose_train(["trainer=gpu"]).trainer).precision == "bf16-mixed"
    finally:
        torch.set_float32_matmul_precision(before)
