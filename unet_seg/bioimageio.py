"""bioimage.io model packages (`python -m unet_seg.export ckpt=... format=bioimageio`): the
format Fiji (deepImageJ), ilastik, napari and QuPath run, validated and tested by the
official `bioimageio.core` (`pip install ".[bioimageio]"`).

A package is a zip of `rdf.yaml` (format 0.5) and the files it names:
- weights as a PyTorch state dict with its self-contained architecture file
  (`bioimageio_arch`), as TorchScript, and as ONNX when the `export` extra is installed;
- the input described as the run's data contract: `batch, channel, (z,) y, x` of any size
  `min + n * step` (step: the net's pooling grid), with the run's intensity scaling and
  mean/std as preprocessing steps (`preprocessing`);
- the output as class probabilities (softmax, or `[1 - p, p]` for a sigmoid net) computed
  inside the net: deepImageJ and ilastik run no softmax post-processing step, so a
  probability map is what every consumer gets. Each spatial output axis has a `halo` of
  the net's receptive field (rounded up to the pooling grid), so tools that tile with it
  join tiles without seams: a tile's output inside the halo is exactly the whole image's;
- test tensors from a real image of the run, made by unet-seg's own code (so that
  `bioimageio.core`'s test compares its reading of the description with unet-seg), a cover
  (input, probabilities, overlay), and a README with the run's scores, the command, the
  citations and the data contract.

Pitfalls, each also where it bites: bioimageio.core 0.11.0 pins bioimageio.spec exactly and
breaks with pydantic >= 2.14 (the extra pins `pydantic<2.14`); an author's `github_user` or
any URL makes validation reach the internet (none is written); without tiling the library
pads the image by the halo (mirrored) before its sample-wise preprocessing, so per-image
percentiles are those of the padded image; its test runs the test input without padding.
"""

from __future__ import annotations

import getpass
import json
import logging
import re
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from unet_seg import __version__
from unet_seg.bioimageio_arch import CALLABLE, architecture_source
from unet_seg.module import SegModule

log = logging.getLogger(__name__)

PAD_MODE = "reflect"
"""How the package asks tools to pad at the image border (numpy's `reflect`): as
`Predictor` pads a valid-convolution net's context."""

CITATIONS = {
    "U-Net": ("Ronneberger et al., 2015: U-Net: Convolutional Networks for Biomedical Image "
              "Segmentation", "10.1007/978-3-319-24574-4_28"),
    "UNet++": ("Zhou et al., 2018: UNet++: A Nested U-Net Architecture for Medical Image "
               "Segmentation", "10.1007/978-3-030-00889-5_1"),
    "3-D U-Net": ("Cicek et al., 2016: 3D U-Net: Learning Dense Volumetric Segmentation from "
                  "Sparse Annotation", "10.1007/978-3-319-46723-8_49"),
}  # fmt: skip


FLOAT32 = {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}
"""First and last step of the preprocessing: without the last, bioimageio.core casts the
net's input back to the stored type (uint8 for 8-bit images)."""


class PackageError(ValueError):
    """A checkpoint or option that a bioimage.io package cannot describe, with the reason."""


# ---- what the net accepts -------------------------------------------------------------------


def axis_ids(spatial_dims: int) -> list[str]:
    return ["z", "y", "x"][-spatial_dims:]


