"""Pretrained encoder weights: torchvision's ImageNet files by name, or a local file.

`arch.encoder_weights=imagenet` downloads the published file once through
`torch.hub.load_state_dict_from_url` (its SHA-256 checked against the prefix in its name,
cached in `$TORCH_HOME/hub/checkpoints`); `arch.encoder_weights=PATH` reads a local `.pth` /
`.pt` state dict (bare, or wrapped under `state_dict` or `model`) or a `.safetensors`
file (read here: no extra package). Every key must match the encoder by name and shape:
the classifier of the published file (`fc.*`, `classifier.*`) is ignored, and the first
convolution is adapted to the input channel count; anything else is refused by name,
all at once.

| encoder       | ImageNet file (https://download.pytorch.org/models/) | sha256 prefix |
|---------------|------------------------------------------------------|---------------|
| resnet18      | resnet18-f37072fd.pth       (IMAGENET1K_V1)          | f37072fd      |
| resnet34      | resnet34-b627a593.pth       (IMAGENET1K_V1)          | b627a593      |
| resnet50      | resnet50-0676ba61.pth       (IMAGENET1K_V1)          | 0676ba61      |
| convnext_tiny | convnext_tiny-983f1562.pth  (IMAGENET1K_V1)          | 983f1562      |
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from unet_seg.models.encoders import HEAD_PREFIXES, Encoder

log = logging.getLogger(__name__)

IMAGENET_URLS: dict[str, str] = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "convnext_tiny": "https://download.pytorch.org/models/convnext_tiny-983f1562.pth",
}
"""torchvision's published ImageNet-1k weights of each encoder (see the table above)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""The normalisation these weights were trained with, on RGB images scaled to [0, 1]."""

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
"""The dtype names of the safetensors format."""


