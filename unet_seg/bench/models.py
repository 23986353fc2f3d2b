"""Models: forward+backward speed, FLOPs and peak memory of one training step, for our
U-Net and UNet++ next to MONAI's BasicUNet and BasicUNetPlusPlus at the same widths, and
our 3-D U-Net next to MONAI's 3-D BasicUNet on a cube of `volume_side(size)` voxels a side.

Every net trains on the same random batch with the project's CE + Dice loss (one term
per deep-supervision head) and Adam, outside Lightning: this section is about the nets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from unet_seg.bench.measure import AUTOCAST, count_flops, peak_memory, time_per_step
from unet_seg.config import CONF_DIR
from unet_seg.losses import build_loss
from unet_seg.models.base import SegNet
from unet_seg.models.registry import build_net
from unet_seg.models.unet_valid import next_valid_size, valid_output_size
from unet_seg.module import apply_fast_path

log = logging.getLogger(__name__)


def paper_width(arch_name: str) -> int:
    """The base width of the architecture's paper: `base_channels` in `conf/arch/<name>.yaml`
    (e.g. 64 for U-Net, 32 for UNet++)."""
    return int(OmegaConf.load(Path(CONF_DIR) / "arch" / f"{arch_name}.yaml").base_channels)


@dataclass(frozen=True)
class NetSpec:
    """A net of the models table: who made it, and how it is built from (arch, base width)."""

    label: str
    arch: str  # the project's architecture it is, or matches (MONAI): a registry name
    impl: str  # ours or MONAI
    build: Callable[[dict, int], nn.Module]  # (our arch kwargs, base width) -> net
    spatial_dims: int = 2  # 3: trained on cubes of `volume_side(size)` voxels


def _ours(
    deep_supervision: bool | None = None, depth: int | None = None, encoder: str | None = None
) -> Callable[[dict, int], nn.Module]:
    def build(arch: dict, base: int) -> nn.Module:
        kwargs = {**arch, "base_channels": base}
        if encoder is not None:  # arch=unet_encoder: randomly initialised, no weights read
            kwargs.update(encoder=encoder, encoder_weights=None)
        if deep_supervision is not None:
            kwargs["deep_supervision"] = deep_supervision
        if depth is not None:
            kwargs["depth"] = depth
        return build_net(kwargs)

    return build


def monai_available() -> str | None:
    """MONAI's version, or None when it is not installed (`pip install -e ".[bench]"`)."""
    try:
        import monai
    except ImportError:
        return None
    return str(monai.__version__)


def _monai(
    plus_plus: bool, deep_supervision: bool = False, spatial_dims: int = 2
) -> Callable[[dict, int], nn.Module]:
    """MONAI's nets with our widths `(b, 2b, 4b, 8b, 16b, b)` and our block: 3x3 conv without
    bias -> batch norm -> ReLU. Their design differs where it cannot be matched: the decoder
    steps into level 0 upsample 2b channels to 2b (ours to b), and their bilinear upsampling
    (`nontrainable`) has a 1x1 convolution before it, halving the channels inside. Their
    depth is 4 (five levels) in 2-D and 3-D alike."""

    def build(arch: dict, base: int) -> nn.Module:
        from monai.networks.nets import BasicUNet, BasicUNetPlusPlus

        b = base
        common = {
            "spatial_dims": spatial_dims,
            "in_channels": arch["in_channels"],
            "out_channels": arch["num_classes"],
            "features": (b, 2 * b, 4 * b, 8 * b, 16 * b, b),
            "act": ("relu", {"inplace": True}),
            "norm": ("batch", {}),
            "bias": False,
        }
        if arch.get("bilinear"):  # MONAI: bilinear (align_corners=True) after a 1x1 conv
            common["upsample"] = "nontrainable"
        if plus_plus:
            return BasicUNetPlusPlus(**common, deep_supervision=deep_supervision)
        return BasicUNet(**common)

    return build


