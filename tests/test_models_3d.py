"""3-D U-Net (Cicek et al., 2016) and 3-D UNet++ from the 2-D nets' blocks: shapes, gradients,
anisotropic pooling and kernels from the spacing, deep supervision and pruning, the configs,
and the 2-D nets' state-dict keys pinned so that old checkpoints still load."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from tests.conftest import compose_train
from unet_seg.config import to_plain
from unet_seg.models import NestedUNet, NestedUNet3D, UNet, UNet3D
from unet_seg.models.anisotropy import conv_kernels, pool_strides, total_strides
from unet_seg.models.blocks import DoubleConv, ResidualBlock, crop_to, pad_like, pad_to_multiple
from unet_seg.models.registry import ARCHITECTURES, arch_spatial_dims, build_net

pytestmark = pytest.mark.usefixtures("one_thread")

NODES = [f"conv{i}_{j}" for i in range(5) for j in range(5) if i + j <= 4]


# ------------------------------------------------------------------ anisotropy rule


def test_thick_slices_pool_and_convolve_in_plane_first() -> None:
    # spacings per level: (5, 1, 1) -> (5, 2, 2) -> (5, 4, 4) -> (10, 8, 8)
    assert pool_strides((5, 1, 1), 3) == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    assert conv_kernels((5, 1, 1), 3) == [(1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)]
    assert total_strides(pool_strides((5, 1, 1), 3), 3) == (2, 8, 8)
    # within a factor 2 of the finest axis counts as isotropic
    assert pool_strides((2.0, 1.0, 1.0), 2) == [(2, 2, 2)] * 2
    assert conv_kernels((2.0, 1.0, 1.0), 2) == [(3, 3, 3)] * 3
    assert pool_strides(None, 4) == [(2, 2, 2)] * 4 == pool_strides((0.7, 0.7, 0.7), 4)
    assert pool_strides(None, 2, spatial_dims=2) == [(2, 2)] * 2
    assert pool_strides((1, 3), 2, spatial_dims=2) == [(2, 1), (2, 2)]  # 2-D pixels too
    # a fine axis among coarse ones: (1, 4, 4) pools z alone once, then (2, 4, 4) is even
    assert pool_strides((1, 4, 4), 3) == [(2, 1, 1), (2, 2, 2), (2, 2, 2)]


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (5.0, 0.0, 1.0), (1.0, -1.0, 1.0)])
def test_bad_spacing_is_refused_naming_the_key(spacing: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match=r"3 positive voxel sizes in mm \(z, y, x\).*data.spacing"):
        UNet3D(1, 2, base_channels=4, spacing=spacing)


# ------------------------------------------------------------------ blocks


def test_blocks_take_a_convolution_dimension() -> None:
    block = DoubleConv(2, 4, spatial_dims=3, kernel_size=(1, 3, 3))
    conv = block.block[0]
    assert isinstance(conv, nn.Conv3d) and isinstance(block.block[1], nn.BatchNorm3d)
    assert conv.kernel_size == (1, 3, 3) and conv.padding == (0, 1, 1)  # no z padding
    assert block(torch.randn(1, 2, 3, 5, 6)).shape == (1, 4, 3, 5, 6)
    res = ResidualBlock(2, 4, spatial_dims=3)
    assert isinstance(res.shortcut[0], nn.Conv3d) and res.shortcut[0].kernel_size == (1, 1, 1)
    assert res(torch.randn(1, 2, 3, 5, 6)).shape == (1, 4, 3, 5, 6)
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        DoubleConv(2, 4, spatial_dims=1)


@pytest.mark.parametrize("size", [(8, 12, 16), (7, 13, 9), (1, 3, 2)])
def test_pad_to_multiple_and_crop_per_axis(size: tuple[int, int, int]) -> None:
    x = torch.randn(1, 2, *size)
    padded, orig = pad_to_multiple(x, (2, 8, 4))
    assert orig == size
    assert [n % m for n, m in zip(padded.shape[2:], (2, 8, 4), strict=True)] == [0, 0, 0]
    assert all(0 <= p - n < m for p, n, m in zip(padded.shape[2:], size, (2, 8, 4), strict=True))
    assert torch.equal(crop_to(padded, orig), x)
    small = torch.randn(1, 2, 3, 4, 5)
    centred = pad_like(small, padded)
    assert centred.shape[2:] == padded.shape[2:]


# ------------------------------------------------------------------ 3-D nets


def nets(in_channels: int, num_classes: int, bilinear: bool, **kwargs) -> list[nn.Module]:
    return [
        UNet3D(in_channels, num_classes, base_channels=4, bilinear=bilinear, **kwargs),
        NestedUNet3D(in_channels, num_classes, base_channels=4, bilinear=bilinear, **kwargs),
    ]


@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize(
    ("shape", "num_classes"), [((2, 1, 8, 12, 16), 1), ((2, 2, 7, 13, 9), 3)]
)  # fmt: skip
def test_output_is_input_sized(shape: tuple[int, ...], num_classes: int, bilinear: bool) -> None:
    torch.manual_seed(0)
    for model in nets(shape[1], num_classes, bilinear):
        assert model.spatial_dims == 3 and model.margin == 0 and model.num_heads == 1
        x = torch.randn(*shape)
        out = model(x)
        assert out.shape == (shape[0], num_classes, *shape[2:])
        # the first convolution learns: gradients reach it through every level
        (out * torch.randn_like(out)).sum().backward()
        first = next(m for m in model.modules() if isinstance(m, nn.Conv3d))
        assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
        with torch.no_grad():  # a padded net: every entry point is `forward`
            model.eval()
            assert torch.equal(model.forward_same(x), model(x))
            assert torch.equal(model.forward_with_context(x), model(x))


def test_anisotropic_spacing_sets_strides_kernels_and_keeps_the_size() -> None:
    torch.manual_seed(0)
    model = UNet3D(1, 2, base_channels=4, depth=3, spacing=[5.0, 1.0, 1.0])
    assert model.pad_multiples == (2, 8, 8) and model.pad_multiple == 8
    assert [d.pool.kernel_size for d in model.downs] == [(1, 2, 2), (1, 2, 2), 2]
    assert model.inc.block[0].kernel_size == (1, 3, 3)
    assert model.downs[1].conv.block[0].kernel_size == (3, 3, 3)  # level 2: (5, 4, 4) mm
    ups = [u.up for u in model.ups]  # deep to shallow: the same factors, reversed
    assert [u.kernel_size for u in ups] == [(2, 2, 2), (1, 2, 2), (1, 2, 2)]
    assert [u.stride for u in ups] == [(2, 2, 2), (1, 2, 2), (1, 2, 2)]
    assert model.ups[-1].conv.block[0].kernel_size == (1, 3, 3)
    seen: list[torch.Size] = []
    model.inc.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    x = torch.randn(1, 1, 6, 13, 9)
    assert model(x).shape == (1, 2, 6, 13, 9)
    assert seen[0][2:] == (6, 16, 16)  # z is padded to a multiple of 2 only, not of 8
    nested = NestedUNet3D(1, 2, base_channels=4, deep_supervision=True, spacing=(5, 1, 1))
    assert nested.pad_multiples == (4, 16, 16)  # (1,2,2), (1,2,2), (2,2,2), (2,2,2)
    assert [p.kernel_size for p in nested.pools] == [(1, 2, 2), (1, 2, 2), 2, 2]
    assert nested.conv0_1.up.scale_factor == (1.0, 2.0, 2.0)
    assert all(o.shape == (1, 2, 6, 13, 9) for o in nested(x))


def test_traced_path_matches_forward_for_odd_volumes() -> None:
    model = UNet3D(2, 3, base_channels=4, spacing=(3.0, 1.0, 1.0)).eval()
    x = torch.randn(2, 2, 7, 13, 9)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_traceable(x), model(x), atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match=r"takes 3-D inputs \[B, C, D, H, W\]"):
            model.forward_traceable(torch.randn(1, 2, 16, 16))


def test_nested3d_deep_supervision_and_pruned_levels() -> None:
    torch.manual_seed(0)
    model = NestedUNet3D(1, 2, base_channels=4, deep_supervision=True)
    x = torch.randn(2, 1, 7, 13, 9)  # a batch of 2: BatchNorm of a 1x1x1 bottleneck in training
    outs = model(x)
    assert isinstance(outs, list) and len(outs) == model.num_heads == 4
    assert all(o.shape == (2, 2, 7, 13, 9) for o in outs)
    sum(o.sum() for o in outs).backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in model.heads)
    model.eval()
    with torch.no_grad():
        full = model(x)
        ran: set[str] = set()
        for n in NODES:
            getattr(model, n).register_forward_hook(lambda *_, n=n: ran.add(n))
        for level in (1, 2, 3, 4):
            ran.clear()
            pruned = model.forward_level(x, level)
            assert ran == {f"conv{i}_{j}" for i in range(5) for j in range(5) if i + j <= level}
            torch.testing.assert_close(pruned, full[level - 1])
    with pytest.raises(ValueError, match="deep_supervision"):
        NestedUNet3D(1, 2, base_channels=4).check_level(2)
    assert UNet3D.spatial_dims == NestedUNet3D.spatial_dims == 3
    with pytest.raises(ValueError, match="prunes UNet\\+\\+ only"):
        UNet3D(1, 2, base_channels=4).check_level(2)


def test_nested3d_checkpointing_gives_the_same_gradients() -> None:
    x = torch.randn(2, 1, 4, 8, 8)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = NestedUNet3D(1, 2, base_channels=4, checkpointing=checkpointing)
        model(x).square().mean().backward()
        grads.append(model.conv0_0.block[0].weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("name", ["unet3d", "nested3d"])
def test_configs_build_the_3d_nets(name: str) -> None:
    """`arch=unet3d|nested3d` composes (spacing null without data.spacing, else the data's)
    and builds through the registry; the head is what the class count shapes."""
    plain = to_plain(compose_train([f"arch={name}", "arch.base_channels=4"]).arch)
    assert plain["spacing"] is None and plain["base_channels"] == 4
    assert ARCHITECTURES[name].spatial_dims == arch_spatial_dims(plain) == 3  # before building
    assert arch_spatial_dims({"name": name.removesuffix("3d")}) == 2
    net = build_net(plain)
    assert net.pad_multiples == (2**net.depth,) * 3
    cfg = compose_train([f"arch={name}", "arch.base_channels=4", "+data.spacing=[4.0,1.0,1.0]"])
    thick = build_net(to_plain(cfg.arch))
    assert thick.strides[0] == (1, 2, 2)
    out = thick.eval()(torch.randn(1, cfg.arch.in_channels, 5, 11, 10))
    outs = out if isinstance(out, list) else [out]
    assert [o.shape for o in outs] == [(1, cfg.arch.num_classes, 5, 11, 10)] * thick.num_heads
    parts = net.parts()
    assert {n for n, p in parts.items() if p == "head"} == {
        n for n in parts if n.startswith(("head.", "heads."))
    }
    paper = compose_train([f"arch={name}", "scale=paper"]).arch
    assert paper.base_channels == 32 and (name != "unet3d" or paper.depth == 3)


# ------------------------------------------------------------------ 2-D nets unchanged


def keys_digest(model: nn.Module) -> tuple[int, str]:
    entries = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    return len(entries), hashlib.sha256(repr(entries).encode()).hexdigest()


def test_2d_state_dict_keys_are_pinned() -> None:
    """The 2-D nets' state-dict names and shapes, as main had them before the 3-D nets (old
    checkpoints load): the digests are of `[(name, shape), ...]` in order."""
    unet = UNet(1, 2, base_channels=4, depth=4)
    state = unet.state_dict()
    assert state["inc.block.0.weight"].shape == (4, 1, 3, 3)
    assert state["downs.3.conv.block.3.weight"].shape == (64, 64, 3, 3)
    assert state["ups.0.up.weight"].shape == (64, 32, 2, 2)
    assert state["ups.0.conv.block.1.num_batches_tracked"].shape == ()
    assert state["head.weight"].shape == (2, 4, 1, 1)
    assert keys_digest(unet) == (
        118, "effe0b932a0e20f2f2e3d04379522fd3732a43fe6ca449d1524907ca61652e7b"
    )  # fmt: skip
    nested = NestedUNet(1, 2, base_channels=4, deep_supervision=True)
    state = nested.state_dict()
    assert state["conv2_2.conv.block.0.weight"].shape == (16, 64, 3, 3)
    assert state["conv4_0.block.4.running_var"].shape == (64,)
    assert state["heads.2.weight"].shape == (2, 4, 1, 1)
    assert keys_digest(nested) == (
        188, "f0d218f54a95c589c8d4bb33961579dc54d371776edda6d1f1b1ebfb2bafc66f"
    )  # fmt: skip
    assert unet.spatial_dims == nested.spatial_dims == 2
    assert unet.pad_multiples == nested.pad_multiples == (16, 16) and unet.pad_multiple == 16
    assert not any(isinstance(m, (nn.Conv3d, nn.BatchNorm3d)) for m in unet.modules())


# ------------------------------------------------------------------ benchmark row


def test_benchmark_models_table_has_a_3d_row() -> None:
    from unet_seg.bench import models as bench_models

    assert bench_models.volume_side(128) == 32 and bench_models.volume_side(64) == 16
    arch = to_plain(compose_train(["arch=unet3d"]).arch)
    rows, notes = bench_models.measure_models(
        ["unet3d", "unet3d_d4"], {"unet3d": arch}, {"ce_weight": 0.5, "dice_weight": 0.5},
        [64], 2, 4, torch.device("cpu"), 0, 1, 1,
    )  # fmt: skip
    assert notes == [] and [r["name"] for r in rows] == ["unet3d", "unet3d_d4"]
    for row in rows:
        assert row["spatial_dims"] == 3 and row["size"] == row["input_size"] == 16
        assert row["params"] > 0 and row["gflop_train_per_image"] > row["gflop_fwd_per_image"] > 0
        assert row["seconds_per_step"] > 0
    assert rows[1]["params"] > rows[0]["params"]  # one level deeper


def test_fast_path_channels_last_on_a_3d_net() -> None:
    """`fast=channels_last` on a 3-D net: NDHWC weights (a 5-D tensor has no NHWC), the same
    logits."""
    from unet_seg.module import apply_fast_path

    torch.manual_seed(0)
    net = UNet3D(1, 2, base_channels=4).eval()
    x = torch.randn(1, 1, 8, 12, 16)
    with torch.no_grad():
        before = net(x)
        apply_fast_path(net, channels_last=True)
        after = net(x)
    assert net.inc.block[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
