"""The benchmark (`python -m unet_seg.benchmark`), its measuring tools, and the fast-path
options it measures (UNet++ activation checkpointing, channels-last, `FastPath`)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import compose_train
from tests.forked import Forker
from unet_seg.bench import models as bench_models
from unet_seg.bench.measure import HostReads, count_flops, peak_memory
from unet_seg.benchmark import SECTIONS, format_table, task
from unet_seg.config import CONF_DIR
from unet_seg.models.nested_unet import NestedUNet
from unet_seg.models.registry import ARCHITECTURES
from unet_seg.models.unet import UNet
from unet_seg.module import FastPath, apply_fast_path
from unet_seg.train import build_module

# one torch thread, as `threads=1` does: steadier on a CPU shared with other jobs
pytestmark = pytest.mark.usefixtures("one_thread")


# ---- measuring tools -------------------------------------------------------------------


def test_flops_of_the_first_conv_match_a_hand_count() -> None:
    """3x3 conv, 1 -> 8 channels, 32x32 output: 2 * 1 * 9 * 8 * 32 * 32 per image."""
    net = UNet(in_channels=1, num_classes=2, base_channels=8)
    x = torch.randn(2, 1, 32, 32)
    first = net.inc.block[0]
    assert isinstance(first, torch.nn.Conv2d) and first.kernel_size == (3, 3)
    assert count_flops(lambda: first(x)) == 2 * 2 * (1 * 9) * 8 * 32 * 32


@pytest.mark.parametrize("net", [UNet(1, 2, 4), NestedUNet(1, 2, 4, deep_supervision=True)])
def test_flops_scale_with_the_pixels(net: torch.nn.Module) -> None:
    """Every layer's work is proportional to its pixels: twice the side, four times the FLOPs."""
    small = count_flops(lambda: net(torch.randn(1, 1, 32, 32)))
    large = count_flops(lambda: net(torch.randn(1, 1, 64, 64)))
    assert small > 0 and large == 4 * small


def test_peak_memory_sees_a_transient_tensor_on_cpu() -> None:
    with peak_memory(torch.device("cpu")) as mem:
        a = torch.ones(2**20)  # 4 MiB
        b = torch.ones(2**20)  # 4 MiB more: 8 MiB held at once
        del a, b
        c = torch.ones(2**19)  # 2 MiB, after the others were freed
        del c
    assert 8 * 2**20 <= mem.bytes < 9 * 2**20
    assert "profiler" in mem.method


def test_host_reads_count_value_reads_but_not_optimizer_step_counters() -> None:
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([w])
    w.sum().backward()
    opt.step()  # creates the step counter
    with HostReads(torch.device("cpu"), [opt]) as reads:
        loss = (w * 2).sum()
        loss.item()
        bool(loss > 0)
        opt.step()  # reads its step counter: not counted
    assert reads.count == 2 and sorted(reads.names) == ["__bool__", "item"]


# ---- fast-path options -----------------------------------------------------------------


def test_checkpointing_recomputes_and_keeps_gradients_and_batch_norm_statistics() -> None:
    torch.manual_seed(0)
    plain = NestedUNet(1, 2, base_channels=4, deep_supervision=True)
    ckpt = copy.deepcopy(plain)
    ckpt.checkpointing = True
    assert ckpt.checkpointing and not plain.checkpointing
    calls = {"plain": 0, "ckpt": 0}
    for name, net in (("plain", plain), ("ckpt", ckpt)):
        net.conv0_4.conv.register_forward_pre_hook(  # (recomputation may stop before the end)
            lambda *a, n=name: calls.__setitem__(n, calls[n] + 1)
        )
    x = torch.randn(2, 1, 32, 32)
    for net in (plain, ckpt):
        sum(out.square().mean() for out in net(x)).backward()
    assert calls == {"plain": 1, "ckpt": 2}  # the node ran again in the backward pass
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    for (name, s), t in zip(plain.state_dict().items(), ckpt.state_dict().values(), strict=True):
        assert torch.equal(s, t), name  # running statistics counted the batch once
    ckpt.eval()
    with torch.no_grad():
        ckpt(x)
    assert calls["ckpt"] == 3  # no recomputation outside training


def test_fast_path_options_from_config_apply_to_the_net(tmp_path: Path) -> None:
    cfg = compose_train(["arch=nested", "+fast=[channels_last,checkpointing]",
                         f"run_dir={tmp_path}", "arch.base_channels=4"])  # fmt: skip
    callback = instantiate(cfg.callbacks.fast_path)
    assert isinstance(callback, FastPath)
    module = build_module(cfg)
    callback.setup(None, module, "fit")
    assert module.net.checkpointing
    weight = module.net.conv0_0.block[3].weight  # 4 -> 4 channels (1 input channel: both)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    keys = set(build_module(cfg).state_dict())
    assert set(module.state_dict()) == keys  # checkpoints unchanged


