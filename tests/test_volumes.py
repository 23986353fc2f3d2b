"""Volumes read and written with their geometry (unet_seg.data.volumes).

Each "known trap" of DESIGN.md's volumes has a test here: nibabel's (x, y, z)
against SimpleITK's (z, y, x) with the spacing reversed, RAS against LPS, an
oblique affine, sform and qform with their codes, labels written as floats with
a slope or truncated. The SimpleITK tests skip without SimpleITK (the `volumes`
extra); files are written by nibabel, tifffile and SimpleITK themselves, so the
reader is checked against what those libraries store, not against itself.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys

import nibabel as nib
import numpy as np
import pytest
import tifffile

from unet_seg.data.volumes import (
    VolumeMeta,
    label_dtype,
    read_volume,
    volume_format,
    write_volume,
)

SPACING_XYZ = (0.5, 0.8, 2.5)  # anisotropic: every axis its own size
SHAPE_XYZ = (6, 5, 4)


def _rotation() -> np.ndarray:
    """An oblique rotation: about z by 0.3 rad, then about x by 0.2 rad."""
    c, s = np.cos(0.3), np.sin(0.3)
    about_z = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    c, s = np.cos(0.2), np.sin(0.2)
    about_x = np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])
    return about_z @ about_x


def _oblique(offset: tuple[float, float, float] = (-40.5, 12.25, 7.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = _rotation() @ np.diag(SPACING_XYZ)
    affine[:3, 3] = offset
    return affine


def _coded_xyz(dtype: type = np.float32) -> np.ndarray:
    """`(x, y, z)` data whose value says its index: 100 z + 10 y + x."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE_XYZ], indexing="ij")
    return (100 * k + 10 * j + i).astype(dtype)


def _nifti(path, data, sform, qform, sform_code=2, qform_code=1):
    image = nib.Nifti1Image(data, sform)
    image.header.set_sform(sform, code=sform_code)
    image.header.set_qform(qform, code=qform_code)
    nib.save(image, str(path))
    return path


def test_nifti_reads_z_first_with_spacing_in_zyx(tmp_path):
    path = _nifti(tmp_path / "a.nii.gz", _coded_xyz(), _oblique(), _oblique())
    array, meta = read_volume(path)
    assert array.shape == (4, 5, 6)  # (z, y, x); nibabel's array is (6, 5, 4)
    z, y, x = np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij")
    np.testing.assert_array_equal(array, 100 * z + 10 * y + x)
    assert meta.shape == (4, 5, 6)
    np.testing.assert_allclose(meta.spacing, SPACING_XYZ[::-1], rtol=1e-6)
    assert meta.format == "nifti"
    assert meta.spacing_assumed == (False, False, False)


def test_nifti_oblique_round_trip_keeps_sform_and_qform_with_codes(tmp_path):
    # sform and qform differ (another origin) and carry different codes: a writer that
    # rebuilds one from the other, or keeps only the affine, fails here
    sform, qform = _oblique(), _oblique(offset=(3.0, -2.0, 1.5))
    source = _nifti(tmp_path / "in.nii.gz", _coded_xyz(), sform, qform, 2, 1)
    array, meta = read_volume(source)
    np.testing.assert_allclose(meta.affine_matrix(), sform, atol=1e-5)  # the sform wins
    write_volume(tmp_path / "out.nii.gz", array, meta)
    again, meta_again = read_volume(tmp_path / "out.nii.gz")
    np.testing.assert_array_equal(again, array)
    np.testing.assert_allclose(meta_again.affine_matrix(), meta.affine_matrix(), atol=1e-6)
    written, given = nib.load(str(tmp_path / "out.nii.gz")).header, nib.load(str(source)).header
    assert (int(written["sform_code"]), int(written["qform_code"])) == (2, 1)
    np.testing.assert_allclose(written.get_sform(), given.get_sform(), atol=1e-6)
    np.testing.assert_allclose(written.get_qform(), given.get_qform(), atol=1e-6)
    assert np.abs(written.get_qform() - written.get_sform()).max() > 1  # not made equal


