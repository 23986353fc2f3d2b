"""The whole data path on random folders: `check_data` and a one-step `train data=auto` agree.

For every generated folder (tests/data_folders.py: PNG/TIFF/JPEG/GIF images of any pixel
type, channel count and size; masks of class values, colours, palettes, instance ids with
gaps or negative ids, an ignore value, empty masks; now and then a user's mistake) both
commands train, or both refuse with exit status 1 naming a file of the folder and the fix;
never a traceback, and a refused `train` leaves no run directory behind. A folder without
mistakes (`FolderSpec.valid`) trains, however odd its files.

Volume folders (tests/property_harness.py: `VolumeFolderSpec`) are held to the same: NIfTI
and TIFF stacks of 8..20 voxels a side, anisotropic spacing, oblique affines, sform/qform
codes 0, 72-dpi placeholder TIFF resolutions, nnU-Net channel files (`case_0000`,
`case_0001`), float and signed label volumes (-1 unlabelled), NaN voxels; and the mistakes:
a missing mask or channel file, a mask of another shape or mis-registered, a label value
off the encoding.

The default suite draws a few folders of each (seconds); the big profile draws 500
(PROPERTY_EXAMPLES), about a third of them volume folders:
    python -m pytest -q -m property tests/test_data_property.py
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from data_folders import FolderSpec, ImageSpec, folder_specs, write_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from property_harness import (
    ONE_STEP,
    VolumeFolderSpec,
    check_and_train,
    disagreements,
    refusal,
    volume_folder_specs,
    write_volume_spec,
)

from tests.forked import Forker

FEW = settings(max_examples=4, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture,
                                      HealthCheck.too_slow])  # fmt: skip
"""The default profile: a few folders, the same ones each run (a few seconds)."""

BIG = int(os.environ.get("PROPERTY_EXAMPLES", "500"))
"""Folders the `-m property` test draws."""

LOG = os.environ.get("PROPERTY_LOG")
"""A JSON-lines file that receives each folder's outcome (for surveys of the big profile)."""


Spec = FolderSpec | VolumeFolderSpec


def _write(spec: Spec, root: Path) -> Path:
    """Write a folder of images or of volumes."""
    if isinstance(spec, VolumeFolderSpec):
        return write_volume_spec(spec, root)
    return write_spec(spec, root)


def _judge(spec: Spec, work: Path) -> list[str]:
    if work.exists():
        shutil.rmtree(work)
    root = _write(spec, work / "data")
    check, train, run = check_and_train(root, work, spec.overrides())
    wrong = disagreements(root, check, train, run)
    if spec.valid and not wrong and train.status != 0:  # odd but valid files train
        wrong.append(f"a valid folder refused: {refusal(train.text)!r}")
    if isinstance(spec, VolumeFolderSpec) and train.status == 0 and not wrong:
        planned = json.loads((run / "plan.json").read_text())["plan"]["spacing"]["value"]
        if not np.allclose(planned, spec.read_spacing(), rtol=1e-3):
            wrong.append(f"planned spacing {planned}, the files state {spec.read_spacing()}")
    if isinstance(spec, VolumeFolderSpec) and spec.faults and not wrong:  # every one refused
        if train.status != 1:
            wrong.append(f"mistakes {spec.faults} trained")
        if not any(c in refusal(check.text) for c in spec.culprits()):  # plan stops at one
            wrong.append(f"check_data names none of {spec.culprits()}: {refusal(check.text)!r}")
    if LOG:
        with open(LOG, "a") as f:
            f.write(json.dumps({"spec": repr(spec), "check": check.status, "train": train.status,
                                "wrong": wrong, "check_text": check.text[-1500:],
                                "train_text": train.text[-1500:]}) + "\n")  # fmt: skip
    return wrong


def _image(**kw) -> ImageSpec:
    base = {"kind": "grey", "ext": "png", "dtype": "uint8", "low": 0.0, "high": 255.0,
            "height": 24, "width": 32, "alpha_opaque": True, "mask_ext": "png",
            "empty_mask": False, "seed": 3}  # fmt: skip
    return ImageSpec(**{**base, **kw})


ANY_FOLDER = st.one_of(folder_specs(), folder_specs(), volume_folder_specs())
"""A folder of images (two draws in three) or of volumes (one in three)."""


