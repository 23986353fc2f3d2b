"""ONNX through `torch.export` (`pip install ".[export]"`: onnx, onnxscript), shared by
`export format=onnx` and the ONNX weights of a bioimage.io package."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn


def export_onnx(
    wrapper: nn.Module,
    example: Tensor,
    output: Path,
    metadata: dict[str, str],
    opset: int,
    dims: int = 2,
) -> None:
    """ONNX through `torch.export` (needs `onnx` and `onnxscript`: `pip install .[export]`);
    `dims`: the spatial axes, all dynamic."""
    import onnx  # optional: pip install ".[export]"

    with warnings.catch_warnings(), _quiet(("torch.onnx", "onnxscript", "onnx_ir")):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, input_names=["image"], output_names=["logits"],
            dynamic_shapes=dynamic_shapes(dims), opset_version=opset, verbose=False,
        )  # fmt: skip
    model = program.model_proto
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(output))


def dynamic_shapes(dims: int = 2) -> dict[str, dict[int, object]]:
    """Batch and the `dims` spatial axes of the input `x` left dynamic."""
    dynamic = torch.export.Dim.DYNAMIC
    return {"x": {axis: dynamic for axis in (0, *range(2, 2 + dims))}}


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
