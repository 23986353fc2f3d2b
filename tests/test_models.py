"""Tests for U-Net (Ronneberger et al., 2015) and UNet++ (Zhou et al., 2018)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from unet_seg.config import to_plain
from unet_seg.models import DoubleConv, NestedUNet, UNet
from unet_seg.models.blocks import crop_to, pad_to_multiple
from unet_seg.models.registry import build_net

CONF = Path(__file__).parents[1] / "conf"
ARCHS = sorted(p.stem for p in (CONF / "arch").glob("*.yaml"))

NODE_NAMES = [f"conv{i}_{j}" for i in range(5) for j in range(5) if i + j <= 4]


pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_nodes(level: int) -> set[str]:
    return {f"conv{i}_{j}" for i in range(5) for j in range(5) if i + j <= level}


# --------------------------------------------------------------------------- blocks


def test_double_conv_shape_and_mid_channels() -> None:
    block = DoubleConv(3, 8, mid_channels=5)
    assert block(torch.randn(2, 3, 9, 11)).shape == (2, 8, 9, 11)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [5, 8]
    assert all(c.bias is None for c in convs)


@pytest.mark.parametrize("size", [(32, 32), (37, 45), (1, 1), (3, 20)])
def test_pad_to_multiple_roundtrip(size: tuple[int, int]) -> None:
    x = torch.randn(1, 2, *size)
    padded, orig = pad_to_multiple(x, 16)
    assert orig == size
    assert padded.shape[-2] % 16 == 0 and padded.shape[-1] % 16 == 0
    assert torch.equal(crop_to(padded, orig), x)


# --------------------------------------------------------------------------- UNet


@pytest.mark.parametrize(
    ("in_channels", "bilinear", "expected"),
    [(1, False, 31_036_546), (3, False, 31_037_698)],
)
def test_unet_classic_parameter_count(in_channels: int, bilinear: bool, expected: int) -> None:
    with torch.device("meta"):
        model = UNet(in_channels, 2, base_channels=64, depth=4, bilinear=bilinear)
    assert n_params(model) == expected


def test_unet_bilinear_is_smaller() -> None:
    with torch.device("meta"):
        transposed = UNet(3, 2, bilinear=False)
        bilinear = UNet(3, 2, bilinear=True)
    assert n_params(bilinear) < n_params(transposed)


@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize("size", [(32, 32), (37, 45)])
@pytest.mark.parametrize(("in_channels", "num_classes"), [(1, 1), (3, 2), (1, 3)])
def test_unet_output_shape(
    in_channels: int, num_classes: int, size: tuple[int, int], bilinear: bool
) -> None:
    model = UNet(in_channels, num_classes, base_channels=4, depth=4, bilinear=bilinear)
    out = model(torch.randn(2, in_channels, *size))
    assert out.shape == (2, num_classes, *size)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_unet_other_depths(depth: int) -> None:
    model = UNet(1, 2, base_channels=4, depth=depth, bilinear=True)
    assert model(torch.randn(1, 1, 21, 18)).shape == (1, 2, 21, 18)


def test_unet_odd_size_eval_is_finite() -> None:
    model = UNet(3, 2, base_channels=8, depth=4).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 37, 45))
    assert out.shape == (1, 2, 37, 45)
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------- UNet++


@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize("size", [(32, 32), (37, 45)])
@pytest.mark.parametrize(("in_channels", "num_classes"), [(1, 1), (3, 2), (1, 3)])
def test_nested_output_shape(
    in_channels: int, num_classes: int, size: tuple[int, int], bilinear: bool
) -> None:
    model = NestedUNet(in_channels, num_classes, base_channels=4, bilinear=bilinear)
    out = model(torch.randn(2, in_channels, *size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, num_classes, *size)


@pytest.mark.parametrize("bilinear", [False, True])
def test_nested_deep_supervision_outputs_and_gradients(bilinear: bool) -> None:
    model = NestedUNet(3, 2, base_channels=4, deep_supervision=True, bilinear=bilinear)
    outs = model(torch.randn(2, 3, 37, 45))
    assert isinstance(outs, list) and len(outs) == 4
    assert all(o.shape == (2, 2, 37, 45) for o in outs)
    sum(o.sum() for o in outs).backward()
    for head in model.heads:
        grad = head.weight.grad
        assert grad is not None
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_nested_parameter_counts() -> None:
    with torch.device("meta"):
        plain = NestedUNet(3, 1, base_channels=32)
        deep = NestedUNet(3, 1, base_channels=32, deep_supervision=True)
    head = 32 * 1 + 1  # one 1x1 conv head with bias
    assert n_params(deep) == n_params(plain) + 3 * head
    sizes = [deep.parameters_at_level(level) for level in range(1, 5)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4
    assert sizes[-1] == plain.parameters_at_level(4) == n_params(plain)


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_nested_pruned_output_shape(level: int) -> None:
    model = NestedUNet(1, 3, base_channels=4, deep_supervision=True)
    out = model(torch.randn(1, 1, 37, 45), level=level)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 3, 37, 45)


@pytest.mark.parametrize("bilinear", [False, True])
def test_nested_level4_matches_last_deep_output(bilinear: bool) -> None:
    model = NestedUNet(3, 2, base_channels=4, deep_supervision=True, bilinear=bilinear).eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        full = model(x)
        pruned = model(x, level=4)
        shallow = model(x, level=1)
    assert torch.allclose(pruned, full[-1])
    assert torch.allclose(shallow, full[0])


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_nested_pruning_runs_only_needed_nodes(level: int) -> None:
    model = NestedUNet(1, 2, base_channels=4, deep_supervision=True)
    ran: set[str] = set()
    for name in NODE_NAMES:
        getattr(model, name).register_forward_hook(lambda *_, name=name: ran.add(name))
    model(torch.randn(1, 1, 32, 32), level=level)
    assert ran == expected_nodes(level)
    if level == 1:
        assert ran == {"conv0_0", "conv1_0", "conv0_1"}


def test_nested_level4_without_deep_supervision() -> None:
    model = NestedUNet(1, 2, base_channels=4).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x, level=4), model(x))


@pytest.mark.parametrize("level", [1, 2, 3])
def test_nested_pruning_requires_deep_supervision(level: int) -> None:
    model = NestedUNet(1, 2, base_channels=4)
    with pytest.raises(ValueError, match="deep_supervision"):
        model(torch.randn(1, 1, 32, 32), level=level)


@pytest.mark.parametrize("level", [0, 5, -1])
def test_nested_invalid_level(level: int) -> None:
    model = NestedUNet(1, 2, base_channels=4, deep_supervision=True)
    with pytest.raises(ValueError, match="level"):
        model(torch.randn(1, 1, 32, 32), level=level)
    with pytest.raises(ValueError, match="level"):
        model.parameters_at_level(level)


# --------------------------------------------------------------------------- Hydra configs


def compose_arch(name: str):
    """Compose ``conf/train.yaml`` with ``arch=<name>`` at width 4; return (cfg, model)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="train", overrides=[f"arch={name}", "arch.base_channels=4"])
    return cfg, build_net(to_plain(cfg.arch))


