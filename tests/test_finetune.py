"""Fine-tuning (`init_from=`): what loads, what is reset, refusals, frozen encoder, learning-rate
groups, resume, and each net's encoder and head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import CONF, compose_train
from unet_seg.api import load_model
from unet_seg.build import build_module
from unet_seg.config import to_plain
from unet_seg.export import export
from unet_seg.finetune import check_source, init_from_checkpoint, problems, transfer
from unet_seg.models.registry import build_net
from unet_seg.run_dir import RunDir
from unet_seg.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = sorted(p.stem for p in (CONF / "arch").glob("*.yaml"))
TINY = [
    "data.synthetic.num_images=12", "data.synthetic.size=64", "data.crop_size=48",
    "data.batch_size=4", "arch.base_channels=4", "logger=none",
    "callbacks.validation_images.num_samples=0", "trainer.deterministic=true",
]  # fmt: skip
THREE_CLASSES = ["data.num_classes=3", "data.mask_values=[0,128,255]",
                 "data.class_names=[background,a,b]"]  # fmt: skip


def net_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A trained unet-seg run (one epoch, tiny U-Net) to fine-tune from; returns its best.ckpt."""
    root = tmp_path_factory.mktemp("source")
    cfg = compose_train([*TINY, f"data.root={root / 'data'}", f"run_dir={root / 'run'}",
                         "trainer.max_epochs=1", "final_eval=false"])  # fmt: skip
    train(cfg)
    return RunDir(root / "run").best


def fresh(tmp_path: Path, source: Path, *overrides: str):
    """A composed fine-tuning config, its module (not trained) and its run directory."""
    cfg = compose_train([*TINY, f"data.root={source.parents[2] / 'data'}",
                         f"run_dir={tmp_path / 'run'}", f"init_from={source}",
                         *overrides])  # fmt: skip
    return cfg, build_module(cfg), RunDir(cfg.run_dir)


# ------------------------------------------------------------------ what is loaded


def test_same_class_count_loads_every_tensor_head_included(tmp_path: Path, source: Path) -> None:
    cfg, module, run = fresh(tmp_path, source)
    record = init_from_checkpoint(module, cfg, run, resumed=False)
    assert record["reset"] == [] and record["unused"] == [] and record["frozen"] == []
    given = net_weights(source)
    for name, tensor in module.net.state_dict().items():
        assert torch.equal(tensor, given[name]), name
    assert run.load_init() == record  # the record a resumed run reads back


def test_other_class_count_resets_the_head_only(tmp_path: Path, source: Path) -> None:
    cfg, module, run = fresh(tmp_path, source, *THREE_CLASSES)
    before = {k: v.clone() for k, v in module.net.state_dict().items()}  # fresh, seeded init
    record = init_from_checkpoint(module, cfg, run, resumed=False)
    assert record["reset"] == record["unused"] == ["head.weight", "head.bias"]
    given = net_weights(source)
    for name, tensor in module.net.state_dict().items():
        if name.startswith("head."):
            assert tensor.shape[0] == 3 and torch.equal(tensor, before[name]), name
        else:
            assert torch.equal(tensor, given[name]), name
    assert module.hparams.finetune["reset"] == ["head.weight", "head.bias"]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_net_names_its_encoder_and_head(arch: str) -> None:
    """The head is exactly what the class count shapes; the input channels shape the encoder;
    weights then move between two class counts with the head alone reset."""
    cfg = compose_train([f"arch={arch}", "arch.base_channels=4"])
    plain = to_plain(cfg.arch)
    nets = {(c, k): build_net({**plain, "in_channels": c, "num_classes": k})
            for c, k in ((1, 2), (1, 3), (3, 2))}  # fmt: skip
    shapes = {key: {n: t.shape for n, t in net.state_dict().items()} for key, net in nets.items()}
    parts = nets[1, 2].parts()
    assert set(parts) == set(shapes[1, 2]) and set(parts.values()) == {"encoder", "decoder", "head"}
    by_classes = {n for n in parts if shapes[1, 2][n] != shapes[1, 3][n]}
    by_channels = {n for n in parts if shapes[1, 2][n] != shapes[3, 2][n]}
    assert by_classes == {n for n, p in parts.items() if p == "head"}
    assert by_channels and all(parts[n] == "encoder" for n in by_channels)
    moved = transfer(nets[1, 2], nets[1, 3])
    assert set(moved["reset"]) == by_classes
    assert len(moved["loaded"]) == len(parts) - len(by_classes)


# ------------------------------------------------------------------ refusals