def test_fast_path_refuses_checkpointing_for_unet() -> None:
    with pytest.raises(ValueError, match="only UNet\\+\\+"):
        apply_fast_path(UNet(1, 2, 4), checkpointing=True)


# ---- the benchmark ---------------------------------------------------------------------


def tiny_config(tmp_path: Path, **overrides: object) -> OmegaConf:
    cfg = OmegaConf.load(Path(CONF_DIR) / "benchmark.yaml")
    cfg.paths = {"output_dir": str(tmp_path)}
    del cfg["defaults"]
    tiny = {
        "arch": "unet", "size": 32, "batch": 2, "base_channels": 4, "device": "cpu", "threads": 1,
        "output": str(tmp_path / "bench.json"),
        "overhead": {"warmup": 1, "steps": 2, "repeats": 1, "count_steps": 2,
                     "probe": {"base_channels": 2, "size": 16, "steps": 2}},
        "data": {"num_images": 24, "workers": [0, 1], "images": 8},
        "models": {"names": ["unet", "nested_ds", "monai_unet"], "warmup": 0, "steps": 1},
        "inference": {"image_size": 48, "images": 1},
        "fastpath": {"options": ["channels_last", "checkpointing"], "warmup": 0, "steps": 1},
    }  # fmt: skip
    return OmegaConf.merge(cfg, tiny, overrides)


def test_benchmark_runs_every_section_and_writes_the_documented_json(tmp_path: Path) -> None:
    result = task(tiny_config(tmp_path))
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert set(saved) == {"config", "environment", "targets", "notes", "total_s", *SECTIONS}
    assert saved["environment"]["device"] == "cpu"

    o = saved["overhead"]
    for side in ("plain", "fit"):
        assert o[side]["steps_per_s"] > 0 and o[side]["images_per_s"] > 0
        assert o[side]["host_reads_per_step"] >= 0
    assert o["plain"]["host_reads_per_step"] == 0  # forward, loss, backward, step: no reads
    assert o["fit"]["epoch_end_s"] >= o["fit"]["validation_s"] > 0
    assert o["overhead_pct"] > -100 and o["overhead_median_pct"] > -100
    assert isinstance(o["met"], bool) and o["met"] == (o["overhead_median_pct"] <= 5)
    assert o["fit"]["median_step_s"] > 0 and o["plain"]["median_step_s"] > 0
    probe = o["probe"]
    assert probe["plain_ms_per_step"] > 0 and probe["fit_ms_per_step"] > 0
    assert probe["framework_ms_per_step"] == pytest.approx(
        probe["fit_ms_per_step"] - probe["plain_ms_per_step"]
    )

    d = saved["data"]
    assert [r["workers"] for r in d["loader"]] == [0, 1]
    assert all(r["images_per_s"] > 0 and r["images"] >= 8 for r in d["loader"])
    assert d["consumption_images_per_s"] > 0 and d["default_workers"] == 0
    assert d["ratio_at_default"] == pytest.approx(d["loader"][0]["over_consumption"])

    rows = {r["name"]: r for r in saved["models"]}
    expected = {"unet", "nested_ds"} | ({"monai_unet"} if bench_models.monai_available() else set())
    assert set(rows) == expected
    for r in rows.values():
        assert r["params"] > 0 and r["images_per_s"] > 0 and r["peak_mib"] > 0
        assert r["gflop_train_per_image"] > 2 * r["gflop_fwd_per_image"] > 0  # backward ~2x
        assert r["gflops_per_s"] == pytest.approx(r["gflop_train_per_image"] * r["images_per_s"])
    assert rows["nested_ds"]["gflop_fwd_per_image"] > rows["unet"]["gflop_fwd_per_image"]

    modes = [(r["mode"], r["tta"]) for r in saved["inference"]]
    assert modes == [("resize", "none"), ("resize", "flips"), ("tile", "none"), ("tile", "flips")]
    passes = {m: r["passes_per_image"] for m, r in zip(modes, saved["inference"], strict=True)}
    assert passes[("resize", "flips")] == 4 and passes[("tile", "none")] == 4  # 2 x 2 tiles
    assert all(r["images_per_s"] > 0 and r["peak_mib"] > 0 for r in saved["inference"])

    fast = {(r["arch"], r["option"]): r for r in saved["fastpath"]}
    assert set(fast) == {("unet", "none"), ("unet", "channels_last"),
                         ("nested", "none"), ("nested", "checkpointing")}  # fmt: skip
    assert fast[("nested", "none")]["speedup"] == 1.0
    assert fast[("nested", "checkpointing")]["memory_ratio"] < 0.9  # it saves memory

    table = format_table(result)
    for heading in ("a. Framework overhead", "b. Data pipeline", "c. Models", "d. Inference",
                    "e. Fast path"):  # fmt: skip
        assert heading in table


