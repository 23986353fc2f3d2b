"""Export a checkpoint for deployment without unet-seg:
`python -m unet_seg.export ckpt=best.ckpt format=onnx|pt2|torchscript [level=L] [output=PATH]`,
or `format=bioimageio`: a bioimage.io model package for Fiji, ilastik, napari and QuPath
(`unet_seg.bioimageio`, docs/bioimageio.md).

The exported graph takes normalised `float32 [B, C, H, W]` images, with batch,
height and width dynamic, and returns logits `[B, K, H, W]` (softmax over K, or a
sigmoid when K = 1). It pads H and W to a multiple of `2 ** depth` by reflection
and crops the logits back, as the PyTorch nets do, so any side of at least
`2 ** depth` pixels works. UNet++ exports its deepest head, or `level=L` pruned.
The class names, mask values and normalisation ride along as metadata: ONNX
`metadata_props`, pt2 (`torch.export`, loaded with `torch.export.load`) and TorchScript
the extra file `unet_seg.json`. TorchScript is deprecated upstream: pt2 is its successor,
and TorchScript stays only while `torch.jit` still works.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from unet_seg import __version__
from unet_seg.config import CONF_DIR
from unet_seg.inference import load_for_inference
from unet_seg.models.base import SegNet
from unet_seg.module import SegModule
from unet_seg.onnx_export import dynamic_shapes, export_onnx

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt", "bioimageio": ".zip"}
EXTRA_FILE = "unet_seg.json"
TOLERANCE = 1e-4


class ExportNet(nn.Module):
    """The net with shape-generic padding, for tracing (`SegNet.forward_traceable`).

    The padding is computed from the traced input sizes, so the graph keeps H and W
    dynamic; the net inside never takes its own (data-dependent) padding branch.

    Args:
        net: a net from the registry.
        level: UNet++ pruning level, or None for the deepest head.
    Shape:
        `[B, C, H, W]` -> `[B, K, H, W]` logits.
    """

    def __init__(self, net: SegNet, level: int | None = None) -> None:
        super().__init__()
        self.net, self.level = net, level

    def forward(self, x: Tensor) -> Tensor:
        return self.net.forward_traceable(x, self.level)


def export_metadata(module: SegModule, level: int | None) -> dict[str, str]:
    """What a deployment needs besides the weights, as strings (JSON for lists/dicts)."""
    contract = module.contract
    values = {
        "producer": f"unet-seg {__version__}",
        "architecture": module.hparams.arch,
        "level": level,
        "class_names": list(contract.class_names),
        "mask_values": list(contract.mask_values),
        "mask_format": contract.mask_format,
        "mask_colors": contract.mask_colors,
        "normalization": {
            **contract.normalization,
            "formula": "(to_unit_range(pixels) - mean) / std; intensity mode range: pixels / "
            "255 (8-bit) or / 65535 (16-bit); percentile: each image's low..high percentiles "
            "to 0..1, clipped",
        },
        "input": f"float32 [B, {contract.in_channels}, H, W] normalised; H, W >= "
        f"{module.net.min_side}",
        "output": (
            "logits [B, 1, H, W]: sigmoid > 0.5 is class 1"
            if contract.sigmoid
            else f"logits [B, {contract.out_channels}, H, W]: argmax over classes"
        ),
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def export(cfg: DictConfig) -> dict[str, str | float]:
    """Export `cfg.ckpt` to `cfg.format`; check the file against PyTorch when `cfg.check`.

    Returns:
        `{"path": written file, "max_abs_diff": vs PyTorch on a check input (or NaN)}`.
    """
    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt}: choose one of {', '.join(FORMATS)}")
    level = cfg.get("level")
    module = load_for_inference(cfg.ckpt, "cpu", level)
    wrapper = ExportNet(module.net, level).eval()
    output = Path(cfg.output) if cfg.get("output") else Path(cfg.ckpt).with_suffix(FORMATS[fmt])
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "bioimageio":  # a package, checked by bioimageio.core: unet_seg.bioimageio
        from unet_seg.bioimageio import export_package

        path = export_package(cfg, module, output)
        return {"path": str(path), "max_abs_diff": float("nan")}
    metadata = export_metadata(module, level)
    channels, multiple = module.contract.in_channels, module.net.pad_multiple
    side = module.net.min_side + multiple
    example = torch.zeros(1, channels, side, side)
    if fmt == "onnx":
        export_onnx(wrapper, example, output, metadata, int(cfg.get("opset", 18)))
    elif fmt == "pt2":
        export_pt2(wrapper, example, output, metadata)
    else:
        log.warning("TorchScript is deprecated in PyTorch: format=pt2 (torch.export) replaces it")
        export_torchscript(wrapper, example, output, metadata)
    result: dict[str, str | float] = {"path": str(output), "max_abs_diff": float("nan")}
    if cfg.get("check", True):
        # a batch of 2 at a size the net must pad, unlike the traced example
        x = torch.randn(2, channels, side + multiple + 5, side + 3)
        diff = compare_with_pytorch(module, output, fmt, x)
        result["max_abs_diff"] = diff
        if not diff < TOLERANCE:
            raise RuntimeError(
                f"{output}: exported model differs from PyTorch by {diff:.3g} (max abs, "
                f"input {tuple(x.shape)}), above {TOLERANCE}; the export is not usable"
            )
        log.info(
            "checked %s against PyTorch on %s: max abs diff %.2e", output, tuple(x.shape), diff
        )
    log.info("wrote %s", output)
    return result


def export_pt2(wrapper: nn.Module, example: Tensor, output: Path, metadata: dict[str, str]) -> None:
    """A `torch.export` program (`torch.export.save`); the metadata is the JSON extra file
    `unet_seg.json`. Load it with `torch.export.load(path).module()`."""
    batch = example.repeat(2, 1, 1, 1)  # a batch of 1 would be taken for a fixed size
    program = torch.export.export(wrapper, (batch,), dynamic_shapes=dynamic_shapes())
    torch.export.save(program, str(output), extra_files={EXTRA_FILE: json.dumps(metadata)})


def export_torchscript(
    wrapper: nn.Module, example: Tensor, output: Path, metadata: dict[str, str]
) -> None:
    """TorchScript by tracing; the metadata is the JSON file `_extra_files["unet_seg.json"]`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation and tracer warnings
        traced = torch.jit.trace(wrapper, (example,))
        torch.jit.save(traced, str(output), _extra_files={EXTRA_FILE: json.dumps(metadata)})


def load_exported(path: str | Path, fmt: str):
    """A callable `[B, C, H, W]` float32 array/tensor -> logits NumPy array, and its metadata."""
    if fmt == "onnx":
        import onnxruntime as ort  # optional: pip install ".[export]"

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map

        def run_onnx(x: np.ndarray | Tensor) -> np.ndarray:
            x = x.numpy() if isinstance(x, Tensor) else x
            return session.run(None, {"image": np.ascontiguousarray(x, np.float32)})[0]

        return run_onnx, meta
    files = {EXTRA_FILE: ""}
    if fmt == "pt2":
        net = torch.export.load(str(path), extra_files=files).module()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    meta = json.loads(files[EXTRA_FILE])

    def run_torch(x: np.ndarray | Tensor) -> np.ndarray:
        with torch.no_grad():
            return net(torch.as_tensor(x, dtype=torch.float32)).numpy()

    return run_torch, meta


def compare_with_pytorch(module: SegModule, path: Path, fmt: str, x: Tensor) -> float:
    """Max absolute difference of the exported logits from `SegModule.forward` on `x`."""
    with torch.no_grad():
        expected = module(x).numpy()
    run, _ = load_exported(path, fmt)
    got = run(x)
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got - expected).max())


@hydra.main(config_path=CONF_DIR, config_name="export", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        export(cfg)
    except (ValueError, FileNotFoundError) as refused:  # a format, a checkpoint, an image
        log.debug("refused", exc_info=True)
        sys.exit(f"{refused}")  # the message alone, on stderr; exit status 1


if __name__ == "__main__":
    main()