def test_other_input_channels_are_refused_with_the_fix(tmp_path: Path, source: Path) -> None:
    cfg = compose_train([*TINY, f"data.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}",
                         f"init_from={source}", "data.in_channels=3"])  # fmt: skip
    refused = r"takes 1 input channel\(s\), this run's data 3 \(data.in_channels=3\).*in_channels=1"
    with pytest.raises(ValueError, match=refused):
        train(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    rgb = {"name": "unet", "in_channels": 3, "num_classes": 2, "base_channels": 4}
    with pytest.raises(ValueError, match="set data.in_channels=3 .grey images"):
        check_source(rgb, {**rgb, "in_channels": 1}, "x.ckpt")


def test_another_architecture_is_refused_naming_the_overrides(tmp_path: Path, source: Path) -> None:
    cfg = compose_train([*TINY, f"run_dir={tmp_path / 'run'}", f"init_from={source}",
                         "arch=nested", "arch.base_channels=8"])  # fmt: skip
    (err,) = problems(cfg)
    assert "its net is arch=unet (base_channels=4, depth=4, bilinear=false)" in str(err)
    assert "add arch=unet arch.base_channels=4 arch.depth=4 arch.bilinear=false" in str(err)
    cfg = compose_train([*TINY, f"init_from={source}", "arch.base_channels=8"])
    (err,) = problems(cfg)
    assert str(err).endswith("add arch.base_channels=4 to the command.")


class Payload:
    """Unpickling this runs code: it touches a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_foreign_edited_or_unsafe_checkpoints_are_refused(tmp_path: Path, source: Path) -> None:
    ckpt = torch.load(source, weights_only=True)
    foreign = {k: v for k, v in ckpt.items() if k != "unet_seg_format"}
    edited = {**ckpt, "state_dict": {k: v for k, v in ckpt["state_dict"].items()
                                     if "downs.0" not in k}}  # fmt: skip
    torch.save(foreign, tmp_path / "foreign.ckpt")
    torch.save(edited, tmp_path / "edited.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": Payload(tmp_path / "pwned")},
               tmp_path / "evil.ckpt")  # fmt: skip
    expected = {
        "foreign": "not written by unet-seg", "edited": "do not fit the net it names",
        "evil": "not a loadable unet-seg checkpoint", "missing": "does not exist",
    }  # fmt: skip
    for name, message in expected.items():
        cfg = compose_train([*TINY, f"init_from={tmp_path / name}.ckpt"])
        (err,) = problems(cfg)
        assert str(err).startswith(f"init_from={tmp_path / name}.ckpt: ") and message in str(err)
    assert not (tmp_path / "pwned").exists()
    (err,) = problems(compose_train([*TINY, f"init_from={tmp_path}"]))  # a folder, not a run
    assert "a folder without a unet-seg run's checkpoints/best.ckpt" in str(err)


def test_finetune_options_are_checked(tmp_path: Path) -> None:
    (err,) = problems(compose_train(["finetune.freeze_encoder_epochs=2"]))
    assert "finetune.freeze_encoder_epochs=2 without init_from" in str(err)
    found = problems(compose_train(["finetune.freeze_encoder_epochs=-1",
                                    "finetune.pretrained_lr_scale=-0.5"]))  # fmt: skip
    assert "whole number of epochs >= 0" in str(found[0]) and "factor >= 0" in str(found[1])
    assert problems(compose_train()) == []


# ------------------------------------------------------------------ training


def test_learning_rate_groups(tmp_path: Path, source: Path) -> None:
    scaled = "finetune.pretrained_lr_scale=0.1"
    cfg, module, run = fresh(tmp_path, source, *THREE_CLASSES, scaled, "optimizer.lr=0.01")
    init_from_checkpoint(module, cfg, run, resumed=False)
    optimizer = module.configure_optimizers()["optimizer"]
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"pretrained", "new"}
    assert groups["pretrained"]["lr"] == pytest.approx(0.001) and groups["new"]["lr"] == 0.01
    assert {id(p) for p in groups["new"]["params"]} == {id(module.net.head.weight),
                                                        id(module.net.head.bias)}  # fmt: skip
    assert len(groups["pretrained"]["params"]) == len(list(module.parameters())) - 2

    cfg, module, run = fresh(tmp_path / "same", source, scaled)  # the head is reused: pretrained
    init_from_checkpoint(module, cfg, run, resumed=False)
    (group,) = module.configure_optimizers()["optimizer"].param_groups
    assert group["name"] == "pretrained" and group["lr"] == pytest.approx(1e-4)
    cfg, module, run = fresh(tmp_path / "plain", source)
    init_from_checkpoint(module, cfg, run, resumed=False)
    (group,) = module.configure_optimizers()["optimizer"].param_groups
    assert "name" not in group and group["lr"] == 1e-3


def test_frozen_encoder_then_resume(tmp_path: Path, source: Path) -> None:
    """Epoch 1 keeps the encoder's weights and trains the rest; a resumed run (epoch 2) derives
    the freeze from the epoch, so the encoder trains from then on."""
    run = RunDir(tmp_path / "run")
    cfg = compose_train([*TINY, f"data.root={source.parents[2] / 'data'}", f"run_dir={run}",
                         f"init_from={source}", "finetune.freeze_encoder_epochs=1",
                         "trainer.max_epochs=1", "final_eval=false", *THREE_CLASSES[:1],
                         "data.mask_values=[0,255,128]",
                         "data.class_names=[bg,nucleus,none]"])  # fmt: skip
    train(cfg)
    parts = build_net(to_plain(cfg.arch)).parts()
    given, after_one = net_weights(source), net_weights(run.last)
    encoder = [n for n, p in parts.items() if p == "encoder" and "running" not in n
               and "num_batches" not in n]  # fmt: skip
    assert encoder and all(torch.equal(after_one[n], given[n]) for n in encoder)
    decoder = "ups.0.conv.block.0.weight"
    assert not torch.equal(after_one[decoder], given[decoder])
    assert run.load_init()["frozen"] == encoder

    more = ["trainer.max_epochs=2"]
    train(compose_train([f"resume={run}", *more]), overrides=more)
    after_two = net_weights(run.last)
    assert all(not torch.equal(after_two[n], after_one[n]) for n in encoder if "block.0" in n)
    saved = torch.load(run.last, weights_only=True)["hyper_parameters"]["finetune"]
    assert saved["freeze_encoder_epochs"] == 1 and saved["reset"] == ["head.weight", "head.bias"]
    assert saved["init_from"] == str(source.resolve())

    other = [f"init_from={tmp_path}", "trainer.max_epochs=3"]
    with pytest.raises(ValueError, match="a resumed run keeps where it started"):
        train(compose_train([f"resume={run}", *other]), overrides=other)


def test_a_run_directory_as_init_from_with_nested_and_the_weight_map(tmp_path: Path) -> None:
    """UNet++ with deep supervision (four heads) and the U-Net weight map: a source run, then a
    fine-tuning run from its directory; the finished fine-tuning run is not run again, and its
    checkpoint predicts (tiles, test-time augmentation) and exports as any other."""
    common = [*TINY, f"data.root={tmp_path / 'data'}", "arch=nested", "trainer.max_epochs=1",
              "loss=weighted_ce_dice"]  # fmt: skip
    train(compose_train([*common, f"run_dir={tmp_path / 'src'}", "final_eval=false"]))
    cfg = compose_train([*common, f"run_dir={tmp_path / 'ft'}", f"init_from={tmp_path / 'src'}",
                         "finetune.pretrained_lr_scale=0.5", "data.num_classes=1"])  # fmt: skip
    metrics = train(cfg)
    record = RunDir(tmp_path / "ft").load_init()
    assert record["checkpoint"] == str(RunDir(tmp_path / "src").best.resolve())
    assert record["reset"] == [f"heads.{i}.{w}" for i in range(4) for w in ("weight", "bias")]
    assert "test/dice" in metrics
    assert train(cfg) == metrics  # a sweep run again keeps what finished

    best = RunDir(tmp_path / "ft").best
    model = load_model(best, device="cpu", mode="tile", tile_size=32, tta="flips")
    image = np.random.default_rng(0).integers(0, 255, (45, 70), dtype=np.uint8)
    assert model.labels(image).shape == (45, 70)
    result = export(OmegaConf.create({"ckpt": str(best), "format": "torchscript", "output": None,
                                      "level": None, "opset": 18, "check": True}))  # fmt: skip
    assert result["max_abs_diff"] < 1e-4


def test_a_relative_init_from_resumes_from_another_directory(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`init_from` is resolved when the run starts: its config names the checkpoint wherever
    the run is resumed (or its sweep run again) from."""
    import os

    monkeypatch.chdir(tmp_path)
    run = RunDir(tmp_path / "run")
    cfg = [*TINY, f"data.root={source.parents[2] / 'data'}", f"run_dir={run}",
           f"init_from={os.path.relpath(source, tmp_path)}", "trainer.max_epochs=1",
           "final_eval=false"]  # fmt: skip
    train(compose_train(cfg))
    assert run.load_config().init_from == str(source.resolve())
    assert train(compose_train(cfg))["epochs"] == 1  # the same command: the same run
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    more = ["trainer.max_epochs=2"]
    assert train(compose_train([f"resume={run}", *more]), overrides=more)["epochs"] == 2


def test_the_table_says_why_the_head_of_the_same_classes_is_reset() -> None:
    """The same class names as one sigmoid logit: the head cannot load, and the table's
    classes line says so (2 logits -> 1)."""
    from unet_seg.finetune import init_table

    record = {"checkpoint": "best.ckpt", "loaded": ["enc"], "reset": ["head.weight"],
              "unused": ["head.weight"], "frozen": [], "freeze_encoder_epochs": 0,
              "pretrained_lr_scale": 1.0,
              "source": {"arch": {"name": "unet", "num_classes": 2},
                         "class_names": ["background", "nucleus"]}}  # fmt: skip
    parts = {"enc": "encoder", "head.weight": "head"}
    table = init_table(record, parts, ["background", "nucleus"], logits=1)
    assert "nucleus (2 logits) -> background, nucleus (1 logit, sigmoid)" in table
    assert "head           1      0     1" in table