def receptive_radius(net: nn.Module, spatial_dims: int, steps: Sequence[int]) -> list[int]:
    """Input positions on each side of an output position that can change it, per spatial
    axis: the support of the gradient of the centre output with respect to the input (two
    random inputs, so that a ReLU that happens to be off cannot hide a path), grown until
    it no longer touches the input's border."""
    side = [8 * s for s in steps]
    was_training = net.training
    net.eval()
    try:
        while True:
            support = np.zeros(side, bool)
            for seed in (0, 1):
                g = torch.Generator().manual_seed(seed)
                x = torch.randn(1, _in_channels(net), *side, generator=g, requires_grad=True)
                out = net.forward_traceable(x)
                centre = tuple(n // 2 for n in side)
                out[(0, slice(None), *centre)].sum().backward()
                support |= (x.grad[0].abs().sum(0) > 0).numpy()
            radius, grow = [], False
            for axis, n in enumerate(side):
                hit = np.flatnonzero(support.any(axis=tuple(a for a in range(spatial_dims)
                                                            if a != axis)))  # fmt: skip
                if hit.size == 0:
                    radius.append(0)
                    continue
                r = max(n // 2 - int(hit[0]), int(hit[-1]) - n // 2)
                radius.append(r)
                grow |= hit[0] == 0 or hit[-1] == n - 1
            if not grow:
                return radius
            side = [2 * n for n in side]
    finally:
        net.train(was_training)


def _in_channels(net: nn.Module) -> int:
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            return m.in_channels
    raise PackageError(f"{type(net).__name__}: no convolution found to read its input channels")


def halo_and_sizes(
    net: nn.Module, arch: dict | None = None
) -> tuple[list[int], list[int], list[int]]:
    """`(halo, min input, step)` per spatial axis: the halo is the receptive radius rounded
    up to the pooling grid (tiles stay on the grid, so a tile's centre equals the whole
    image's there); an input must hold a step beyond twice the halo.

    With `arch` (the net's config) the radius is measured on the same net at 8 base
    channels (fewer, and a random net's 2-channel levels can be dead throughout): widths do
    not change a receptive field, and a paper-size 3-D U-Net's gradient over a volume
    several receptive fields wide would need gigabytes."""
    dims = net.spatial_dims
    steps = [int(s) for s in net.pad_multiples]
    probe = net
    if arch is not None and "base_channels" in arch:
        from unet_seg.models.registry import build_net

        base = min(int(arch["base_channels"]), 8)
        with torch.random.fork_rng():  # a seeded probe, the caller's random state kept
            torch.manual_seed(0)
            probe = build_net({k: v for k, v in {**arch, "base_channels": base}.items()
                               if k != "encoder_weights"})  # fmt: skip
    radius = receptive_radius(probe, dims, steps)
    if probe is not net and not any(radius):  # a dead probe: measure the net itself
        radius = receptive_radius(net, dims, steps)
    halo = [-(-r // s) * s for r, s in zip(radius, steps, strict=True)]
    smallest = [max(2 * h + s, -(-net.min_side // s) * s) for h, s in zip(halo, steps, strict=True)]
    return halo, smallest, steps


# ---- the package's network --------------------------------------------------------------


class ProbabilityNet(nn.Module):
    """`bioimageio_arch.Network` built from unet-seg's own modules: the same forward and
    state dict keys, for tracing and for the test tensors."""

    def __init__(self, net: nn.Module, level: int | None) -> None:
        super().__init__()
        self.net, self.level = net, level

    def forward(self, x: Tensor) -> Tensor:
        from unet_seg.losses import class_probabilities

        return class_probabilities(self.net.forward_traceable(x, self.level))


def checked(module: SegModule) -> None:
    """Refuse, every reason at once, a checkpoint whose input a package cannot describe."""
    contract, problems = module.contract, []
    if contract.volume and module.net.spatial_dims == 2:
        problems.append(
            f"this net is {contract.dims}-D over volume slices (slab {contract.slab}): a "
            "bioimage.io package describes a 2-D net on 2-D images or a 3-D net on volumes; "
            "train arch=unet3d for volumes"
        )
    if contract.intensity.get("nonzero"):
        problems.append(
            "data.intensity.nonzero=true (z-score over the non-zero region) has no "
            "bioimage.io preprocessing step: retrain with data.intensity={mode:zscore}"
        )
    if problems:
        raise PackageError("; ".join(problems))


def preprocessing(module: SegModule, dtype: np.dtype, spatial: list[str]) -> list[dict]:
    """The run's intensity scaling and normalisation as bioimage.io preprocessing steps
    (`to_unit_range` / `scale_volume`, then `(x - mean) / std` per channel)."""
    contract = module.contract
    intensity = dict(contract.intensity)
    mode = intensity.get("mode", "range")
    c = contract.in_channels
    mean = np.resize(np.asarray(contract.mean, np.float64), c)
    std = np.resize(np.asarray(contract.std, np.float64), c)
    steps: list[dict] = [FLOAT32]
    gain, offset = 1.0 / std, -mean / std  # the contract's normalisation, after the scaling
    if mode == "range":
        scale = {"uint8": 255.0, "uint16": 65535.0}.get(np.dtype(dtype).name, 1.0)
        gain = gain / scale
    elif mode == "percentile":
        # per image and channel; eps 1e-6 beside unet-seg's none: at most 1e-6 relative
        steps += [{"id": "scale_range", "kwargs": {
            "axes": spatial, "min_percentile": float(intensity.get("low", 1.0)),
            "max_percentile": float(intensity.get("high", 99.0)), "eps": 1e-6}},
            {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}}]  # fmt: skip
    elif mode == "fixed":
        vmin, vmax = float(intensity.get("vmin", 0.0)), float(intensity.get("vmax", 1.0))
        span = vmax - vmin if vmax > vmin else 1.0
        steps += [{"id": "scale_linear", "kwargs": {"gain": 1.0 / span, "offset": -vmin / span}},
                  {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}}]  # fmt: skip
    elif mode == "ct":
        steps.append({"id": "clip", "kwargs": {"min": float(intensity["low"]),
                                               "max": float(intensity["high"])}})  # fmt: skip
    elif mode == "zscore":  # per volume and channel; eps 1e-6 where unet-seg floors at 1e-8
        steps.append({"id": "zero_mean_unit_variance", "kwargs": {"axes": spatial,
                                                                  "eps": 1e-6}})  # fmt: skip
        return [*steps, FLOAT32]  # the contract's mean 0, std 1 follow
    else:
        raise PackageError(f"data.intensity.mode={mode!r} has no bioimage.io description")
    if not (np.allclose(gain, 1.0) and np.allclose(offset, 0.0)):
        steps.append({"id": "scale_linear", "kwargs": {
            "axis": "channel", "gain": [float(g) for g in gain],
            "offset": [float(o) for o in offset]}})  # fmt: skip
    return [*steps, FLOAT32]


def normalised(module: SegModule, raw: np.ndarray) -> np.ndarray:
    """unet-seg's own input of a raw `[C, *S]` array: `[C, *S]` float32 (2-D:
    `to_unit_range` then `normalize`; volumes: `scale_volume`)."""
    contract = module.contract
    if module.net.spatial_dims == 3:
        from unet_seg.data.volume_dataset import scale_volume

        return scale_volume(raw, contract.intensity, contract.mean, contract.std)
    from unet_seg.data.readers import to_unit_range
    from unet_seg.data.transforms import normalize

    image = to_unit_range(np.moveaxis(raw, 0, -1), **contract.intensity)
    return normalize(image, contract.mean, contract.std).numpy()


def test_tensors(
    module: SegModule, raw: np.ndarray, level: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """`(input [1, C, *S] as stored, probabilities [1, K, *S] float32)` by unet-seg's own
    normalisation and net; bioimageio.core's test runs the package on the input the same
    way: preprocessing, the net, no halo padding, no cropping."""
    x = torch.from_numpy(normalised(module, raw))[None].float()
    with torch.no_grad():
        p = ProbabilityNet(module.net, level).eval()(x)[0].numpy()
    return raw[None], np.ascontiguousarray(p[None], np.float32)


def test_crop(raw: np.ndarray, smallest: Sequence[int], steps: Sequence[int],
              cap: Sequence[int]) -> np.ndarray:  # fmt: skip
    """The test input: the centre of `raw` `[C, *S]` at the largest accepted size no
    larger than the image and `cap` (mirrored up to the smallest where the image is
    smaller)."""
    spatial = raw.shape[1:]
    size = [
        max(m, m + (min(n, c) - m) // s * s)
        for n, m, s, c in zip(spatial, smallest, steps, cap, strict=True)
    ]
    pads = [(0, 0)] + [((t - n + 1) // 2 if t > n else 0, (t - n) // 2 if t > n else 0)
                       for n, t in zip(spatial, size, strict=True)]  # fmt: skip
    if any(sum(p) for p in pads):
        raw = np.pad(raw, pads, mode="reflect")
    starts = [(n - t) // 2 for n, t in zip(raw.shape[1:], size, strict=True)]
    return np.ascontiguousarray(raw[(slice(None), *(slice(a, a + t) for a, t in
                                                    zip(starts, size, strict=True)))])  # fmt: skip


def _name(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", "_", str(text)).strip("_") or "channel"


# ---- the package ------------------------------------------------------------------------


def rdf(
    module: SegModule,
    raw: np.ndarray,
    halo: Sequence[int],
    smallest: Sequence[int],
    steps: Sequence[int],
    level: int | None,
    files: dict[str, str],
    about: dict,
) -> dict:
    """The `rdf.yaml` content (bioimage.io model format 0.5) of a package whose `files`
    (`{role: file name}`) lie beside it."""
    contract, net = module.contract, module.net
    spatial = axis_ids(net.spatial_dims)
    unit = "millimeter" if contract.volume else None
    channels = about.get("channel_names") or ([f"channel{i}" for i in range(contract.in_channels)])
    space_in = [
        {"type": "space", "id": a, "size": {"min": int(m), "step": int(s)},
         **({"unit": unit, "scale": float(sp)} if unit else {})}
        for a, m, s, sp in zip(spatial, smallest, steps,
                               contract.spacing or [1.0] * len(spatial), strict=True)
    ]  # fmt: skip
    space_out = [
        {"type": "space", "id": a["id"], "size": {"tensor_id": "input", "axis_id": a["id"]},
         "halo": int(h), **({"unit": unit, "scale": a["scale"]} if unit else {})}
        for a, h in zip(space_in, halo, strict=True)
    ]  # fmt: skip
    kind = raw.dtype.name  # uint8, uint16, int16, ... or float32 (`write_package`)
    weights = {
        "pytorch_state_dict": {
            "source": files["state_dict"], "pytorch_version": torch.__version__.split("+")[0],
            "architecture": {"source": files["architecture"], "callable": CALLABLE,
                             "kwargs": {"arch": about["arch"], "level": level}},
        },
        "torchscript": {"source": files["torchscript"], "parent": "pytorch_state_dict",
                        "pytorch_version": torch.__version__.split("+")[0]},
    }  # fmt: skip
    if "onnx" in files:
        weights["onnx"] = {"source": files["onnx"], "parent": "pytorch_state_dict",
                           "opset_version": 18}  # fmt: skip
    cites = citations(str(about["arch"]["name"]), net.spatial_dims)
    return {
        "type": "model",
        "format_version": "0.5.12",
        "name": about["name"],
        "description": about["description"],
        "authors": [{"name": str(a)} for a in about["authors"]],  # no github_user: offline
        "cite": [{"text": CITATIONS[c][0], "doi": CITATIONS[c][1]} for c in cites],
        "license": about["license"],
        "tags": ["unet-seg", "segmentation", "3d" if net.spatial_dims == 3 else "2d",
                 "unet++" if "UNet++" in cites else "unet", "pytorch"],
        "documentation": {"source": files["readme"]},
        "covers": [{"source": files["cover"]}],
        "inputs": [{
            "id": "input",
            "description": f"{contract.in_channels}-channel image, intensities as stored ({kind})",
            "axes": [{"type": "batch"},
                     {"type": "channel", "channel_names": channels}, *space_in],
            "test_tensor": {"source": files["test_input"]},
            "data": {"type": kind},
            "pad": {"mode": PAD_MODE},
            "preprocessing": preprocessing(module, raw.dtype, spatial),
        }],
        "outputs": [{
            "id": "output",
            "description": "class probabilities (softmax over the channel axis)",
            "axes": [{"type": "batch"},
                     {"type": "channel",
                      "channel_names": [_name(n) for n in contract.class_names]},
                     *space_out],
            "test_tensor": {"source": files["test_output"]},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": weights,
        "config": {"bioimageio": {"reproducibility_tolerance": [
            {"relative_tolerance": 1e-4, "absolute_tolerance": 1e-4,
             "mismatched_elements_per_million": 0}]},
            "unet_seg": {"version": __version__, "data_contract": contract.to_dict(),
                         "level": level, "pad_mode": PAD_MODE}},
    }  # fmt: skip


def write_package(
    module: SegModule,
    raw: np.ndarray,
    output: Path,
    about: dict,
    level: int | None = None,
    onnx: bool | None = None,
) -> Path:
    """Write the bioimage.io package of `module` to the zip `output` and return it.

    Args:
        module: the trained net (`SegModule.from_checkpoint`), on the CPU.
        raw: an image of the run as stored, `[C, *S]` (2-D `[C, H, W]`, volumes
            `[C, Z, Y, X]`): the test input is its centre.
        about: `name`, `description`, `authors` (names), `license` (SPDX), `arch` (the
            checkpoint's arch config), `readme` (extra README text: scores, command),
            `channel_names` (optional).
        onnx: add ONNX weights (None: when the `export` extra is installed).
    """
    from bioimageio.spec import save_bioimageio_package  # optional: pip install ".[bioimageio]"

    checked(module)
    if raw.dtype.kind in "bf":  # the package describes one type: bool as 8-bit, floats as float32
        raw = raw.astype(np.uint8 if raw.dtype.kind == "b" else np.float32)
    net = module.net.eval()
    halo, smallest, steps = halo_and_sizes(net, dict(module.hparams.arch))
    dims = net.spatial_dims
    cap = module.contract.patch if dims == 3 and module.contract.patch else [512] * dims
    cap = [max(c, m) for c, m in zip(cap, smallest, strict=True)]
    test_in = test_crop(raw, smallest, steps, cap)
    test_in, test_out = test_tensors(module, test_in, level)
    if onnx is None:
        onnx = all(_importable(m) for m in ("onnx", "onnxscript"))
    with tempfile.TemporaryDirectory(prefix="bioimageio_") as tmp:
        folder = Path(tmp)
        files = {"state_dict": "weights.pt", "architecture": "unet_seg_network.py",
                 "torchscript": "weights_torchscript.pt", "test_input": "test_input.npy",
                 "test_output": "test_output.npy", "readme": "README.md",
                 "cover": "cover.png"}  # fmt: skip
        wrapper = ProbabilityNet(net, level).eval()
        torch.save(wrapper.state_dict(), folder / files["state_dict"])
        (folder / files["architecture"]).write_text(
            architecture_source(f"{about['name']}: the network", __version__)
        )
        example = torch.from_numpy(normalised(module, test_in[0]))[None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation and tracer warnings
            torch.jit.save(torch.jit.trace(wrapper, (example,)), str(folder / files["torchscript"]))
        if onnx:
            from unet_seg.onnx_export import export_onnx

            files["onnx"] = "weights.onnx"
            export_onnx(wrapper, example, folder / files["onnx"], {}, 18, dims=dims)
        np.save(folder / files["test_input"], test_in)
        np.save(folder / files["test_output"], test_out)
        write_cover(module, test_in[0], test_out[0], folder / files["cover"])
        (folder / files["readme"]).write_text(
            readme(module, about, halo, smallest, steps, test_in.dtype)
        )
        content = rdf(module, test_in[0], halo, smallest, steps, level, files, about)
        import yaml

        (folder / "rdf.yaml").write_text(yaml.safe_dump(content, sort_keys=False))
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(output.name + ".partial")
        save_bioimageio_package(folder / "rdf.yaml", output_path=partial)
        partial.replace(output)  # atomically: a failed export leaves no half package
    log.info("wrote %s (bioimage.io model, halo %s, inputs %s + n x %s)", output, halo,
             smallest, steps)  # fmt: skip
    return output


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def write_cover(module: SegModule, raw: np.ndarray, probs: np.ndarray, path: Path) -> None:
    """Input, class probabilities (the foreground classes' colours) and the labels over the
    input, side by side (a volume: its middle slice)."""
    from PIL import Image

    from unet_seg.visualize import class_colours, display_image, overlay

    if raw.ndim == 4:  # [C, Z, Y, X]: the middle slice
        z = raw.shape[1] // 2
        raw, probs = raw[:, z], probs[:, z]
    base = display_image(np.moveaxis(raw, 0, -1), colour=not module.contract.volume)
    labels = probs.argmax(0).astype(np.uint8)
    colours = np.asarray(class_colours(probs.shape[0]), np.float32)  # [K, 3]
    colours[0] = 0  # background black: the other classes' colours weighted by probability
    heat = np.einsum("khw,kc->hwc", probs, colours).clip(0, 255).round().astype(np.uint8)
    gap = np.full((base.shape[0], 4, 3), 255, np.uint8)
    panel = np.concatenate([base, gap, heat, gap, overlay(base, labels)], axis=1)
    Image.fromarray(panel).save(path)


def citations(arch_name: str, spatial_dims: int) -> list[str]:
    """The `CITATIONS` keys of a net: U-Net, and UNet++ for nested nets, 3-D U-Net for 3-D."""
    cites = ["U-Net"]
    if "nested" in arch_name or "unetpp" in arch_name:
        cites.append("UNet++")
    if spatial_dims == 3:
        cites.append("3-D U-Net")
    return cites


def intensity_words(contract, dtype: np.dtype) -> str:
    """The package's preprocessing in words (`preprocessing` in steps)."""
    intensity = contract.intensity
    mode = intensity.get("mode", "range")
    scaling = {
        "range": {"uint8": "values / 255", "uint16": "values / 65535"}.get(
            np.dtype(dtype).name, "values as they are (floats in [0, 1])"),
        "percentile": f"each image's {intensity.get('low', 1.0)}th..{intensity.get('high', 99.0)}"
                      "th percentiles (per channel) to 0..1, clipped",
        "fixed": f"values {intensity.get('vmin')}..{intensity.get('vmax')} to 0..1, clipped",
        "ct": f"values clipped to {intensity.get('low')}..{intensity.get('high')}",
        "zscore": "each volume and channel to mean 0, standard deviation 1",
    }.get(mode, mode)  # fmt: skip
    if mode == "zscore":
        return scaling
    return f"{scaling}, then (x - mean) / std, mean {contract.mean}, std {contract.std}"


def readme(module: SegModule, about: dict, halo, smallest, steps, dtype) -> str:
    contract = module.contract
    lines = [
        f"# {about['name']}",
        "",
        about["description"],
        "",
        "A U-Net-family segmentation network trained with "
        f"[unet-seg](https://pypi.org/project/unet-seg/) {__version__}.",
        "",
        "## Input and output",
        "",
        f"- input `{'bczyx' if module.net.spatial_dims == 3 else 'bcyx'}`, "
        f"{contract.in_channels} channel(s), intensities as stored; any size "
        f"{list(smallest)} + n x {list(steps)} per spatial axis",
        f"- preprocessing (in the package, as the run's data contract): "
        f"{intensity_words(contract, dtype)}",
        f"- output: class probabilities of {list(contract.class_names)} (softmax inside "
        "the network); the label map is their argmax",
        f"- halo {list(halo)}: the net's receptive field on the pooling grid. A tool that "
        "tiles with it (each tile seeing that much of the image around it, mirrored at the "
        "border) gives the same probabilities whatever its tiles, on images whose sides are "
        f"multiples of {list(steps)}; unet-seg's `predict ckpt=PACKAGE.zip` does, and "
        f"`predict ckpt=CKPT halo={max(halo)}` computes the same",
    ]
    if contract.volume:
        lines.append(
            f"- volumes at the training spacing {contract.spacing} (z, y, x): "
            "resample other volumes to it first"
        )
    if contract.instance_target:
        lines += ["", "## Objects", "",
                  "The three channels are background, object interior and boundary. Objects "
                  "come from a seeded watershed of the interior probability, as unet-seg's "
                  f"`predict` does with the run's settings: {contract.instances}."]  # fmt: skip
    lines += ["", "## Validation", "", about.get("readme") or "No scores recorded.", "",
              "Check the package (offline): `bioimageio test PACKAGE.zip`.", "",
              "## Citations", ""]  # fmt: skip
    cites = citations(str(about["arch"]["name"]), module.net.spatial_dims)
    lines += [f"- {CITATIONS[c][0]}, doi:{CITATIONS[c][1]}" for c in cites]
    return "\n".join(lines) + "\n"


# ---- from a checkpoint and a config (python -m unet_seg.export format=bioimageio) -------


def stored_image(module: SegModule, ckpt: Path, image: str | Path | None) -> np.ndarray:
    """The raw image `[C, *S]` the test tensors come from: `image=PATH`, else the first
    validation image (or volume) of the checkpoint's run."""
    from unet_seg.data.readers import fit_channels, read_stored
    from unet_seg.run_dir import RunDir

    contract, volume = module.contract, module.net.spatial_dims == 3
    if image is None:
        run = RunDir.of_checkpoint(ckpt)
        if run is None:
            raise PackageError(
                f"{ckpt} is not in a run directory (RUN/checkpoints/): give image=PATH, an "
                "image (or volume) of the data it was trained on, for the package's test "
                "tensors and cover"
            )
        if volume:
            from omegaconf import OmegaConf

            from unet_seg.evaluate import evaluation_cases

            cases, _ = evaluation_cases(OmegaConf.create({"run_dir": str(run.path),
                                                          "split": "val"}))  # fmt: skip
            from unet_seg.data.volume_dataset import read_case_image

            stored, meta = read_case_image(cases[0])
            return _at_spacing(stored, meta.spacing, contract.spacing)
        image = run.split_pairs("val")[0][0]
    path = Path(image)
    if not path.is_file():
        raise PackageError(f"image={path}: no such file")
    if volume:
        from unet_seg.data.volumes import read_volume

        stored, meta = read_volume(path)  # [Z, Y, X] or [Z, Y, X, C]
        stored = stored[None] if stored.ndim == 3 else np.moveaxis(stored, -1, 0)
        if stored.shape[0] != contract.in_channels:
            raise PackageError(
                f"image={path}: {stored.shape[0]} channel(s), the net takes "
                f"{contract.in_channels}: give a volume with them all"
            )
        return _at_spacing(stored, meta.spacing, contract.spacing)
    stored, data_channels = read_stored(path)
    fixed = fit_channels(
        stored,
        contract.in_channels,
        str(path),
        "give an image like the training images",
        data_channels,
    )
    return np.ascontiguousarray(np.moveaxis(fixed, -1, 0))


def _at_spacing(stored: np.ndarray, spacing, target) -> np.ndarray:
    if not target or not spacing or np.allclose(spacing, target, rtol=1e-3):
        return stored
    from unet_seg.data.volume_dataset import resample_image, resampled_shape

    shape = resampled_shape(stored.shape[1:], spacing, target)
    log.info("test volume resampled from spacing %s to the run's %s", spacing, target)
    return resample_image(stored.astype(np.float32), shape)


def run_summary(ckpt: Path) -> str:
    """The run's final scores and its command, for the package's README."""
    from unet_seg.run_dir import RunDir

    run = RunDir.of_checkpoint(ckpt)
    if run is None or not run.metrics_path.is_file():
        return "No run directory beside the checkpoint: no scores recorded."
    metrics = run.load_metrics()
    rows = [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())
            if isinstance(v, (int, float)) and k.split("/")[0] in ("test", "val")]  # fmt: skip
    overrides = run.path / ".hydra" / "overrides.yaml"
    command = "python -m unet_seg.train"
    if overrides.is_file():
        import yaml

        command += "".join(f" {o}" for o in yaml.safe_load(overrides.read_text()) or [])
    return "\n".join([f"Scores of the run `{run.path.name}` (its metrics.json):", "",
                      "| metric | value |", "|---|---|", *rows, "",
                      f"Trained with `{command}`."])  # fmt: skip


def channel_names(module: SegModule, ckpt: Path) -> list[str]:
    """The input channels' names: the run's `dataset.json` `channel_names` (nnU-Net and
    Decathlon layouts), red/green/blue for 3-channel images, else channel0, channel1, ..."""
    from unet_seg.run_dir import RunDir

    c = module.contract.in_channels
    run = RunDir.of_checkpoint(ckpt)
    root = run.load_config().data.get("root") if run is not None else None
    if root:
        from unet_seg.data.layouts import read_dataset_json

        try:
            info = read_dataset_json(root)
        except ValueError:  # the run read it already; a later edit must not stop an export
            info = None
        if info is not None and len(info.channel_names) == c:
            return list(info.channel_names)
    if c == 3 and not module.contract.volume:
        return ["red", "green", "blue"]
    return [f"channel{i}" for i in range(c)]


def export_package(cfg, module: SegModule, output: Path) -> Path:
    """`write_package` from an export config (`ckpt`, `level`, `image`, `name`,
    `description`, `authors`, `license`)."""
    ckpt = Path(cfg.ckpt)
    if not (_importable("bioimageio.spec") and _importable("bioimageio.core")):
        raise PackageError(
            "format=bioimageio needs bioimageio.core: pip install "
            "'unet-seg[bioimageio]' (part of '.[dev]')"
        )
    raw = stored_image(module, ckpt, cfg.get("image"))
    arch = {k: v for k, v in dict(module.hparams.arch).items()}
    authors = list(cfg.get("authors") or []) or [getpass.getuser()]
    name = cfg.get("name") or f"unet-seg {arch['name']} {ckpt.parent.parent.name}"
    about = {
        "name": name, "authors": authors, "license": str(cfg.get("license") or "MIT"),
        "description": cfg.get("description") or (
            f"{arch['name']} segmenting {', '.join(module.contract.scored_classes)}"),
        "arch": json.loads(json.dumps(arch)), "readme": run_summary(ckpt),
        "channel_names": channel_names(module, ckpt),
    }  # fmt: skip
    return write_package(module, raw, output, about, cfg.get("level"))


# ---- predict with a package (python -m unet_seg.predict ckpt=PACKAGE.zip) ----------------


def is_package(path: str | Path) -> bool:
    """Whether `ckpt=` names a bioimage.io package: a zip holding `rdf.yaml` (or
    `*.bioimageio.yaml`), or such a file itself."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return path.is_file()
    if path.suffix.lower() != ".zip" or not path.is_file():
        return False
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n == "rdf.yaml" or n.endswith("bioimageio.yaml") for n in z.namelist())
    except zipfile.BadZipFile:
        return False


class PackagePredictor:
    """A bioimage.io model (ours or the zoo's: 2-D, axes `batch? channel? y x`) run by
    bioimageio.core with its own pre- and post-processing, as a function from `[H, W, C]`
    images to `(labels [H, W], probabilities [K, H, W])`.

    The image is mirrored at its end up to a size the model accepts and the result cropped
    back; sides above `tile_size` are tiled by the library with the model's halo.
    """

    def __init__(self, source: str | Path, tile_size: int = 512) -> None:
        if not (_importable("bioimageio.spec") and _importable("bioimageio.core")):
            raise PackageError("ckpt= names a bioimage.io package: running it needs "
                               "bioimageio.core: pip install 'unet-seg[bioimageio]'")  # fmt: skip
        from bioimageio.core import create_prediction_pipeline, load_model_description

        self.source = Path(source)
        descr = load_model_description(self.source)
        if getattr(descr, "type", None) != "model" or not hasattr(descr, "inputs"):
            raise PackageError(f"{source}: not a bioimage.io model ({descr})")
        if len(descr.inputs) != 1:
            raise PackageError(f"{source}: {len(descr.inputs)} inputs; predict runs models "
                               "with one input image")  # fmt: skip
        self.descr, self.tile_size = descr, int(tile_size)
        self.input, self.output = descr.inputs[0], descr.outputs[0]
        axes = [str(a.type) for a in self.input.axes]
        space = [a for a in self.input.axes if a.type == "space"]
        if [str(a.id) for a in space] != ["y", "x"] or not set(axes) <= {
            "batch",
            "channel",
            "space",
        }:
            raise PackageError(f"{source}: input axes {[str(a.id) for a in self.input.axes]}; "
                               "predict runs 2-D models (batch, channel, y, x)")  # fmt: skip
        self.space = space
        channel = [a for a in self.input.axes if a.type == "channel"]
        self.in_channels = len(channel[0].channel_names) if channel else 1
        out_channel = [a for a in self.output.axes if a.type == "channel"]
        self.class_names = (
            [str(n) for n in out_channel[0].channel_names] if out_channel else (["foreground"])
        )
        contract = (descr.config.model_dump().get("unet_seg") or {}).get("data_contract")
        self.contract = contract  # ours: the run's data contract, for the mask values
        self.halo = max((int(getattr(a, "halo", 0) or 0) for a in self.output.axes),
                        default=0)  # fmt: skip
        self.pipeline = create_prediction_pipeline(descr)

    def _valid(self, n: int, axis) -> int:
        """The smallest size >= n the input axis accepts."""
        size = axis.size
        if isinstance(size, int):
            return size
        low, step = int(size.min), int(size.step or 0)
        if n <= low or not step:
            return low
        return low + -(-(n - low) // step) * step

    def run(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from bioimageio.core import Tensor, predict

        h, w = image.shape[:2]
        target = [self._valid(n, a) for n, a in zip((h, w), self.space, strict=True)]
        pads = [(0, t - n) for n, t in zip((h, w), target, strict=True)] + [(0, 0)]
        x = np.moveaxis(np.pad(image, pads, mode="symmetric"), -1, 0)  # [C, H', W']
        dims = [str(a.id) for a in self.input.axes]
        order = {"channel": 0, "y": 1, "x": 2}
        x = np.transpose(x, [order[d] for d in dims if d in order])
        for i, d in enumerate(dims):
            if d == "batch":
                x = np.expand_dims(x, i)
        blocks = None
        if max(target) > self.tile_size:
            size = self.space[0].size
            step = int(getattr(size, "step", 0) or 0)
            low = int(getattr(size, "min", self.tile_size))
            n = max(0, (self.tile_size + 2 * self.halo - low) // step) if step else 0
            if low + n * step <= min(target):
                blocks = n
        # untiled (blocks None), bioimageio.core mirrors the image by the halo and then takes
        # its per-image statistics (percentile, z-score) of the padded image: not quite
        # unet-seg's, whose statistics are the image's own; tiled, they are the image's
        sample = predict(model=self.pipeline, inputs={self.input.id: Tensor.from_numpy(
            x, dims=tuple(dims))}, blocksize_parameter=blocks)  # fmt: skip
        out = sample.members[self.output.id].data
        out = out.transpose(*[d for d in ("batch", "channel", "y", "x") if d in out.dims])
        probs = np.asarray(out.values, np.float32)
        probs = probs[0] if "batch" in out.dims else probs
        probs = probs if "channel" in out.dims else probs[None]
        probs = probs[:, :h, :w]
        labels = probs.argmax(0) if probs.shape[0] > 1 else (probs[0] > 0.5)
        return labels.astype(np.uint8), probs


# ---- fine-tuning from a package (train init_from=PACKAGE.zip) ---------------------------


def read_package_source(path: str | Path):
    """The net of a bioimage.io package written by unet-seg, for `init_from`: an object
    with `hparams.arch`, `net` (its state dict loaded) and `contract.class_names`, like a
    `SegModule`. Read with zipfile and `torch.load(weights_only=True)`: no code from the
    package runs, and bioimageio.core is not needed. A package of another framework is
    refused: its layers have no unet-seg names to load by."""
    import zipfile
    from types import SimpleNamespace

    import yaml

    from unet_seg.models.registry import build_net

    path = Path(path)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        rdf_name = (
            "rdf.yaml"
            if "rdf.yaml" in names
            else next(n for n in names if n.endswith("bioimageio.yaml"))
        )
        content = yaml.safe_load(z.read(rdf_name))
        ours = (content.get("config") or {}).get("unet_seg")
        weights = (content.get("weights") or {}).get("pytorch_state_dict")
        if not ours or not weights:
            raise ValueError(
                f"init_from={path}: a bioimage.io package not written by unet-seg "
                f"({content.get('name')!r}"
                + ("" if weights else ", without pytorch_state_dict weights")
                + "): fine-tuning loads layers by their unet-seg names; start from a "
                "package of `python -m unet_seg.export format=bioimageio`, or a .ckpt"
            )
        arch = dict(weights["architecture"]["kwargs"]["arch"])
        import io

        state = torch.load(io.BytesIO(z.read(weights["source"])), weights_only=True)
    net = build_net({**arch, "encoder_weights": None} if "encoder_weights" in arch else arch)
    prefix = "net."
    net.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    contract = ours.get("data_contract") or {}
    return SimpleNamespace(
        hparams=SimpleNamespace(arch=arch), net=net,
        contract=SimpleNamespace(class_names=list(contract.get("class_names") or [])),
    )  # fmt: skip