def test_nifti_geometry_changed_since_reading_is_the_one_written(tmp_path):
    # a later step (a crop, say) gives meta a new affine: the stored sform/qform are stale then
    source = _nifti(tmp_path / "in.nii.gz", _coded_xyz(), _oblique(), _oblique(), 2, 1)
    array, meta = read_volume(source)
    moved = meta.affine_matrix()
    moved[:3, 3] += (5.0, -3.0, 2.0)
    write_volume(tmp_path / "out.nii.gz", array, dataclasses.replace(meta, affine=moved))
    header = nib.load(str(tmp_path / "out.nii.gz")).header
    np.testing.assert_allclose(header.get_sform(), moved, atol=1e-5)
    np.testing.assert_allclose(header.get_qform(), moved, atol=1e-5)
    assert (int(header["sform_code"]), int(header["qform_code"])) == (2, 1)


def test_nifti_without_sform_or_qform_code_writes_labels_that_overlay_it(tmp_path):
    """Issue 32 #4: codes 0 (placed by pixdim alone) came back with nibabel's fallback
    affine as sform and qform, code 1: mirrored in x and shifted in ITK and Slicer, which
    place codes 0 otherwise. The labels carry the input's header geometry as stored."""
    header = nib.Nifti1Header()
    header.set_data_shape(SHAPE_XYZ)
    header.set_qform(_oblique(), code=0)  # quaternion, offsets and odd pixdim, code 0
    header.set_sform(_oblique(offset=(9.0, 8.0, 7.0)), code=0)  # a stale sform, code 0
    header.set_xyzt_units("mm")
    nib.save(nib.Nifti1Image(_coded_xyz(), None, header=header), str(tmp_path / "in.nii"))
    array, meta = read_volume(tmp_path / "in.nii")
    write_volume(tmp_path / "labels.nii.gz", array % 3, meta, labels=True)
    given, written = nib.load(str(tmp_path / "in.nii")), nib.load(str(tmp_path / "labels.nii.gz"))
    for image in (given, written):
        assert (int(image.header["sform_code"]), int(image.header["qform_code"])) == (0, 0)
        assert image.header.get_sform(coded=True) == (None, 0)
        assert image.header.get_qform(coded=True) == (None, 0)
    np.testing.assert_allclose(written.affine, given.affine, atol=1e-6)  # pixdim about the centre
    for field in ("pixdim", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                  "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units"):  # fmt: skip
        pick = slice(0, 4) if field == "pixdim" else slice(None)  # qfac and x, y, z
        np.testing.assert_allclose(np.atleast_1d(written.header[field])[pick],
                                   np.atleast_1d(given.header[field])[pick],
                                   atol=1e-6, err_msg=field)  # fmt: skip
    np.testing.assert_allclose(meta.spacing, SPACING_XYZ[::-1], rtol=1e-6)


def test_nifti_spacing_in_micron_reads_as_mm_and_writes_back_as_stored(tmp_path):
    image = nib.Nifti1Image(_coded_xyz(), np.diag([*SPACING_XYZ, 1.0]))
    image.header.set_xyzt_units("micron")
    nib.save(image, str(tmp_path / "um.nii"))
    array, meta = read_volume(tmp_path / "um.nii")
    np.testing.assert_allclose(meta.spacing, np.array(SPACING_XYZ[::-1]) / 1000, rtol=1e-6)
    write_volume(tmp_path / "back.nii", array, meta)
    header = nib.load(str(tmp_path / "back.nii")).header
    assert header.get_xyzt_units()[0] == "micron"
    np.testing.assert_allclose(header.get_zooms(), SPACING_XYZ, rtol=1e-6)


def test_labels_are_rounded_and_written_as_small_integers_without_slope(tmp_path):
    # the input is an int16 image with an intensity slope: it must not reach the labels
    data = _coded_xyz(np.int16)
    image = nib.Nifti1Image(data, _oblique(), dtype=np.int16)
    image.header.set_slope_inter(0.5, 10.0)
    nib.save(image, str(tmp_path / "ct.nii.gz"))
    array, meta = read_volume(tmp_path / "ct.nii.gz")
    assert array.dtype.kind == "f" and array[0, 0, 1] == 10.5  # read through the slope
    labels = np.zeros(meta.shape, np.float32)
    labels[0, 0, :4] = [2.6, 0.4, 1.4, 2.5]  # truncation gives 2, 0, 1, 2
    write_volume(tmp_path / "labels.nii.gz", labels, meta, labels=True)
    written = nib.load(str(tmp_path / "labels.nii.gz"))
    assert written.get_data_dtype() == np.uint8
    slope, inter = written.header["scl_slope"], written.header["scl_inter"]
    assert np.isnan(slope) or slope == 1
    assert np.isnan(inter) or inter == 0
    raw = np.asanyarray(written.dataobj)
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw[:4, 0, 0], [3, 0, 1, 2])  # nearest; half to even
    again, _ = read_volume(tmp_path / "labels.nii.gz")
    assert again.dtype == np.uint8 and again[0, 0, 0] == 3


