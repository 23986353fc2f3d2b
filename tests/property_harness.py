"""Run `check_data` and a one-step `train data=auto` on a folder, in this process, and judge
whether they agree (tests/test_data_property.py).

Both entry points run through their `@hydra.main` functions with `sys.argv` set, as the
command line runs them; `HYDRA_FULL_ERROR=1` lets an uncaught exception escape, so that it
is seen as the traceback a user would get.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

ONE_STEP = [
    "logger=none", "arch.base_channels=4", "trainer.accelerator=cpu", "trainer.threads=1",
    "trainer.max_epochs=1", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0", "final_eval=false", "data.num_workers=0",
    "callbacks.validation_images.num_samples=1",
]  # fmt: skip
"""Overrides that keep `train` to one training and one validation step, planning untouched."""

FIX_WORDS = ("set data.", "save ", "convert", "remove", "rename", "replace", "flatten", "give ",
             "choose", "use ", "list ", "split ", "add ", "move ", "crop", "resize", "store ",
             "pad", "write ", "fix ", "delete", "provide", "drop", "re-export", "export ",
             "feed ")  # fmt: skip
"""Words a refusal's fix starts with (a message that names no fix has none of them)."""


@dataclass
class Outcome:
    """How one command ended: exit status 0 or 1 (None: an exception escaped), its text."""

    status: int | None
    text: str

    @property
    def traceback(self) -> bool:
        return self.status is None or "Traceback (most recent call last)" in self.text


def run_main(module: str, argv: list[str]) -> Outcome:
    """Run `python -m <module> <argv>` in this process: the exit status and all it printed."""
    import importlib

    main = importlib.import_module(module).main
    out = io.StringIO()
    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [module.rsplit(".", 1)[-1] + ".py", *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    status: int | None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                main()
                status = 0
            except SystemExit as stop:
                status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None
                                                                         else 1)  # fmt: skip
            except Exception:  # noqa: BLE001 - what a user would see as a traceback
                status = None
                out.write(traceback.format_exc())
    finally:
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
        for handler in logging.getLogger().handlers[:]:  # Hydra's handlers hold our buffer
            if getattr(handler, "stream", None) is out:
                logging.getLogger().removeHandler(handler)
    return Outcome(status, out.getvalue())


def check_and_train(root: Path, work: Path, overrides: list[str]) -> tuple[Outcome, Outcome, Path]:
    """`check_data` and a one-step `train` of the folder `root`, both `data=auto`.

    Returns:
        `(check_data's outcome, train's outcome, train's run directory)`.
    """
    common = ["data=auto", f"data.root={root}", *overrides, f"paths.output_dir={work / 'out'}"]
    check = run_main("unet_seg.check_data",
                     [*common, f"hydra.run.dir={work / 'check'}"])  # fmt: skip
    run = work / "run"
    train = run_main("unet_seg.train", [*common, *ONE_STEP, f"hydra.run.dir={run}"])
    return check, train, run


def refusal(text: str) -> str:
    """The refusal in a command's output: from its error line (train), or from the list of
    problems (check_data, as it prints them for images and for volumes), to the end."""
    start = max(
        text.rfind("][ERROR] - "), text.rfind("  problems: "), text.rfind("][WARNING] - problems: ")
    )  # check_data: images, volumes
    return text[start:] if start >= 0 else ""


def disagreements(root: Path, check: Outcome, train: Outcome, run: Path) -> list[str]:
    """What is wrong with this pair of outcomes (empty when they agree and are clean)."""
    wrong = []
    for name, outcome in (("check_data", check), ("train", train)):
        if outcome.traceback:
            wrong.append(f"{name}: a traceback")
        elif outcome.status not in (0, 1):
            wrong.append(f"{name}: exit status {outcome.status}")
    if wrong:
        return wrong
    if check.status != train.status:
        wrong.append(f"check_data exits {check.status} but train exits {train.status}")
    names = [str(root)] + [p.name for p in root.rglob("*") if p.is_file()]
    for name, outcome in (("check_data", check), ("train", train)):
        if outcome.status == 1:
            said = refusal(outcome.text)
            if not any(n in said for n in names):
                wrong.append(f"{name} refuses without naming a file of the folder: {said!r}")
            if not any(w in said.lower() for w in FIX_WORDS):
                wrong.append(f"{name} refuses without saying the fix: {said!r}")
    if train.status == 1 and run.exists() and any(run.iterdir()):
        wrong.append(f"train refused but left {sorted(p.name for p in run.iterdir())}")
    return wrong


