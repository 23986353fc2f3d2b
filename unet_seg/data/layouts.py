"""Dataset layouts users already have: nnU-Net v2's raw folders and the Medical Segmentation
Decathlon's, read with nothing else typed.

Both keep training images in `imagesTr/`, their labels in `labelsTr/` (named like the case),
test images in `imagesTs/`, and describe themselves in `dataset.json`:

- nnU-Net v2: one file per channel, `imagesTr/<case>_0000.nii.gz`, `<case>_0001...`
  (2-D datasets: `.png`, `.tif`); `dataset.json` holds `channel_names` (`{"0": "FLAIR"}`),
  `labels` (name -> value: `{"background": 0, "edema": 1}`; a list of values is a region,
  refused: region-based training is not supported yet; a label named `ignore` marks
  unlabelled voxels), `numTraining` and `file_ending`.
- The Decathlon (and nnU-Net v1): one 4-D NIfTI per case, channels last,
  `imagesTr/<case>.nii.gz`; `dataset.json` holds `modality` (`{"0": "FLAIR"}`), `labels`
  reversed (value -> name: `{"0": "background", "1": "edema"}`), `numTraining` and `training`
  (`[{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]`). Its tarballs hold
  macOS `._*` files, which every folder listing leaves out.

`detect_layout` says when a folder is in such a layout (`imagesTr/` and `labelsTr/` there and
the configured `images/` absent); `read_dataset_json` reads its `dataset.json`, and
`contradictions` lists where it disagrees with the files, every problem at once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unet_seg.data.plan_rules import PlanError
from unet_seg.problems import problem_list

IMAGES_TR, LABELS_TR, IMAGES_TS = "imagesTr", "labelsTr", "imagesTs"
"""The folders of nnU-Net's and the Decathlon's layout."""

DATASET_JSON = "dataset.json"

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
"""nnU-Net's channel file: `<case>_0000`."""

IGNORE_LABEL = "ignore"
"""nnU-Net v2's name of the label value that marks unlabelled voxels."""


