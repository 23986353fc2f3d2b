"""The data contract: what a trained net expects of its input and what its classes mean.

Built once from the data config (`DataContract.from_config`), stored in every
checkpoint as plain data (`to_dict`), and read back by inference, evaluate,
predict, export and the Python API (`from_dict`). Every class count comes from
here: `num_classes` (K >= 2, background first) and `out_channels` (the net's
logits: 1 for a binary task with a sigmoid, else K).

An instance target (`data.target: instances`) is a contract of its own kind: the
classes are `unet_seg.instances.INSTANCE_CLASSES` (background, interior, boundary),
built from instance labels, and `instances` holds how they were built and are decoded
back into objects (`boundary_width`, `min_size`); its masks are instance labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from unet_seg.data.masks import MaskEncoding
from unet_seg.data.readers import DEFAULT_INTENSITY, read_image, size_mismatch
from unet_seg.instances import INSTANCE_CLASSES, instance_settings

TARGETS = ("semantic", "instances")
"""`data.target`: the masks' classes, or objects from instance labels."""

CONTRACT_KEYS = ("in_channels", "num_classes", "class_names", "background", "mask_format",
                 "mask_values", "mask_colors", "ignore_value", "intensity", "mean", "std",
                 "crop_size", "target", "instances", "volume", "dims", "slab", "slice_axis",
                 "spacing", "patch")  # fmt: skip
"""The keys of a data config (`conf/data/*.yaml`) that the contract holds."""


def check_class_config(num_classes: int, num_mask_classes: int, class_names: Sequence[str]):
    """Raise unless `num_classes`, the mask encoding's class count and `class_names` agree,
    naming every disagreement at once.

    `num_classes: 1` means a binary task with a sigmoid output (two mask classes).
    """
    expected = 2 if num_classes == 1 else num_classes
    problems = []
    if num_mask_classes != expected:
        problems.append(
            f"data.num_classes={num_classes} needs {expected} mask classes, but the mask "
            f"encoding (data.mask_values / mask_colors / class folders) has {num_mask_classes}: "
            "give one value per class (num_classes: 1 is binary, two values)"
        )
    if len(class_names) != expected:
        problems.append(
            f"data.class_names={list(class_names)} must name {expected} classes "
            f"(background first) to match the {num_mask_classes} mask classes"
        )
    if problems:
        raise ValueError("; and ".join(problems) + " (data=auto plans all three from the masks)")