def test_label_types_are_the_smallest_that_hold_the_labels(tmp_path):
    assert label_dtype(0, 255) == np.uint8
    assert label_dtype(-1, 5) == np.int8
    assert label_dtype(0, 300) == np.uint16
    assert label_dtype(-1, 300) == np.int16
    assert label_dtype(0, 70000) == np.uint32
    _, meta = read_volume(_nifti(tmp_path / "a.nii", _coded_xyz(), _oblique(), _oblique()))
    labels = np.full(meta.shape, -0.6)  # rounds to -1 (ignore): a signed type
    write_volume(tmp_path / "neg.nii", labels, meta, labels=True)
    written = np.asanyarray(nib.load(str(tmp_path / "neg.nii")).dataobj)
    assert written.dtype == np.int8 and (written == -1).all()


def test_float_image_keeps_float(tmp_path):
    _, meta = read_volume(_nifti(tmp_path / "a.nii", _coded_xyz(), _oblique(), _oblique()))
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        image = rng.random(meta.shape).astype(dtype)
        write_volume(tmp_path / "f.nii.gz", image, meta)
        again, _ = read_volume(tmp_path / "f.nii.gz")
        assert again.dtype == dtype
        np.testing.assert_array_equal(again, image)


def test_four_d_nifti_reads_channels_last(tmp_path):
    data = np.stack([_coded_xyz(), -_coded_xyz()], axis=-1)  # (x, y, z, c)
    nib.save(nib.Nifti1Image(data, _oblique()), str(tmp_path / "c.nii.gz"))
    array, meta = read_volume(tmp_path / "c.nii.gz")
    assert array.shape == (4, 5, 6, 2)
    assert array[3, 2, 1, 0] == 321 and array[3, 2, 1, 1] == -321
    write_volume(tmp_path / "c2.nii.gz", array, meta)
    np.testing.assert_array_equal(nib.load(str(tmp_path / "c2.nii.gz")).get_fdata(), data)


def test_tiff_stack_with_imagej_spacing_round_trips(tmp_path):
    stack = np.transpose(_coded_xyz(np.uint16), (2, 1, 0))  # (z, y, x)
    tifffile.imwrite(
        tmp_path / "stack.tif", stack, imagej=True, resolution=(1 / 0.5, 1 / 0.8),  # (X, Y)
        metadata={"spacing": 2.5, "unit": "um", "axes": "ZYX"},
    )  # fmt: skip
    array, meta = read_volume(tmp_path / "stack.tif")
    np.testing.assert_array_equal(array, stack)
    np.testing.assert_allclose(meta.spacing, (0.0025, 0.0008, 0.0005), rtol=1e-6)
    assert meta.spacing_assumed == (False, False, False) and meta.format == "tiff"
    for name, labels in (("image.tif", False), ("labels.tif", True)):
        values = array if not labels else array.astype(np.float32) - 1.4  # -1..: int16, shaped
        write_volume(tmp_path / name, values, meta, labels=labels)
        again, meta_again = read_volume(tmp_path / name)
        assert again.dtype == (np.int16 if labels else np.uint16)
        np.testing.assert_array_equal(again, np.rint(values))
        np.testing.assert_allclose(meta_again.spacing, meta.spacing, rtol=1e-6)
        assert meta_again.spacing_assumed == (False, False, False)


def test_tiff_without_spacing_reads_1_and_says_so(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((5, 4, 3), np.uint8),
                     photometric="minisblack")  # fmt: skip
    array, meta = read_volume(tmp_path / "plain.tif")
    assert array.shape == (5, 4, 3)  # unlabelled pages are slices
    assert meta.spacing == (1.0, 1.0, 1.0)
    assert meta.spacing_assumed == (True, True, True)


