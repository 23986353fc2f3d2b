"""Volume folders: which files make one case, and slabs of neighbouring slices.

A case is one volume: its image files (one per channel) and its label volume.
Two layouts pair them:

- by stem, as for 2-D images: `images/<stem>.nii.gz` with `masks/<stem><mask_suffix>.nii.gz`
  (any volume extension, `unet_seg.data.volumes.VOLUME_EXTENSIONS`);
- nnU-Net's: `images/<case>_0000.nii.gz`, `images/<case>_0001.nii.gz`, ... (one file per
  channel or modality, e.g. FLAIR and T1c) with `masks/<case>.nii.gz`. It is recognised when
  every image stem ends in `_` and four digits and no mask is named like an image (volumes
  named `scan_0001` with masks `scan_0001` pair by stem).

nnU-Net's raw folders and the Medical Segmentation Decathlon's (`imagesTr/`, `labelsTr/`,
`imagesTs/`) are read with `images_dir="imagesTr"`, `masks_dir="labelsTr"` (a Decathlon
image is one 4-D NIfTI, channels last), which the plan finds itself
(`unet_seg.data.layouts`); in those folders only files of their `dataset.json`'s
`file_ending` are listed, and macOS `._*` files never are.

`find_volume_cases` lists every problem of a folder at once, each with its file and fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch

from unet_seg.data.layouts import CHANNEL_SUFFIX, file_ending, layout_hint
from unet_seg.data.volumes import TIFF_EXTENSIONS, VOLUME_EXTENSIONS, ZARR_EXTENSIONS
from unet_seg.problems import problem_list


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
    """A file with a volume extension, or an OME-Zarr folder (hidden files, e.g. macOS
    `._x.nii`, left out)."""
    name = path.name.lower()
    return (
        (path.is_file() or (path.is_dir() and name.endswith(ZARR_EXTENSIONS)))
        and not path.name.startswith(".")
        and name.endswith(VOLUME_EXTENSIONS)
    )


def holds_volumes(folder: str | Path) -> bool:
    """Whether a folder's images are volumes: NIfTI or ITK files, or TIFF stacks (a series
    with a Z axis, or more than 4 pages: what the 2-D reader refuses as a stack)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    files = list_volumes(folder)
    if any(not p.name.lower().endswith(TIFF_EXTENSIONS) for p in files):
        return True
    for path in files[:3]:  # TIFFs: 2-D images unless they are stacks
        try:
            with tifffile.TiffFile(path) as tif:
                if "Z" in tif.series[0].axes or len(tif.series[0].pages) > 4:
                    return True
        except Exception:  # noqa: BLE001 - an unreadable file is the readers' to report
            continue
    return False


