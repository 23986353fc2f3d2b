"""Volume folders: pairing by stem and nnU-Net's channel layout; slabs of slices."""

from __future__ import annotations

import numpy as np
import pytest

from unet_seg.data.volume_cases import find_volume_cases, slab, slab_indices, volume_stem


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
    assert "differ in their channel count" in message


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
