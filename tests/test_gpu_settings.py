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
    assert compose_train([]).trainer.precision == "auto"  # bf16-mixed where it is native


def test_auto_precision_follows_native_bfloat16(monkeypatch) -> None:
    """`trainer.precision=auto`: bf16-mixed on a CPU with AMX or AVX512-BF16, 32-true on one
    without (emulated bfloat16 is slower than float32); an explicit precision is kept."""
    from unet_seg.build import native_bf16, resolve_precision

    trainer = compose_train(["trainer=cpu"]).trainer
    for amx, avx512_bf16, expected in ((True, True, "bf16-mixed"), (False, True, "bf16-mixed"),
                                       (False, False, "32-true")):  # fmt: skip
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        assert resolve_precision(trainer).precision == expected
        assert trainer.precision == "auto"  # the config itself is left alone
    assert native_bf16("cpu") is None
    explicit = compose_train(["trainer=cpu", "trainer.precision=16-mixed"]).trainer
    assert resolve_precision(explicit).precision == "16-mixed"


def test_channels_last_auto_on_a_cpu_and_under_mixed_precision_on_a_gpu() -> None:
    from unet_seg.module import FastPath, channels_last_wins

    assert channels_last_wins("cpu", "32-true") and channels_last_wins("cpu", "bf16-mixed")
    assert channels_last_wins("cuda", "bf16-mixed") and not channels_last_wins("cuda", "32-true")
    callbacks = compose_train([]).callbacks
    assert callbacks.fast_path.channels_last == "auto"  # the default run
    assert compose_train(["+fast=compile"]).callbacks.fast_path.channels_last == "auto"
    with pytest.raises(ValueError, match="channels_last='yes': choose true, false or auto"):
        FastPath(channels_last="yes")


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


def test_fast_path_auto_decides_from_the_trainers_device_and_precision() -> None:
    from types import SimpleNamespace

    from unet_seg.models.unet import UNet
    from unet_seg.module import FastPath

    def laid_out(device: str, precision: str) -> bool:
        trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)),
                                  precision=precision)  # fmt: skip
        module = SimpleNamespace(net=UNet(1, 2, 4))
        FastPath(channels_last="auto").setup(trainer, module, "fit")
        weight = module.net.inc.block[3].weight  # 4 -> 4 channels: the layouts differ
        return weight.is_contiguous(memory_format=torch.channels_last)

    assert laid_out("cpu", "32-true") and laid_out("cpu", "bf16-mixed")
    assert laid_out("cuda", "bf16-mixed") and not laid_out("cuda", "32-true")  # the rule only
