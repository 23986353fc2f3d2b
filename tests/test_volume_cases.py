"""Volume folders: pairing by stem and nnU-Net's channel layout; slabs of slices."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile

from unet_seg.data.contract import DataContract
from unet_seg.data.volume_cases import find_volume_cases, slab, slab_indices, volume_stem
from unet_seg.data.volume_datamodule import VolumeDataModule
from unet_seg.data.volume_dataset import load_case, read_case_image, read_case_labels
from unet_seg.data.volumes import read_volume


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_cases_pair_by_stem_and_by_nnunet_channels(tmp_path):
    for name in ("a.nii.gz", "b.nii"):
        _touch(tmp_path / "stem" / "images" / name)
        _touch(tmp_path / "stem" / "masks" / name)
    cases = find_volume_cases(tmp_path / "stem")
    assert [(c.name, len(c.images), c.mask.name) for c in cases] == [
        ("a", 1, "a.nii.gz"),
        ("b", 1, "b.nii"),
    ]
    for case in ("p1", "p2"):
        for ch in ("0001", "0000"):
            _touch(tmp_path / "nn" / "imagesTr" / f"{case}_{ch}.nii.gz")
        _touch(tmp_path / "nn" / "labelsTr" / f"{case}.nii.gz")
    cases = find_volume_cases(tmp_path / "nn", "imagesTr", "labelsTr")
    assert [c.name for c in cases] == ["p1", "p2"]
    assert [p.name for p in cases[0].images] == ["p1_0000.nii.gz", "p1_0001.nii.gz"]


def test_every_problem_of_a_volume_folder_is_named_at_once(tmp_path):
    for name in ("p1_0000", "p1_0002", "p2_0000", "p2_0001", "p3_0000"):
        _touch(tmp_path / "images" / f"{name}.nii.gz")
    _touch(tmp_path / "masks" / "p2.nii.gz")
    _touch(tmp_path / "masks" / "p3.nii.gz")
    with pytest.raises(FileNotFoundError) as err:
        find_volume_cases(tmp_path)
    message = str(err.value)
    assert "have no label volume" in message and "'p1'" in message
    assert "channel files [0, 2]" in message
    assert "case 'p3' in" in message and "add p3_0001.nii.gz or remove the case" in message


def test_volume_stems_and_slabs():
    assert volume_stem("x/brain.nii.gz") == "brain" and volume_stem("ct.NRRD") == "ct"
    assert slab_indices(10, 0, 3) == [0, 0, 1] and slab_indices(10, 9, 5) == [7, 8, 9, 9, 9]
    volume = np.arange(2 * 4 * 3 * 3).reshape(2, 4, 3, 3)  # [C, S, H, W]
    out = slab(volume, 1, 3)
    assert out.shape == (6, 3, 3)
    np.testing.assert_array_equal(out[:3], volume[0, 0:3])  # channel 0's three slices first
    np.testing.assert_array_equal(out[3:], volume[1, 0:3])
    np.testing.assert_array_equal(slab(volume, 2, 1), volume[:, 2])


def test_numbered_volumes_with_masks_of_their_own_names_pair_by_stem(tmp_path):
    for name in ("scan_0001", "scan_0002"):  # four digits, but the masks share the names
        _touch(tmp_path / "images" / f"{name}.nii.gz")
        _touch(tmp_path / "masks" / f"{name}.nii.gz")
    cases = find_volume_cases(tmp_path)
    assert [(c.name, len(c.images), c.mask.name) for c in cases] == [
        ("scan_0001", 1, "scan_0001.nii.gz"),
        ("scan_0002", 1, "scan_0002.nii.gz"),
    ]


def _nifti(path, zyx: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(zyx.T), affine), str(path))


def _affine(spacing_xyz=(1.0, 1.0, 2.0), origin=(-10.0, 20.0, 5.0)) -> np.ndarray:
    affine = np.diag([*spacing_xyz, 1.0])
    affine[:3, 3] = origin
    return affine


def test_channels_and_masks_off_the_first_channels_grid_are_refused_where_a_case_is_read(
    tmp_path,
):
    """Issue 32 #10: with a given config (no fingerprint), channel files or a mask of the
    same shape but another origin, spacing or orientation were stacked or scored silently.
    Reading a case (training, evaluation, prediction) checks them; the training preflight
    lists each as a problem naming both files."""
    image = np.random.default_rng(0).normal(size=(4, 6, 8)).astype(np.float32)
    labels = (image > 0).astype(np.uint8)
    flipped = _affine() @ np.diag([-1.0, 1.0, 1.0, 1.0])  # x mirrored: orientation
    geometry = {  # case: (affine of channel 0001, affine of the mask, what is said)
        "good": (_affine(origin=(-10.0, 20.0, 5.00001)), _affine(), None),
        "shifted": (_affine(origin=(-10.0, 23.0, 5.0)), _affine(), "origin"),
        "spacing": (_affine(), _affine(spacing_xyz=(1.0, 1.0, 2.5)), "spacing"),
        "mirrored": (_affine(), flipped, "orientation"),
    }
    for name, (channel, mask, _) in geometry.items():
        _nifti(tmp_path / "images" / f"{name}_0000.nii.gz", image, _affine())
        _nifti(tmp_path / "images" / f"{name}_0001.nii.gz", image, channel)
        _nifti(tmp_path / "masks" / f"{name}.nii.gz", labels, mask)
    cases = {c.name: c for c in find_volume_cases(tmp_path)}
    data = {"in_channels": 2, "num_classes": 2, "class_names": ["bg", "fg"],
            "mask_values": [0, 1], "intensity": {"mode": "zscore"}, "mean": [0.0, 0.0],
            "std": [1.0, 1.0], "crop_size": 4, "volume": True}  # fmt: skip
    contract = DataContract.from_config(data)
    assert load_case(cases["good"], contract).image.shape == (2, 4, 6, 8)
    for name, (_, _, said) in geometry.items():
        if said is None:
            continue
        with pytest.raises(ValueError) as err:
            load_case(cases[name], contract)
        message = str(err.value)
        off = cases[name].mask if name != "shifted" else cases[name].images[1]
        assert said in message and str(off) in message and str(cases[name].images[0]) in message
    with pytest.raises(ValueError, match=r"origin \(RAS, mm\) \[-10.0, 23.0, 5.0\] against "):
        read_case_image(cases["shifted"])
    module = VolumeDataModule(
        root=str(tmp_path), **data, dims=3, patch=[2, 4, 4], batch_size=1, val_fraction=0.25,
        test_fraction=0.0, splits_path=str(tmp_path / "splits.json"),
    )  # fmt: skip
    problems = module.check()
    assert len(problems) == 3
    said = ("origin (RAS, mm)", "spacing (z, y, x)", "orientation differs")
    assert sorted(next(w for w in said if w in p) for p in problems) == sorted(said)


def test_a_mask_that_gives_no_spacing_is_taken_on_its_images_grid(tmp_path):
    """A TIFF mask saved without a resolution (spacing assumed) cannot contradict its
    image's spacing, nor a NIfTI without codes its placement: they are read on the image's
    grid, while another shape or spacing is still refused."""
    labels = np.zeros((4, 6, 8), np.uint8)
    labels[1, 2, 3] = 1
    _nifti(tmp_path / "image.nii.gz", labels.astype(np.float32), _affine((0.5, 0.5, 0.7)))
    tifffile.imwrite(tmp_path / "mask.tif", labels, photometric="minisblack")
    tifffile.imwrite(tmp_path / "small.tif", labels[:3], photometric="minisblack")
    _, meta = read_volume(tmp_path / "image.nii.gz")
    contract = DataContract.from_config({
        "in_channels": 1, "num_classes": 2, "class_names": ["bg", "fg"], "mask_values": [0, 1],
        "intensity": {"mode": "zscore"}, "mean": [0.0], "std": [1.0], "crop_size": 4,
        "volume": True})  # fmt: skip
    got = read_case_labels(tmp_path / "mask.tif", contract, meta.shape, meta,
                           tmp_path / "image.nii.gz")  # fmt: skip
    np.testing.assert_array_equal(got, labels)
    with pytest.raises(ValueError, match=r"shape \(z, y, x\) \[3, 6, 8\] against \[4, 6, 8\]"):
        read_case_labels(tmp_path / "small.tif", contract, meta.shape, meta,
                         tmp_path / "image.nii.gz")  # fmt: skip
    # an image placed by pixdim alone (codes 0), labels drawn in ITK-SNAP (code 1): viewers
    # place codes 0 each their own way, so only the shape and spacing can disagree
    header = nib.Nifti1Header()
    header.set_data_shape(labels.T.shape)
    header.set_zooms((0.5, 0.5, 0.7))
    nib.save(nib.Nifti1Image(labels.T.astype(np.float32), None, header=header),
             str(tmp_path / "bare.nii"))  # fmt: skip
    _, bare = read_volume(tmp_path / "bare.nii")
    assert (bare.nifti.sform_code, bare.nifti.qform_code) == (0, 0)
    _nifti(tmp_path / "drawn.nii.gz", labels, np.diag([-0.5, -0.5, 0.7, 1.0]))
    got = read_case_labels(tmp_path / "drawn.nii.gz", contract, bare.shape, bare,
                           tmp_path / "bare.nii")  # fmt: skip
    np.testing.assert_array_equal(got, labels)
    _nifti(tmp_path / "coarse.nii.gz", labels, np.diag([-0.5, -0.5, 1.4, 1.0]))
    with pytest.raises(ValueError, match=r"spacing \(z, y, x\) \[1.4, 0.5, 0.5\] mm against "):
        read_case_labels(tmp_path / "coarse.nii.gz", contract, bare.shape, bare,
                         tmp_path / "bare.nii")  # fmt: skip


def test_nnunet_and_decathlon_folders_name_the_settings_that_read_them(tmp_path):
    """`imagesTr/` + `labelsTr/`: read with data.images_dir / masks_dir (dataset.json is not
    read); without them the refusal says which settings read the folder."""
    (tmp_path / "imagesTr").mkdir()
    xyzc = np.zeros((4, 3, 2, 4), np.float32)  # the Decathlon's 4-D file: [X, Y, Z, C]
    nib.save(nib.Nifti1Image(xyzc, np.eye(4)), str(tmp_path / "imagesTr" / "BRATS_001.nii.gz"))
    _nifti(tmp_path / "labelsTr" / "BRATS_001.nii.gz", np.zeros((2, 3, 4), np.uint8), np.eye(4))
    with pytest.raises(FileNotFoundError, match="give data.images_dir=imagesTr data.masks_dir"):
        find_volume_cases(tmp_path)
    (case,) = find_volume_cases(tmp_path, "imagesTr", "labelsTr")
    image, _ = read_case_image(case)  # channels last -> first
    assert image.shape == (4, 2, 3, 4) and case.mask.name == "BRATS_001.nii.gz"
