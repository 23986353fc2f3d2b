"""The self-contained architecture file of a bioimage.io package (`export format=bioimageio`).

bioimage.io's `pytorch_state_dict` weights name a Python file and a callable in it that
builds the net; a consumer (bioimageio.core, deepImageJ's PyTorch engine, ilastik) imports
that file and loads the state dict into what it returns. The file must not need unet-seg
installed, so `architecture_source` writes one: the sources of `unet_seg.models` (which
import nothing of unet-seg outside that package) embedded as strings and served to Python's
import system under a private package name, plus `Network`, the net with its shape-generic
padding and the class probabilities as output, exactly as `export.ExportNet` and
`losses.class_probabilities` compute them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MODELS = Path(__file__).parent / "models"
CALLABLE = "Network"

_TEMPLATE = '''"""{title}

The network of a bioimage.io package written by unet-seg {version}: `{callable}(**kwargs)`
builds it (kwargs: the package's `weights.pytorch_state_dict.kwargs`), and its state dict
loads into it. Self-contained: the sources of `unet_seg.models` are embedded below and imported
under the private package name `{package}`; only PyTorch (and NumPy) are needed.

Input: normalised float32 `[B, C, *spatial]` (the package's preprocessing makes it); output:
class probabilities `[B, K, *spatial]` (softmax over K; a one-channel sigmoid net gives
`[1 - p, p]`). Any size of at least the package's minimum works: the net reflect-pads each
spatial axis to a multiple of its pooling and crops back.
"""

import importlib
import importlib.abc
import importlib.util
import sys

import torch
from torch import nn

_PACKAGE = "{package}"
_SOURCES = {sources}


class _Sources(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        key = _key(name)
        if key is None:
            return None
        package = _source_key(key).endswith("__init__")
        return importlib.util.spec_from_loader(name, self, is_package=package)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        source = _SOURCES[_source_key(_key(module.__name__))]
        exec(compile(source, "<" + module.__name__ + ">", "exec"), module.__dict__)


def _source_key(key):
    if key == "":
        return "__init__"
    return key + ".__init__" if key + ".__init__" in _SOURCES else key


def _key(name):
    if name == _PACKAGE:
        return ""
    if name.startswith(_PACKAGE + "."):
        key = name[len(_PACKAGE) + 1 :]
        if key in _SOURCES or key + ".__init__" in _SOURCES:
            return key
    return None


if not any(isinstance(f, _Sources) and f.package == _PACKAGE for f in sys.meta_path):
    _finder = _Sources()
    _finder.package = _PACKAGE
    sys.meta_path.append(_finder)


class {callable}(nn.Module):
    """The net of an `arch` config (the checkpoint's), with probabilities as output.

    Args:
        arch: the constructor arguments and `name` of the net (unet-seg's `arch` config).
        level: the pruned UNet++ head to run, or None for the deepest.
    """

    def __init__(self, arch, level=None):
        super().__init__()
        registry = importlib.import_module(_PACKAGE + ".registry")
        arch = dict(arch)
        arch.pop("encoder_weights", None)  # pretrained weights: the state dict holds them
        self.net = registry.build_net(arch)
        self.level = level

    def forward(self, x):
        logits = self.net.forward_traceable(x, self.level).float()
        if logits.shape[1] == 1:
            p = torch.sigmoid(logits)
            return torch.cat([1 - p, p], dim=1)
        return torch.softmax(logits, dim=1)

'''


def _sources() -> dict[str, str]:
    """`{module path relative to unet_seg.models: source}`, `pkg.__init__` for packages,
    with `unet_seg.models` renamed to the private package."""
    found = {}
    for path in sorted(MODELS.rglob("*.py")):
        parts = path.relative_to(MODELS).with_suffix("").parts
        found[".".join(parts)] = path.read_text()
    return found


def package_name(sources: dict[str, str]) -> str:
    """A private package name that differs between unet-seg versions of the model code, so
    that two packages in one process never share modules."""
    digest = hashlib.sha256(repr(sorted(sources.items())).encode()).hexdigest()[:12]
    return f"_unet_seg_net_{digest}"


def architecture_source(title: str, version: str) -> str:
    """The text of the self-contained architecture file (see the module docstring)."""
    sources = _sources()
    package = package_name(sources)
    renamed = {k: v.replace("unet_seg.models", package) for k, v in sources.items()}
    return _TEMPLATE.format(
        title=title, version=version, callable=CALLABLE, package=package,
        sources=repr(renamed),
    )  # fmt: skip