@dataclass(frozen=True)
class DataContract:
    """Classes, mask encoding, intensity scaling, normalisation, channels and patch size.

    Args:
        class_names: one per class, background first (binary: two names).
        background: whether class 0 is a background that the mean scores leave out (cells,
            EM, organs); False where class 0 is a class like the others (CamVid's sky):
            the means count every class. Checkpoints written before it existed load as True.
        in_channels: channels the net takes (see `unet_seg.data.readers`).
        sigmoid: a binary task with one logit and a sigmoid (`data.num_classes: 1`).
        mask_format, mask_values, mask_colors: the mask encoding (`unet_seg.data.masks`);
            `mask_values` holds the pixel value (or palette index) of each class.
        ignore_value: what marks unlabelled pixels in a mask (a value, an `[r, g, b]`
            colour, or for `folders` a folder of ignore masks), or None; evaluate reads
            truth masks with it. Checkpoints written before it existed load as None.
        intensity: `{"mode": "range" | "percentile", "low", "high"}`: how pixels reach [0, 1].
        mean, std: then `(x - mean) / std`, one value or one per channel.
        crop_size: the training patch side (resize-mode inference uses it), or None.
        instances: for an instance target, `{"boundary_width", "min_size"}`
            (`unet_seg.instances`); None for a semantic one.
        volume: the samples are volumes (`unet_seg.data.volumes`: arrays `[Z, Y, X(, C)]`
            with a spacing), not 2-D images. The fields below are for volumes only.
        dims: how the net sees a volume: 2 (slices along `slice_axis`), 2.5 (`slab`
            neighbouring slices as input channels) or 3 (patches, a 3-D net).
        slab: slices per 2.5-D input (odd; 1 for 2 and 3); `in_channels` is the volume's
            channels times `slab`.
        slice_axis: the array axis (0 z, 1 y, 2 x) that 2-D and 2.5-D slice along.
        spacing: `(z, y, x)` in mm the net was trained at; volumes of another spacing are
            resampled to it and predictions back to theirs. None for 2-D images.
        patch: the 3-D training patch `(d, h, w)` (dims 3); 2-D and 2.5-D use `crop_size`.
    """

    class_names: list[str]
    in_channels: int
    background: bool = True
    sigmoid: bool = False
    mask_format: str = "values"
    mask_values: list[int] = field(default_factory=list)
    mask_colors: list[list[int]] | None = None
    ignore_value: int | list[int] | str | None = None
    intensity: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_INTENSITY))
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.25])
    crop_size: int | None = None
    instances: dict[str, int] | None = None
    volume: bool = False
    dims: float = 2
    slab: int = 1
    slice_axis: int = 0
    spacing: list[float] | None = None
    patch: list[int] | None = None

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> DataContract:
        """The contract of a data config (`cfg.data`, or any mapping with its keys); checks
        that `num_classes`, the mask encoding and `class_names` agree."""
        data = {k: _plain(data.get(k)) for k in CONTRACT_KEYS}
        target = data["target"] or "semantic"
        if target not in TARGETS:
            raise ValueError(f"data.target={target!r}: choose one of {list(TARGETS)}")
        if target == "instances":
            return cls._instance_target(data)
        encoding = MaskEncoding(
            data["mask_values"], data["mask_format"] or "values", data["mask_colors"],
            data["class_names"], data["ignore_value"],
        )  # fmt: skip
        num_classes = int(data["num_classes"])
        check_class_config(num_classes, encoding.num_classes, data["class_names"])
        contract = cls(
            class_names=list(data["class_names"]),
            in_channels=int(data["in_channels"]),
            background=_background(data["background"]),
            sigmoid=num_classes == 1,
            mask_format=encoding.mask_format,
            mask_values=list(encoding.mask_values),
            mask_colors=[list(c) for c in encoding.mask_colors] if encoding.mask_colors else None,
            ignore_value=_plain(encoding.ignore_value),
            intensity=dict(data["intensity"] or DEFAULT_INTENSITY),
            mean=_floats(data["mean"], [0.5]),
            std=_floats(data["std"], [0.25]),
            crop_size=int(data["crop_size"]) if data["crop_size"] else None,
            **_volume_fields(data),
        )
        contract.__dict__["encoding"] = encoding  # already built: cache it
        return contract

    @classmethod
    def _instance_target(cls, data: dict[str, Any]) -> DataContract:
        """The contract of `data.target: instances`: three classes from instance labels."""
        if data["num_classes"] != len(INSTANCE_CLASSES) or data["class_names"] != list(
            INSTANCE_CLASSES
        ):
            raise ValueError(
                f"data.target=instances trains the classes {list(INSTANCE_CLASSES)}, but "
                f"data.num_classes={data['num_classes']} and data.class_names="
                f"{data['class_names']}: leave them to the target (train sets them)"
            )
        ignore = data["ignore_value"]  # a value of the instance labels (0 is background)
        if ignore is not None:
            if data["mask_format"] not in (None, "instances"):
                raise ValueError(
                    f"data.target=instances with data.ignore_value={ignore!r}: the ignore value "
                    "is read from the instance labels, so it needs data.mask_format=instances "
                    "(masks that are instance labels); mark unlabelled pixels there"
                )
            MaskEncoding(mask_format="instances", ignore_value=ignore)  # checks it
        return cls(
            class_names=list(INSTANCE_CLASSES),
            in_channels=int(data["in_channels"]),
            mask_format="instances",
            mask_values=[0, 1],
            intensity=dict(data["intensity"] or DEFAULT_INTENSITY),
            mean=_floats(data["mean"], [0.5]),
            std=_floats(data["std"], [0.25]),
            crop_size=int(data["crop_size"]) if data["crop_size"] else None,
            instances=instance_settings(data["instances"]),
            ignore_value=ignore,
            **_volume_fields(data),
        )

    @property
    def scored_classes(self) -> list[str]:
        """The classes the mean scores count: 1..K-1, or all K without a background."""
        return self.class_names[1:] if self.background else list(self.class_names)

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> DataContract:
        """The contract `to_dict` stored (in a checkpoint)."""
        return cls(**{k: _plain(v) for k, v in stored.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts, numbers, strings) for a checkpoint."""
        return asdict(self)

    @property
    def instance_target(self) -> bool:
        """Whether the net was trained on an instance target (and predicts objects)."""
        return self.instances is not None

    @property
    def num_classes(self) -> int:
        """Classes K, background included (2 for a binary task, sigmoid or not)."""
        return len(self.class_names)

    @property
    def out_channels(self) -> int:
        """Channels of the net's logits: 1 with a sigmoid, else K."""
        return 1 if self.sigmoid else self.num_classes

    @cached_property
    def encoding(self) -> MaskEncoding:
        """Mask files <-> class indices, both directions."""
        return MaskEncoding(self.mask_values, self.mask_format, self.mask_colors,
                            self.class_names, self.ignore_value)  # fmt: skip

    def read_pair(self, image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
        """An image `[H, W, in_channels]` as stored (not yet scaled) and its mask as class
        indices `[H, W]`, refusing a mask of another size."""
        image = read_image(image_path, self.in_channels)
        truth = self.encoding.load(mask_path)
        mismatch = size_mismatch(mask_path, "mask", truth.shape, image_path, image.shape)
        if mismatch:
            raise ValueError(mismatch)
        return image, truth

    @property
    def normalization(self) -> dict[str, Any]:
        """`{"mean", "std", "intensity"}`: how pixels become the net's input."""
        return {"mean": list(self.mean), "std": list(self.std), "intensity": dict(self.intensity)}


DIMS = (2, 2.5, 3)
"""`data.dims`: slices, slabs of neighbouring slices as channels, or 3-D patches."""


def _volume_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The volume fields of a contract from a data config (defaults for 2-D images)."""
    if not data["volume"]:
        given = [
            f"data.{k}={data[k]!r}"
            for k in ("dims", "slab", "spacing", "patch")
            if data[k] not in (None, 2 if k == "dims" else None, 1 if k == "slab" else None)
        ]
        if given:
            raise ValueError(f"{', '.join(given)}: for volumes only, and these samples are "
                             "2-D images; leave them out")  # fmt: skip
        return {}
    dims = float(data["dims"] if data["dims"] is not None else 2)
    if dims not in DIMS:
        raise ValueError(f"data.dims={data['dims']!r}: choose one of 2, 2.5 or 3")
    slab = int(data["slab"] or 1)
    if slab < 1 or slab % 2 == 0:
        raise ValueError(f"data.slab={slab}: a slab is an odd number of slices (3, 5, ...)")
    if slab > 1 and dims != 2.5:
        raise ValueError(
            f"data.slab={slab} stacks slices as channels for data.dims=2.5, but "
            f"data.dims={data['dims']}: set data.dims=2.5 or leave data.slab out"
        )
    return {
        "volume": True,
        "dims": 2.5 if dims == 2.5 else int(dims),
        "slab": slab,
        "slice_axis": int(data["slice_axis"] or 0),
        "spacing": _floats(data["spacing"], []) or None,
        "patch": [int(v) for v in data["patch"]] if data["patch"] else None,
    }


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain lists and dicts (other values as they are)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return value
    return [_plain(v) for v in value]


def _floats(values: Sequence[float] | float | None, default: list[float]) -> list[float]:
    if values is None:
        return list(default)
    if isinstance(values, int | float):
        return [float(values)]
    return [float(v) for v in values]


def _background(value: Any) -> bool:
    """`data.background`: true (or absent: class 0 is the background) or false."""
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    raise ValueError(
        f"data.background={value!r}: true (class 0 is the background, left out of the mean "
        "scores) or false (class 0 is a class like the others); data=auto plans it"
    )