@FEW
@given(spec=folder_specs())
def test_check_data_and_train_agree_on_any_folder(spec: FolderSpec, tmp_path: Path) -> None:
    wrong = _judge(spec, tmp_path / "case")
    assert not wrong, f"{spec}\n" + "\n".join(wrong)


@FEW
@given(spec=volume_folder_specs())
def test_check_data_and_train_agree_on_any_volume_folder(
    spec: VolumeFolderSpec, tmp_path: Path
) -> None:
    """A few volume folders (about 2 s each): NIfTI or TIFF stacks of odd geometry, channel
    files, labels of any type, now and then a mistake."""
    wrong = _judge(spec, tmp_path / "case")
    assert not wrong, f"{spec}\n" + "\n".join(wrong)


@pytest.mark.property
@settings(FEW, max_examples=BIG)
@given(spec=ANY_FOLDER)
def test_check_data_and_train_agree_on_500_folders(spec: Spec, tmp_path: Path) -> None:
    """The big profile: skipped unless `-m property` selects it (about 1-3 s a folder; about
    a third of the folders hold volumes)."""
    wrong = _judge(spec, tmp_path / "case")
    assert not wrong, f"{spec}\n" + "\n".join(wrong)


@pytest.mark.slow
def test_the_harness_sees_what_the_command_line_sees(tmp_path: Path, forker: Forker) -> None:
    """The in-process harness against real subprocesses on a folder both refuse: the same
    exit status, the refusal printed without a traceback, no run directory left by `train`."""
    spec = FolderSpec(images=[_image(seed=i) for i in range(4)], mask_kind="binary255",
                      num_values=2, ignore=False, mask_suffix="",
                      faults=["mask_size"])  # fmt: skip
    root = write_spec(spec, tmp_path / "data")  # im1's mask is 2 rows short
    check, train, run = check_and_train(root, tmp_path, [])
    assert not disagreements(root, check, train, run)
    assert check.status == train.status == 1
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    common = ["data=auto", f"data.root={root}", f"paths.output_dir={tmp_path / 'cli'}"]
    for module, extra in (("unet_seg.check_data", []), ("unet_seg.train", ONE_STEP)):
        cli_run = tmp_path / f"cli_{module}"
        proc = forker.run(["-m", module, *common, *extra, f"hydra.run.dir={cli_run}"],
                          cwd=tmp_path, env=env, timeout=300)  # fmt: skip
        said = proc.stdout + proc.stderr
        assert proc.returncode == 1, said[-2000:]
        assert "im1.png: mask is 32x22" in said and "Traceback" not in said
        assert module != "unet_seg.train" or not cli_run.exists()