def list_volumes(folder: str | Path) -> list[Path]:
    """Volume files directly inside `folder`, sorted by name; in a folder a `dataset.json`
    describes (`imagesTr/`, `labelsTr/`, `imagesTs/`), those of its `file_ending` only."""
    ending = file_ending(folder)
    return sorted(
        p
        for p in Path(folder).iterdir()
        if is_volume_file(p) and (ending is None or p.name.lower().endswith(ending))
    )


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
            f"`{masks_dir}/`) folders of volumes with matching names{layout_hint(root)}"
        )
    images = list_volumes(image_folder)
    if not images:
        ending = file_ending(image_folder)
        looked = (f"files ending {ending}, the file_ending of its dataset.json" if ending
                  else f"{', '.join(VOLUME_EXTENSIONS)}, in any case")  # fmt: skip
        raise FileNotFoundError(
            f"{image_folder} holds no volumes (looked for {looked}): put the volumes there, "
            "or point data.root at their folder"
        )
    stems = [volume_stem(p) for p in images]
    problems = _shared(images, stems, image_folder)
    mask_folder = None if masks_dir is None else root / masks_dir
    masks: dict[str, Path] = {}  # case -> label volume
    if mask_folder is not None and mask_folder.is_dir():
        found = [(volume_stem(p), p) for p in list_volumes(mask_folder)]
        found = [(s[: len(s) - len(mask_suffix)], p) for s, p in found if s.endswith(mask_suffix)]
        problems += _shared([p for _, p in found], [s for s, _ in found], mask_folder)
        masks = dict(found)
    channels: dict[str, dict[int, Path]] = {}  # case -> channel number -> file
    if nnunet_layout(stems) and not masks.keys() & set(stems):
        for stem, path in zip(stems, images, strict=True):
            match = CHANNEL_SUFFIX.match(stem)
            channels.setdefault(match["case"], {})[int(match["channel"])] = path
    else:
        channels = {stem: {0: path} for stem, path in zip(stems, images, strict=True)}
    cases = []
    for name, files in sorted(channels.items()):
        numbers = sorted(files)
        if numbers != list(range(len(numbers))):
            problems.append(
                f"case {name!r} in {image_folder} has channel files {numbers}: nnU-Net's layout "
                f"numbers them {name}_0000, {name}_0001, ... without gaps; rename or add the "
                "missing channel"
            )
        cases.append(VolumeCase(name, tuple(files[n] for n in numbers)))
    by_count: dict[int, list[str]] = {}
    for case in cases:
        by_count.setdefault(len(case.images), []).append(case.name)
    if len(by_count) > 1:  # each odd case named with the files to add or remove
        usual = max(by_count, key=lambda n: (len(by_count[n]), n))
        ext = _extension(cases[0].images[0])
        for n, names in sorted(by_count.items()):
            if n == usual:
                continue
            for name in names:
                if n < usual:
                    files = ", ".join(f"{name}_{c:04d}{ext}" for c in range(n, usual))
                    fix = f"add {files} or remove the case"
                else:
                    fix = "remove its extra channel files or add them to every case"
                problems.append(
                    f"case {name!r} in {image_folder} has {n} channel file(s) where "
                    f"{len(by_count[usual])} case(s) have {usual}: {fix} (every case needs the "
                    "same channels, modalities, in the same order)"
                )
    if mask_folder is None:
        _raise(problems, ValueError, image_folder)
        return cases
    if not mask_folder.is_dir():
        problems.insert(0, f"{mask_folder} does not exist: put the label volumes there, named "
                           f"<case>{mask_suffix} with a volume extension")  # fmt: skip
        _raise(problems, FileNotFoundError, root)
    unmatched = [c.name for c in cases if c.name not in masks]
    if unmatched:
        problems.insert(0, (
            f"{len(unmatched)} case(s) in {image_folder} have no label volume in {mask_folder} "
            f"(expected <case>{mask_suffix}.nii.gz or another volume extension), e.g. "
            f"{unmatched[:5]}: add the labels or remove the cases"
        ))  # fmt: skip
    _raise(problems, FileNotFoundError if unmatched else ValueError, root)
    return [VolumeCase(c.name, c.images, masks[c.name]) for c in cases]


def _raise(problems: list[str], error: type[Exception], where: Path) -> None:
    """Raise `error` with the one problem, or all of them listed (`problem_list`)."""
    if len(problems) == 1:
        raise error(problems[0])
    if problems:
        raise error(problem_list(f"{len(problems)} problems in {where}", problems))


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


def slab_indices(length: int, index: int, slices: int) -> list[int]:
    """The `slices` slice indices centred on `index` along an axis of `length` slices, the
    edge slice repeated beyond either end: `slab_indices(10, 0, 3) == [0, 0, 1]`."""
    half = slices // 2
    return [min(max(index + offset, 0), length - 1) for offset in range(-half, half + 1)]


def slab(volume: np.ndarray | torch.Tensor, index: int, slices: int) -> np.ndarray | torch.Tensor:
    """The 2.5-D input at slice `index` of a volume `[C, S, H, W]` (S along the slice axis):
    the `slices` neighbouring slices as channels, `[C * slices, H, W]`, channel-major (all
    slices of channel 0, then channel 1, ...). `slices=1` is the slice itself, `[C, H, W]`."""
    picked = volume[:, slab_indices(volume.shape[1], index, slices)]  # [C, slices, H, W]
    return picked.reshape(volume.shape[0] * slices, *volume.shape[2:])


def _extension(path: Path) -> str:
    """A volume file's extension, `.nii.gz` whole."""
    name = path.name
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix
