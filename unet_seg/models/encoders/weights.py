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
import math
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
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


SAFETENSORS_FIX = "save the weights again (safetensors.torch.save_file(model.state_dict(), path))"
"""The fix offered for a damaged or foreign `.safetensors` file."""


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a `.safetensors` file: an 8-byte little-endian header length, a JSON
    header `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": ...}`,
    then the raw little-endian bytes (offsets count from the end of the header).

    The header is checked before any byte is read: every tensor's dtype, shape and offsets
    (integers, `0 <= begin <= end <=` the data's length, `end - begin` = its elements times
    the dtype's size), and no two tensors sharing bytes. The data are memory-mapped and each
    tensor copied once, so the file is not held twice in memory.

    Raises:
        ValueError naming the file (and the tensor) for anything that is not such a file.
    """
    path = Path(path)
    total = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: too short for a safetensors file ({total} bytes); "
                             f"{SAFETENSORS_FIX}")  # fmt: skip
        (size,) = struct.unpack("<Q", head)
        if size > total - 8:
            raise ValueError(f"{path}: not a safetensors file (its header length {size} "
                             f"exceeds the file's {total} bytes); {SAFETENSORS_FIX}")  # fmt: skip
        text = f.read(size)
    try:
        header = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a safetensors file (its header is not JSON: {err}); "
                         f"{SAFETENSORS_FIX}") from err  # fmt: skip
    start = 8 + size
    entries = _safetensors_entries(path, header, total - start)
    tensors: dict[str, Tensor] = {}
    data = None
    if total > start and any(end > begin for _, _, _, begin, end in entries):
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(total - start,))
    for name, dtype, shape, begin, end in entries:
        if end == begin:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        raw = torch.from_numpy(np.array(data[begin:end]))  # one copy, out of the mapping
        tensors[name] = raw.view(dtype).reshape(shape)
    del data  # closes the mapping
    return tensors


def _safetensors_entries(
    path: Path, header: object, length: int
) -> list[tuple[str, torch.dtype, list[int], int, int]]:
    """`(name, dtype, shape, begin, end)` of each tensor of a safetensors header, checked
    against the format and the `length` bytes of data; a ValueError at the first problem."""

    def bad(what: str) -> ValueError:
        return ValueError(f"{path}: not a valid safetensors file ({what}); {SAFETENSORS_FIX}")

    if not isinstance(header, dict):
        raise bad(f"its header is a JSON {_json_kind(header)}, expected an object "
                  "{name: {dtype, shape, data_offsets}}")  # fmt: skip
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict):
                raise bad(f"__metadata__ is a JSON {_json_kind(info)}, expected an object")
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise bad(f"tensor {name!r}: {json.dumps(info)[:80]}, expected an object with "
                      "dtype, shape and data_offsets")  # fmt: skip
        dtype = SAFETENSORS_DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise ValueError(
                f"{path}: tensor {name!r} has the unsupported dtype "
                f"{info['dtype']!r} (supported: {', '.join(SAFETENSORS_DTYPES)})"
            )
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(_count(n) for n in shape):
            raise bad(f"tensor {name!r}: shape {shape!r}, expected a list of integers >= 0")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_count, offsets)):
            raise bad(f"tensor {name!r}: data_offsets {offsets!r}, expected [begin, end], "
                      "integers >= 0")  # fmt: skip
        begin, end = offsets
        if not begin <= end <= length:
            raise bad(f"tensor {name!r}: data_offsets [{begin}, {end}], expected "
                      f"0 <= begin <= end <= {length} (the bytes of data)")  # fmt: skip
        want = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if end - begin != want:
            raise bad(f"tensor {name!r}: {end - begin} bytes for a {info['dtype']} tensor of "
                      f"shape {shape} ({want} bytes)")  # fmt: skip
        entries.append((name, dtype, shape, begin, end))
    reach, last = 0, ""  # the furthest end so far, and its tensor
    for begin, end, name in sorted((e[3], e[4], e[0]) for e in entries if e[4] > e[3]):
        if begin < reach:
            raise bad(f"tensors {last!r} and {name!r} share bytes")
        reach, last = end, name
    return entries


def _json_kind(value: object) -> str:
    """The JSON name of a decoded value's type (array, string, number, ...)."""
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
             type(None): "null", dict: "object"}  # fmt: skip
    return kinds.get(type(value), type(value).__name__)


def _count(value: object) -> bool:
    """An integer >= 0 (JSON's, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
        except (ValueError, OSError) as err:  # the message names the file
            raise EncoderWeightsError(f"arch.encoder_weights: {err}") from err
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
