"""Architecture registry: `arch.name` in a config or checkpoint -> the class that builds it.

A checkpoint names its architecture by this key, never by an import path, so
loading one can only ever build a known net.
"""

from __future__ import annotations

from torch import nn

from unet_seg.models.nested_unet import NestedUNet
from unet_seg.models.unet import UNet

ARCHITECTURES: dict[str, type[nn.Module]] = {"unet": UNet, "nested": NestedUNet}


def build_net(arch: dict) -> nn.Module:
    """Build the net an `arch` config describes: `{"name": ..., **constructor kwargs}`."""
    kwargs = dict(arch)
    name = kwargs.pop("name", None)
    if name not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {name!r}: choose one of {sorted(ARCHITECTURES)} "
            "(arch=<name> on the command line)"
        )
    try:
        return ARCHITECTURES[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"arch={name}: bad parameters {kwargs}: {err}") from err