def test_models_without_monai_say_so_and_skip_its_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_models, "monai_available", lambda: None)
    arch = {"name": "unet", "in_channels": 1, "num_classes": 2, "depth": 4, "bilinear": False}
    rows, notes = bench_models.measure_models(
        ["unet", "monai_unet"], {"unet": arch}, {}, [32], 1, 4, torch.device("cpu"), 0, 1, 1
    )
    assert [r["name"] for r in rows] == ["unet"]
    assert notes and "MONAI not installed" in notes[0]


def test_paper_widths_are_the_widths_training_uses_at_scale_paper() -> None:
    for name in sorted(ARCHITECTURES):
        cfg = compose_train([f"arch={name}", "scale=paper", "run_dir=."])
        assert bench_models.paper_width(name) == cfg.arch.base_channels, name
    assert bench_models.paper_width("nested") == 32 and bench_models.paper_width("unet") == 64


def test_benchmark_refuses_unknown_sections(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown"):
        task(tiny_config(tmp_path, sections=["overhead", "gpu"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="refusing CUDA needs a machine without it")
def test_a_cuda_benchmark_refuses_cleanly_without_cuda(tmp_path: Path) -> None:
    """experiments/gpu/bench_gpu.sh asks for device=cuda: a CPU machine says why it cannot."""
    with pytest.raises(ValueError, match=r"device=cuda: this machine has no CUDA device"):
        task(tiny_config(tmp_path, device="cuda", sections=["precision"]))
    assert not (tmp_path / "bench.json").exists()


def test_precision_sweep_rows_and_fraction_of_peak(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, sections=["precision"], precision_sweep={
        "precisions": ["32-true", "bf16-mixed"], "channels_last": [False, True],
        "compile": [False], "warmup": 0, "steps": 1, "repeats": 1,
        "peak_tflops": {"32-true": 1.0},
    })  # fmt: skip
    rows = task(cfg)["precision"]
    combos = [(r["precision"], r["channels_last"]) for r in rows]
    assert combos == [("32-true", False), ("32-true", True), ("bf16-mixed", False),
                      ("bf16-mixed", True)]  # fmt: skip
    for r in rows:
        assert r["images_per_s"] > 0 and r["gflop_train_per_image"] > 0
        assert ("fraction_of_peak" in r) == (r["precision"] == "32-true")
    fp32 = rows[0]
    assert fp32["fraction_of_peak"] == pytest.approx(fp32["gflops_per_s"] / 1e3)
    assert fp32["speedup"] == 1.0  # against itself: float32, NCHW, eager
    for r in rows:
        assert r["speedup"] == pytest.approx(r["images_per_s"] / fp32["images_per_s"])
    # the training default on this device is marked: one row, as the Trainer would decide it
    from unet_seg.build import native_bf16

    expected = ("bf16-mixed" if native_bf16("cpu") else "32-true", True)
    assert [(r["precision"], r["channels_last"]) for r in rows if r["default"]] == [expected]


def test_command_line_composes_the_benchmark_config(forker: Forker) -> None:
    out = forker.run(["-m", "unet_seg.benchmark", "--cfg", "job", "size=64", "arch=nested"],
                     cwd=Path(CONF_DIR).parent)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = OmegaConf.create(out.stdout)
    assert cfg.size == 64 and cfg.arch.name == "nested" and cfg.data.root.endswith("_64px")
    assert list(cfg.sections) == ["overhead", "data", "models", "inference", "fastpath"]


def test_models_table_has_every_architecture_and_the_valid_nets_context() -> None:
    """Every registered net has a row; the valid-convolution U-Net scores the same side from
    an input larger by its context, and so costs more FLOPs per scored image."""
    base = {"in_channels": 1, "num_classes": 2, "depth": 4, "bilinear": False}
    archs = {name: {**base, "name": name} for name in ("unet", "attention_unet", "res_unet",
                                                      "unet_valid")}  # fmt: skip
    rows, _ = bench_models.measure_models(
        list(archs), archs, {}, [36], 1, 4, torch.device("cpu"), 0, 1, 1
    )
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == set(archs)
    for name in ("unet", "attention_unet", "res_unet"):
        assert by_name[name]["size"] == by_name[name]["input_size"] == 36
    valid = by_name["unet_valid"]
    assert valid["size"] == 36 and valid["input_size"] == 220  # 36 + 2 x 92, a valid side
    assert valid["params"] == by_name["unet"]["params"]
    assert valid["gflop_fwd_per_image"] > 3 * by_name["unet"]["gflop_fwd_per_image"]
    assert "in px" in bench_models_table(rows)


def bench_models_table(rows: list[dict]) -> str:
    from unet_seg.benchmark import _models_lines

    cfg = {"batch": 1, "models": {"steps": 1, "warmup": 0, "repeats": 1}}
    return "\n".join(_models_lines(rows, cfg))