@dataclass(frozen=True)
class DatasetJson:
    """What a `dataset.json` says about its folder.

    Attributes:
        path: the file.
        style: `"nnU-Net v2"` (labels name -> value, `channel_names`) or `"Decathlon"`
            (labels value -> name, `modality`).
        labels: class value -> name, in increasing value (the ignore label left out).
        channel_names: one per input channel, in channel order ([] when not given).
        file_ending: the image and label files' extension (`.nii.gz`, `.png`), or None.
        num_training: `numTraining`, or None.
        training: the case names of the Decathlon's `training` list ([] when absent).
        ignore_value: the value of the label named `ignore`, or None.
    """

    path: Path
    style: str
    labels: dict[int, str]
    channel_names: list[str] = field(default_factory=list)
    file_ending: str | None = None
    num_training: int | None = None
    training: list[str] = field(default_factory=list)
    ignore_value: int | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready, for plan.json."""
        return {"file": str(self.path), "style": self.style,
                "labels": {str(v): n for v, n in self.labels.items()},
                "channel_names": self.channel_names, "file_ending": self.file_ending,
                "numTraining": self.num_training, "ignore_value": self.ignore_value}  # fmt: skip


def detect_layout(root: str | Path, images_dir: str, masks_dir: str | None) -> str | None:
    """Why `root` is read as nnU-Net's or the Decathlon's layout, or None when it is not: the
    configured folders are the defaults (`images`, `masks`), `images/` is absent, and
    `imagesTr/` and `labelsTr/` are there."""
    root = Path(root)
    if images_dir != "images" or masks_dir not in ("masks", None) or (root / "images").is_dir():
        return None
    if not (root / IMAGES_TR).is_dir() or not (root / LABELS_TR).is_dir():
        return None
    described = " (described by dataset.json)" if (root / DATASET_JSON).is_file() else ""
    return (f"{root} holds {IMAGES_TR}/ and {LABELS_TR}/ and no images/: nnU-Net's (or the "
            f"Decathlon's) layout{described}; another folder: data.images_dir=... "
            "data.masks_dir=...")  # fmt: skip


def resolve_folders(
    root: str | Path, images_dir: str = "images", masks_dir: str | None = "masks"
) -> tuple[str, str | None, str | None]:
    """`(images_dir, masks_dir, why)`: `imagesTr`, `labelsTr` and the reason when `root` is in
    nnU-Net's or the Decathlon's layout (`detect_layout`), else the folders given and None."""
    why = detect_layout(root, images_dir, masks_dir)
    if why is None:
        return images_dir, masks_dir, None
    return IMAGES_TR, (LABELS_TR if masks_dir is not None else None), why


def layout_hint(root: str | Path) -> str:
    """For a folder in nnU-Net's or the Decathlon's layout (`imagesTr/`), the settings that
    read it, to end a not-found message; '' otherwise."""
    root = Path(root)
    if not (root / IMAGES_TR).is_dir():
        return ""
    masks = f" data.masks_dir={LABELS_TR}" if (root / LABELS_TR).is_dir() else ""
    return (f"; {root} is in nnU-Net's (or the Decathlon's) layout: data=auto reads it as it "
            f"is, or give data.images_dir={IMAGES_TR}{masks} ({IMAGES_TS}/ is for predict "
            "input=)")  # fmt: skip


def pair_channel_files(
    images: list[Path], mask_of: dict[str, Path], image_folder: Path
) -> list[str]:
    """nnU-Net's 2-D layout: when no image has a mask of its own stem and every image is
    `<mask stem>_NNNN`, `mask_of` maps them to their case's mask instead of the case (changed in
    place); a problem when cases have more than one channel file, which 2-D images do not read
    yet (`dataset.find_pairs`, `checks.inspect_folder`)."""
    matches = [CHANNEL_SUFFIX.match(p.stem) for p in images]
    if (not mask_of or any(p.stem in mask_of for p in images) or None in matches
            or not any(m["case"] in mask_of for m in matches)):  # fmt: skip
        return []
    cases = {m["case"] for m in matches if m["case"] in mask_of}
    for path, match in zip(images, matches, strict=True):
        if match["case"] in cases:
            mask_of[path.stem] = mask_of[match["case"]]
    for case in cases:
        del mask_of[case]
    extra = sorted(p.name for p, m in zip(images, matches, strict=True) if m["channel"] != "0000")
    if extra:
        return [f"{image_folder}: {len(extra)} nnU-Net channel file(s) past _0000, e.g. "
                f"{extra[:3]}: 2-D images with one file per channel are not read yet; save each "
                "case's channels as one multi-channel TIFF (axes CYX, e.g. tifffile.imwrite(..., "
                "imagej=True, metadata={'axes': 'CYX'})) named <case>_0000.tif, or train on "
                "_0000 alone"]  # fmt: skip
    return []


def dataset_json_of(folder: str | Path) -> Path | None:
    """The `dataset.json` describing a layout folder (`imagesTr/`, `labelsTr/`, `imagesTs/`):
    the one beside it; None for other folders or when there is none."""
    folder = Path(folder)
    if folder.name not in (IMAGES_TR, LABELS_TR, IMAGES_TS):
        return None
    path = folder.parent / DATASET_JSON
    return path if path.is_file() else None


def file_ending(folder: str | Path) -> str | None:
    """The `file_ending` of the `dataset.json` describing `folder` (`dataset_json_of`), in
    lower case, or None (no dataset.json, none given, or an unreadable file: reported when the
    data are planned)."""
    path = dataset_json_of(folder)
    if path is None:
        return None
    try:
        ending = json.loads(path.read_text()).get("file_ending")
    except (OSError, ValueError, AttributeError):
        return None
    return ending.lower() if isinstance(ending, str) and ending else None


def read_dataset_json(root: str | Path) -> DatasetJson | None:
    """`root/dataset.json` read (the module docstring), or None when there is none.

    Raises:
        PlanError naming the file and listing every problem: not JSON, labels missing or
        neither style, region labels (lists of values), names or values twice.
    """
    path = Path(root) / DATASET_JSON
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PlanError(f"{path}: not readable as JSON ({err}): fix the file, or remove it "
                        "and give data.class_names") from None  # fmt: skip
    if not isinstance(raw, dict):
        raise PlanError(f"{path}: holds {type(raw).__name__}, expected a JSON object with "
                        "`labels`")  # fmt: skip
    problems: list[str] = []
    labels, style, ignore = _labels(raw.get("labels"), path, problems)
    channels = raw.get("channel_names", raw.get("modality"))
    channel_names: list[str] = []
    if isinstance(channels, dict):
        try:
            channel_names = [str(channels[k]) for k in sorted(channels, key=int)]
        except ValueError:
            problems.append(f"{path}: channel names {channels} are keyed by other than channel "
                            'numbers: expected {"0": "FLAIR", "1": "T1c"}')  # fmt: skip
        else:
            if sorted(int(k) for k in channels) != list(range(len(channels))):
                problems.append(f"{path}: channels {sorted(channels, key=int)} are not numbered "
                                "0, 1, ... without gaps")  # fmt: skip
    elif channels is not None:
        problems.append(f"{path}: channel_names/modality {channels!r} is not an object "
                        '{"0": "FLAIR", ...}')  # fmt: skip
    count = raw.get("numTraining")
    if count is not None and not isinstance(count, int):
        problems.append(f"{path}: numTraining {count!r} is not a whole number")
        count = None
    training = [_case_of(e.get("label") or e.get("image") or "") for e in raw.get("training") or []
                if isinstance(e, dict)]  # fmt: skip
    ending = raw.get("file_ending")
    if problems:
        raise PlanError(problem_list(f"{len(problems)} problem(s) in {path}", problems))
    return DatasetJson(path, "Decathlon" if style == "value->name" else "nnU-Net v2", labels,
                       channel_names, ending.lower() if isinstance(ending, str) and ending
                       else None, count, [t for t in training if t], ignore)  # fmt: skip


def _labels(labels: Any, path: Path, problems: list[str]) -> tuple[dict[int, str], str, int | None]:
    """`(value -> name, style, ignore value)` of a `labels` object, either style; adds what is
    wrong with it to `problems`."""
    if not isinstance(labels, dict) or not labels:
        problems.append(f"{path}: no `labels` object (expected nnU-Net v2's "
                        '{"background": 0, "edema": 1} or the Decathlon\'s '
                        '{"0": "background", "1": "edema"})')  # fmt: skip
        return {}, "", None
    regions = {k: v for k, v in labels.items() if isinstance(v, list | tuple)}
    if regions:
        problems.append(
            f"{path}: labels {sorted(regions)} are regions (lists of values: {regions}), for "
            "nnU-Net's region-based training, which unet-seg does not support yet: list each "
            'label value once with its own name (e.g. {"background": 0, "edema": 1, '
            '"enhancing": 2}) to train on the classes'
        )
        return {}, "", None
    if all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
        pairs, style = [(int(v), str(k)) for k, v in labels.items()], "name->value"
    elif all(isinstance(v, str) and _is_int(k) for k, v in labels.items()):
        pairs, style = [(int(k), v) for k, v in labels.items()], "value->name"
    else:
        problems.append(f"{path}: labels {labels} are neither name -> value (nnU-Net v2: "
                        '{"background": 0}) nor value -> name (the Decathlon: '
                        '{"0": "background"}): use one of them')  # fmt: skip
        return {}, "", None
    ignore = next((v for v, n in pairs if n == IGNORE_LABEL), None)
    pairs = [(v, n) for v, n in pairs if n != IGNORE_LABEL]
    values = [v for v, _ in pairs]
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        problems.append(f"{path}: label value(s) {twice} named more than once: one name each")
    if pairs and 0 not in values:
        problems.append(f"{path}: no label has value 0 (expected the background, "
                        '"background": 0)')  # fmt: skip
    return dict(sorted(pairs)), style, ignore


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _case_of(entry: str) -> str:
    """The case name of a Decathlon `training` entry (`./labelsTr/x.nii.gz` -> `x`)."""
    name = Path(str(entry)).name
    for ext in (".nii.gz", ".nii", ".png", ".tif", ".tiff", ".nrrd", ".mha"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def contradictions(
    info: DatasetJson,
    channels: int | None,
    label_files: dict[str, set[int]],
    cases: list[str],
    ignore_value: Any = None,
) -> list[str]:
    """Where `dataset.json` disagrees with the files, each naming both: label volumes holding
    values `labels` does not list (listed values the labels lack are fine), a channel count
    other than `channel_names`'/`modality`'s, `numTraining` other than the cases found, and
    cases of the `training` list without files.

    Args:
        channels: the channels each case feeds the net (None: not known).
        label_files: label file name -> the values it holds.
        cases: the case names found.
        ignore_value: the value of unlabelled voxels (data.ignore_value), never a problem.
    """
    problems = []
    known = set(info.labels) | {v for v in (info.ignore_value, ignore_value)
                                if isinstance(v, int)}  # fmt: skip
    extra: dict[int, list[str]] = {}
    for name, values in sorted(label_files.items()):
        for value in sorted(values - known):
            extra.setdefault(value, []).append(name)
    if extra:
        listing = "; ".join(f"{v} in {len(f)} file(s), e.g. {f[:3]}" for v, f in extra.items())
        problems.append(f"{info.path}: labels {info.labels} do not list the value(s) "
                        f"{sorted(extra)} that label files hold ({listing}): add them to "
                        "`labels` with a name, or fix the label files")  # fmt: skip
    if info.channel_names and channels is not None and len(info.channel_names) != channels:
        problems.append(f"{info.path}: {len(info.channel_names)} channel(s) named "
                        f"{info.channel_names}, but the images hold {channels} per case: fix "
                        "channel_names (modality) or the image files")  # fmt: skip
    if info.num_training is not None and info.num_training != len(cases):
        problems.append(f"{info.path}: numTraining is {info.num_training}, but {len(cases)} "
                        "training case(s) have image and label files: fix numTraining or add "
                        "the missing cases")  # fmt: skip
    missing = sorted(set(info.training) - set(cases))
    if missing:
        problems.append(f"{info.path}: {len(missing)} case(s) of `training` have no files in "
                        f"{IMAGES_TR}/ and {LABELS_TR}/, e.g. {missing[:5]}: add them or remove "
                        "them from the list")  # fmt: skip
    return problems


def plan_from_dataset_json(
    info: DatasetJson, data: dict[str, Any], auto: str
) -> dict[str, tuple[Any, str]]:
    """The data keys `dataset.json` decides, as `{key: (value, why)}`, for those still `auto`
    in `data`: `mask_format` values, `mask_values` (its label values), `class_names` (its
    names, by value), and `ignore_value` (its `ignore` label) when not given. A given
    `mask_values` takes its names from `labels` where it lists them all."""
    said = f"{info.path.name} ({info.style}) labels"
    out: dict[str, tuple[Any, str]] = {}
    if info.ignore_value is not None and data.get("ignore_value") in (None, auto):
        out["ignore_value"] = (info.ignore_value, f"{said}: `ignore` is {info.ignore_value}, "
                               "unlabelled voxels")  # fmt: skip
    if not info.labels:
        return out
    if data.get("mask_format") == auto:
        out["mask_format"] = ("values", f"{said}: one value per class")
    values = list(info.labels)
    if data.get("mask_values") == auto:
        out["mask_values"] = (values, f"{said}: {len(values)} classes, values {values}")
    else:
        values = [int(v) for v in data.get("mask_values") or []]
    if data.get("class_names") == auto and values and all(v in info.labels for v in values):
        names = [info.labels[v] for v in values]
        out["class_names"] = (names, f"{said}: " + ", ".join(
            f"{v} {n}" for v, n in zip(values, names, strict=True)))  # fmt: skip
    return out
