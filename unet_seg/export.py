"""Export a checkpoint for deployment without unet-seg:
`python -m unet_seg.export ckpt=best.ckpt format=onnx|torchscript [level=L] [output=PATH]`.

The exported graph takes normalised `float32 [B, C, H, W]` images, with batch,
height and width dynamic, and returns logits `[B, K, H, W]` (softmax over K, or a
sigmoid when K = 1). It pads H and W to a multiple of `2 ** depth` by reflection
and crops the logits back, as the PyTorch nets do, so any side of at least
`2 ** depth` pixels works. UNet++ exports its deepest head, or `level=L` pruned.
The class names, mask values and normalisation ride along as metadata: ONNX
`metadata_props`, TorchScript `_extra_files["unet_seg.json"]`.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from unet_seg import __version__
from unet_seg.config import CONF_DIR
from unet_seg.inference import load_for_inference
from unet_seg.models.nested_unet import DEPTH as NESTED_DEPTH
from unet_seg.models.unet_valid import valid_padding
from unet_seg.module import SegModule

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
EXTRA_FILE = "unet_seg.json"
TOLERANCE = 1e-4


class ExportNet(nn.Module):
    """The net with shape-generic padding, for tracing: pad to a multiple, run, crop.

    The padding is computed from the traced input sizes, so the graph keeps H and W
    dynamic; the net inside then always sees a multiple of `2 ** depth` and never
    takes its own (data-dependent) padding branch.

    Args:
        net: a U-Net or UNet++ from the registry.
        multiple: `2 ** depth` of the net.
        level: UNet++ pruning level, or None for the deepest head.
    Shape:
        `[B, C, H, W]` -> `[B, K, H, W]` logits.
    """

    def __init__(self, net: nn.Module, multiple: int, level: int | None = None) -> None:
        super().__init__()
        self.net, self.multiple, self.level = net, multiple, level

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        context = getattr(self.net, "margin", 0)
        if context:  # valid convolutions: mirror `context` pixels around, then to a valid side
            m = context
            ph = valid_padding(h + 2 * m, self.net.depth)
            pw = valid_padding(w + 2 * m, self.net.depth)
            x = F.pad(x, [m, m + pw, m, m + ph], mode="reflect")
            out = self.net.forward_unchecked(x)
            return out[:, :, :h, :w]
        ph = (self.multiple - h % self.multiple) % self.multiple
        pw = (self.multiple - w % self.multiple) % self.multiple
        x = F.pad(x, [0, pw, 0, ph], mode="reflect")  # [B, C, H + ph, W + pw]
        out = self.net(x) if self.level is None else self.net(x, level=self.level)
        out = out[-1] if isinstance(out, list) else out  # deep supervision: the deepest head
        return out[:, :, :h, :w]


def pad_multiple(net: nn.Module) -> int:
    """`2 ** depth`: what H and W are padded to a multiple of inside the net."""
    return 2 ** int(getattr(net, "depth", NESTED_DEPTH))


def min_side(net: nn.Module) -> int:
    """The smallest H and W the exported graph takes: `2 ** depth`, and for a valid-convolution
    net also more than its mirrored context (reflection cannot mirror more than the image)."""
    multiple = pad_multiple(net)
    return multiple + getattr(net, "margin", 0)


def export_metadata(module: SegModule, level: int | None) -> dict[str, str]:
    """What a deployment needs besides the weights, as strings (JSON for lists/dicts)."""
    hp = module.hparams
    values = {
        "producer": f"unet-seg {__version__}",
        "architecture": hp.arch,
        "level": level,
        "class_names": list(hp.class_names),
        "mask_values": list(hp.mask_values),
        "mask_format": hp.get("mask_format", "values"),
        "mask_colors": hp.get("mask_colors"),
        "normalization": {
            "mean": list(hp.normalization["mean"]),
            "std": list(hp.normalization["std"]),
            "intensity": dict(hp.normalization.get("intensity") or {"mode": "range"}),
            "formula": "(to_unit_range(pixels) - mean) / std; intensity mode range: pixels / "
            "255 (8-bit) or / 65535 (16-bit); percentile: each image's low..high percentiles "
            "to 0..1, clipped",
        },
        "input": f"float32 [B, {hp.arch['in_channels']}, H, W] normalised; H, W >= "
        f"{min_side(module.net)}",
        "output": (
            "logits [B, 1, H, W]: sigmoid > 0.5 is class 1"
            if hp.arch["num_classes"] == 1
            else f"logits [B, {hp.arch['num_classes']}, H, W]: argmax over classes"
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
    wrapper = ExportNet(module.net, pad_multiple(module.net), level).eval()
    output = Path(cfg.output) if cfg.get("output") else Path(cfg.ckpt).with_suffix(FORMATS[fmt])
    output.parent.mkdir(parents=True, exist_ok=True)
    metadata = export_metadata(module, level)
    channels, multiple = module.hparams.arch["in_channels"], pad_multiple(module.net)
    side = min_side(module.net) + multiple
    example = torch.zeros(1, channels, side, side)
    if fmt == "onnx":
        export_onnx(wrapper, example, output, metadata, int(cfg.get("opset", 18)))
    else:
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


def export_onnx(
    wrapper: nn.Module, example: Tensor, output: Path, metadata: dict[str, str], opset: int
) -> None:
    """ONNX through `torch.export` (needs `onnx` and `onnxscript`: `pip install .[export]`)."""
    import onnx  # optional: pip install ".[export]"

    dims = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    with warnings.catch_warnings(), _quiet(("torch.onnx", "onnxscript", "onnx_ir")):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, input_names=["image"], output_names=["logits"],
            dynamic_shapes={"x": dims}, opset_version=opset, verbose=False,
        )  # fmt: skip
    model = program.model_proto
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(output))


@contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """Hold the exporter's own loggers (graph passes, absent torchvision ops) at ERROR."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    meta = json.loads(files[EXTRA_FILE])

    def run_torchscript(x: np.ndarray | Tensor) -> np.ndarray:
        with torch.no_grad():
            return scripted(torch.as_tensor(x, dtype=torch.float32)).numpy()

    return run_torchscript, meta


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
    export(cfg)


if __name__ == "__main__":
    main()
