"""Architecture registry: `arch.name` in a config or checkpoint -> the class that builds it.

A checkpoint names its architecture by this key, never by an import path, so
loading one can only ever build a known net.
"""

from __future__ import annotations

from unet_seg.models.attention_unet import AttentionUNet
from unet_seg.models.base import SegNet
from unet_seg.models.encoder_unet import EncoderNet, EncoderUNet
from unet_seg.models.encoders import build_encoder
from unet_seg.models.encoders.weights import load_encoder_weights
from unet_seg.models.nested_unet import NestedUNet
from unet_seg.models.nested_unet3d import NestedUNet3D
from unet_seg.models.res_unet import ResUNet
from unet_seg.models.unet import UNet
from unet_seg.models.unet3d import UNet3D
from unet_seg.models.unet_valid import ValidUNet
from unet_seg.models.unetpp_encoder import EncoderNestedUNet

ARCHITECTURES: dict[str, type[SegNet]] = {
    "unet": UNet,
    "nested": NestedUNet,
    "attention_unet": AttentionUNet,
    "res_unet": ResUNet,
    "unet_valid": ValidUNet,
    "unet3d": UNet3D,
    "nested3d": NestedUNet3D,
    "unet_encoder": EncoderUNet,
    "unetpp_encoder": EncoderNestedUNet,
}


def _split(arch: dict) -> tuple[type[SegNet], dict]:
    """(the class an `arch` config names, its constructor kwargs)."""
    kwargs = dict(arch)
    name = kwargs.pop("name", None)
    if name not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {name!r}: choose one of {sorted(ARCHITECTURES)} "
            "(arch=<name> on the command line)"
        )
    return ARCHITECTURES[name], kwargs


def build_net(arch: dict) -> SegNet:
    """Build the net an `arch` config describes: `{"name": ..., **constructor kwargs}`."""
    cls, kwargs = _split(arch)
    name = arch["name"]
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"arch={name}: bad parameters {kwargs}: {err}") from err


def context_margin(arch: dict) -> int:
    """Pixels of input context the net of an `arch` config needs on each side of its output:
    the valid-convolution U-Net's margin (92 at depth 4), 0 for nets that pad."""
    cls, kwargs = _split(arch)
    return cls.margin_for_config(**kwargs)


def arch_spatial_dims(arch: dict) -> int:
    """The convolution dimension of the net an `arch` config describes, without building it:
    2 (images, slices, 2.5-D slabs) or 3 (volumes: `unet3d`, `nested3d`)."""
    cls, _ = _split(arch)
    return cls.spatial_dims


def weight_problems(arch: dict) -> list[Exception]:
    """What keeps the `arch.encoder_weights` of an `arch` config from loading (checked before
    anything is written): a missing or foreign file, keys that do not fit; [] without."""
    net = ARCHITECTURES.get(arch.get("name"))  # unet_encoder, unetpp_encoder
    if net is None or not issubclass(net, EncoderNet) or arch.get("encoder_weights") is None:
        return []

    name = arch.get("encoder", "resnet34")
    try:
        encoder = build_encoder(name, int(arch.get("in_channels", 3)))
        load_encoder_weights(encoder, name, arch["encoder_weights"])
    except ValueError as err:  # EncoderWeightsError, an unknown encoder
        return [err]
    return []