NETS: dict[str, NetSpec] = {
    "unet": NetSpec("U-Net", "unet", "ours", _ours()),
    "nested": NetSpec("UNet++", "nested", "ours", _ours(deep_supervision=False)),
    "nested_ds": NetSpec("UNet++ deep sup.", "nested", "ours", _ours(deep_supervision=True)),
    "attention_unet": NetSpec("Attention U-Net", "attention_unet", "ours", _ours()),
    "res_unet": NetSpec("Residual U-Net", "res_unet", "ours", _ours()),
    "unet_valid": NetSpec("U-Net, valid convs", "unet_valid", "ours", _ours()),
    # a U-Net decoder on a ResNet encoder (base_channels: the decoder's full-size width)
    "unet_resnet18": NetSpec("U-Net, ResNet-18 encoder", "unet_encoder", "ours",
                             _ours(encoder="resnet18")),
    "unet_resnet34": NetSpec("U-Net, ResNet-34 encoder", "unet_encoder", "ours",
                             _ours(encoder="resnet34")),
    "unetpp_resnet34": NetSpec("UNet++, ResNet-34 encoder", "unetpp_encoder", "ours",
                               _ours(deep_supervision=False, encoder="resnet34")),
    "monai_unet": NetSpec("BasicUNet", "unet", "MONAI", _monai(plus_plus=False)),
    "monai_nested": NetSpec("BasicUNetPlusPlus", "nested", "MONAI", _monai(plus_plus=True)),
    "monai_nested_ds": NetSpec(
        "BasicUNetPlusPlus deep sup.", "nested", "MONAI", _monai(plus_plus=True,
                                                                 deep_supervision=True)
    ),
    # 3-D: the paper's 3D U-Net (depth 3), and at depth 4 next to MONAI's 3-D BasicUNet
    "unet3d": NetSpec("3D U-Net", "unet3d", "ours", _ours(), spatial_dims=3),
    "unet3d_d4": NetSpec("3D U-Net, depth 4", "unet3d", "ours", _ours(depth=4), spatial_dims=3),
    "monai_unet3d": NetSpec("BasicUNet 3D", "unet3d", "MONAI", _monai(plus_plus=False,
                                                                      spatial_dims=3),
                            spatial_dims=3),
}  # fmt: skip
"""Names accepted by `models.names` in `conf/benchmark.yaml`."""


def _heads(outputs: Tensor | list[Tensor] | tuple[Tensor, ...]) -> int:
    return len(outputs) if isinstance(outputs, list | tuple) else 1


