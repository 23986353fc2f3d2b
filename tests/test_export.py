"""Export to ONNX, pt2 (torch.export) and TorchScript: dynamic batch/height/width, metadata,
and the same logits as PyTorch (max absolute difference below 1e-4) at sizes the net must
pad."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.forked import Forker
from tests.test_inference import make_checkpoint
from unet_seg.export import export, load_exported
from unet_seg.module import SegModule

needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="ONNX export needs pip install '.[export]' (part of '.[dev]')",
)
ROOT = Path(__file__).parents[1]
# none of these is the traced 32x32 example; most are not multiples of 16
SHAPES = [(1, 45, 70), (3, 96, 128), (2, 17, 33), (1, 130, 61)]


pytestmark = pytest.mark.usefixtures("one_thread")


def config(ckpt: Path, **overrides) -> OmegaConf:
    cfg = OmegaConf.load(ROOT / "conf" / "export.yaml")
    cfg.pop("defaults")
    return OmegaConf.merge(cfg, {"ckpt": str(ckpt), **overrides})


def max_diff(module: SegModule, run, channels: int, shapes=SHAPES) -> float:
    worst = 0.0
    for batch, h, w in shapes:
        x = torch.randn(batch, channels, h, w)
        with torch.no_grad():
            expected = module(x).numpy()
        got = run(x.numpy())
        assert got.shape == expected.shape == (batch, module.hparams.arch["num_classes"], h, w)
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


@needs_onnx
@pytest.mark.parametrize("arch,level", [("unet", None), ("nested", None), ("nested", 2)])
def test_onnx_matches_pytorch_at_any_size(tmp_path: Path, arch: str, level: int | None) -> None:
    ckpt = make_checkpoint(tmp_path / f"{arch}.ckpt", arch, in_channels=3,
                           mask_values=(0, 1, 2))  # fmt: skip
    result = export(config(ckpt, format="onnx", level=level))
    path = Path(result["path"])
    assert path == ckpt.with_suffix(".onnx") and path.is_file()
    assert result["max_abs_diff"] < 1e-4  # export's own check

    module = SegModule.from_checkpoint(ckpt)
    module.inference_level = level
    run, meta = load_exported(path, "onnx")
    assert max_diff(module, run, channels=3) < 1e-4
    assert json.loads(meta["class_names"]) == ["background", "class1", "class2"]
    assert json.loads(meta["mask_values"]) == [0, 1, 2]
    assert json.loads(meta["normalization"])["mean"] == [0.5]
    assert json.loads(meta["level"]) == level
    assert json.loads(meta["architecture"])["name"] == arch


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs_onnx), "pt2", "torchscript"])
def test_valid_convolution_net_exports_its_mirrored_context(tmp_path: Path, fmt: str) -> None:
    """The exported unet_valid graph mirrors the context itself: the logits of `SegModule`
    at sides that are no accepted inputs, from the smallest it takes (`min_side` = 108) up."""
    ckpt = make_checkpoint(tmp_path / "valid.ckpt", "unet_valid")
    out = tmp_path / f"valid.{fmt}"
    assert export(config(ckpt, format=fmt, output=str(out)))["max_abs_diff"] < 1e-4
    run, meta = load_exported(out, fmt)
    assert "H, W >= 108" in meta["input"]
    shapes = [(1, 108, 131), (2, 150, 110)]
    assert max_diff(SegModule.from_checkpoint(ckpt), run, channels=1, shapes=shapes) < 1e-4


def test_torchscript_matches_pytorch_and_carries_metadata(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "n.ckpt", "nested")
    out = tmp_path / "deploy" / "model.pt"
    result = export(config(ckpt, format="torchscript", output=str(out), level=3))
    assert result["path"] == str(out) and result["max_abs_diff"] < 1e-4
    module = SegModule.from_checkpoint(ckpt)
    module.inference_level = 3
    run, meta = load_exported(out, "torchscript")
    assert max_diff(module, run, channels=1) < 1e-4
    assert json.loads(meta["mask_values"]) == [0, 255] and json.loads(meta["level"]) == 3


def test_pt2_matches_pytorch_at_any_size_and_carries_metadata(tmp_path: Path) -> None:
    """torch.export, TorchScript's successor: the same parity check as the other formats
    (UNet++ pruned to level 2 here; the valid-convolution U-Net above)."""
    level = 2
    ckpt = make_checkpoint(tmp_path / "n.ckpt", "nested", in_channels=3, mask_values=(0, 1, 2))
    result = export(config(ckpt, format="pt2", level=level))
    path = Path(result["path"])
    assert path == ckpt.with_suffix(".pt2") and path.is_file()
    assert result["max_abs_diff"] < 1e-4  # export's own check, at a size the net must pad
    module = SegModule.from_checkpoint(ckpt)
    module.inference_level = level
    run, meta = load_exported(path, "pt2")
    assert max_diff(module, run, channels=3) < 1e-4
    program = torch.export.load(str(path))  # plain PyTorch reads it, without unet-seg
    assert program.module()(torch.zeros(2, 3, 40, 24)).shape == (2, 3, 40, 24)
    assert json.loads(meta["class_names"]) == ["background", "class1", "class2"]
    assert json.loads(meta["level"]) == level


@needs_onnx
def test_export_cli_and_its_errors(tmp_path: Path, forker: Forker) -> None:
    ckpt = make_checkpoint(tmp_path / "u.ckpt")
    out = tmp_path / "u.onnx"
    proc = forker.run(  # the exporter's loggers speak while it exports, not at import
        ["-m", "unet_seg.export", f"ckpt={ckpt}", f"output={out}",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max abs diff" in proc.stdout + proc.stderr and out.is_file()
    assert "torchvision" not in proc.stderr  # the exporter's noise is kept down
    formats = "onnx, pt2, torchscript, bioimageio"
    with pytest.raises(ValueError, match=f"format=tflite: choose one of {formats}"):
        export(config(ckpt, format="tflite"))
    with pytest.raises(ValueError, match="prunes UNet\\+\\+ only"):
        export(config(ckpt, level=2))