@pytest.mark.parametrize(
    ("resolution", "unit", "imagej"),
    [((72, 72), "INCH", False), ((96, 96), "INCH", False), ((72, 72), None, False),
     ((1, 1), None, False), ((72, 72), "INCH", True), ((72, 72), None, True)],
)  # fmt: skip
def test_tiff_placeholder_resolution_is_unknown_spacing(tmp_path, resolution, unit, imagej):
    """Issue 32 #6: a writer's default 72 dpi read as 0.353 mm in y and x (not assumed) with
    z assumed 1.0: an isotropic EM stack planned as anisotropic. A placeholder resolution
    is no resolution: 1.0 on every axis, each marked assumed."""
    extra = {"metadata": {"axes": "ZYX"}} if imagej else {"photometric": "minisblack"}
    tifffile.imwrite(tmp_path / "em.tif", np.zeros((5, 4, 3), np.uint8), imagej=imagej,
                     resolution=resolution, resolutionunit=unit, **extra)  # fmt: skip
    array, meta = read_volume(tmp_path / "em.tif")
    assert array.shape == (5, 4, 3)
    assert meta.spacing == (1.0, 1.0, 1.0) and meta.spacing_assumed == (True, True, True)


def test_tiff_resolution_in_an_imagej_length_unit_is_a_measurement(tmp_path):
    # 72 (or 1) pixels per micron is a real resolution, not a placeholder
    for per_um in (72.0, 1.0):
        tifffile.imwrite(tmp_path / "em.tif", np.zeros((5, 4, 3), np.uint8), imagej=True,
                         resolution=(per_um, per_um),
                         metadata={"spacing": 0.05, "unit": "micron", "axes": "ZYX"})  # fmt: skip
        _, meta = read_volume(tmp_path / "em.tif")
        np.testing.assert_allclose(meta.spacing, (5e-5, 1e-3 / per_um, 1e-3 / per_um))
        assert meta.spacing_assumed == (False, False, False)
    tifffile.imwrite(tmp_path / "cm.tif", np.zeros((5, 4, 3), np.uint8), resolution=(72, 72),
                     resolutionunit="CENTIMETER", photometric="minisblack")  # fmt: skip
    _, meta = read_volume(tmp_path / "cm.tif")  # 72 per cm: a measurement (0.139 mm)
    np.testing.assert_allclose(meta.spacing[1:], (10 / 72, 10 / 72))
    assert meta.spacing_assumed == (True, False, False)


def test_tiff_channels_go_last(tmp_path):
    stack = np.arange(3 * 2 * 4 * 5, dtype=np.uint8).reshape(3, 2, 4, 5)  # ZCYX
    tifffile.imwrite(tmp_path / "c.tif", stack, imagej=True, metadata={"axes": "ZCYX"})
    array, _ = read_volume(tmp_path / "c.tif")
    np.testing.assert_array_equal(array, np.moveaxis(stack, 1, -1))


def test_tiff_time_series_is_refused_by_name(tmp_path):
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((2, 3, 4, 5), np.uint8), imagej=True,
                     metadata={"axes": "TZYX"})  # fmt: skip
    with pytest.raises(ValueError, match=r"t\.tif.*axes.*one volume per file"):
        read_volume(tmp_path / "t.tif")


def test_meta_survives_json(tmp_path):
    _, meta = read_volume(_nifti(tmp_path / "a.nii", _coded_xyz(), _oblique(), _oblique()))
    text = json.dumps(meta.to_dict())
    assert VolumeMeta.from_dict(json.loads(text)) == meta
    tiff_meta = VolumeMeta((2, 3, 4), (2.0, 1.0, 0.5), tuple(map(tuple, np.eye(4))), "tiff",
                           (True, False, False))  # fmt: skip
    assert VolumeMeta.from_dict(json.loads(json.dumps(tiff_meta.to_dict()))) == tiff_meta


def test_write_refuses_another_size_and_names_the_file(tmp_path):
    _, meta = read_volume(_nifti(tmp_path / "a.nii", _coded_xyz(), _oblique(), _oblique()))
    with pytest.raises(ValueError, match=r"pred\.nii.*\(4, 6, 5\).*\[4, 5, 6\]"):
        write_volume(tmp_path / "pred.nii", np.zeros((4, 6, 5)), meta)