# ------------------------------------------------------------------ volume folders

VOLUME_FAULTS = ("missing_mask", "missing_channel", "mask_shape", "mask_affine", "label_off")
"""A user's mistakes in a volume folder: a case without its label volume, a channel file
missing, a label volume on another grid (another shape) or mis-registered (its shape but
another affine or spacing), a label value the encoding does not hold."""
LABEL_OFF = ("minus_two", "fraction", "not_listed")
"""How a label value is off the encoding: -2 beside -1 (only one value marks unlabelled
voxels), 1.5 in a float label volume (not a whole number), a value missing from the
`data.mask_values` the user typed."""
NIFTI_CODES = ((1, 1), (0, 0), (2, 0), (0, 1), (1, 0))
"""(sform_code, qform_code) pairs: scanner, none (placed by pixdim), aligned only, ..."""
TIFF_RESOLUTIONS = ("none", "dpi72", "imagej_um", "cm")
"""How a TIFF stack states its spacing: not at all, a writer's 72 dpi placeholder, ImageJ's
spacing and resolution in microns, the ResolutionUnit tag in centimetres (no z)."""


@dataclass
class VolumeFolderSpec:
    """A folder of volumes: `images/<case>[_000c].<ext>` and `masks/<case>.<ext>`."""

    cases: int  # 2: too few for train, val and test splits
    ext: str  # nii.gz or tif
    channels: int  # channel files per case (nnU-Net naming when > 1 or `nnunet`)
    nnunet: bool  # one channel still named case_0000
    shapes: list[tuple[int, int, int]]  # (z, y, x) per case, 8..20 voxels a side
    spacing: tuple[float, float, float]  # (z, y, x) mm
    oblique: float  # rotation about z in degrees (NIfTI)
    codes: tuple[int, int]  # NIfTI (sform_code, qform_code)
    resolution: str  # TIFF_RESOLUTIONS
    image_dtype: str  # float32, int16 (CT-like), uint16, uint8
    nan: bool  # NaN voxels in float images
    label_dtype: str  # uint8, float32 (whole numbers), int16
    unlabelled: bool  # -1 marks unlabelled voxels
    num_classes: int
    empty: list[bool]  # per case: an all-background label volume
    seed: int
    faults: list[str] = field(default_factory=list)
    label_off: str = "minus_two"  # LABEL_OFF, with the `label_off` fault

    @property
    def valid(self) -> bool:
        """No mistake and enough cases for train, validation and test."""
        return not self.faults and self.cases >= 3

    def read_spacing(self) -> tuple[float, float, float]:
        """The (z, y, x) spacing in mm the images' files state: 1.0 along an axis they give
        none for (no resolution, a writer's 72 dpi placeholder, no z in the TIFF tags)."""
        if self.ext == "nii.gz":
            return self.spacing
        imagej = self.image_dtype in ("uint8", "uint16", "float32")
        resolution = "cm" if self.resolution == "imagej_um" and not imagej else self.resolution
        if resolution == "imagej_um":
            return self.spacing
        return (1.0, *self.spacing[1:]) if resolution == "cm" else (1.0, 1.0, 1.0)

    def culprits(self) -> list[str]:
        """The case each mistake lies in, for check_data's list of problems to name."""
        where = {"missing_mask": 0, "missing_channel": 1, "mask_shape": 1, "mask_affine": 1,
                 "label_off": self.cases - 1}  # fmt: skip
        return [f"case{where[fault]:02d}" for fault in self.faults]

    def overrides(self) -> list[str]:
        """The keys a user would type: the class values, when the mistake is a value
        missing from them."""
        if "label_off" in self.faults and self.label_off == "not_listed":
            listed = [-1] if self.unlabelled else []
            return [f"data.mask_values=[{','.join(str(v) for v in range(self.num_classes))}]",
                    *(["data.ignore_value=-1"] if listed else [])]  # fmt: skip
        return []