class TrainStep:
    """One optimisation step of `net` on a fixed batch: forward, loss, backward, Adam.

    Args:
        net: the net, already on `x`'s device.
        loss_cfg: `conf/loss` node (plain dict).
        x: images `[B, C, H, W]`; y: class indices `[B, H, W]`.
        precision: a Lightning precision: `32-true`, `16-mixed` (autocast to float16 with
            a gradient scaler) or `bf16-mixed` (autocast to bfloat16).
    """

    def __init__(
        self, net: nn.Module, loss_cfg: dict, x: Tensor, y: Tensor, precision: str = "32-true"
    ) -> None:
        if precision not in ("32-true", *AUTOCAST):
            raise ValueError(f"precision={precision!r}: choose 32-true, 16-mixed or bf16-mixed")
        self.net, self.x, self.y = net.train(), x, y
        self.loss_cfg = loss_cfg
        self.loss: nn.Module | None = None  # built at the first call, once the heads are known
        self.optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
        self.dtype = AUTOCAST.get(precision)
        self.scaler = torch.amp.GradScaler(x.device.type, enabled=self.dtype == torch.float16)

    def __call__(self) -> None:
        with torch.autocast(self.x.device.type, self.dtype or torch.float32,
                            enabled=self.dtype is not None):  # fmt: skip
            out = self.net(self.x)
            if isinstance(out, list | tuple) and len(out) == 1:
                out = out[0]  # MONAI's UNet++ returns a list of one without deep supervision
            if self.loss is None:
                self.loss = build_loss(self.loss_cfg, num_heads=_heads(out)).to(self.x.device)
            loss = self.loss(out, self.y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def prepare_step(step: TrainStep, flops: bool = True) -> dict[str, Any]:
    """The first (untimed) step, and the FLOPs of the forward and of a whole step.

    Returns:
        `first_step_s` (kernel selection, lazy state, compilation) and, with `flops`,
        `gflop_fwd_per_image` and `gflop_train_per_image` (forward + backward).
    """
    batch = step.x.shape[0]
    start = time.perf_counter()
    step()
    result: dict[str, Any] = {"first_step_s": time.perf_counter() - start}
    if flops:
        with torch.no_grad():
            result["gflop_fwd_per_image"] = count_flops(lambda: step.net(step.x)) / batch / 1e9
        result["gflop_train_per_image"] = count_flops(step) / batch / 1e9
    return result


def measure_steps(
    steps_by_key: dict[Any, TrainStep],
    device: torch.device,
    warmup: int,
    steps: int,
    repeats: int,
) -> dict[Any, dict[str, float]]:
    """Speed and peak memory of several prepared steps, timed in turns.

    Each round times every step once (`warmup` untimed calls, then `steps` timed), and
    each keeps its best round: a burst of other work on the machine then slows one
    round of every net rather than all rounds of one.

    Returns:
        Per key: `seconds_per_step`, `images_per_s`, `peak_mib` (memory above the
        weights, gradients and optimizer state), `memory_method`.
    """
    best = dict.fromkeys(steps_by_key, float("inf"))
    for _ in range(repeats):
        for key, step in steps_by_key.items():
            best[key] = min(best[key], time_per_step(step, device, warmup, steps))
    results = {}
    for key, step in steps_by_key.items():
        with peak_memory(device) as mem:
            step()
        results[key] = {
            "seconds_per_step": best[key],
            "images_per_s": step.x.shape[0] / best[key],
            "peak_mib": mem.bytes / 2**20,
            "memory_method": mem.method,
        }
    return results


def random_batch(
    batch: int,
    size: int,
    in_channels: int,
    num_classes: int,
    device: torch.device,
    seed: int,
    spatial_dims: int = 2,
) -> tuple[Tensor, Tensor]:
    """Normalised-looking images `[B, C, size, size]` and class indices `[B, size, size]`
    (`spatial_dims=3`: volumes `[B, C, size, size, size]`, labels `[B, size, size, size]`)."""
    gen = torch.Generator().manual_seed(seed)
    sides = (size,) * spatial_dims
    x = torch.randn(batch, in_channels, *sides, generator=gen)
    y = torch.randint(0, max(num_classes, 2), (batch, *sides), generator=gen)
    return x.to(device), y.to(device)


def volume_side(size: int) -> int:
    """The cube side a 3-D net of the models table trains on for the 2-D `size`: a quarter,
    rounded up to a multiple of 16 (128 px -> 32^3 voxels, twice the pixels of 128^2)."""
    return max(16, -(-size // 4 // 16) * 16)


def input_side(net: nn.Module, size: int) -> int:
    """The input side that gives `size`-pixel logits (or the nearest larger): `size`, or for
    a valid-convolution net the next side it accepts beyond `size` plus its context.
    Nets from outside unet-seg (MONAI's) pad, like ours but the valid one."""
    margin = net.margin if isinstance(net, SegNet) else 0
    return next_valid_size(size + 2 * margin, net.depth) if margin else size


def measure_models(
    names: list[str],
    archs: dict[str, dict],
    loss_cfg: dict,
    sizes: list[int],
    batch: int,
    base_channels: int | None,
    device: torch.device,
    warmup: int,
    steps: int,
    repeats: int,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The models table: one row per (size, net); and notes (nets skipped, and why).

    Args:
        names: keys of `NETS`.
        archs: our composed arch config per architecture (`unet`, `nested`), plain dicts.
        base_channels: level-0 width; None for the papers' widths.
    """
    unknown = sorted(set(names) - set(NETS))
    if unknown:
        raise ValueError(f"models.names: unknown {unknown}; choose from {sorted(NETS)}")
    notes = []
    if any(NETS[n].impl == "MONAI" for n in names) and monai_available() is None:
        notes.append('MONAI not installed (pip install -e ".[bench]"): its rows are skipped')
        names = [n for n in names if NETS[n].impl != "MONAI"]
    rows = []
    for size in sizes:
        cases: dict[str, TrainStep] = {}
        for name in names:
            spec = NETS[name]
            arch = archs[spec.arch]
            base = base_channels or paper_width(spec.arch)
            torch.manual_seed(seed)
            net = spec.build(arch, base).to(device)
            # a valid-convolution net scores `size` pixels from a larger input with its context
            side = input_side(net, size) if spec.spatial_dims == 2 else volume_side(size)
            x, _ = random_batch(batch, side, arch["in_channels"], arch["num_classes"], device,
                                seed, spec.spatial_dims)  # fmt: skip
            out_side = side if not isinstance(net, SegNet) or not net.margin else (
                valid_output_size(side, net.depth))  # fmt: skip
            _, y = random_batch(batch, out_side, arch["in_channels"], arch["num_classes"],
                                device, seed, spec.spatial_dims)  # fmt: skip
            cases[name] = TrainStep(net, loss_cfg, x, y)
            rows.append({
                "name": name, "label": spec.label, "impl": spec.impl, "size": out_side,
                "input_size": side, "spatial_dims": spec.spatial_dims,
                "base_channels": base, "params": sum(p.numel() for p in net.parameters()),
                **prepare_step(cases[name]),
            })  # fmt: skip
        measured = measure_steps(cases, device, warmup, steps, repeats)
        for row in rows[-len(cases) :]:
            row.update(measured[row["name"]])
            row["gflops_per_s"] = row["gflop_train_per_image"] * row["images_per_s"]
            log.info("models: %s %dpx %.2f img/s", row["name"], size, row["images_per_s"])
        del cases
    return rows, notes


def measure_fast_path(
    options: list[str],
    archs: dict[str, dict],
    main_arch: str,
    loss_cfg: dict,
    size: int,
    batch: int,
    base_channels: int | None,
    device: torch.device,
    warmup: int,
    steps: int,
    repeats: int,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Each `apply_fast_path` option against the plain net, measured back to back.

    `channels_last` and `compile` are measured on `main_arch`; `checkpointing` on UNet++
    with deep supervision (the memory-hungry net it is for). Each row has the option's
    `images_per_s` and `peak_mib`, and `speedup` and `memory_ratio` against its baseline.
    """
    known = {"channels_last", "compile", "checkpointing"}
    if set(options) - known:
        raise ValueError(f"fastpath.options: unknown {sorted(set(options) - known)}; "
                         f"choose from {sorted(known)}")  # fmt: skip
    groups: dict[tuple[str, bool], list[str]] = {}
    for option in options:
        key = ("nested", True) if option == "checkpointing" else (main_arch, False)
        groups.setdefault(key, []).append(option)
    rows = []
    for (arch_name, deep_supervision), group in groups.items():
        arch = dict(archs[arch_name])
        if arch_name == "nested":
            arch["deep_supervision"] = deep_supervision or arch.get("deep_supervision", False)
        base = base_channels or paper_width(arch_name)
        x, y = random_batch(batch, size, arch["in_channels"], arch["num_classes"], device, seed)
        label = NETS["nested_ds" if arch.get("deep_supervision") else arch_name].label
        cases: dict[str, TrainStep] = {}
        group_rows = []
        for option in ["none", *group]:
            torch.manual_seed(seed)
            net = build_net({**arch, "base_channels": base}).to(device)
            apply_fast_path(net, **({option: True} if option != "none" else {}))
            cases[option] = TrainStep(net, loss_cfg, x, y)
            group_rows.append({
                "arch": arch_name, "label": label, "option": option, "size": size,
                "base_channels": base, **prepare_step(cases[option], flops=False),
            })  # fmt: skip
        measured = measure_steps(cases, device, warmup, steps, repeats)
        baseline = measured["none"]
        for row in group_rows:
            row.update(measured[row["option"]])
            row["speedup"] = row["images_per_s"] / baseline["images_per_s"]
            row["memory_ratio"] = (
                row["peak_mib"] / baseline["peak_mib"] if baseline["peak_mib"] else float("nan")
            )
            log.info("fast path: %s %s %.2f img/s", arch_name, row["option"], row["images_per_s"])
        rows += group_rows
    return rows


def measure_precision(
    arch: dict,
    arch_name: str,
    loss_cfg: dict,
    size: int,
    batch: int,
    base_channels: int | None,
    device: torch.device,
    precisions: list[str],
    channels_last: list[bool],
    compile: list[bool],
    warmup: int,
    steps: int,
    repeats: int,
    peak_tflops: dict | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Every combination of precision, channels-last and compile for one net (meant for a
    GPU: the issue asks for U-Net at 512 px in fp32, 16-mixed and bf16-mixed).

    Args:
        peak_tflops: the device's peak dense TFLOP/s per precision, from its data sheet
            (e.g. `{"32-true": 495, "16-mixed": 989, "bf16-mixed": 989}` for an H100 SXM:
            32-true runs TF32 matmuls on a GPU, whose peak is TF32's); gives
            `fraction_of_peak`.

    Returns:
        One row per combination: `precision`, `channels_last`, `compile`, `images_per_s`,
        `gflops_per_s`, `peak_mib`, `first_step_s`, `speedup` against float32 NCHW eager
        when that combination is measured, and `fraction_of_peak` when known.
    """
    base = base_channels or paper_width(arch_name)
    x, y = random_batch(batch, size, arch["in_channels"], arch["num_classes"], device, seed)
    probe = TrainStep(build_net({**arch, "base_channels": base}).to(device), loss_cfg, x, y)
    gflop = prepare_step(probe)["gflop_train_per_image"]  # the same in every combination
    del probe
    cases: dict[tuple, TrainStep] = {}
    rows = []
    for precision in precisions:
        for cl in channels_last:
            for comp in compile:
                torch.manual_seed(seed)
                net = build_net({**arch, "base_channels": base}).to(device)
                apply_fast_path(net, channels_last=cl, compile=comp)
                key = (precision, cl, comp)
                cases[key] = TrainStep(net, loss_cfg, x, y, precision)
                rows.append({
                    "arch": arch_name, "size": size, "base_channels": base,
                    "precision": precision, "channels_last": cl, "compile": comp,
                    **prepare_step(cases[key], flops=False),
                })  # fmt: skip
    measured = measure_steps(cases, device, warmup, steps, repeats)
    plain = measured.get(("32-true", False, False))  # float32, NCHW, eager
    for row in rows:
        row.update(measured[(row["precision"], row["channels_last"], row["compile"])])
        row["gflop_train_per_image"] = gflop
        row["gflops_per_s"] = gflop * row["images_per_s"]
        if plain:
            row["speedup"] = row["images_per_s"] / plain["images_per_s"]
        peak = (peak_tflops or {}).get(row["precision"])
        if peak:
            row["fraction_of_peak"] = row["gflops_per_s"] / (peak * 1e3)
        log.info("precision: %s cl=%s compile=%s %.2f img/s", row["precision"],
                 row["channels_last"], row["compile"], row["images_per_s"])  # fmt: skip
    return rows