def test_unknown_extension_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"scan\.dcm.*\.nii\.gz"):
        volume_format(tmp_path / "scan.dcm")
    assert volume_format("A.NII.GZ") == "nifti" and volume_format("b.MHA") == "itk"


@pytest.mark.parametrize("name", ["v.mha", "v.nrrd"])
def test_itk_formats_without_simpleitk_name_the_extra(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import SimpleITK now fails
    meta = VolumeMeta((1, 1, 1), (1.0, 1.0, 1.0), tuple(map(tuple, np.eye(4))), "itk")
    with pytest.raises(ImportError, match=r"unet-seg\[volumes\]"):
        read_volume(tmp_path / name)
    with pytest.raises(ImportError, match=re.escape(name) + r".*SimpleITK"):
        write_volume(tmp_path / name, np.zeros((1, 1, 1)), meta)


# --- SimpleITK: optional (the volumes extra); CI installs .[dev] only ------------------------


def _sitk():
    return pytest.importorskip(
        "SimpleITK", reason="SimpleITK not installed (optional: pip install 'unet-seg[volumes]')"
    )


def test_itk_reads_z_first_with_spacing_reversed_and_lps_as_ras(tmp_path):
    sitk = _sitk()
    zyx = np.ascontiguousarray(np.transpose(_coded_xyz(), (2, 1, 0)))
    image = sitk.GetImageFromArray(zyx)  # SimpleITK: array (z, y, x), spacing (x, y, z)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin((10.0, -20.0, 30.0))  # LPS
    image.SetDirection(tuple(_rotation().reshape(-1)))
    sitk.WriteImage(image, str(tmp_path / "v.mha"))
    array, meta = read_volume(tmp_path / "v.mha")
    np.testing.assert_array_equal(array, zyx)
    np.testing.assert_allclose(meta.spacing, SPACING_XYZ[::-1], rtol=1e-12)
    affine = meta.affine_matrix()
    for index in [(0, 0, 0), (5, 0, 0), (0, 4, 0), (0, 0, 3), (5, 4, 3)]:  # (i, j, k) = (x, y, z)
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = lps * [-1, -1, 1]
        np.testing.assert_allclose(affine @ [*index, 1.0], [*ras, 1.0], atol=1e-9)


def test_nifti_written_as_itk_agrees_with_itks_own_nifti_reader(tmp_path):
    sitk = _sitk()
    source = _nifti(tmp_path / "in.nii.gz", _coded_xyz(), _oblique(), _oblique(), 1, 1)
    array, meta = read_volume(source)
    write_volume(tmp_path / "out.mha", array, meta)
    mine, theirs = sitk.ReadImage(str(tmp_path / "out.mha")), sitk.ReadImage(str(source))
    np.testing.assert_allclose(mine.GetOrigin(), theirs.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mine.GetSpacing(), theirs.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(mine.GetDirection(), theirs.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mine), sitk.GetArrayFromImage(theirs))
    again, meta_again = read_volume(tmp_path / "out.mha")
    np.testing.assert_array_equal(again, array)
    np.testing.assert_allclose(meta_again.affine_matrix(), meta.affine_matrix(), atol=1e-6)


def test_itk_labels_to_nifti_keep_ras_and_integers(tmp_path):
    sitk = _sitk()
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection(tuple(_rotation().reshape(-1)))
    sitk.WriteImage(image, str(tmp_path / "v.nrrd"))
    _, meta = read_volume(tmp_path / "v.nrrd")
    labels = np.zeros(meta.shape, np.float32)
    labels[1, 2, 3] = 1.7
    write_volume(tmp_path / "labels.nii.gz", labels, meta, labels=True)
    written = nib.load(str(tmp_path / "labels.nii.gz"))
    raw = np.asanyarray(written.dataobj)
    assert raw.dtype == np.uint8 and raw[3, 2, 1] == 2 and raw.sum() == 2
    expected = np.eye(4)
    expected[:3, :3] = np.diag([-1.0, -1, 1]) @ _rotation() @ np.diag(SPACING_XYZ)
    expected[:3, 3] = (-10.0, 20.0, 30.0)
    np.testing.assert_allclose(written.affine, expected, atol=1e-5)
    write_volume(tmp_path / "labels.mha", labels, meta, labels=True)
    back = sitk.ReadImage(str(tmp_path / "labels.mha"))
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)