class EncoderWeightsError(ValueError):
    """Encoder weights that cannot be used: every problem listed, the file and the fix."""


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a `.safetensors` file: an 8-byte little-endian header length, a JSON
    header `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": ...}`,
    then the raw little-endian bytes (offsets count from the end of the header)."""
    raw = Path(path).read_bytes()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (size,) = struct.unpack("<Q", raw[:8])
    try:
        header = json.loads(raw[8 : 8 + size])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a safetensors file (its header is not JSON: {err})") from err
    data = memoryview(raw)[8 + size :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has the unsupported dtype {info.get('dtype')}")
        begin, end = info["data_offsets"]
        flat = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype) if end > begin else (
            torch.empty(0, dtype=dtype))  # fmt: skip
        tensors[name] = flat.reshape(info["shape"])  # [n] -> the stored shape
    return tensors


def read_state_dict(source: str | Path, encoder: str, url: str | None = None) -> dict[str, Tensor]:
    """The state dict `source` names for `encoder`.

    Args:
        source: `imagenet` (the published file of `IMAGENET_URLS`, or `url`), or a path to a
            `.pth`/`.pt` (a state dict, or a dict holding one under `state_dict`/`model`) or
            a `.safetensors` file.
        encoder: the encoder's name (chooses the ImageNet URL).
        url: the URL to fetch for `imagenet` instead of torchvision's (tests: `file://`).
    """
    if str(source) == "imagenet":
        url = url or IMAGENET_URLS[encoder]
        file_name = url.rsplit("/", 1)[-1]
        try:
            return torch.hub.load_state_dict_from_url(
                url, map_location="cpu", progress=False, check_hash=True, weights_only=True
            )
        except (OSError, RuntimeError) as err:  # URLError is an OSError; a hash mismatch
            raise EncoderWeightsError(
                f"arch.encoder_weights=imagenet: cannot fetch {url} "
                f"({type(err).__name__}: {err}). Without internet, download that file on "
                f"another machine and pass it: arch.encoder_weights=/path/to/{file_name}"
            ) from err
    path = Path(source).expanduser()
    if not path.is_file():
        raise EncoderWeightsError(
            f"arch.encoder_weights={source}: no such file. Give a .pth, .pt or .safetensors "
            "file of the encoder's weights, `imagenet` (downloads torchvision's), or null"
        )
    if path.suffix == ".safetensors":
        try:
            return read_safetensors(path)
        except (ValueError, KeyError, TypeError) as err:
            raise EncoderWeightsError(f"arch.encoder_weights={path}: {err}") from err
    if path.suffix not in (".pth", ".pt"):
        raise EncoderWeightsError(
            f"arch.encoder_weights={path}: a {path.suffix or 'suffix-less'} file; give a "
            ".pth, .pt or .safetensors file of the encoder's weights"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means "not a plain state dict"
        raise EncoderWeightsError(
            f"arch.encoder_weights={path}: not a loadable state dict ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); save one with "
            "torch.save(model.state_dict(), path)"
        ) from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise EncoderWeightsError(
            f"arch.encoder_weights={path}: holds a {type(state).__name__}, not a state dict "
            "(names -> tensors); save one with torch.save(model.state_dict(), path)"
        )
    return state


def adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """A pretrained first-convolution kernel `[O, 3, k, k]` for `in_channels` inputs, as
    segmentation_models_pytorch does (`encoders/_utils.py`, `change_conv_in_channels`):
    1 channel: the sum over the RGB kernels (a grey image repeated as RGB gives the same
    response); n channels: kernel i is RGB kernel `i % 3`, all scaled by 3 / n.

    Shape:
        [O, 3, k, k] -> [O, in_channels, k, k]
    """
    c = weight.shape[1]
    if in_channels == c:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(in_channels) % c
    return weight[:, index] * (c / in_channels)


def _same_kernel(given: Sequence[int], want: Sequence[int]) -> bool:
    """Whether two conv weight shapes `[O, I, k, k]` differ at most in their input channels."""
    return (given[0], *given[2:]) == (want[0], *want[2:])


def load_encoder_weights(
    encoder: Encoder, name: str, source: str | Path, url: str | None = None
) -> dict:
    """Load `source`'s weights into `encoder` (named `name`), or refuse them by name.

    Returns:
        `{"source", "encoder", "loaded": tensors copied, "adapted": [first conv, how],
        "ignored": [the published classifier's keys]}`.

    Raises:
        EncoderWeightsError: listing every missing, unexpected and wrongly shaped key.
    """
    given = read_state_dict(source, name, url)
    where = f"imagenet ({url or IMAGENET_URLS[name]})" if str(source) == "imagenet" else str(source)
    want = encoder.state_dict()
    head = HEAD_PREFIXES[name]
    ignored = [k for k in given if k.startswith(head) and k not in want]
    missing = [k for k in want if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in want and k not in ignored]
    adapted, wrong, state = [], [], {}
    in_channels = want[encoder.first_conv].shape[1]
    for key, tensor in given.items():
        if key not in want:
            continue
        shape = tuple(want[key].shape)
        other_channels = tensor.ndim == 4 and tensor.shape[1] != in_channels
        if key == encoder.first_conv and other_channels and _same_kernel(tensor.shape, shape):
            rule = "sum" if in_channels == 1 else f"repeat, x {tensor.shape[1]}/{in_channels}"
            adapted.append(f"{key}: {tensor.shape[1]} -> {in_channels} input channels ({rule})")
            tensor = adapt_first_conv(tensor, in_channels)
        if tuple(tensor.shape) != shape:
            wrong.append(f"{key} {tuple(tensor.shape)} (expected {shape})")
        state[key] = tensor
    problems = [
        *(f"missing: {k}" for k in missing),
        *(f"unexpected: {k}" for k in unexpected),
        *(f"wrong shape: {k}" for k in wrong),
    ]
    if problems:
        more = [f"... and {len(problems) - 40} more"] if len(problems) > 40 else []
        shown = problems[:40] + more
        raise EncoderWeightsError(
            f"arch.encoder_weights={source}: {len(problems)} key(s) do not fit "
            f"arch.encoder={name} (torchvision's names and shapes):\n  "
            + "\n  ".join(shown)
            + f"\nGive the weights of a torchvision {name} (its state_dict), or another "
            "arch.encoder that matches the file"
        )
    with torch.no_grad():
        for key, tensor in state.items():
            want[key].copy_(tensor)  # the encoder's own tensors: state_dict shares storage
    record = {"source": where, "encoder": name, "loaded": len(state), "adapted": adapted,
              "ignored": ignored}  # fmt: skip
    log.info("encoder %s: %d tensors loaded from %s%s%s", name, len(state), where,
             f"; adapted {'; '.join(adapted)}" if adapted else "",
             f"; ignored {len(ignored)} classifier keys" if ignored else "")  # fmt: skip
    return record

