"""Measuring tools shared by the benchmark sections: timing, peak memory, FLOPs, host reads.

Memory is "peak above the start": the most tensor memory held at once inside
the measured block, minus what was already allocated when it began (weights,
gradients and optimizer state are therefore left out of a training step).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

AUTOCAST = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
"""Lightning's mixed precisions as `torch.autocast` dtypes."""

MEMORY_METHODS = {
    "cuda": "torch.cuda.max_memory_allocated minus memory_allocated before",
    "cpu": "torch.profiler memory events (tensor allocations, op granularity)",
}
"""How `peak_memory` measures, per device type (printed under the table)."""


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a wall-clock reading covers them (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_step(
    step: Callable[[], Any], device: torch.device, warmup: int, steps: int, repeats: int = 1
) -> float:
    """Seconds per call of `step`: the best of `repeats` means over `steps` calls, each
    after `warmup` untimed calls (the best is the run least disturbed by other work)."""
    best = float("inf")
    for _ in range(repeats):
        for _ in range(warmup):
            step()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


@dataclass
class PeakMemory:
    """Result of `peak_memory`: bytes above the start, and how they were measured."""

    bytes: int = 0
    method: str = ""


@contextmanager
def peak_memory(device: torch.device) -> Iterator[PeakMemory]:
    """Measure the peak tensor memory allocated inside the block, above what it started with.

    CUDA: the caching allocator's statistics. CPU: the allocation and free events
    that `torch.profiler` records, replayed in time order (allocations made by
    oneDNN outside PyTorch's allocator are not seen).
    """
    result = PeakMemory(method=MEMORY_METHODS["cuda" if device.type == "cuda" else "cpu"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result.bytes = torch.cuda.max_memory_allocated(device) - start
        return
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield result
    changes = sorted(
        (e.time_range.start, e.self_cpu_memory_usage)
        for e in prof.events()
        if e.self_cpu_memory_usage
    )
    held = peak = 0
    for _, change in changes:
        held += change
        peak = max(peak, held)
    result.bytes = peak


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of `fn()` (a multiply-add counts 2), as counted by
    `torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


HOST_READS = frozenset(
    {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"}
)


class HostReads(TorchFunctionMode):
    """Counts tensor values read back by Python (`.item()`, `bool(t)`, `.cpu()`, ...).

    Each such read of a tensor on a GPU makes the host wait for the GPU. On a GPU
    only reads of GPU tensors count. On a CPU every read counts except those of the
    optimizers' step counters (which PyTorch keeps on the CPU even when training on a
    GPU): an upper bound of the reads that would stall a GPU.
    """

    def __init__(
        self, device: torch.device, optimizers: Sequence[torch.optim.Optimizer] = ()
    ) -> None:
        super().__init__()
        self.count = 0
        self.names: list[str] = []
        self.cuda = device.type == "cuda"
        self.ignore = {
            id(state["step"])
            for opt in optimizers
            for state in opt.state.values()
            if isinstance(state.get("step"), torch.Tensor)
        }

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = getattr(func, "__name__", "")
        if name in HOST_READS and args and isinstance(args[0], torch.Tensor):
            tensor = args[0]
            if tensor.is_cuda if self.cuda else id(tensor) not in self.ignore:
                self.count += 1
                self.names.append(name)
        return func(*args, **(kwargs or {}))