@st.composite
def volume_folder_specs(draw: st.DrawFn) -> VolumeFolderSpec:
    """A random volume folder: 2-5 tiny NIfTI or TIFF cases of odd geometry, labels of
    any type, now and then a mistake."""
    cases = draw(st.sampled_from([3, 4, 5, 3, 2]))
    ext = draw(st.sampled_from(["nii.gz", "nii.gz", "tif"]))
    big = draw(st.integers(0, 2)) == 0  # every side 16..20: room for 3-D patches
    side = st.integers(16, 20) if big else st.integers(8, 20)
    base = (draw(side), draw(side), draw(side))
    mixed = draw(st.integers(0, 3)) == 0
    shapes = [(draw(side), draw(side), draw(side)) if mixed else base for _ in range(cases)]
    spacing = (draw(st.sampled_from([0.5, 1.0, 2.5, 5.0])), *[draw(st.sampled_from(
        [0.3, 0.8, 1.0]))] * 2)  # fmt: skip
    image_dtype = draw(st.sampled_from(["float32", "float32", "int16", "uint16", "uint8"]))
    label_dtype = draw(st.sampled_from(["uint8", "float32", "int16"]))
    unlabelled = label_dtype != "uint8" and draw(st.integers(0, 2)) == 0
    faults = draw(st.lists(st.sampled_from(VOLUME_FAULTS), max_size=2, unique=True))
    if draw(st.integers(0, 1)) > 0:
        faults = []  # half the folders are valid
    channels = draw(st.sampled_from([1, 1, 2, 3]))
    if "missing_channel" in faults and channels == 1:
        channels = 2
    return VolumeFolderSpec(
        cases=cases, ext=ext, channels=channels, nnunet=draw(st.booleans()), shapes=shapes,
        spacing=spacing, oblique=draw(st.sampled_from([0.0, 0.0, 20.0, -35.0])),
        codes=draw(st.sampled_from(NIFTI_CODES)), resolution=draw(st.sampled_from(
            TIFF_RESOLUTIONS)), image_dtype=image_dtype,
        nan=image_dtype == "float32" and draw(st.booleans()), label_dtype=label_dtype,
        unlabelled=unlabelled, num_classes=draw(st.integers(2, 4)),
        empty=[draw(st.integers(0, 5)) == 0 for _ in range(cases)],
        seed=draw(st.integers(0, 2**16)), faults=faults,
        label_off=draw(st.sampled_from(LABEL_OFF)),
    )  # fmt: skip


def _affine(spec: VolumeFolderSpec, shift: float = 0.0) -> np.ndarray:
    """Voxel (x, y, z) -> RAS mm: the spacing, rotated `oblique` degrees about z, offset."""
    z, y, x = spec.spacing
    t = np.deg2rad(spec.oblique)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([x, y, z])
    affine[:3, 3] = [-40.5 + shift, 12.25, 7.0]
    return affine


def _write_nifti(
    path: Path, array: np.ndarray, spec: VolumeFolderSpec, shift: float = 0.0, stretch: float = 1.0
) -> None:
    """`[Z, Y, X]` as NIfTI with the spec's codes; `shift` moves the origin (mm), `stretch`
    scales the voxel size (both for a mis-registered mask)."""
    import nibabel as nib

    affine = _affine(spec, shift)
    affine[:3, :3] *= stretch
    image = nib.Nifti1Image(np.ascontiguousarray(np.transpose(array, (2, 1, 0))), affine)
    sform_code, qform_code = spec.codes
    image.header.set_sform(affine, code=sform_code)
    image.header.set_qform(affine, code=qform_code)
    if not (sform_code or qform_code):  # placed by pixdim alone
        image.header.set_zooms(tuple(s * stretch for s in spec.spacing[::-1]))
    nib.save(image, str(path))


