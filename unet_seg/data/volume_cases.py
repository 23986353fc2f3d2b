"""Volume folders: which files make one case, and slabs of neighbouring slices.

A case is one volume: its image files (one per channel) and its label volume.
Two layouts pair them:

- by stem, as for 2-D images: `images/<stem>.nii.gz` with `masks/<stem><mask_suffix>.nii.gz`
  (any volume extension, `unet_seg.data.volumes.VOLUME_EXTENSIONS`);
- nnU-Net's: `images/<case>_0000.nii.gz`, `images/<case>_0001.nii.gz`, ... (one file per
  channel or modality, e.g. FLAIR and T1c) with `masks/<case>.nii.gz`. It is recognised when
  every image stem ends in `_` and four digits and no mask is named that way.

`find_volume_cases` lists every problem of a folder at once, each with its file and fix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unet_seg.data.volumes import VOLUME_EXTENSIONS

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
"""nnU-Net's channel file: `<case>_0000`."""


@dataclass(frozen=True)
class VolumeCase:
    """One volume: `name` (the case), its `images` (one file per channel, in channel
    order) and its `mask` (None where there is none, e.g. for prediction)."""

    name: str
    images: tuple[Path, ...]
    mask: Path | None = None


def volume_stem(path: str | Path) -> str:
    """A volume file's name without its extension (`.nii.gz` counts as one)."""
    name = Path(path).name
    lower = name.lower()
    for ext in sorted(VOLUME_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def is_volume_file(path: Path) -> bool:
    """A file with a volume extension (hidden files, e.g. macOS `._x.nii`, left out)."""
    return (
        path.is_file()
        and not path.name.startswith(".")
        and path.name.lower().endswith(VOLUME_EXTENSIONS)
    )


def list_volumes(folder: str | Path) -> list[Path]:
    """Volume files directly inside `folder`, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if is_volume_file(p))


def nnunet_layout(stems: Sequence[str]) -> bool:
    """Whether image stems are nnU-Net's `<case>_<4 digits>` (every one of them)."""
    return bool(stems) and all(CHANNEL_SUFFIX.match(s) for s in stems)


def find_volume_cases(
    root: str | Path,
    images_dir: str = "images",
    masks_dir: str | None = "masks",
    mask_suffix: str = "",
) -> list[VolumeCase]:
    """The cases of a volume folder (the module docstring), sorted by name.

    Args:
        masks_dir: None for images without masks (prediction).

    Raises:
        FileNotFoundError / ValueError listing every problem at once: a missing folder,
        no volume files, an image without a mask, two files with one stem, a case whose
        channels are not numbered 0000, 0001, ... without gaps, or cases with different
        channel counts.
    """
    root = Path(root)
    image_folder = root / images_dir
    if not image_folder.is_dir():
        raise FileNotFoundError(
            f"{image_folder} does not exist: data.root must hold `{images_dir}/` (and "
            f"`{masks_dir}/`) folders of volumes with matching names"
        )
    images = list_volumes(image_folder)
    if not images:
        raise FileNotFoundError(
            f"{image_folder} holds no volumes (looked for {', '.join(VOLUME_EXTENSIONS)}, in "
            "any case): put the volumes there, or point data.root at their folder"
        )
    problems: list[str] = []
    stems = [volume_stem(p) for p in images]
    problems += _shared(images, stems, image_folder)
    channels: dict[str, dict[int, Path]] = {}
    if nnunet_layout(stems):
        for stem, path in zip(stems, images, strict=True):
            match = CHANNEL_SUFFIX.match(stem)
            channels.setdefault(match["case"], {})[int(match["channel"])] = path
    else:
        channels = {stem: {0: path} for stem, path in zip(stems, images, strict=True)}
    cases = []
    counts = {}
    for name, files in sorted(channels.items()):
        numbers = sorted(files)
        if numbers != list(range(len(numbers))):
            problems.append(
                f"case {name!r} in {image_folder} has channel files {numbers}: nnU-Net's layout "
                f"numbers them {name}_0000, {name}_0001, ... without gaps; rename or add the "
                "missing channel"
            )
        counts[name] = len(numbers)
        cases.append(VolumeCase(name, tuple(files[n] for n in numbers)))
    if len(set(counts.values())) > 1:
        by_count: dict[int, list[str]] = {}
        for name, n in counts.items():
            by_count.setdefault(n, []).append(name)
        listing = "; ".join(f"{n} channel(s): {names[:5]}" for n, names in sorted(by_count.items()))
        problems.append(
            f"cases in {image_folder} differ in their channel count ({listing}): every case needs "
            "the same channels (modalities) in the same order"
        )
    if masks_dir is None:
        if problems:
            raise ValueError("\n".join(problems))
        return cases
    mask_folder = root / masks_dir
    if not mask_folder.is_dir():
        problems.insert(0, f"{mask_folder} does not exist: put the label volumes there, named "
                           f"<case>{mask_suffix} with a volume extension")  # fmt: skip
        raise FileNotFoundError("\n".join(problems))
    masks = [p for p in list_volumes(mask_folder) if volume_stem(p).endswith(mask_suffix)]
    mask_stems = [volume_stem(p)[: len(volume_stem(p)) - len(mask_suffix)] for p in masks]
    problems += _shared(masks, mask_stems, mask_folder)
    mask_of = dict(zip(mask_stems, masks, strict=True))
    unmatched = [c.name for c in cases if c.name not in mask_of]
    if unmatched:
        problems.insert(0, (
            f"{len(unmatched)} case(s) in {image_folder} have no label volume in {mask_folder} "
            f"(expected <case>{mask_suffix}.nii.gz or another volume extension), e.g. "
            f"{unmatched[:5]}: add the labels or remove the cases"
        ))  # fmt: skip
    if problems:
        raise (FileNotFoundError if unmatched else ValueError)("\n".join(problems))
    return [VolumeCase(c.name, c.images, mask_of[c.name]) for c in cases]


def _shared(paths: list[Path], stems: list[str], folder: Path) -> list[str]:
    """A problem for each stem two files share (`a.nii` and `a.nii.gz`)."""
    seen: dict[str, list[str]] = {}
    for stem, path in zip(stems, paths, strict=True):
        seen.setdefault(stem, []).append(path.name)
    return [
        f"{folder}: {names} share the name {stem!r}: keep one of them"
        for stem, names in seen.items()
        if len(names) > 1
    ]


def slab_indices(length: int, index: int, slab: int) -> list[int]:
    """The `slab` slice indices centred on `index` along an axis of `length` slices, the
    edge slice repeated beyond either end: `slab_indices(10, 0, 3) == [0, 0, 1]`."""
    half = slab // 2
    return [min(max(index + offset, 0), length - 1) for offset in range(-half, half + 1)]


def slab(
    volume: np.ndarray | torch.Tensor, index: int, slab: int
) -> np.ndarray | torch.Tensor:
    """The 2.5-D input at slice `index` of a volume `[C, S, H, W]` (S along the slice axis):
    the `slab` neighbouring slices as channels, `[C * slab, H, W]`, channel-major (all slices
    of channel 0, then channel 1, ...). `slab=1` is the slice itself, `[C, H, W]`."""
    picked = volume[:, slab_indices(volume.shape[1], index, slab)]  # [C, slab, H, W]
    return picked.reshape(volume.shape[0] * slab, *volume.shape[2:])
