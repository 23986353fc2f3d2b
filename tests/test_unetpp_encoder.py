"""UNet++'s nested decoder on a pretrained encoder (`arch=unetpp_encoder`, issue 24): shapes
for every encoder, the deep-supervision heads, the encoder shared with `arch=unet_encoder`
(the same weight files load), pruned inference equal to the full net's heads, and a short
run of `python -m unet_seg.train` with a weights file and a frozen encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.forked import Forker
from tests.test_encoders import LAYOUTS, published
from unet_seg.models.encoder_unet import EncoderUNet
from unet_seg.models.encoders.weights import EncoderWeightsError
from unet_seg.models.registry import build_net, weight_problems
from unet_seg.models.unetpp_encoder import EncoderNestedUNet, PyramidNode

pytestmark = pytest.mark.usefixtures("one_thread")

ENCODERS = ["resnet18", "resnet34", "resnet50", "convnext_tiny"]
TOPS = {"resnet18": [1, 2, 3, 4, 5], "resnet34": [1, 2, 3, 4, 5], "resnet50": [1, 2, 3, 4, 5],
        "convnext_tiny": [2, 3, 4, 5]}  # fmt: skip
"""encoder -> the top nodes x0_L that exist (L: the encoder has stride 2**L)."""


def net(encoder: str, in_channels: int = 1, num_classes: int = 3, **kwargs) -> EncoderNestedUNet:
    arch = {"name": "unetpp_encoder", "in_channels": in_channels, "num_classes": num_classes,
            "encoder": encoder, "base_channels": 2, **kwargs}  # fmt: skip
    return build_net(arch)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_encoder_gives_a_head_per_top_node_at_full_size(encoder: str) -> None:
    """1 and 3 input channels, an odd size (padded to 64 x 64 inside): one full-size head
    per top node x0_j that exists, shallow to deep; without deep supervision, one head."""
    torch.manual_seed(0)
    for in_channels in (1, 3):
        deep = net(encoder, in_channels, deep_supervision=True).eval()
        single = net(encoder, in_channels, deep_supervision=False).eval()
        x = torch.randn(2, in_channels, 37, 45)
        with torch.no_grad():
            outs, out = deep(x), single(x)
        assert deep.levels == TOPS[encoder] and deep.num_heads == len(TOPS[encoder])
        assert [tuple(o.shape) for o in outs] == [(2, 3, 37, 45)] * len(TOPS[encoder])
        assert single.num_heads == 1 and out.shape == (2, 3, 37, 45)
    nodes = {name for name, m in deep.named_modules() if isinstance(m, PyramidNode)}
    expected = {f"conv{i}_{j}" for i in range(5) for j in range(1, 6) if i + j <= 5}
    # a node needs its deep input: ConvNeXt has no stride-2 feature x1_0, so no x0_1
    assert nodes == (expected - {"conv0_1"} if encoder == "convnext_tiny" else expected)


def test_node_widths_follow_the_dense_skips() -> None:
    """x{i}_{j} takes the encoder feature at its stride, every earlier node of its row and
    the upsampled deeper node: resnet34 at base 16 (widths 16, 32, 64, 128, 256)."""
    model = net("resnet34", base_channels=16)

    def in_channels(node: PyramidNode) -> int:
        return node.conv.block[0].in_channels

    # x0_5: x0_1..x0_4 (16 each) + up(x1_4) (32); no encoder feature at stride 1
    assert in_channels(model.conv0_5) == 4 * 16 + 32
    # x1_3: the stem's 64 + x1_1, x1_2 (32 each) + up(x2_2) (64)
    assert in_channels(model.conv1_3) == 64 + 2 * 32 + 64
    # x4_1: layer3's 256 + up(layer4) (512)
    assert in_channels(model.conv4_1) == 256 + 512
    assert model.conv0_1.conv.block[0].in_channels == 64  # up(x1_0) alone
    convnext = net("convnext_tiny", base_channels=16)
    assert convnext.conv0_1 is None
    assert in_channels(convnext.conv1_1) == 96  # up(x2_0), stage 1 at stride 4, alone: no x1_0
    assert in_channels(convnext.conv0_2) == 32  # up(x1_1) alone: no x0_0, no x0_1


@pytest.mark.parametrize("encoder", ENCODERS)
def test_the_encoder_is_unet_encoders_so_the_same_files_load(encoder: str) -> None:
    nested, unet = net(encoder), EncoderUNet(1, 3, encoder, base_channels=2)
    shapes = {k: v.shape for k, v in nested.encoder.state_dict().items()}
    assert shapes == {k: v.shape for k, v in unet.encoder.state_dict().items()}
    parts = nested.parts()
    assert {k for k, p in parts.items() if p == "encoder"} == {f"encoder.{k}" for k in shapes}
    assert {k for k, p in parts.items() if p == "head"} == {
        k for k in nested.state_dict() if k.startswith("heads.")
    }


def test_a_weights_file_loads_as_for_unet_encoder_and_a_wrong_one_is_refused(
    tmp_path: Path,
) -> None:
    good, bad = tmp_path / "r34.pth", tmp_path / "r18.pth"
    state = published(LAYOUTS["resnet34"][0])
    torch.save(state, good)
    torch.save(published(LAYOUTS["resnet18"][0]), bad)
    model = net("resnet34", in_channels=3, encoder_weights=str(good))
    record = model.load_encoder_weights()
    assert record["loaded"] == 216 and record["adapted"] == []
    assert torch.equal(model.encoder.layer4[2].conv2.weight, state["layer4.2.conv2.weight"])
    assert net("resnet34").load_encoder_weights() is None  # no weights: nothing read
    arch = {"name": "unetpp_encoder", "in_channels": 3, "encoder": "resnet34"}
    assert weight_problems({**arch, "encoder_weights": str(good)}) == []
    (problem,) = weight_problems({**arch, "encoder_weights": str(bad)})  # before training
    assert isinstance(problem, EncoderWeightsError) and "layer3.2.conv1.weight" in str(problem)


@pytest.mark.parametrize("encoder", ["resnet18", "convnext_tiny"])
def test_pruned_inference_is_the_full_nets_head_and_runs_only_its_nodes(encoder: str) -> None:
    torch.manual_seed(0)
    model = net(encoder, deep_supervision=True).eval()
    x = torch.randn(2, 1, 64, 64)
    ran: list[str] = []
    nodes = {name: m for name, m in model.named_modules() if isinstance(m, PyramidNode)}
    for name, m in nodes.items():
        m.register_forward_hook(lambda *_, name=name: ran.append(name))
    # the encoder's stages by the stride they end at: ResNet's stem and layer1..4,
    # ConvNeXt's features.1, .3, .5, .7
    stages = ([model.encoder.bn1, *(getattr(model.encoder, f"layer{k}") for k in range(1, 5))]
              if encoder.startswith("resnet") else list(model.encoder.features)[1::2])  # fmt: skip
    strides: list[int] = []
    for stride, stage in zip(model.encoder.strides, stages, strict=True):
        stage.register_forward_hook(lambda *_, stride=stride: strides.append(stride))
    with torch.no_grad():
        full = model(x)
        assert strides == model.encoder.strides  # the full net runs the whole encoder
        for k, level in enumerate(model.levels):
            ran.clear()
            strides.clear()
            pruned = model.forward_level(x, level)
            torch.testing.assert_close(pruned, full[k], rtol=0, atol=0)
            i_plus_j = {name: sum(map(int, name.removeprefix("conv").split("_"))) for name in nodes}
            assert sorted(ran) == sorted(n for n in nodes if i_plus_j[n] <= level)
            assert strides == [s for s in model.encoder.strides if s <= 2**level]  # no deeper
            traced = model.forward_traceable(x[:1, :, :40, :50], level=level)  # export's path
            assert traced.shape == (1, 3, 40, 50)
    used = [model.parameters_at_level(level) for level in model.levels]
    assert used == sorted(used) and used[-1] == sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for h in model.heads[:-1] for p in h.parameters()
    )
    # the shallowest level leaves out the deepest stage's parameters (ResNet's layer4,
    # ConvNeXt's last stage and the downsampling before it): the bulk of the encoder
    deepest = sum(p.numel() for m in stages[-1:] for p in m.parameters())
    encoder_params = sum(p.numel() for p in model.encoder.parameters())
    assert used[0] < used[-1] - deepest and deepest > encoder_params / 3


def test_levels_that_cannot_prune_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"level must be one of \[2, 3, 4, 5\].*convnext_tiny"):
        net("convnext_tiny").check_level(1)
    with pytest.raises(ValueError, match="level 3 needs deep_supervision=True"):
        net("resnet18", deep_supervision=False).check_level(3)
    net("resnet18", deep_supervision=False).check_level(5)  # the full net's only head


def test_checkpointing_recomputes_the_nodes_to_the_same_gradients() -> None:
    torch.manual_seed(0)
    plain = net("resnet18", deep_supervision=True).train()
    recomputed = net("resnet18", deep_supervision=True, checkpointing=True).train()
    recomputed.load_state_dict(plain.state_dict())
    assert recomputed.supports_checkpointing and recomputed.checkpointing
    x = torch.randn(2, 1, 64, 64)
    for model in (plain, recomputed):
        sum(o.square().mean() for o in model(x)).backward()
    grads = [(p.grad, q.grad) for p, q in zip(plain.parameters(), recomputed.parameters(),
                                             strict=True)]  # fmt: skip
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in grads)
    # batch norm counted each batch once, not again in the recomputation
    assert torch.equal(plain.conv0_5.conv.block[1].running_mean,
                       recomputed.conv0_5.conv.block[1].running_mean)  # fmt: skip


def test_the_training_command_fits_with_a_weights_file_and_a_frozen_encoder(
    tmp_path: Path, forker: Forker
) -> None:
    """`python -m unet_seg.train arch=unetpp_encoder arch.encoder_weights=PATH` on synthetic
    data: the file loads (encoder_init.json), the encoder stays as loaded through its frozen
    epoch (batch-norm statistics included) while the decoder and heads train; the checkpoint
    alone, pruned to level 3 for inference, answers with the full net's third head."""
    from unet_seg.inference import load_for_inference

    weights = tmp_path / "r18.pth"
    state = published(LAYOUTS["resnet18"][0])
    torch.save(state, weights)
    args = [
        "-m", "unet_seg.train", "arch=unetpp_encoder", "arch.encoder=resnet18",
        "arch.base_channels=2", f"arch.encoder_weights={weights}",
        "finetune.freeze_encoder_epochs=1", "data.synthetic.num_images=6",
        "data.synthetic.size=32", "data.crop_size=32", "data.batch_size=2",
        "trainer.max_epochs=1", "final_eval=false", "logger=none",
        "callbacks.validation_images.num_samples=0", f"data.root={tmp_path / 'data'}",
        f"run_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    proc = forker.run(args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    assert json.loads((run / "encoder_init.json").read_text())["loaded"] == 120
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] > 0 and ckpt["hyper_parameters"]["arch"]["name"] == "unetpp_encoder"
    saved = ckpt["state_dict"]
    for key in ("layer4.1.conv2.weight", "layer1.0.bn1.running_mean", "bn1.running_var"):
        assert torch.equal(saved[f"net.encoder.{key}"], state[key]), key  # frozen as loaded
    # the decoder trained in train mode: its batch-norm statistics left their 0 / 1 start
    assert saved["net.conv0_5.conv.block.1.running_mean"].abs().sum() > 0
    pruned = load_for_inference(run / "checkpoints" / "last.ckpt", device="cpu", level=3)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), pruned.net(x)[2])  # heads x0_1, x0_2, x0_3, ...