FOUND = {
    # colour masks, one of them empty (all black, so stored R = G = B): were refused as
    # "masks mix encodings ['rgb', 'values']"
    "an empty colour mask": (FolderSpec(
        images=[_image(seed=1), _image(seed=2, empty_mask=True), _image(seed=3), _image(seed=4)],
        mask_kind="rgb", num_values=3, ignore=False, mask_suffix=""), 0),
    # every colour mask empty but for the white ignore border: were planned as grey values,
    # which the [r, g, b] ignore value contradicts
    "empty colour masks, a white ignore border": (FolderSpec(
        images=[_image(seed=i, empty_mask=True) for i in range(4)], mask_kind="rgb",
        num_values=3, ignore=True, mask_suffix=""), 0),
    # all-background masks with data.ignore_value=255: were planned as mask_values [0, 255],
    # the ignore value itself a class
    "empty masks, ignore value 255": (FolderSpec(
        images=[_image(seed=i, empty_mask=True) for i in range(4)], mask_kind="binary01",
        num_values=2, ignore=True, mask_suffix=""), 0),
    # two images cannot fill train, val and test splits: train refused, check_data passed
    "two images": (FolderSpec(images=[_image(seed=1), _image(seed=2)], mask_kind="binary255",
                              num_values=2, ignore=False, mask_suffix=""), 1),
    # RGB images next to RGBA ones with transparency: in_channels 4 refused the RGB images
    # ("set data.in_channels=3"), and 3 the transparent ones; now RGB gets an opaque alpha
    "RGB and transparent RGBA": (FolderSpec(
        images=[_image(kind=k, seed=i, alpha_opaque=False) for i, k in
                enumerate(["rgb", "rgba", "rgb", "rgba"])],
        mask_kind="binary255", num_values=2, ignore=False, mask_suffix=""), 0),
    # grey next to grey+alpha with transparency (2 channels: grey gets an opaque alpha), and
    # grey+alpha with transparency next to RGB (4: RGBA)
    "grey and transparent grey+alpha": (FolderSpec(
        images=[_image(kind=k, seed=i, alpha_opaque=False) for i, k in
                enumerate(["grey", "grey_alpha", "grey", "grey_alpha"])],
        mask_kind="binary255", num_values=2, ignore=False, mask_suffix=""), 0),
    # palette masks with small slivers of classes (im3: class 1 in 2 pixels): the plan called
    # the lossless palette PNG "a JPEG file"
    "palette masks, slivers of classes": (FolderSpec(
        images=[_image(seed=s, height=21, width=60) for s in (1109, 173, 365, 1000)],
        mask_kind="palette", num_values=6, ignore=False, mask_suffix=""), 0),
    # instance labels in two of four 8x8 tiles only, both split off to validation and test:
    # the plan found a rare class and the default loss.class_weights=rare refused with a
    # traceback ("never occur in the training masks"); now it trains unweighted, saying so
    "objects only outside the training split": (FolderSpec(
        images=[_image(height=8, width=8, high=0.0, empty_mask=True, seed=0, alpha_opaque=False),
                _image(height=8, width=8, high=0.0, empty_mask=True, seed=0, alpha_opaque=False),
                _image(height=8, width=8, high=142.0, seed=150, alpha_opaque=False),
                _image(height=8, width=8, high=113.0, seed=0, alpha_opaque=False)],
        mask_kind="instances", num_values=1, ignore=True, mask_suffix=""), 0),
    # a mask of another size: the refusal now says the fix
    "a mask of another size": (FolderSpec(
        images=[_image(seed=i) for i in range(4)], mask_kind="binary255", num_values=2,
        ignore=False, mask_suffix="", faults=["mask_size"]), 1),
}  # fmt: skip
"""Folders the property test found the commands to disagree on (or to refuse without a
fix), with the exit status both give now."""


def _volumes(**kw) -> VolumeFolderSpec:
    base = {"cases": 3, "ext": "nii.gz", "channels": 1, "nnunet": False,
            "shapes": [(10, 12, 14)] * kw.get("cases", 3), "spacing": (2.5, 0.8, 0.8),
            "oblique": 20.0, "codes": (1, 1), "resolution": "none", "image_dtype": "float32",
            "nan": False, "label_dtype": "uint8", "unlabelled": False, "num_classes": 3,
            "empty": [False] * kw.get("cases", 3), "seed": 5}  # fmt: skip
    return VolumeFolderSpec(**{**base, **kw})


FOUND_VOLUMES = {
    # two volume cases cannot fill the splits: check_data lists it as a problem, which the
    # harness read as a refusal naming no file (its list was not found in the output)
    "two volume cases": (_volumes(cases=2), 1),
    # a case without its last channel file: "cases ... differ in their channel count" named
    # neither the missing file nor the fix; now "case 'b' has 1 channel file(s) where 2
    # case(s) have 2: add b_0001.nii.gz or remove the case"
    "a missing channel file": (_volumes(channels=2, nnunet=True, faults=["missing_channel"]),
                               1),
    # an ImageJ stack (z spacing 0.5 mm) with an int16 label TIFF that states no z spacing:
    # data=auto's fingerprint refused it ("mask spacing 1 x 0.3 x 0.3 mm") where the data
    # module took it; both now apply volumes.geometry_mismatch (assumed spacing not compared)
    "a label TIFF without z spacing": (_volumes(ext="tif", resolution="imagej_um",
                                                image_dtype="uint8", label_dtype="int16",
                                                nnunet=True, spacing=(0.5, 0.3, 0.3)), 0),
}  # fmt: skip
"""Volume folders the property test found, with the exit status both give now."""


@pytest.mark.parametrize("name", [*FOUND, *FOUND_VOLUMES])
def test_folders_the_property_test_found(name: str, tmp_path: Path) -> None:
    spec, status = {**FOUND, **FOUND_VOLUMES}[name]
    root = _write(spec, tmp_path / "data")
    check, train, run = check_and_train(root, tmp_path, spec.overrides())
    assert not disagreements(root, check, train, run), check.text[-2000:] + train.text[-2000:]
    assert (check.status, train.status) == (status, status)
    if name == "a missing channel file":  # the missing file named, with the fix
        assert "_0001.nii.gz or remove the case" in check.text + train.text