def _write_tiff(
    path: Path, array: np.ndarray, spec: VolumeFolderSpec, stretch: float = 1.0
) -> None:
    """`[Z, Y, X]` as a TIFF stack stating its spacing as `spec.resolution` says."""
    import tifffile

    z, y, x = (s * stretch for s in spec.spacing)
    resolution = spec.resolution
    if resolution == "imagej_um" and array.dtype not in (np.uint8, np.uint16, np.float32):
        resolution = "cm"  # a pixel type ImageJ lacks
    if resolution == "imagej_um":
        tifffile.imwrite(
            path,
            array,
            imagej=True,
            resolution=(1 / (x * 1000), 1 / (y * 1000)),
            metadata={"spacing": z * 1000, "unit": "um", "axes": "ZYX"},
        )
    elif resolution == "dpi72":
        tifffile.imwrite(
            path, array, photometric="minisblack", resolution=(72, 72), resolutionunit="INCH"
        )
    elif resolution == "cm":
        tifffile.imwrite(
            path,
            array,
            photometric="minisblack",
            resolution=(10 / x, 10 / y),
            resolutionunit="CENTIMETER",
        )
    else:
        tifffile.imwrite(path, array, photometric="minisblack")


def _volume_image(
    spec: VolumeFolderSpec, labels: np.ndarray, channel: int, rng: np.random.Generator
) -> np.ndarray:
    """An image of `labels`: brighter classes on noise, at the spec's type and range."""
    unit = 0.3 + 0.15 * np.clip(labels, 0, None) + rng.random(labels.shape) * 0.2
    unit = unit[..., ::-1] if channel % 2 else unit
    if spec.image_dtype == "int16":  # CT-like: air -1000 around tissue
        return np.round(-1000 + unit * 1400).astype(np.int16)
    if spec.image_dtype in ("uint16", "uint8"):
        top = 4000 if spec.image_dtype == "uint16" else 255
        return np.round(unit * top).astype(spec.image_dtype)
    image = (unit * 700 + 20 * channel).astype(np.float32)
    if spec.nan:
        image[0, 0, : max(1, labels.shape[2] // 3)] = np.nan
    return image


def _volume_labels(
    spec: VolumeFolderSpec, shape: tuple[int, int, int], empty: bool, rng: np.random.Generator
) -> np.ndarray:
    """Classes 0..num_classes-1 as boxes (-1 on the first slice where `unlabelled`)."""
    labels = np.zeros(shape, np.int64)
    if not empty:
        for k in range(1, spec.num_classes):
            z, y, x = (int(rng.integers(0, n - 3)) for n in shape)
            labels[z : z + 4, y : y + 5, x : x + 5] = k
    if spec.unlabelled:
        labels[0] = -1
    return labels


def write_volume_spec(spec: VolumeFolderSpec, root: Path) -> Path:
    """Write the folder under root/images and root/masks; return root."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    named = spec.channels > 1 or spec.nnunet
    for i, shape in enumerate(spec.shapes):
        rng = np.random.default_rng(spec.seed + i)
        case = f"case{i:02d}"
        labels = _volume_labels(spec, shape, spec.empty[i], rng)
        for c in range(spec.channels):
            if "missing_channel" in spec.faults and i == 1 and c == spec.seed % spec.channels:
                continue
            image = _volume_image(spec, labels, c, rng)
            path = root / "images" / f"{case}{f'_{c:04d}' if named else ''}.{spec.ext}"
            write = _write_nifti if spec.ext == "nii.gz" else _write_tiff
            write(path, image, spec)
        if "missing_mask" in spec.faults and i == 0:
            continue
        mask: np.ndarray = labels.astype(spec.label_dtype)
        if "label_off" in spec.faults and i == spec.cases - 1:
            off = {"minus_two": -2.0, "fraction": 1.5, "not_listed": spec.num_classes}
            mask = mask.astype(np.float32 if spec.label_off == "fraction" else np.int16)
            mask[-1, -2:, -2:] = off[spec.label_off]
        path = root / "masks" / f"{case}.{spec.ext}"
        misplaced = "mask_affine" in spec.faults and i == 1
        if "mask_shape" in spec.faults and i == 1:
            mask = mask[:, :-2]
        if spec.ext == "nii.gz":
            placed = spec.codes != (0, 0)
            _write_nifti(path, mask, spec, shift=5.0 if misplaced and placed else 0.0,
                         stretch=1.5 if misplaced and not placed else 1.0)  # fmt: skip
        else:  # a TIFF that states no spacing cannot be mis-registered: 2 rows short then
            if misplaced and spec.resolution in ("none", "dpi72"):
                mask = mask[:, :-2]
            _write_tiff(path, mask, spec, stretch=1.5 if misplaced else 1.0)
    return root
