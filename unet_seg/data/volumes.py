"""Reading and writing volumes with their geometry, so that a prediction lands where its input was.

`read_volume` returns `(array, meta)`; `write_volume` writes an array of the same
`[Z, Y, X]` size back in the input's geometry. `VolumeMeta` is plain data, so a
checkpoint or a JSON file carries it (`to_dict` / `from_dict`).

One convention for the whole framework, whatever the file stored:

- array: `[Z, Y, X]`, or `[Z, Y, X, C]` with channels last (as 2-D images' `[H, W, C]`);
- `meta.spacing`: `(z, y, x)` in mm, the array's axis order;
- `meta.affine`: 4x4, voxel index to RAS+ world in mm, in NIfTI's index order: voxel
  `array[k, j, i]` lies at `affine @ (i, j, k, 1)` (columns x, y, z);
- `meta.shape`: `(z, y, x)` of the array read; `write_volume` refuses another size.

Formats, chosen by extension (any case):

- `.nii`, `.nii.gz` through nibabel: stored `(x, y, z[, c])`, transposed. The affine is
  nibabel's best one (sform, else qform); sform and qform with their codes, and the
  spatial unit, are kept to write back (spacing and affine converted to mm).
- `.tif`, `.tiff` through tifffile: pages are slices (axis Z, or unlabelled pages);
  channels (C, S) go last. z spacing from the ImageJ `spacing`, y and x from the
  XResolution/YResolution tags, in the ImageJ `unit` (else the ResolutionUnit tag).
- `.mha`, `.mhd`, `.nrrd` through SimpleITK (the `volumes` extra): stored `(z, y, x[, c])`,
  spacing `(x, y, z)` reversed; origin and direction are LPS, turned into RAS (x and y
  negated).
- `.ome.zarr`, `.zarr` (a folder) through zarr: OME-Zarr (NGFF 0.4, Zarr v2, or 0.5, Zarr
  v3), the first (full-resolution) array of its multiscales; axes by name (`t` of size 1
  dropped, `c` last), spacing from its `scale` in the axes' units, origin from its
  `translation`; a bare Zarr array of 3 or 4 dimensions is `[Z, Y, X(, C)]` at 1.0
  (assumed). Chunked: `VolumeFile` reads a band of slices from the chunks that hold it.
  Written as OME-Zarr 0.4 (Zarr v2), one scale, spacing in millimetres.

Writing mirrors reading: NIfTI with the input's sform and qform and their codes
(not only one of them, and never one rebuilt from the other); a TIFF stack with
ImageJ spacing in mm (a tifffile shaped TIFF with the same metadata for pixel
types ImageJ lacks); SimpleITK formats with origin, spacing and direction. NIfTI
from another format's geometry (or from an affine changed since reading) gets
sform = qform = `meta.affine`, in mm, code 1 (scanner) where none was. No
other header field is copied, so an input's intensity slope never lands on a
label volume. A TIFF that gives no spacing for an axis reads as 1.0 there, and
`meta.spacing_assumed` says so (also for a number without a length unit, kept
as it is). A writer's default resolution counts as none: 1, 72 or 96 pixels per
inch or per no unit; a resolution in centimetres or in ImageJ's length `unit`
(e.g. micron) is a measurement. NIfTI with sform_code = qform_code = 0 is
placed by pixdim (nibabel's fallback) and written back with codes 0 and the same
pixdim, so that any viewer places the input and its labels alike.

Labels (`labels=True`) are rounded to the nearest integer (numpy.rint: halves
to even), never truncated, and written as the smallest integer type that holds
them (uint8, int8, uint16, int16, uint32, int32), without a scaling slope. Other
arrays keep their type (float16 as float32, bool as uint8).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import tifffile

log = logging.getLogger(__name__)

NIFTI_EXTENSIONS = (".nii", ".nii.gz")
TIFF_EXTENSIONS = (".tif", ".tiff")
ITK_EXTENSIONS = (".mha", ".mhd", ".nrrd")
ZARR_EXTENSIONS = (".ome.zarr", ".zarr")
VOLUME_EXTENSIONS = NIFTI_EXTENSIONS + TIFF_EXTENSIONS + ITK_EXTENSIONS + ZARR_EXTENSIONS
"""Extensions `read_volume` and `write_volume` accept, matched in any case."""
ITK_FIX = "pip install 'unet-seg[volumes]' (or: pip install SimpleITK)"
"""The fix offered when a SimpleITK format is read or written without SimpleITK."""

NIFTI_SCANNER = 1  # NIFTI_XFORM_SCANNER_ANAT: the code given to geometry from other formats
_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS: x and y change sign, z stays
_TO_MM = {"mm": 1.0, "millimeter": 1.0, "millimetre": 1.0, "um": 1e-3, "micron": 1e-3,
          "micrometer": 1e-3, "micrometre": 1e-3, "nm": 1e-6, "nanometer": 1e-6,
          "cm": 10.0, "centimeter": 10.0, "m": 1000.0, "meter": 1000.0, "metre": 1000.0,
          "inch": 25.4, "in": 25.4}  # fmt: skip
_NIFTI_UNITS = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}
_TIFF_RESOLUTION_UNITS = {2: 25.4, 3: 10.0}  # ResolutionUnit INCH, CENTIMETER (1: none)
PLACEHOLDER_DPI = (1.0, 72.0, 96.0)
"""Resolutions (pixels per inch, or per no unit) that writers store by default: no spacing."""
_LABEL_TYPES = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32)

Matrix = tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class NiftiGeometry:
    """The NIfTI header fields that place a volume, as stored (in the header's units)."""

    sform: Matrix
    sform_code: int
    qform: Matrix
    qform_code: int
    xyzt_units: int


@dataclass(frozen=True)
class VolumeMeta:
    """Where a volume's voxels lie: the module docstring's conventions.

    Attributes:
        shape: `(z, y, x)` of the array read.
        spacing: `(z, y, x)` voxel size in mm.
        affine: 4x4 voxel index `(i, j, k) = (x, y, z)` -> RAS+ mm (as NIfTI).
        format: the source format: `nifti`, `tiff` or `itk`.
        spacing_assumed: `(z, y, x)`: True where the file gave no length (1.0 used, also
            for a writer's default resolution such as 72 dpi; or a number without a unit,
            taken as mm).
        nifti: for a NIfTI source, the header's sform and qform to write back.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: Matrix
    format: str
    spacing_assumed: tuple[bool, bool, bool] = (False, False, False)
    nifti: NiftiGeometry | None = None

    def affine_matrix(self) -> np.ndarray:
        """`affine` as a float64 `[4, 4]` array."""
        return np.array(self.affine, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, numbers and strings (JSON, `torch.load(weights_only=True)`)."""
        data = asdict(self)
        for key in ("shape", "spacing", "spacing_assumed"):
            data[key] = list(data[key])
        data["affine"] = [list(row) for row in self.affine]
        if self.nifti is not None:
            data["nifti"]["sform"] = [list(row) for row in self.nifti.sform]
            data["nifti"]["qform"] = [list(row) for row in self.nifti.qform]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VolumeMeta:
        """The inverse of `to_dict`."""
        nifti = data.get("nifti")
        return cls(
            shape=tuple(int(n) for n in data["shape"]),
            spacing=tuple(float(s) for s in data["spacing"]),
            affine=_matrix(data["affine"]),
            format=str(data["format"]),
            spacing_assumed=tuple(bool(b) for b in data.get("spacing_assumed", (False,) * 3)),
            nifti=None if nifti is None else NiftiGeometry(
                sform=_matrix(nifti["sform"]), sform_code=int(nifti["sform_code"]),
                qform=_matrix(nifti["qform"]), qform_code=int(nifti["qform_code"]),
                xyzt_units=int(nifti["xyzt_units"]),
            ),
        )  # fmt: skip


def _matrix(values: Any) -> Matrix:
    return tuple(tuple(float(v) for v in row) for row in np.asarray(values, dtype=np.float64))


def volume_format(path: str | Path) -> str:
    """`nifti`, `tiff`, `itk` or `zarr` by the file's extension; a ValueError naming the file
    otherwise."""
    name = Path(path).name.lower()
    for kind, extensions in (("nifti", NIFTI_EXTENSIONS), ("tiff", TIFF_EXTENSIONS),
                             ("itk", ITK_EXTENSIONS), ("zarr", ZARR_EXTENSIONS)):  # fmt: skip
        if name.endswith(extensions):
            return kind
    raise ValueError(
        f"{path}: not a volume file by its extension; volumes are read and written as "
        f"{', '.join(VOLUME_EXTENSIONS)}: convert the file or rename it if its extension is wrong"
    )


def read_volume(path: str | Path) -> tuple[np.ndarray, VolumeMeta]:
    """A volume as `[Z, Y, X]` or `[Z, Y, X, C]` with its geometry (the module docstring).

    Raises a ValueError naming the file for what cannot be a volume, an ImportError
    naming the `volumes` extra for SimpleITK formats without SimpleITK.
    """
    kind = volume_format(path)
    if kind == "nifti":
        return _read_nifti(Path(path))
    if kind == "tiff":
        return _read_tiff(Path(path))
    if kind == "zarr":
        with ZarrVolume(path) as volume:
            return volume.read(0, volume.shape[0]), volume.meta
    return _read_itk(Path(path))


def write_volume(
    path: str | Path, array: np.ndarray, meta: VolumeMeta, labels: bool = False
) -> None:
    """Write `[Z, Y, X]` or `[Z, Y, X, C]` in `meta`'s geometry, in the format `path` names.

    Args:
        labels: round to integers and write the smallest integer type that holds them.
    Raises:
        ValueError naming the file when the array's `[Z, Y, X]` is not `meta.shape`.
    """
    path = Path(path)
    kind = volume_format(path)
    array = np.asarray(array)
    if array.ndim not in (3, 4) or tuple(array.shape[:3]) != tuple(meta.shape):
        raise ValueError(
            f"{path}: array of shape {array.shape} but its geometry describes a [Z, Y, X] = "
            f"{list(meta.shape)} volume; write [Z, Y, X] or [Z, Y, X, C] at the input's size "
            "(resample or crop back first)"
        )
    array = _label_array(array, path) if labels else _image_array(array)
    if kind == "nifti":
        _write_nifti(path, array, meta)
    elif kind == "tiff":
        _write_tiff(path, array, meta)
    elif kind == "zarr":  # a folder: written beside its name, then put in place
        _written_in_place(path, lambda partial: _write_zarr(partial, [array], meta, array.dtype))
    else:
        _write_itk(path, array, meta)


GEOMETRY_RTOL = 1e-3
"""Spacings of two files of one case agree within this share; their affines (direction
times spacing, and origin) within this share of the smaller voxel side (as nnU-Net's check)."""


def geometry_mismatch(
    path: str | Path, meta: VolumeMeta, ref_path: str | Path, ref: VolumeMeta, what: str
) -> str | None:
    """What keeps the file `path` (a channel file or a mask: `what`) off the grid of
    `ref_path`, the case's first channel: another shape, spacing or placement (origin,
    orientation); None when they agree within `GEOMETRY_RTOL`.

    A file that gives no spacing along an axis (`spacing_assumed`, e.g. a TIFF mask saved
    without a resolution) cannot contradict its image there; origin and orientation are
    compared only where both files state them (`placed`: not TIFF, nor NIfTI with
    sform_code = qform_code = 0, which viewers place each their own way).
    """
    how = "with nearest-neighbour interpolation" if what == "mask" else "(register it first)"
    fix = (f"if only the headers disagree, write the {what} with {Path(ref_path).name}'s "
           f"header (spacing, origin, direction); else resample it onto that image "
           f"{how}")  # fmt: skip
    head = f"{path}: {what} does not lie on the grid of {ref_path}"
    if tuple(meta.shape) != tuple(ref.shape):
        return (f"{head}: shape (z, y, x) {list(meta.shape)} against {list(ref.shape)}; "
                f"{fix}")  # fmt: skip
    known = [not (a or b) for a, b in zip(meta.spacing_assumed, ref.spacing_assumed,
                                          strict=True)]  # fmt: skip
    own = np.array(meta.spacing, dtype=np.float64)[known]
    other = np.array(ref.spacing, dtype=np.float64)[known]
    if not np.allclose(own, other, rtol=GEOMETRY_RTOL, atol=1e-6):
        return (f"{head}: spacing (z, y, x) {_rounded(meta.spacing)} mm against "
                f"{_rounded(ref.spacing)} mm; {fix}")  # fmt: skip
    if not (placed(meta) and placed(ref)):
        return None
    a, b = meta.affine_matrix(), ref.affine_matrix()
    tolerance = GEOMETRY_RTOL * min(ref.spacing)
    if not np.allclose(a[:3, 3], b[:3, 3], rtol=0, atol=tolerance):
        return (f"{head}: origin (RAS, mm) {_rounded(a[:3, 3])} against "
                f"{_rounded(b[:3, 3])}; {fix}")  # fmt: skip
    if not np.allclose(a[:3, :3], b[:3, :3], rtol=0, atol=tolerance):
        return (f"{head}: orientation differs (voxel axes in RAS: "
                f"{_rounded(a[:3, :3].T)} against {_rounded(b[:3, :3].T)}); {fix}")  # fmt: skip
    return None


def placed(meta: VolumeMeta) -> bool:
    """Whether a file states where its voxels lie (origin, orientation): ITK formats and
    NIfTI with an sform or qform code; not TIFF stacks, nor NIfTI with both codes 0."""
    if meta.format == "nifti":
        return meta.nifti is None or bool(meta.nifti.sform_code or meta.nifti.qform_code)
    return meta.format == "itk"


def _rounded(values: Any) -> list:
    """Numbers (or rows of them) rounded to 4 decimals for messages."""
    return np.round(np.asarray(values, dtype=np.float64), 4).tolist()


def label_dtype(low: int, high: int) -> np.dtype:
    """The smallest integer type holding `low..high` (unsigned first at each size)."""
    for kind in _LABEL_TYPES:
        info = np.iinfo(kind)
        if info.min <= low and high <= info.max:
            return np.dtype(kind)
    raise ValueError(f"labels {low}..{high} do not fit in 32-bit integers")


def _label_array(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.size == 0:
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(
                f"{path}: labels hold NaN or infinite values; replace them with a label "
                "before writing"
            )
        array = np.rint(array)
    low, high = int(array.min()), int(array.max())
    try:
        dtype = label_dtype(low, high)
    except ValueError as err:
        raise ValueError(f"{path}: {err}; labels must be integers within int32") from None
    return array.astype(dtype)


def _image_array(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array


# --- NIfTI ------------------------------------------------------------------------------------


def _load_nifti(path: Path, keep_file_open: bool = False) -> nib.Nifti1Image:
    try:
        return nib.load(str(path), keep_file_open=keep_file_open)
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for broken files
        raise ValueError(
            f"{path}: cannot be read as NIfTI ({type(err).__name__}: {err}); replace the file"
        ) from err


def _read_nifti(path: Path) -> tuple[np.ndarray, VolumeMeta]:
    image = _load_nifti(path)
    try:
        data = np.asanyarray(image.dataobj)  # applies scl_slope/inter when the header has them
    except Exception as err:  # noqa: BLE001 - a truncated file fails here
        raise ValueError(
            f"{path}: cannot be read as NIfTI ({type(err).__name__}: {err}); replace the file"
        ) from err
    if data.ndim == 5 and data.shape[3] == 1:  # (x, y, z, t=1, c): NIfTI's vector layout
        data = data[:, :, :, 0, :]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim not in (3, 4):
        raise ValueError(
            f"{path}: NIfTI of shape {data.shape} (x, y, z, ...); expected 3-D, or 4-D with "
            "channels (or time) last: save one volume per file"
        )
    array = np.ascontiguousarray(np.transpose(data, (2, 1, 0, *range(3, data.ndim))))
    return array, _nifti_meta(image, array.shape[:3])


def _nifti_meta(image: nib.Nifti1Image, shape: tuple[int, ...]) -> VolumeMeta:
    """The geometry of a NIfTI image whose array reads as `[Z, Y, X]` = `shape`."""
    header = image.header
    scale = _NIFTI_UNITS.get(header.get_xyzt_units()[0], 1.0)
    affine = np.array(image.affine, dtype=np.float64)
    affine[:3] *= scale
    geometry = NiftiGeometry(
        sform=_matrix(header.get_sform()), sform_code=int(header["sform_code"]),
        qform=_matrix(header.get_qform()), qform_code=int(header["qform_code"]),
        xyzt_units=int(header["xyzt_units"]),
    )  # fmt: skip
    return VolumeMeta(
        shape=tuple(int(n) for n in shape),
        spacing=_spacing_of(affine),
        affine=_matrix(affine),
        format="nifti",
        nifti=geometry,
    )


def _nifti_header(geometry: NiftiGeometry, shape: tuple[int, ...]) -> nib.Nifti1Header:
    """A header holding the stored geometry for data of NIfTI `shape` `(x, y, z[, c])`.

    The shape matters where sform_code = qform_code = 0: a reader then places the volume
    by pixdim about its centre (nibabel's fallback), which depends on the voxel counts.
    The qform sets pixdim, quaternion, offsets and qfac as stored."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_sform(np.array(geometry.sform), code=geometry.sform_code)
    header.set_qform(np.array(geometry.qform), code=geometry.qform_code)
    header["xyzt_units"] = geometry.xyzt_units
    return header


def _nifti_is_current(geometry: NiftiGeometry, meta: VolumeMeta) -> bool:
    """Whether `meta.affine` is still the header's best affine (sform, else qform, else
    nibabel's pixdim fallback for codes 0), in mm."""
    header = _nifti_header(geometry, tuple(meta.shape[::-1]))
    best = header.get_best_affine()
    best[:3] *= _NIFTI_UNITS.get(header.get_xyzt_units()[0], 1.0)
    return bool(np.allclose(best, meta.affine_matrix(), rtol=1e-9, atol=1e-6))


def _spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """`(z, y, x)` step lengths of an affine whose columns are `(x, y, z)`."""
    x, y, z = np.linalg.norm(affine[:3, :3], axis=0)
    return float(z), float(y), float(x)


def _output_nifti_header(meta: VolumeMeta, shape: tuple[int, ...], dtype: np.dtype
                         ) -> nib.Nifti1Header:  # fmt: skip
    """The header of a written volume of NIfTI `shape` `(x, y, z[, c])`: the input's sform
    and qform as stored when `meta.affine` is still theirs; else (geometry from another
    format, or an affine changed since reading) both from `meta.affine`."""
    geometry = meta.nifti
    if geometry is not None and _nifti_is_current(geometry, meta):
        header = _nifti_header(geometry, shape)  # codes 0 stay 0: the same fallback
    else:
        header = nib.Nifti1Header()
        header.set_data_shape(shape)
        affine = meta.affine_matrix()
        header.set_sform(affine, code=(geometry.sform_code if geometry else 0) or NIFTI_SCANNER)
        header.set_qform(affine, code=(geometry.qform_code if geometry else 0) or NIFTI_SCANNER)
        header.set_xyzt_units("mm")
    header.set_data_dtype(dtype)
    return header


def _write_nifti(path: Path, array: np.ndarray, meta: VolumeMeta) -> None:
    data = np.transpose(array, (2, 1, 0, *range(3, array.ndim)))  # (x, y, z[, c])
    header = _output_nifti_header(meta, data.shape, array.dtype)
    image = nib.Nifti1Image(data, None, header=header, dtype=array.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    image.update_header()
    nib.save(image, str(path))


# --- TIFF stacks ------------------------------------------------------------------------------


def _read_tiff(path: Path) -> tuple[np.ndarray, VolumeMeta]:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
            _check_pages(tif, path)
            array = _tiff_to_zyxc(array, axes, path)
            return array, _tiff_meta(tif, array.shape[:3], path)
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - tifffile raises many types for broken files
        raise ValueError(
            f"{path}: cannot be read as a TIFF stack ({type(err).__name__}: {err}); "
            "replace the file"
        ) from err


def _check_pages(tif: tifffile.TiffFile, path: Path) -> None:
    """Refuse pages outside the first series (other sizes), but pyramid levels."""
    series = tif.series[0]
    in_series, pages = len(series.pages), len(tif.pages)
    extra = [tif.pages[i] for i in range(in_series, pages)]
    others = sum(not getattr(p, "is_reduced", False) for p in extra)
    if others:
        raise ValueError(
            f"{path}: {in_series + others} pages of different sizes; a volume's slices must all "
            "have one size: save them as one stack of equal pages"
        )


def _tiff_meta(tif: tifffile.TiffFile, shape: tuple[int, ...], path: Path) -> VolumeMeta:
    """The geometry of an open TIFF stack whose array reads as `[Z, Y, X]` = `shape`."""
    tags = tif.pages[0].tags
    imagej = tif.imagej_metadata or {}
    shaped = (tif.shaped_metadata or ({},))[0]
    resolution = [_rational(tags, "YResolution"), _rational(tags, "XResolution")]
    res_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    spacing, assumed = _tiff_spacing(imagej, shaped, resolution, res_unit)
    if any(assumed):
        log.debug("%s: spacing (z, y, x) %s, assumed where %s", path, spacing, assumed)
    z, y, x = spacing
    return VolumeMeta(
        shape=tuple(int(n) for n in shape),
        spacing=spacing,
        affine=_matrix(np.diag([x, y, z, 1.0])),
        format="tiff",
        spacing_assumed=assumed,
    )


def _rational(tags: Any, name: str) -> float | None:
    if name not in tags:
        return None
    value = tags[name].value
    number = value[0] / value[1] if isinstance(value, tuple) and value[1] else float(value[0])
    return float(number) if number > 0 else None


def _tiff_to_zyxc(array: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """The series' axes to `[Z, Y, X(, C)]`: unit axes dropped; I, Q (unlabelled pages) are Z."""
    keep = [i for i, (a, n) in enumerate(zip(axes, array.shape, strict=True))
            if n > 1 or a in "YX"]  # fmt: skip
    names = "".join(axes[i] for i in keep).replace("I", "Z").replace("Q", "Z")
    array = array.reshape([array.shape[i] for i in keep])
    channels = [a for a in names if a in "CS"]
    if (
        "Y" not in names
        or "X" not in names
        or names.count("Z") > 1
        or len(channels) > 1
        or set(names) - set("ZYXCS")
    ):
        raise ValueError(
            f"{path}: TIFF with axes {axes!r} and shape {tuple(array.shape)}: expected slices "
            "(Z), Y, X and at most one channel axis; save one volume per file (split time "
            "points and series)"
        )
    order = [names.index(a) for a in "ZYX" if a in names] + [names.index(a) for a in channels]
    array = np.transpose(array, order)
    if "Z" not in names:
        array = array[None]
    return np.ascontiguousarray(array)


def _tiff_spacing(
    imagej: dict[str, Any],
    shaped: dict[str, Any],
    resolution: list[float | None],
    res_unit: int,
) -> tuple[tuple[float, float, float], tuple[bool, bool, bool]]:
    """`(z, y, x)` spacing in mm, and which axes were assumed, from what the TIFF says.

    ImageJ: `spacing` and the resolution (pixels per unit) in its `unit`. Other TIFFs:
    `spacing` and `unit` in tifffile's shaped metadata (as `write_volume` writes them), the
    resolution in its ResolutionUnit tag (inch or cm; none: a number without a unit).
    """
    source = imagej if imagej else shaped
    z_to_mm = _unit_mm(source.get("unit"))
    yx_to_mm = z_to_mm if imagej else _TIFF_RESOLUTION_UNITS.get(res_unit)
    z = source.get("spacing")
    spacing = [1.0 if z is None or float(z) <= 0 else float(z) * (z_to_mm or 1.0)]
    assumed = [z is None or float(z) <= 0 or z_to_mm is None]
    inch_or_none = yx_to_mm is None or yx_to_mm == _TO_MM["inch"]
    for pixels_per_unit in resolution:  # y, x
        if pixels_per_unit is None or (inch_or_none and _placeholder(pixels_per_unit)):
            spacing.append(1.0)  # no resolution, or a writer's default: unknown
            assumed.append(True)
            continue
        spacing.append((yx_to_mm or 1.0) / pixels_per_unit)
        assumed.append(yx_to_mm is None)
    return (spacing[0], spacing[1], spacing[2]), (assumed[0], assumed[1], assumed[2])


def _placeholder(pixels_per_unit: float) -> bool:
    """Whether a resolution in inch (or no unit) is a writer's default rather than a
    measurement: 72 or 96 (a screen's dpi), or 1 (tifffile's and others' unset value)."""
    return any(abs(pixels_per_unit - dpi) < 1e-6 for dpi in PLACEHOLDER_DPI)


def _unit_mm(unit: Any) -> float | None:
    """mm per `unit` (`um`, `micron`, `\\u00B5m`, `mm`, `cm`, ...); None when not a length."""
    if unit is None:
        return None
    text = str(unit).strip().lower().replace("\\u00b5", "u")
    return _TO_MM.get(text.replace("\u00b5", "u").replace("\u03bc", "u"))


def _write_tiff(
    path: Path | Any,
    array: np.ndarray | Any,
    meta: VolumeMeta,
    shape: tuple[int, ...] | None = None,
    dtype: np.dtype | None = None,
) -> None:
    """A TIFF stack in ImageJ's layout; `array` may be an iterator of `[Y, X]` pages with
    `shape` `[Z, Y, X]` and `dtype` given (`write_volume_bands`)."""
    z, y, x = meta.spacing
    shape = tuple(array.shape) if shape is None else tuple(shape)
    dtype = np.dtype(array.dtype if dtype is None else dtype)
    axes = "ZCYX" if len(shape) == 4 else "ZYX"
    if len(shape) == 4:  # ImageJ's hyperstack order
        array, shape = np.moveaxis(array, 3, 1), (shape[0], shape[3], *shape[1:3])
    if dtype in (np.uint8, np.uint16, np.float32):
        tifffile.imwrite(
            path, array, shape=shape, dtype=dtype, imagej=True, resolution=(1.0 / x, 1.0 / y),
            metadata={"spacing": z, "unit": "mm", "axes": axes},
        )  # fmt: skip
    else:  # pixel types ImageJ lacks: tifffile's shaped TIFF, the same keys in its JSON
        tifffile.imwrite(
            path, array, shape=shape, dtype=dtype, photometric="minisblack",
            resolution=(10.0 / x, 10.0 / y), resolutionunit="CENTIMETER",
            metadata={"spacing": z, "unit": "mm", "axes": axes},
        )  # fmt: skip


# --- SimpleITK formats ------------------------------------------------------------------------


def _sitk(path: Path) -> Any:
    try:
        import SimpleITK
    except ImportError as err:
        raise ImportError(
            f"{path}: {path.suffix} volumes are read and written through SimpleITK, which is not "
            f"installed; {ITK_FIX}"
        ) from err
    return SimpleITK


def _read_itk(path: Path) -> tuple[np.ndarray, VolumeMeta]:
    sitk = _sitk(path)
    try:
        image = sitk.ReadImage(str(path))
    except Exception as err:  # noqa: BLE001 - SimpleITK raises RuntimeError with ITK's text
        raise ValueError(
            f"{path}: cannot be read by SimpleITK ({type(err).__name__}: {err}); replace the file"
        ) from err
    if image.GetDimension() != 3:
        raise ValueError(
            f"{path}: {image.GetDimension()}-D image; expected a 3-D volume: save one volume "
            "per file (2-D images go into the images folder as 2-D files)"
        )
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image))  # (z, y, x[, c])
    spacing_xyz = np.array(image.GetSpacing(), dtype=np.float64)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)  # LPS columns
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ direction @ np.diag(spacing_xyz)
    affine[:3, 3] = _LPS @ np.array(image.GetOrigin(), dtype=np.float64)
    meta = VolumeMeta(
        shape=tuple(int(n) for n in array.shape[:3]),
        spacing=tuple(float(s) for s in spacing_xyz[::-1]),
        affine=_matrix(affine),
        format="itk",
    )
    return array, meta


def _write_itk(path: Path, array: np.ndarray, meta: VolumeMeta) -> None:
    sitk = _sitk(path)
    affine = meta.affine_matrix()
    lps = _LPS @ affine[:3, :3]
    spacing_xyz = np.linalg.norm(lps, axis=0)
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 4)
    image.SetSpacing([float(s) for s in spacing_xyz])
    image.SetDirection([float(v) for v in (lps / spacing_xyz).reshape(-1)])
    image.SetOrigin([float(v) for v in _LPS @ affine[:3, 3]])
    sitk.WriteImage(image, str(path), True)


# --- A band of slices at a time ---------------------------------------------------------------


class VolumeFile:
    """A volume file open for reading `[Z, Y, X(, C)]` a band of z slices at a time, so that
    a volume larger than memory is never read whole (`read(z0, z1)`, the same values as
    `read_volume`'s array there): NIfTI, `.nii` and `.nii.gz` (nibabel reads the band's
    bytes; a gzip stream is decompressed once, forward, as bands are read in order), and
    TIFF stacks whose pages are the slices, any compression, and OME-Zarr (the chunks that
    hold the band). Other files (ImageJ
    hyperstacks with channels, SimpleITK formats, 2-D NIfTI) are read whole on opening:
    `streamed` says which. Use as a context manager, or `close()`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._array: np.ndarray | None = None
        self._nifti: nib.Nifti1Image | None = None
        self._tiff: tifffile.TiffFile | None = None
        self._zarr: ZarrVolume | None = None
        kind = volume_format(self.path)
        if kind == "nifti":
            image = _load_nifti(self.path, keep_file_open=True)
            stored = image.shape
            if len(stored) in (3, 4) or (len(stored) == 5 and stored[3] == 1):
                self._nifti = image
                channels = stored[4 if len(stored) == 5 else 3 :]
                self._read_shape = (stored[2], stored[1], stored[0], *channels)
                self.meta = _nifti_meta(image, self._read_shape[:3])
        elif kind == "tiff":
            self._open_tiff()
        elif kind == "zarr":
            self._zarr = ZarrVolume(self.path)
            self._read_shape, self.meta = self._zarr.shape, self._zarr.meta
        if self._nifti is None and self._tiff is None and self._zarr is None:
            self._array, self.meta = read_volume(self.path)
            self._read_shape = self._array.shape
        self.shape: tuple[int, ...] = tuple(int(n) for n in self._read_shape)
        """`[Z, Y, X]` or `[Z, Y, X, C]`, as `read_volume` returns it."""
        self.dtype = self.read(0, min(1, self.shape[0])).dtype

    @property
    def streamed(self) -> bool:
        """Whether bands are read from the file (else the array was read whole)."""
        return self._array is None

    def _open_tiff(self) -> None:
        try:
            tif = tifffile.TiffFile(self.path)
        except Exception as err:  # noqa: BLE001 - tifffile raises many types for broken files
            raise ValueError(
                f"{self.path}: cannot be read as a TIFF stack ({type(err).__name__}: {err}); "
                "replace the file"
            ) from err
        series = tif.series[0]
        kept = [(a, n) for a, n in zip(series.axes, series.shape, strict=True)
                if n > 1 or a in "YX"]  # fmt: skip
        names = "".join(a for a, _ in kept).replace("I", "Z").replace("Q", "Z")
        slices = kept[0][1] if names[:1] == "Z" else 1
        if names not in ("ZYX", "YX", "ZYXS", "YXS") or len(series.pages) != slices:
            tif.close()  # not one page per slice: read whole
            return
        _check_pages(tif, self.path)
        sizes = [n for _, n in kept]
        self._read_shape = tuple(sizes) if names[0] == "Z" else (1, *sizes)
        self.meta = _tiff_meta(tif, self._read_shape[:3], self.path)
        self._tiff = tif

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices `z0..z1` (exclusive) as `[z1 - z0, Y, X(, C)]`."""
        z0, z1 = max(0, z0), min(self._read_shape[0], z1)
        if self._array is not None:
            return self._array[z0:z1]
        if self._zarr is not None:
            return self._zarr.read(z0, z1)
        try:
            if self._nifti is not None:
                index = (slice(None), slice(None), slice(z0, z1))
                if len(self._nifti.shape) == 5:
                    index += (0,)
                data = self._nifti.dataobj[index]  # (x, y, band[, c]), scaled as stored
                return np.ascontiguousarray(np.transpose(data, (2, 1, 0, *range(3, data.ndim))))
            data = self._tiff.asarray(key=range(z0, z1), series=0)
            return np.ascontiguousarray(data.reshape(z1 - z0, *self._read_shape[1:]))
        except Exception as err:  # noqa: BLE001 - a truncated file fails here
            what = "NIfTI" if self._nifti is not None else "a TIFF stack"
            raise ValueError(  # `read_volume`'s words, the slices added
                f"{self.path}: cannot be read as {what} ({type(err).__name__}: {err}; "
                f"slices {z0}..{z1 - 1}); replace the file"
            ) from err

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()
        self._nifti = self._tiff = self._array = self._zarr = None

    def __enter__(self) -> VolumeFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_volume_bands(path: str | Path, bands: Any, meta: VolumeMeta, dtype: np.dtype) -> None:
    """Write a label volume `[Z, Y, X]` of `dtype` that arrives as an iterator of bands of
    z slices `[n, Y, X]`, in order, without holding it whole: NIfTI as its header and then
    each band's bytes (NIfTI stores x fastest, z slowest: a band is a run of bytes; gzip as
    a stream), TIFF a page per slice; SimpleITK formats are gathered and written whole.
    The geometry is `write_volume`'s. Written to `<path>.partial` and renamed once
    complete, so that an interrupted run leaves no half file under the output's name.
    """
    import gzip

    path, dtype = Path(path), np.dtype(dtype)
    kind = volume_format(path)
    z, y, x = (int(n) for n in meta.shape)
    written = 0

    def checked() -> Any:
        nonlocal written
        for band in bands:
            if band.ndim != 3 or tuple(band.shape[1:]) != (y, x) or written + len(band) > z:
                raise ValueError(f"{path}: band of shape {band.shape} after {written} of {z} "
                                 f"slices of [{y}, {x}]")  # fmt: skip
            written += len(band)
            yield np.ascontiguousarray(band, dtype=dtype)

    if kind == "itk":  # SimpleITK writes a whole image: gathered, not streamed
        whole = np.empty((z, y, x), dtype)
        for band in checked():
            whole[written - len(band) : written] = band
        write_volume(path, whole, meta, labels=True)
        return

    def write(partial: Path) -> None:
        if kind == "nifti":
            header = _output_nifti_header(meta, (x, y, z), dtype)
            header.set_slope_inter(1.0, 0.0)
            opener = gzip.open(partial, "wb", compresslevel=1) if path.name.lower().endswith(
                ".gz") else open(partial, "wb")  # fmt: skip
            with opener as f:
                header.write_to(f)
                f.write(b"\0" * (int(header["vox_offset"]) - f.tell()))
                for band in checked():
                    f.write(band.tobytes())  # [n, Y, X] C order: x fastest, as NIfTI stores
        elif kind == "tiff":
            pages = (page for band in checked() for page in band)
            with open(partial, "wb") as f:
                _write_tiff(f, pages, meta, shape=(z, y, x), dtype=dtype)
        else:
            _write_zarr(partial, checked(), meta, dtype)
        if written != z:
            raise ValueError(f"{path}: {written} of {z} slices were given")

    _written_in_place(path, write)


def _written_in_place(path: Path, write: Any) -> None:
    """`write(partial)` to `<name>.partial` beside `path`, then renamed to `path` (a folder
    there, an OME-Zarr, replaced), so that an interrupted write leaves no half volume under
    the output's name."""
    import os
    import shutil

    partial = path.with_name(path.name + ".partial")
    try:
        write(partial)
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(partial, path)
    finally:
        if partial.is_dir():
            shutil.rmtree(partial)
        else:
            partial.unlink(missing_ok=True)


# --- OME-Zarr ---------------------------------------------------------------------------------

ZARR_FIX = "pip install 'zarr>=3' (a dependency of unet-seg on Python 3.11 and later)"


def _zarr() -> Any:
    try:
        import zarr
    except ImportError as err:
        raise ImportError(f"reading and writing OME-Zarr needs zarr: {ZARR_FIX}") from err
    return zarr


class ZarrVolume:
    """An OME-Zarr image (or a bare Zarr array) open for reading bands of z slices as
    `[n, Y, X(, C)]` (the module docstring): `shape`, `meta`, `read(z0, z1)`."""

    def __init__(self, path: str | Path) -> None:
        zarr = _zarr()
        self.path = Path(path)
        try:
            node = zarr.open(str(self.path), mode="r")
        except Exception as err:  # noqa: BLE001 - zarr raises many types for what it cannot open
            raise ValueError(f"{self.path}: cannot be read as Zarr ({type(err).__name__}: "
                             f"{err}); replace it") from err  # fmt: skip
        scale, offset, units = None, None, None
        if isinstance(node, zarr.Array):
            axes = ["z", "y", "x", "c"][: node.ndim]
            self.array = node
        else:
            attrs = dict(node.attrs)
            multiscales = (attrs.get("ome") or attrs).get("multiscales")
            if not multiscales:
                raise ValueError(f"{self.path}: a Zarr group without OME-Zarr multiscales "
                                 "metadata: give the image's folder (an .ome.zarr)")  # fmt: skip
            first = multiscales[0]
            axes = [a["name"] if isinstance(a, dict) else str(a) for a in first["axes"]]
            units = [a.get("unit") if isinstance(a, dict) else None for a in first["axes"]]
            dataset = first["datasets"][0]
            for t in dataset.get("coordinateTransformations", []):
                if t.get("type") == "scale":
                    scale = [float(v) for v in t["scale"]]
                elif t.get("type") == "translation":
                    offset = [float(v) for v in t["translation"]]
            self.array = node[dataset["path"]]
        axes = [a.lower() for a in axes]
        shape = dict(zip(axes, self.array.shape, strict=True))
        extra = [a for a in axes if a not in "czyx" and shape[a] != 1]
        if sorted(a for a in axes if a in "zyx") != ["x", "y", "z"] or extra:
            raise ValueError(f"{self.path}: axes {axes} {list(self.array.shape)}: a volume has "
                             "z, y and x (and c; t only of size 1)")  # fmt: skip
        self._axes = axes
        self._order = [axes.index(a) for a in ("z", "y", "x", "c") if a in axes]
        self.shape = tuple(shape[a] for a in ("z", "y", "x")) + (
            (shape["c"],) if "c" in shape and shape["c"] > 1 else ()
        )
        spacing, assumed, origin = [], [], []
        for a in ("z", "y", "x"):
            i = axes.index(a)
            per = _unit_mm((units or [None] * len(axes))[i]) if scale else None
            spacing.append(scale[i] * per if per is not None else (scale[i] if scale else 1.0))
            assumed.append(per is None)
            origin.append(offset[i] * (per or 1.0) if offset else 0.0)
        affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
        affine[:3, 3] = origin[::-1]
        self.meta = VolumeMeta(shape=self.shape[:3], spacing=tuple(spacing),
                               affine=_matrix(affine), format="zarr",
                               spacing_assumed=tuple(assumed))  # fmt: skip

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices `z0..z1` (exclusive) as `[n, Y, X(, C)]`."""
        index = tuple(slice(z0, z1) if a == "z" else 0 if a not in "cyx" else slice(None)
                      for a in self._axes)  # fmt: skip
        try:
            data = np.asarray(self.array[index])
        except Exception as err:  # noqa: BLE001 - a missing or broken chunk fails here
            raise ValueError(f"{self.path}: cannot be read as Zarr ({type(err).__name__}: "
                             f"{err}; slices {z0}..{z1 - 1}); replace it") from err  # fmt: skip
        kept = [a for a in self._axes if a in "czyx"]
        data = np.transpose(data, [kept.index(a) for a in ("z", "y", "x", "c") if a in kept])
        return np.ascontiguousarray(data[..., 0] if data.ndim == 4 and data.shape[3] == 1
                                    else data)  # fmt: skip

    def close(self) -> None:
        self.array = None

    def __enter__(self) -> ZarrVolume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_zarr(path: Path, bands: Any, meta: VolumeMeta, dtype: np.dtype) -> None:
    """An OME-Zarr 0.4 image (Zarr v2) of one scale `0`, axes z, y, x (and c) in millimetres,
    written band by band into chunks of up to 64 x 256 x 256."""
    zarr = _zarr()
    bands = iter(bands)
    first = next(bands)
    z, (y, x), channels = int(meta.shape[0]), first.shape[1:3], first.shape[3:]
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    chunks = (min(z, 64), min(y, 256), min(x, 256), *channels)
    array = root.create_array("0", shape=(z, y, x, *channels), chunks=chunks, dtype=dtype,
                              fill_value=0)  # fmt: skip
    axes = [{"name": a, "type": "space", "unit": "millimeter"} for a in "zyx"]
    scale = [float(s) for s in meta.spacing]
    if channels:
        axes.append({"name": "c", "type": "channel"})
        scale.append(1.0)
    translation = [float(v) for v in meta.affine_matrix()[:3, 3][::-1]] + [0.0] * len(channels)
    transforms = [{"type": "scale", "scale": scale},
                  {"type": "translation", "translation": translation}]  # fmt: skip
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": transforms}]}]  # fmt: skip
    at = 0
    for band in itertools.chain([first], bands):
        array[at : at + len(band)] = band
        at += len(band)
