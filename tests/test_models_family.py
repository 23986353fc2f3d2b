"""Tests for Attention U-Net (Oktay et al., 2018) and the residual U-Net (Zhang et al., 2018;
He et al., 2016): shapes, gradients, parameter counts against an independent layer count,
attention coefficients, residual shortcuts, and one train-evaluate-predict-export run each."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from tests.conftest import CONF, compose_train
from unet_seg.models import AttentionGate, AttentionUNet, DoubleConv, ResidualBlock, ResUNet, UNet
from unet_seg.models.registry import ARCHITECTURES, build_net

FAMILY = {"attention_unet": AttentionUNet, "res_unet": ResUNet}

pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------ independent parameter count, layer by layer


def conv(c_in: int, c_out: int, k: int = 3, bias: bool = False) -> int:
    return k * k * c_in * c_out + (c_out if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # weight and bias (running statistics are buffers)


def double_conv(c_in: int, c_out: int) -> int:
    return conv(c_in, c_out) + bn(c_out) + conv(c_out, c_out) + bn(c_out)


def residual(c_in: int, c_out: int) -> int:
    shortcut = 0 if c_in == c_out else conv(c_in, c_out, k=1) + bn(c_out)
    return double_conv(c_in, c_out) + shortcut


def gate(c: int) -> int:
    """W_g and W_x (c -> c // 2, 1x1 + BN), psi (c // 2 -> 1, 1x1 + BN)."""
    f = c // 2
    return 2 * (conv(c, f, k=1) + bn(f)) + conv(f, 1, k=1) + bn(1)


def expected_params(arch: str, in_channels: int, num_classes: int, base: int = 64) -> int:
    """Depth 4, transposed-conv upsampling, counted from the layer formulas."""
    widths = [base * 2**i for i in range(5)]
    block = residual if arch == "res_unet" else double_conv
    total = block(in_channels, base)  # stem
    total += sum(block(widths[i], widths[i + 1]) for i in range(4))  # encoder
    for c in widths[:4]:  # decoder step into a level of c channels, from one of 2c
        total += conv(2 * c, c, k=2, bias=True)  # ConvTranspose2d 2x2
        total += block(2 * c, c)  # after concatenating [skip, up]
        total += gate(c) if arch == "attention_unet" else 0
    return total + conv(base, num_classes, k=1, bias=True)  # head


def test_the_independent_count_reproduces_unet() -> None:
    with torch.device("meta"):
        assert n_params(UNet(1, 2)) == expected_params("unet", 1, 2) == 31_036_546


@pytest.mark.parametrize(("in_channels", "num_classes"), [(1, 2), (3, 5)])
@pytest.mark.parametrize("arch", sorted(FAMILY))
def test_parameter_count_at_the_paper_width(arch: str, in_channels: int, num_classes: int) -> None:
    with torch.device("meta"):
        model = FAMILY[arch](in_channels, num_classes, base_channels=64, depth=4)
    assert n_params(model) == expected_params(arch, in_channels, num_classes)


def test_parameter_counts_quoted_in_the_configs() -> None:
    assert expected_params("attention_unet", 1, 2) == 31_387_114
    assert expected_params("res_unet", 1, 2) == 32_435_138
    for arch, count in (("attention_unet", "31,387,114"), ("res_unet", "32,435,138")):
        assert count in (CONF / "arch" / f"{arch}.yaml").read_text()


# --------------------------------------------------------------------------- shapes, gradients


@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize("size", [(32, 32), (37, 45)])
@pytest.mark.parametrize(("in_channels", "num_classes"), [(1, 1), (3, 2), (1, 3)])
@pytest.mark.parametrize("arch", sorted(FAMILY))
def test_output_shape(
    arch: str, in_channels: int, num_classes: int, size: tuple[int, int], bilinear: bool
) -> None:
    model = FAMILY[arch](in_channels, num_classes, base_channels=4, bilinear=bilinear)
    out = model(torch.randn(2, in_channels, *size))
    assert out.shape == (2, num_classes, *size)


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("arch", sorted(FAMILY))
def test_other_depths(arch: str, depth: int) -> None:
    model = FAMILY[arch](1, 2, base_channels=4, depth=depth, bilinear=True)
    assert model(torch.randn(1, 1, 21, 18)).shape == (1, 2, 21, 18)
    with pytest.raises(ValueError, match="depth"):
        FAMILY[arch](1, 2, depth=0)


@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize("arch", sorted(FAMILY))
def test_gradients_reach_every_parameter(arch: str, bilinear: bool) -> None:
    torch.manual_seed(0)
    model = FAMILY[arch](2, 3, base_channels=4, bilinear=bilinear)
    out = model(torch.randn(2, 2, 37, 45))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------- attention


def test_attention_gate_scales_the_skip() -> None:
    gate_ = AttentionGate(gate_channels=6, skip_channels=8)
    assert gate_.w_x[0].out_channels == gate_.w_g[0].out_channels == 4  # skip_channels // 2
    g, x = torch.randn(2, 6, 9, 11), torch.randn(2, 8, 9, 11)
    gated, alpha = gate_(g, x)
    assert alpha.shape == (2, 1, 9, 11) and gated.shape == x.shape
    assert torch.allclose(gated, x * alpha)
    assert AttentionGate(1, 1).w_x[0].out_channels == 1  # never zero channels


@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize("size", [(32, 32), (37, 45)])
def test_attention_coefficients(size: tuple[int, int], bilinear: bool) -> None:
    torch.manual_seed(0)
    model = AttentionUNet(1, 2, base_channels=4, depth=4, bilinear=bilinear).eval()
    x1, x2 = torch.randn(2, 1, *size), torch.randn(2, 1, *size)
    with torch.no_grad():
        logits, alphas = model(x1, return_attention=True)
        _, others = model(x2, return_attention=True)
        assert torch.equal(logits, model(x1))  # inspecting changes nothing
    h, w = size
    assert len(alphas) == 4
    for i, (alpha, other) in enumerate(zip(alphas, others, strict=True)):
        assert alpha.shape == (2, 1, -(-h // 2**i), -(-w // 2**i))  # the skip's size at level i
        assert alpha.min() >= 0 and alpha.max() <= 1
        assert alpha.std() > 0  # not one constant weight for every pixel
        assert not torch.allclose(alpha, other)  # depends on the input
        assert not torch.allclose(alpha[0], alpha[1])  # and per image within a batch


def test_attention_unet_gates_every_skip_at_its_width() -> None:
    model = AttentionUNet(1, 2, base_channels=4, depth=4)
    gates = [m for m in model.modules() if isinstance(m, AttentionGate)]
    assert [g.w_x[0].in_channels for g in gates] == [32, 16, 8, 4]  # deep to shallow


# --------------------------------------------------------------------------- residual blocks


def test_residual_block_identity_shortcut_with_equal_channels() -> None:
    block = ResidualBlock(8, 8)
    assert isinstance(block.shortcut, nn.Identity)
    assert n_params(block) == n_params(DoubleConv(8, 8)) == double_conv(8, 8)
    last_bn = block.body[-1]
    nn.init.zeros_(last_bn.weight)
    nn.init.zeros_(last_bn.bias)  # the residual branch now adds nothing
    x = torch.randn(2, 8, 9, 11)
    assert torch.equal(block(x), torch.relu(x))


def test_residual_block_projection_with_different_channels() -> None:
    block = ResidualBlock(4, 8, mid_channels=6)
    conv1x1, norm = block.shortcut
    assert isinstance(conv1x1, nn.Conv2d) and conv1x1.kernel_size == (1, 1)
    assert conv1x1.bias is None and isinstance(norm, nn.BatchNorm2d)
    body = conv(4, 6) + bn(6) + conv(6, 8) + bn(8)
    assert n_params(block) == body + conv(4, 8, k=1) + bn(8)
    x = torch.randn(2, 4, 9, 11)
    assert block(x).shape == (2, 8, 9, 11)
    nn.init.zeros_(block.body[-1].weight)
    nn.init.zeros_(block.body[-1].bias)
    assert torch.allclose(block(x), torch.relu(block.shortcut(x)))


def test_res_unet_has_only_residual_blocks() -> None:
    model = ResUNet(1, 2, base_channels=4, depth=4)
    assert not any(isinstance(m, DoubleConv) for m in model.modules())
    assert sum(isinstance(m, ResidualBlock) for m in model.modules()) == 1 + 4 + 4


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("arch", sorted(FAMILY))
def test_state_dict_round_trip_through_the_registry(arch: str) -> None:
    config = {"name": arch, "in_channels": 3, "num_classes": 2, "base_channels": 4}
    assert ARCHITECTURES[arch] is FAMILY[arch]
    torch.manual_seed(0)
    source = build_net(config)
    for m in source.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-default statistics, so they must travel too
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    torch.manual_seed(1)
    target = build_net(config)
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        assert not torch.allclose(source.eval()(x), target.eval()(x))
        target.load_state_dict(source.state_dict())
        assert torch.equal(source(x), target(x))


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.parametrize("arch", [*sorted(FAMILY), "unet_valid"])
def test_train_evaluate_predict_export(tmp_path: Path, arch: str) -> None:
    """Each architecture through every entry point: train, evaluate, tiled predict, ONNX."""
    pytest.importorskip("onnxruntime", reason="pip install '.[export]' (part of '.[dev]')")
    from unet_seg.evaluate import evaluate
    from unet_seg.export import export, load_exported
    from unet_seg.module import SegModule
    from unet_seg.predict import predict
    from unet_seg.train import train

    run_dir = tmp_path / "run"
    cfg = compose_train([
        f"arch={arch}", "arch.base_channels=4", "data.synthetic.num_images=8",
        "data.synthetic.size=48", "data.crop_size=32", "data.batch_size=4",
        "trainer.max_epochs=1", "logger=none", f"data.root={tmp_path / 'data'}",
        f"run_dir={run_dir}",
    ])  # fmt: skip
    metrics = train(cfg)
    assert 0 <= metrics["val/dice"] <= 1
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["hyper_parameters"]["arch"]["name"] == arch
    # the valid-convolution net scores the centre of 92 pixels of context on each side
    assert SegModule.from_checkpoint(ckpt).net.margin == (92 if arch == "unet_valid" else 0)

    eval_cfg = OmegaConf.load(CONF / "evaluate.yaml")
    eval_cfg.pop("defaults")
    eval_cfg = OmegaConf.merge(eval_cfg, {"run_dir": str(run_dir), "device": "cpu"})
    assert evaluate(eval_cfg)["images"] > 0

    inputs = tmp_path / "new"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for shape in [(37, 45), (130, 75)]:  # one tile; 3 x 2 tiles of 48 (overlap-tile: valid)
        cv2.imwrite(str(inputs / "a.png"), rng.integers(0, 255, shape, dtype=np.uint8))
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            overrides = [f"ckpt={ckpt}", f"input={inputs}", f"output={tmp_path / 'masks'}"]
            pred_cfg = compose("predict", overrides=[*overrides, "device=cpu", "tile_size=48"])
        (written,) = predict(pred_cfg)
        mask = cv2.imread(str(written), cv2.IMREAD_UNCHANGED)
        assert mask.shape == shape and set(np.unique(mask).tolist()) <= {0, 255}

    export_cfg = OmegaConf.load(CONF / "export.yaml")
    export_cfg.pop("defaults")
    out = tmp_path / "model.onnx"
    export_cfg = OmegaConf.merge(export_cfg, {"ckpt": str(ckpt), "output": str(out)})
    assert export(export_cfg)["max_abs_diff"] < 1e-4  # export's own check at a padded size
    run, meta = load_exported(out, "onnx")
    module = SegModule.from_checkpoint(ckpt)
    # sides that are no multiples of 16; the valid net's graph takes sides >= 108
    h, w = (110, 130) if arch == "unet_valid" else (45, 70)
    x = torch.randn(3, 1, h, w)
    with torch.no_grad():
        expected = module(x).numpy()
    got = run(x.numpy())
    assert got.shape == expected.shape == (3, 2, h, w)
    assert np.abs(got - expected).max() < 1e-4
    assert f'"name": "{arch}"' in meta["architecture"]
