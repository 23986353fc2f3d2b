"""Pretrained encoders (issue 24): torchvision's key layout, weight loading and refusals,
first-conv adaptation, the hub path (file://, nothing downloads), and `EncoderUNet`."""

from __future__ import annotations

import hashlib
import json
import struct
import tracemalloc
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_train
from unet_seg.models.encoder_unet import EncoderUNet
from unet_seg.models.encoders import build_encoder
from unet_seg.models.encoders.weights import (
    EncoderWeightsError,
    adapt_first_conv,
    load_encoder_weights,
    read_safetensors,
)
from unet_seg.models.registry import weight_problems
from unet_seg.run_dir import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")

# ------------------------------------------------------------------ torchvision's layout,
# listed here from the published architectures (He et al., 2016, Table 1; Liu et al., 2022),
# independently of the encoders' code.


def _bn(keys: dict, prefix: str, c: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        keys[f"{prefix}.{name}"] = (c,)
    keys[f"{prefix}.num_batches_tracked"] = ()


def resnet_keys(counts: list[int], bottleneck: bool) -> dict[str, tuple[int, ...]]:
    """torchvision's `resnetNN().state_dict()` names -> shapes, the `fc` head included."""
    keys: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    _bn(keys, "bn1", 64)
    c_in = 64
    for stage, (planes, n) in enumerate(zip([64, 128, 256, 512], counts, strict=True)):
        out = planes * 4 if bottleneck else planes
        for j in range(n):
            p = f"layer{stage + 1}.{j}"
            if bottleneck:  # 1x1, 3x3, 1x1 x4
                convs = [(planes, c_in, 1, 1), (planes, planes, 3, 3), (out, planes, 1, 1)]
            else:
                convs = [(planes, c_in, 3, 3), (planes, planes, 3, 3)]
            for k, shape in enumerate(convs, start=1):
                keys[f"{p}.conv{k}.weight"] = shape
                _bn(keys, f"{p}.bn{k}", shape[0])
            if j == 0 and (stage > 0 or c_in != out):  # the projection shortcut
                keys[f"{p}.downsample.0.weight"] = (out, c_in, 1, 1)
                _bn(keys, f"{p}.downsample.1", out)
            c_in = out
    keys["fc.weight"], keys["fc.bias"] = (1000, c_in), (1000,)
    return keys


def convnext_tiny_keys() -> dict[str, tuple[int, ...]]:
    """torchvision's `convnext_tiny().state_dict()` names -> shapes, the classifier included."""
    dims, depths = [96, 192, 384, 768], [3, 3, 9, 3]
    keys: dict[str, tuple[int, ...]] = {
        "features.0.0.weight": (96, 3, 4, 4), "features.0.0.bias": (96,),
        "features.0.1.weight": (96,), "features.0.1.bias": (96,),
    }  # fmt: skip
    for s, (d, n) in enumerate(zip(dims, depths, strict=True)):
        for b in range(n):
            p = f"features.{2 * s + 1}.{b}"
            keys |= {f"{p}.layer_scale": (d, 1, 1), f"{p}.block.0.weight": (d, 1, 7, 7),
                     f"{p}.block.0.bias": (d,), f"{p}.block.2.weight": (d,),
                     f"{p}.block.2.bias": (d,), f"{p}.block.3.weight": (4 * d, d),
                     f"{p}.block.3.bias": (4 * d,), f"{p}.block.5.weight": (d, 4 * d),
                     f"{p}.block.5.bias": (d,)}  # fmt: skip
        if s < 3:
            p = f"features.{2 * s + 2}"
            d2 = dims[s + 1]
            keys |= {f"{p}.0.weight": (d,), f"{p}.0.bias": (d,),
                     f"{p}.1.weight": (d2, d, 2, 2), f"{p}.1.bias": (d2,)}  # fmt: skip
    keys |= {"classifier.0.weight": (768,), "classifier.0.bias": (768,),
             "classifier.2.weight": (1000, 768), "classifier.2.bias": (1000,)}  # fmt: skip
    return keys


LAYOUTS = {
    "resnet18": (resnet_keys([2, 2, 2, 2], False), "fc.", 11_689_512),
    "resnet34": (resnet_keys([3, 4, 6, 3], False), "fc.", 21_797_672),
    "resnet50": (resnet_keys([3, 4, 6, 3], True), "fc.", 25_557_032),
    "convnext_tiny": (convnext_tiny_keys(), "classifier.", 28_589_128),
}
"""encoder -> (torchvision's keys, the head's prefix, torchvision's published `num_params`)."""

PYRAMIDS = {
    "resnet18": ([64, 64, 128, 256, 512], [2, 4, 8, 16, 32]),
    "resnet34": ([64, 64, 128, 256, 512], [2, 4, 8, 16, 32]),
    "resnet50": ([64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32]),
    "convnext_tiny": ([96, 192, 384, 768], [4, 8, 16, 32]),
}


@pytest.fixture(scope="module")
def encoders() -> dict[str, torch.nn.Module]:
    """Each encoder built once (resnet50 and convnext_tiny take a while)."""
    torch.manual_seed(0)
    return {name: build_encoder(name, 3) for name in LAYOUTS}


def published(keys: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with these names and shapes: small random weights, positive running
    variances (a trained net's), counters as int64."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in keys.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = 0.05 * torch.randn(shape, generator=g)
    return state


# ------------------------------------------------------------------ layout and loading


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_encoder_has_torchvisions_key_layout(name: str, encoders: dict) -> None:
    keys, head, num_params = LAYOUTS[name]
    encoder = encoders[name]
    mine = {k: tuple(t.shape) for k, t in encoder.state_dict().items()}
    assert mine == {k: s for k, s in keys.items() if not k.startswith(head)}
    head_params = sum(torch.Size(s).numel() for k, s in keys.items() if k.startswith(head))
    assert sum(p.numel() for p in encoder.parameters()) == num_params - head_params


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_encoder_returns_its_declared_pyramid(name: str, encoders: dict) -> None:
    channels, strides = PYRAMIDS[name]
    encoder = encoders[name].eval()
    assert (encoder.out_channels, encoder.strides) == (channels, strides)
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in features] == [
        (1, c, 64 // s, 64 // s) for c, s in zip(channels, strides, strict=True)
    ]


def test_resnet34_loads_torchvisions_state_dict_without_a_missing_key(
    tmp_path: Path, encoders: dict
) -> None:
    keys = LAYOUTS["resnet34"][0]
    state = published(keys)
    path = tmp_path / "resnet34.pth"
    torch.save(state, path)
    encoder = encoders["resnet34"]
    record = load_encoder_weights(encoder, "resnet34", path)
    assert record["loaded"] == len(keys) - 2  # every key but fc's: 0 missing, 0 unexpected
    assert record["ignored"] == ["fc.weight", "fc.bias"] and record["adapted"] == []
    assert record["source"] == str(path)
    mine = encoder.state_dict()
    for key in ("conv1.weight", "layer3.5.bn2.running_var", "layer4.0.downsample.0.weight"):
        assert torch.equal(mine[key], state[key]), key
    # wrapped under "state_dict" (a training checkpoint) it loads too
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pt")
    assert load_encoder_weights(encoder, "resnet34", tmp_path / "wrapped.pt")["loaded"] == 216


def test_a_changed_key_and_a_wrong_shape_are_refused_by_name(
    tmp_path: Path, encoders: dict
) -> None:
    state = published(LAYOUTS["resnet34"][0])
    state["layer3.2.conv_1.weight"] = state.pop("layer3.2.conv1.weight")
    state["layer4.0.downsample.0.weight"] = torch.zeros(512, 128, 1, 1)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    encoder = encoders["resnet34"]
    before = encoder.conv1.weight.clone()
    with pytest.raises(EncoderWeightsError) as err:
        load_encoder_weights(encoder, "resnet34", path)
    text = str(err.value)
    assert "3 key(s) do not fit arch.encoder=resnet34" in text and str(path) in text
    assert "missing: layer3.2.conv1.weight" in text
    assert "unexpected: layer3.2.conv_1.weight" in text
    assert (
        "wrong shape: layer4.0.downsample.0.weight (512, 128, 1, 1) (expected (512, 256, 1, 1))"
        in text
    )
    assert torch.equal(encoder.conv1.weight, before)  # nothing loaded from a refused file
    # the other encoder's file: refused the same way, before any training
    arch = {
        "name": "unet_encoder",
        "in_channels": 3,
        "encoder": "resnet18",
        "encoder_weights": str(path),
    }
    (problem,) = weight_problems(arch)
    assert "do not fit arch.encoder=resnet18" in str(problem)
    assert "unexpected: layer1.2.conv1.weight" in str(problem)  # resnet34's third block


def test_files_that_are_not_weights_are_refused_with_the_fix(tmp_path: Path) -> None:
    arch = {"name": "unet_encoder", "in_channels": 1, "encoder": "resnet18"}
    (tmp_path / "w.npy").write_bytes(b"x")
    torch.save([1, 2], tmp_path / "list.pth")
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", 5) + b"notjs")
    cases = {
        str(tmp_path / "bad.safetensors"): "not a safetensors file (its header is not JSON",
        str(tmp_path / "nope.pth"): "no such file",
        str(tmp_path / "w.npy"): "give a .pth, .pt or .safetensors",
        str(tmp_path / "list.pth"): "holds a list, not a state dict",
    }
    for source, expected in cases.items():
        (problem,) = weight_problems({**arch, "encoder_weights": source})
        assert expected in str(problem) and source in str(problem)
    assert weight_problems({**arch, "encoder_weights": None}) == []


def write_safetensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    """The safetensors layout, written by hand: u64 header size, JSON header, raw bytes."""
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    names = {torch.float32: "F32", torch.int64: "I64"}
    for key, t in state.items():
        raw = t.contiguous().numpy().tobytes()
        header[key] = {"dtype": names[t.dtype], "shape": list(t.shape),
                       "data_offsets": [offset, offset + len(raw)]}  # fmt: skip
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


@pytest.mark.parametrize("in_channels", [1, 2, 4])
def test_the_first_conv_is_adapted_as_segmentation_models_pytorch_does(
    tmp_path: Path, in_channels: int
) -> None:
    state = published(LAYOUTS["resnet18"][0], seed=1)
    path = tmp_path / "resnet18.safetensors"
    write_safetensors(path, state)
    encoder = build_encoder("resnet18", in_channels)
    record = load_encoder_weights(encoder, "resnet18", path)
    rgb = state["conv1.weight"]  # [64, 3, 7, 7]
    got = encoder.conv1.weight.detach()
    assert got.shape == (64, in_channels, 7, 7)
    if in_channels == 1:  # grey repeated as RGB answers as the sum of the RGB kernels
        torch.testing.assert_close(got[:, 0], rgb.sum(dim=1))
        assert record["adapted"] == ["conv1.weight: 3 -> 1 input channels (sum)"]
    else:  # kernel i is RGB kernel i % 3, scaled by 3 / n
        for i in range(in_channels):
            torch.testing.assert_close(got[:, i], rgb[:, i % 3] * 3 / in_channels)
    assert torch.equal(encoder.layer4[1].bn2.running_mean, state["layer4.1.bn2.running_mean"])
    # the same response: a grey image through the adapted net = as RGB through the original
    x = torch.randn(1, 1, 8, 8)
    same = torch.nn.functional.conv2d(x.expand(1, 3, 8, 8), rgb, padding=3)
    torch.testing.assert_close(torch.nn.functional.conv2d(x, adapt_first_conv(rgb, 1), padding=3),
                               same, atol=1e-4, rtol=1e-4)  # fmt: skip


def _raw_safetensors(path: Path, header: object, data: bytes) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def _f32(offsets: list, shape: list | None = None) -> dict:
    return {"dtype": "F32", "shape": [2] if shape is None else shape, "data_offsets": offsets}


SAFETENSORS_DAMAGE = {  # name: (header, what the refusal says)
    "list_header": ([{"a": 1}], "its header is a JSON array, expected an object"),
    "past_the_end": ({"conv1.weight": _f32([8, 24])}, "'conv1.weight': data_offsets [8, 24]"),
    "negative": ({"a": _f32([0, 8]), "conv1.weight": _f32([-8, 16])}, "data_offsets [-8, 16]"),
    "begin_after_end": ({"conv1.weight": _f32([8, 0])}, "data_offsets [8, 0]"),
    "too_few_bytes": ({"conv1.weight": _f32([0, 8], [2, 2])}, "8 bytes for a F32 tensor"),
    "overlap": ({"a": _f32([0, 8]), "conv1.weight": _f32([4, 12])}, "'a' and 'conv1.weight'"),
    "not_an_entry": ({"conv1.weight": [0, 8]}, "expected an object with dtype, shape"),
    "float_offsets": ({"conv1.weight": _f32([0.0, 8.0])}, "expected [begin, end], integers"),
    "bool_shape": ({"conv1.weight": _f32([0, 8], [True, 2])}, "a list of integers >= 0"),
    "metadata_list": ({"__metadata__": ["pt"], "a": _f32([0, 8])}, "__metadata__ is a JSON"),
    "unknown_dtype": ({"conv1.weight": {**_f32([0, 8]), "dtype": "F8"}}, "unsupported dtype"),
}


@pytest.mark.parametrize("damage", sorted(SAFETENSORS_DAMAGE))
def test_a_damaged_safetensors_header_is_one_problem_naming_the_file_and_tensor(
    tmp_path: Path, damage: str
) -> None:
    """Issue 32 #7: a list header raised AttributeError, bad offsets RuntimeError (tracebacks
    in preflight), negative offsets read other bytes silently, overlaps were accepted."""
    header, said = SAFETENSORS_DAMAGE[damage]
    path = _raw_safetensors(tmp_path / f"{damage}.safetensors", header, bytes(16))
    arch = {"name": "unet_encoder", "in_channels": 1, "encoder": "resnet18"}
    (problem,) = weight_problems({**arch, "encoder_weights": str(path)})
    assert isinstance(problem, EncoderWeightsError)
    assert str(path) in str(problem) and said in str(problem)
    assert str(problem).count(str(path)) == 1  # named once, not by each layer


def test_a_header_longer_than_its_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ValueError, match="header length 1099511627776 exceeds the file's 10"):
        read_safetensors(path)


def test_safetensors_round_trips_every_dtype_and_holds_the_file_once(tmp_path: Path) -> None:
    """Each dtype, a scalar and an empty tensor read back exactly; the data are copied
    once (the old reader held the whole file as bytes and then copied each tensor)."""
    names = {"F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16,
             "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}  # fmt: skip
    state = {name: (torch.arange(6) % 2 if t == torch.bool else torch.arange(6) * 3 - 7)
             .to(t).reshape(2, 3) for name, t in names.items()}  # fmt: skip
    state["scalar"], state["empty"] = torch.tensor(2.5), torch.zeros(0, 4)
    state["big"] = torch.randn(1 << 20)  # 4 MiB: the file's bulk
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in state.items():
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        dtype = {v: k for k, v in {**names, "F32": torch.float32}.items()}[t.dtype]
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}  # fmt: skip
        chunks.append(raw)
        offset += len(raw)
    path = _raw_safetensors(tmp_path / "all.safetensors", header, b"".join(chunks))
    tracemalloc.start()
    try:
        got = read_safetensors(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert set(got) == set(state)
    for name, t in state.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    assert peak < 1.5 * path.stat().st_size  # one copy of the data, not the file and a copy


def test_imagenet_goes_through_torch_hub_with_its_hash_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoders: dict
) -> None:
    """The hub path, from a file:// URL: the file's name carries its SHA-256 prefix (as
    torchvision's do), the copy lands in $TORCH_HOME/hub/checkpoints, and a file whose
    hash does not match its name is refused."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    state = published(LAYOUTS["resnet18"][0], seed=2)
    staging = tmp_path / "staging.pth"
    torch.save(state, staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    good = tmp_path / "served" / f"resnet18-{digest[:8]}.pth"
    good.parent.mkdir()
    staging.rename(good)
    encoder = encoders["resnet18"]
    record = load_encoder_weights(encoder, "resnet18", "imagenet", url=good.as_uri())
    assert record["loaded"] == 120 and record["source"] == f"imagenet ({good.as_uri()})"
    assert (tmp_path / "torch_home" / "hub" / "checkpoints" / good.name).is_file()
    assert torch.equal(encoder.conv1.weight, state["conv1.weight"])
    bad = good.with_name("resnet18-deadbeef.pth")
    bad.write_bytes(good.read_bytes())
    with pytest.raises(EncoderWeightsError, match="cannot fetch .*resnet18-deadbeef.pth.*hash"):
        load_encoder_weights(encoder, "resnet18", "imagenet", url=bad.as_uri())


# ------------------------------------------------------------------ the net


@pytest.mark.parametrize("encoder", ["resnet18", "convnext_tiny"])
def test_the_net_answers_every_pixel_of_odd_sizes(encoder: str) -> None:
    net = EncoderUNet(1, 3, encoder, base_channels=2, deep_supervision=True).eval()
    assert net.num_heads == 4 and net.margin == 0
    with torch.no_grad():
        outs = net(torch.randn(2, 1, 37, 45))
        traced = net.forward_traceable(torch.randn(1, 1, 33, 50))
    assert [tuple(o.shape) for o in outs] == [(2, 3, 37, 45)] * 4
    assert traced.shape == (1, 3, 33, 50)
    assert net.encoder_modules() == [net.encoder] and net.head_modules() == [net.heads]


def test_a_training_step_reaches_the_encoder() -> None:
    torch.manual_seed(0)
    net = EncoderUNet(3, 2, "resnet18", base_channels=2).train()
    before = net.encoder.conv1.weight.detach().clone()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 2, (2, 32, 32))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    assert net.encoder.conv1.weight.grad.abs().sum() > 0
    assert net.encoder.layer4[1].conv2.weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(net.encoder.conv1.weight, before)


def test_a_run_with_a_weights_file_records_what_loaded_and_refuses_a_wrong_one(
    tmp_path: Path,
) -> None:
    """Preflight refuses a file that does not fit before anything is written; a fitting one
    loads into the run's net and is recorded in encoder_init.json."""
    from unet_seg.build import build_module, preflight
    from unet_seg.finetune import init_encoder, problems

    good, bad = tmp_path / "r18.pth", tmp_path / "r34.pth"
    torch.save(published(LAYOUTS["resnet18"][0]), good)
    torch.save(published(LAYOUTS["resnet34"][0]), bad)
    base = ["data.synthetic.num_images=4", "data.synthetic.size=32", "data.crop_size=32",
            "arch=unet_encoder", "arch.encoder=resnet18", "arch.base_channels=2",
            f"data.root={tmp_path / 'data'}", "logger=none"]  # fmt: skip
    run = RunDir(tmp_path / "run")
    cfg = compose_train([*base, f"arch.encoder_weights={bad}", f"run_dir={run.path}"])
    with pytest.raises(
        ValueError, match=r"arch.encoder_weights=.*r34.pth: \d+ key\(s\) do not fit"
    ):
        preflight(cfg, run)
    assert not run.encoder_init_path.exists()
    finetune = ["finetune.freeze_encoder_epochs=1", "finetune.pretrained_lr_scale=0.1"]
    cfg = compose_train([*base, f"arch.encoder_weights={good}", f"run_dir={run.path}", *finetune])
    module = build_module(cfg, preflight(cfg, run))  # finetune.* without init_from: accepted
    record = init_encoder(module, cfg, run, resumed=False)
    assert record is not None and record["loaded"] == 120
    assert record["adapted"] == ["conv1.weight: 3 -> 1 input channels (sum)"]
    assert json.loads(run.encoder_init_path.read_text()) == record
    assert module.hparams.arch["encoder_weights"] == str(good)  # the checkpoint says which
    # the pretrained encoder learns at 0.1 x optimizer.lr, the new decoder and head at lr
    optimizer = module.configure_optimizers()["optimizer"]
    groups = {g["name"]: g for g in optimizer.param_groups}
    encoder = {id(p) for p in module.net.encoder.parameters()}
    assert {id(p) for p in groups["pretrained"]["params"]} == encoder
    assert groups["pretrained"]["lr"] == pytest.approx(0.1 * groups["new"]["lr"])
    # frozen (epoch 0 of 1): the encoder's batch-norm statistics stay, the decoder's move
    module.train()
    module.on_train_batch_start(None, 0)
    encoder_bn, decoder_bn = module.net.encoder.bn1, module.net.decoder[0].conv.block[1]
    kept, moved = encoder_bn.running_mean.clone(), decoder_bn.running_mean.clone()
    module.net(torch.randn(2, 1, 32, 32))
    assert torch.equal(encoder_bn.running_mean, kept)
    assert not torch.equal(decoder_bn.running_mean, moved)
    assert module.net.decoder.training and not module.net.encoder.training
    without = compose_train([*base, f"run_dir={run.path}", *finetune])
    (problem,) = problems(without)  # no pretrained encoder, no init_from: refused
    assert "arch.encoder_weights=imagenet|PATH" in str(problem)


def test_a_pretrained_run_plans_imagenets_normalisation_and_predicts_from_its_checkpoint(
    tmp_path: Path,
) -> None:
    """data=auto with arch.encoder_weights=PATH: the plan takes ImageNet's mean and std (and
    1/255 for 8-bit images) with its reason; the run trains; its checkpoint alone predicts
    (the weights file gone) exactly what the net does on the image so normalised."""
    import cv2

    from tests.conftest import write_folder
    from unet_seg.api import load_model
    from unet_seg.module import SegModule
    from unet_seg.train import train

    root = write_folder(tmp_path / "data", n=4, size=(32, 32), channels=3)
    weights = tmp_path / "r18.pth"
    torch.save(published(LAYOUTS["resnet18"][0]), weights)
    run = RunDir(tmp_path / "run")
    cfg = compose_train(["data=auto", f"data.root={root}", f"run_dir={run.path}",
                         "data.train_repeats=1", "arch=unet_encoder", "arch.encoder=resnet18",
                         "arch.base_channels=2",
                         f"arch.encoder_weights={weights}", "trainer.max_epochs=1",
                         "final_eval=false", "logger=none",
                         "callbacks.validation_images.num_samples=0"])  # fmt: skip
    train(cfg)
    plan = json.loads((run.path / RunDir.PLAN).read_text())["plan"]
    assert plan["mean"]["value"] == [0.485, 0.456, 0.406]
    assert plan["std"]["value"] == [0.229, 0.224, 0.225]
    assert plan["intensity"]["value"] == {"mode": "range"}
    assert "pretrained on ImageNet" in plan["mean"]["why"]
    assert json.loads(run.encoder_init_path.read_text())["loaded"] == 120
    weights.unlink()  # the checkpoint alone
    module = SegModule.from_checkpoint(run.last).eval()
    image = cv2.imread(str(root / "images" / "img00.png"), cv2.IMREAD_UNCHANGED)
    assert module.contract.mean == [0.485, 0.456, 0.406]
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # [H, W, 3] uint8, as the readers give
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = (torch.from_numpy(rgb).permute(2, 0, 1) / 255 - mean) / std  # [3, H, W]
    with torch.no_grad():
        expected = module.net(x[None]).argmax(1)[0].numpy()
    predicted = load_model(run.last, device="cpu", mode="whole").labels(rgb)
    assert (predicted == expected).all() and predicted.shape == (32, 32)


def test_fine_tuning_from_an_encoder_run_need_not_repeat_its_encoder_weights() -> None:
    """init_from replaces every weight, so where the encoder's first weights came from does
    not have to agree; the encoder itself does."""
    from unet_seg.finetune import check_source

    source = {"name": "unet_encoder", "in_channels": 3, "num_classes": 2, "encoder": "resnet34",
              "encoder_weights": "imagenet", "base_channels": 16}  # fmt: skip
    check_source(source, {**source, "encoder_weights": None, "num_classes": 3}, "best.ckpt")
    with pytest.raises(ValueError, match="arch.encoder=resnet34"):
        check_source(source, {**source, "encoder": "resnet18"}, "best.ckpt")