@pytest.mark.parametrize("name", ARCHS)
def test_compose_arch_forward(name: str) -> None:
    cfg, model = compose_arch(name)
    in_channels, num_classes = cfg.arch.in_channels, cfg.arch.num_classes
    size = (40, 40) if model.spatial_dims == 2 else (12, 20, 20)  # a volume for a 3-D net
    assert model.spatial_dims == (3 if name.endswith("3d") else 2)
    with torch.no_grad():
        x = torch.randn(1, in_channels, *size)
        # a valid-convolution net answers for the centre of its input: mirror the context
        out = model.eval().forward_same(x)
    outs = out if isinstance(out, list) else [out]
    assert outs
    assert all(o.shape == (1, num_classes, *size) for o in outs)


@pytest.mark.parametrize("name", ARCHS)
def test_every_arch_declares_the_net_interface(name: str) -> None:
    """Subclass and register: every net is a `SegNet`, its margin is known from its config
    before it is built, its heads are counted, and the traced path matches `forward_same`."""
    from unet_seg.models.base import SegNet
    from unet_seg.models.registry import context_margin

    cfg, model = compose_arch(name)
    assert isinstance(model, SegNet)
    assert model.margin == context_margin(to_plain(cfg.arch))
    side = model.min_side  # the smallest side the traced graph takes
    sides = (side + 5, side + 11) if model.spatial_dims == 2 else (side + 3, side + 5, side + 1)
    x = torch.randn(2, cfg.arch.in_channels, *sides)
    with torch.no_grad():
        same = model.eval().forward_same(x)
        heads = same if isinstance(same, list) else [same]
        assert len(heads) == model.num_heads
        traced = model.forward_traceable(x)
    torch.testing.assert_close(traced, heads[-1], atol=1e-5, rtol=1e-5)
    assert model.min_side == model.pad_multiple + model.margin
    if name not in ("nested", "nested3d", "unetpp_encoder"):
        with pytest.raises(ValueError, match="prunes UNet\\+\\+ only"):
            model.check_level(2)
