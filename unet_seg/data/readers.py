"""Reading image and mask files into arrays, with explicit channel and intensity rules.

`read_array` decodes a file as stored; `channel_kind` says what its channels are
and how many it feeds a net; `plan_channels` decides how it becomes
`data.in_channels` channels (or refuses, naming the file and the fix) and
`fit_channels` applies that decision. The loader (`read_image`) and the checks
before training (`unet_seg.data.checks`) call these same functions, so they
cannot disagree about a file.

How a decoded image becomes `data.in_channels` = N channels (anything else is an
error naming the file and the fix, never a guess):

| stored as                               | feeds | N accepted, and how              |
|-----------------------------------------|-------|----------------------------------|
| grey                                    | 1     | 1; 3 (repeated); 2, 4 (+ alpha)  |
| grey+alpha, alpha fully opaque          | 1     | 1, 3 (alpha dropped); 2; 4 (RGBA)|
| grey+alpha, alpha with transparency     | 2     | 2 (grey, alpha); 4 (RGBA)        |
| RGB with R = G = B (grey as RGB)        | 1     | 1 (one copy); 3; 2, 4 (+ alpha)  |
| RGB                                     | 3     | 3; 4 (+ alpha)                   |
| RGBA, R = G = B, alpha fully opaque     | 1     | 1, 3 (alpha dropped); 2; 4       |
| RGBA, R = G = B, alpha with transparency| 2     | 2 (grey, alpha); 4 (as is)       |
| RGBA, alpha fully opaque                | 3     | 3 (alpha dropped); 4 (as is)     |
| RGBA, alpha with transparency           | 4     | 4                                |
| C channels (TIFF)                       | C     | C                                |
| C channels of data (TIFF, see below)    | C     | C                                |

"Fully opaque" is the pixel type's maximum (1.0 for float) everywhere. A stored
channel count is always accepted as it is. Transparency that `data.in_channels`
would drop is refused: flatten the images onto a background, or feed the alpha.
"+ alpha": an image without one gets a fully opaque alpha, so that it trains next to
images whose transparency the net is fed (grey+alpha feeds 4 as grey x 3 and its alpha).

Files: PNG, JPEG, BMP and GIF through OpenCV (Pillow for what OpenCV cannot
read); a grey+alpha PNG stays 2 channels (grey, alpha); palette images decode to
RGB, or RGBA when the palette has transparency (a grey palette then feeds 1
channel by the R = G = B rule); CMYK JPEGs decode to RGB. TIFF through tifffile
(OpenCV where tifffile lacks a codec): one page, interleaved or planar samples
of any count; several pages only when they are clearly channels: labelled so
(ImageJ/OME axis C), or 2..4 unlabelled pages of one size (tifffile axes I or
Q, as `tifffile.imwrite(path, array_CHW)` and `cv2.imwritemulti` write them),
read as channels in page order. Any other stack (more pages, slices along
Z or T, pages of different sizes) is refused: split it into one file per slice.
CMYK TIFFs are refused (convert them to RGB).

Channels of data: a TIFF whose pages are channels (ImageJ/OME axis C, unlabelled pages),
or whose samples are grey (MinIsBlack) with no sample declared an alpha, stores C channels
of data (fluorescence, multispectral) rather than a picture (`read_stored`): it is `C
channels`, feeding C, never grey+alpha, RGB(A) or "grey as RGB" however its values fall,
and a count other than C is refused. Only a picture format's own alpha (a PNG's, a
palette's transparency, a TIFF sample declared alpha) is an alpha. `channel_kind`,
`plan_channels` and `fit_channels` take this answer as `data_channels` (an array of unknown
origin is read by the table's rules).

Pixel types: uint8, uint16 and float16/32/64 (float: finite values only, read
as float32); 1-bit images read as 0/255 uint8.
Intensity (`data.intensity`): `range` divides by the type's maximum (float
images must already lie in [0, 1]); `percentile` maps each image's channel
percentiles `low`..`high` to 0..1 (for 16-bit microscopy, whose useful range
is often a small part of 0..65535), over the whole image (or volume) per channel,
NaN and infinite values left out.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

TIFF_EXTENSIONS = (".tif", ".tiff")
DEFAULT_INTENSITY = {"mode": "range"}
"""`data.intensity` when none is given: divide by the pixel type's maximum."""
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
"""Extensions of image and mask files, matched in any case (`.PNG`, `.TIF`)."""
OPAQUE = -1
"""In `plan_channels`' channels to take: a fully opaque alpha, added."""
CHANNEL_FIX = "set data.in_channels={channels}"
"""The fix `read_image` offers when an image cannot feed `data.in_channels`."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_PNG_GREY_ALPHA = 4  # IHDR colour type
_PNG_PALETTE = 3


def is_image_file(path: str | Path) -> bool:
    """Whether `path` names an image or mask file to list: an image extension in any case,
    not hidden (names starting with `.`, such as macOS `._a.png` resource files), and a
    file (a broken link counts, so that reading it fails with its name)."""
    path = Path(path)
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS
        and not path.name.startswith(".")
        and (path.is_file() or path.is_symlink())
    )


def size_mismatch(
    path: str | Path,
    kind: str,
    shape: tuple[int, ...],
    image: str | Path,
    image_shape: tuple[int, ...],
) -> str | None:
    """The error for a `kind` file (a mask, instance labels) at `path` whose `[H, W]` differs
    from its image's, naming both sizes as width x height; None when they agree."""
    (h, w), (ih, iw) = tuple(shape[:2]), tuple(image_shape[:2])
    if (h, w) == (ih, iw):
        return None
    plural = kind.endswith("s")
    return (
        f"{path}: {kind} {'are' if plural else 'is'} {w}x{h} but its image {image} is "
        f"{iw}x{ih} (width x height); {kind if plural else kind + 's'} must match their "
        f"image's size: save {'them' if plural else 'it'} at the image's size"
    )


def _unreadable(path: str | Path, why: str = "") -> ValueError:
    detail = f": {why}" if why else ""
    return ValueError(
        f"{path}: cannot be read as an image (unreadable, truncated or not an image{detail}); "
        "replace or remove the file"
    )


def file_signature(path: str | Path, size: int = 32) -> bytes:
    """The first `size` bytes of a file (b"" when it cannot be opened)."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def is_jpeg_file(path: str | Path) -> bool:
    """Whether the file holds JPEG data (by its content, whatever its extension)."""
    return file_signature(path, 3) == _JPEG_SIGNATURE


_SIGNATURES = {_PNG_SIGNATURE: "png", b"GIF8": "gif", _JPEG_SIGNATURE: "jpeg", b"BM": "bmp",
               b"II*\x00": "tiff", b"MM\x00*": "tiff", b"II+\x00": "tiff",
               b"MM\x00+": "tiff"}  # fmt: skip


def file_format(path: str | Path) -> str:
    """The format a file holds by its content (`png`, `gif`, `jpeg`, `tiff`, `bmp`), whatever
    its extension; else its extension, lower-case."""
    head = file_signature(path, 8)
    kind = next((k for sig, k in _SIGNATURES.items() if head.startswith(sig)), None)
    return kind or Path(path).suffix.lower().lstrip(".")


def png_colour_type(path: str | Path) -> int | None:
    """The IHDR colour type of a PNG file (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA),
    or None when the file is no PNG."""
    head = file_signature(path, 26)
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return head[25]


def read_array(path: str | Path) -> np.ndarray:
    """Decode a file as stored: `[H, W]` or `[H, W, C]`, colour in RGB(A) order.

    TIFF goes through tifffile (any channel count, planar or interleaved; stacks
    as the module docstring says); other formats through OpenCV, with Pillow for
    what OpenCV cannot read. Raises a ValueError naming the file when it cannot
    be read.
    """
    return read_stored(path)[0]


def read_stored(path: str | Path) -> tuple[np.ndarray, bool]:
    """`read_array(path)`, and whether its channels are channels of data rather than a
    picture's: a TIFF of channel pages (ImageJ/OME axis C, or unlabelled pages), or of grey
    samples none of which is declared an alpha (the module docstring). Other formats and
    RGB(A) TIFFs: False."""
    path = Path(path)
    data_channels = False
    if path.suffix.lower() in TIFF_EXTENSIONS:
        array, data_channels = _read_tiff(path)
    else:
        array = _read_other(path)
    if array.dtype == bool:  # 1-bit: as OpenCV reads 1-bit PNGs
        array = array.astype(np.uint8) * 255
    return array, data_channels and array.ndim == 3 and array.shape[2] > 1


def _tiff_channels(tif: tifffile.TiffFile, layout: str, shape: tuple[int, ...]) -> bool:
    """Whether a TIFF of `_tiff_layout`'s `layout` and `shape` holds channels of data: more
    than one channel, grey (MinIsBlack / MinIsWhite) samples or pages, no alpha declared."""
    channels = shape[0] if layout == "channels first" else (shape[2] if len(shape) == 3 else 1)
    if channels < 2:
        return False
    page = tif.pages[0]
    grey = page.photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE)
    alpha = (tifffile.EXTRASAMPLE.ASSOCALPHA, tifffile.EXTRASAMPLE.UNASSALPHA)
    return bool(grey and not any(e in alpha for e in (page.extrasamples or ())))


def _read_other(path: Path, tiff_error: Exception | None = None) -> np.ndarray:
    """OpenCV, then Pillow; a grey+alpha PNG as `[H, W, 2]`."""
    try:
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        array = None
    if array is None:
        return _read_with_pillow(path, tiff_error)
    if array.ndim == 3 and array.shape[2] == 4 and png_colour_type(path) == _PNG_GREY_ALPHA:
        return np.ascontiguousarray(array[:, :, [0, 3]])  # OpenCV made BGRA of grey+alpha
    return _bgr_to_rgb(array)


def _bgr_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 3:
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    if array.ndim == 3 and array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    return array


def _read_tiff(path: Path) -> tuple[np.ndarray, bool]:
    """A TIFF as `[H, W(, C)]`, and whether its channels are data (`_tiff_channels`)."""
    try:
        tif = tifffile.TiffFile(path)
    except Exception as err:  # noqa: BLE001 - not a TIFF after all, or broken: try the others
        return _read_other(path, err), False
    with tif:
        pages, layout, shape = _tiff_layout(tif, path)
        data_channels = _tiff_channels(tif, layout, shape)
        try:
            array = tif.series[0].asarray()
        except Exception as err:  # noqa: BLE001 - a codec tifffile lacks (LZW, as OpenCV writes)
            return _read_tiff_with_opencv(path, pages, err), data_channels
    if array.size != int(np.prod(shape)):
        raise _unreadable(path, f"TIFF data of shape {array.shape}, expected {shape}")
    array = array.reshape(shape)
    if layout == "channels first":
        return np.ascontiguousarray(np.moveaxis(array, 0, -1)), data_channels
    return array, data_channels


def _tiff_layout(tif: tifffile.TiffFile, path: Path) -> tuple[int, str, tuple[int, ...]]:
    """(pages, `"image"` or `"channels first"`, shape without unit axes) of the first series
    of a TIFF, refusing stacks and CMYK with the fix."""
    try:
        series = tif.series[0]
        photometric = tif.pages[0].photometric
        in_series, pages = len(series.pages), len(tif.pages)
        if pages > in_series:  # pages outside the first series: reduced-size thumbnails only?
            extra = [tif.pages[i] for i in range(in_series, pages)]
            pages = in_series + sum(not getattr(p, "is_reduced", False) for p in extra)
        axes_of, shape_of = series.axes, series.shape
    except Exception as err:  # noqa: BLE001 - tifffile raises many types for broken files
        raise _unreadable(path, f"{type(err).__name__}: {err}") from err
    if photometric == tifffile.PHOTOMETRIC.SEPARATED:
        raise ValueError(f"{path}: CMYK TIFF; convert it to RGB (or grayscale) and save it again")
    dims = [(a, n) for a, n in zip(axes_of, shape_of, strict=True) if n > 1 or a in "YX"]
    axes, shape = "".join(a for a, _ in dims), tuple(n for _, n in dims)
    if pages <= in_series:
        if axes in ("YX", "YXS"):
            return pages, "image", shape
        if axes in ("SYX", "CYX") or (axes in ("IYX", "QYX") and 2 <= shape[0] <= 4):
            return pages, "channels first", shape
    if pages <= 1:
        raise ValueError(
            f"{path}: TIFF with axes {axes_of!r} and shape {shape_of}: expected one 2-D "
            "image (YX), with channels (YXS, CYX); save one image per file"
        )
    if pages > in_series:
        slices = " of different sizes"
    else:
        slices = f" (axes {axes_of})" if axes not in ("IYX", "QYX") else ""
    raise ValueError(
        f"{path}: {pages} pages{slices}: split the stack into one file per slice, or train "
        "on the stacks as volumes (data=auto detects a folder of them; data=folder needs "
        "data.volume=true). Pages are read as channels only when the TIFF labels them "
        "channels, or for 2 to 4 pages of one size."
    )


def _read_tiff_with_opencv(path: Path, pages: int, err: Exception) -> np.ndarray:
    why = f"{type(err).__name__}: {err}"
    if pages > 1:
        ok, frames = cv2.imreadmulti(str(path), flags=cv2.IMREAD_UNCHANGED)
        if not ok or len(frames) != pages or any(f.ndim != 2 for f in frames):
            raise _unreadable(path, why) from err
        return np.stack(frames, axis=-1)
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise _unreadable(path, why) from err
    return _bgr_to_rgb(array)


def _read_with_pillow(path: Path, tiff_error: Exception | None = None) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's decompression-bomb warning
            with Image.open(path) as im:
                im.load()
                if im.mode in ("P", "PA"):
                    alpha = im.mode == "PA" or "transparency" in im.info
                    im = im.convert("RGBA" if alpha else "RGB")
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                return np.asarray(im)
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for broken files
        why = f"{type(tiff_error).__name__}: {tiff_error}" if tiff_error else ""
        raise _unreadable(path, why) from err


def read_image(path: str | Path, in_channels: int) -> np.ndarray:
    """An image as `[H, W, in_channels]`, following the rules in this module's docstring."""
    image, data_channels = read_stored(path)
    return fit_channels(image, in_channels, str(path), CHANNEL_FIX, data_channels)


def plan_channels(
    image: np.ndarray,
    in_channels: int,
    name: str,
    fix: str = CHANNEL_FIX,
    data_channels: bool = False,
) -> tuple[str, int, list[int] | None]:
    """Check a decoded image and decide how it gives `in_channels` channels, converting nothing.

    `data_channels`: the file stores channels of data (`read_stored`): C of them feed C,
    and no other count is made of them.

    Returns:
        `(kind, channels, take)`: `channel_kind`'s answer, and the stored channels to take
        in order (`OPAQUE`: an opaque alpha added; None: the image as it is).
    Raises:
        ValueError naming the image (`name`) and ending with the fix: `fix` with
        `{channels}` filled in, and for transparency also flattening.
    """
    _check_pixels(image, name)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or min(image.shape) < 1:
        raise ValueError(
            f"{name}: expected [H, W] or [H, W, C], got shape {image.shape}; save one 2-D image "
            "per file"
        )
    kind, channels = channel_kind(image, data_channels)
    stored, wanted = image.shape[2], in_channels
    if wanted == stored:
        return kind, channels, None
    if data_channels and stored > 1:
        raise ValueError(
            f"{name}: {stored}-channel image but data.in_channels={wanted}: {stored} channels "
            f"of data (a TIFF of channels, no colour or alpha); {fix.format(channels=stored)}"
        )
    grey_alpha = kind.startswith(("grey+alpha", "grey as RGBA"))
    transparent = kind.endswith("(transparent)")
    take = None
    if grey_alpha and wanted == 2:
        take = [0, stored - 1]  # grey, alpha
    elif channels == 1 and wanted in (1, 3) and not transparent:
        take = [0] * wanted  # grey (as grey, RGB, grey+alpha or RGBA): one copy or three
    elif kind == "RGBA" and wanted == 3:
        take = [0, 1, 2]
    elif stored == 2 and wanted == 4:
        take = [0, 0, 0, 1]  # grey+alpha as RGBA
    elif stored in (1, 3) and wanted in (2, 4) and channels < wanted:  # no alpha: an opaque one
        take = [*([0, 1, 2] if stored == 3 and wanted == 4 else [0] * (wanted - 1)), OPAQUE]
    if take is not None:
        return kind, channels, take
    hint = fix.format(channels=channels)
    feed = " to feed alpha to the net" if "{channels}" in fix else ""
    if stored == 2:  # grey+alpha, or two channels of anything: say what was found
        alpha = "with transparent pixels" if transparent else "with an opaque alpha"
        flatten = "flatten the images onto a background, or " if transparent else ""
        raise ValueError(
            f"{name}: 2-channel image but data.in_channels={wanted}: grey+alpha {alpha}; "
            f"{flatten}{hint}{feed if transparent else ''}"
        )
    if transparent:
        label = kind.replace(" (transparent)", "").replace("grey as RGBA", "grey RGBA")
        also = f" ({stored}: all channels as stored)" if stored != channels and feed else ""
        raise ValueError(
            f"{name}: {label} image with transparent pixels, but data.in_channels={wanted}; "
            f"flatten the images onto a background, or {hint}{feed}{also}"
        )
    if kind == "RGB" and wanted == 1:
        hint += " (the channels differ, so a grayscale conversion would be a guess)"
    label = {"grey": "grayscale"}.get(kind, kind)
    raise ValueError(f"{name}: {label} image but data.in_channels={wanted}; {hint}")


def _check_pixels(image: np.ndarray, name: str) -> None:
    if image.dtype not in (np.uint8, np.uint16, np.float16, np.float32, np.float64):
        raise ValueError(
            f"{name}: pixel type {image.dtype} unsupported; save the image as 8 or 16 bit "
            "unsigned integers, or as float"
        )
    if image.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(image)))
        if bad:
            raise ValueError(
                f"{name}: float image holds NaN or infinite values ({bad} pixel(s)); replace "
                "them with numbers (e.g. numpy.nan_to_num) or remove the image"
            )


def fit_channels(
    image: np.ndarray,
    in_channels: int,
    name: str,
    fix: str = CHANNEL_FIX,
    data_channels: bool = False,
) -> np.ndarray:
    """Check pixel type and values, then give `[H, W(, C)]` exactly `in_channels` channels.

    The conversions are the module docstring's table, decided by `plan_channels`
    (`data_channels`: its argument); anything else raises a ValueError that names the image
    (`name`) and ends with `fix` (`{channels}` is filled in). Float images must be finite
    and become float32.
    """
    _, _, take = plan_channels(image, in_channels, name, fix, data_channels)
    if image.dtype.kind == "f":
        image = image.astype(np.float32, copy=False)
    if image.ndim == 2:
        image = image[:, :, None]
    if take is not None and OPAQUE in take:
        opaque = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1.0
        planes = [np.full(image.shape[:2], opaque, image.dtype) if i == OPAQUE
                  else image[:, :, i] for i in take]  # fmt: skip
        return np.stack(planes, axis=2)
    return image if take is None else np.ascontiguousarray(image[:, :, take])


def channel_kind(image: np.ndarray, data_channels: bool = False) -> tuple[str, int]:
    """What the channels of a decoded `[H, W(, C)]` image are, and how many it feeds a net.

    Args:
        image: the decoded array.
        data_channels: the file stores channels of data (`read_stored`), not a picture.
    Returns:
        `(kind, channels)`: `grey` 1; `grey+alpha` (opaque: 1, else `grey+alpha
        (transparent)` 2); `grey as RGB` (R = G = B) 1; `RGB` 3; `grey as RGBA` (R = G = B,
        opaque) 1, `grey as RGBA (transparent)` 2; `RGBA` (opaque) 3, `RGBA (transparent)`
        4; `C-channel` C; with `data_channels`, `C channels` C. An alpha that carries
        transparency counts as a channel.
    """
    if image.ndim == 2 or image.shape[2] == 1:
        return "grey", 1
    channels = image.shape[2]
    if data_channels:
        return f"{channels} channels", channels
    if channels == 2:
        return ("grey+alpha", 1) if _alpha_is_opaque(image) else ("grey+alpha (transparent)", 2)
    if channels not in (3, 4):
        return f"{channels}-channel", channels
    red = image[:, :, 0]
    grey = _all_equal(red, image[:, :, 1]) and _all_equal(red, image[:, :, 2])
    if channels == 3:
        return ("grey as RGB", 1) if grey else ("RGB", 3)
    if _alpha_is_opaque(image):
        return ("grey as RGBA", 1) if grey else ("RGBA", 3)
    return ("grey as RGBA (transparent)", 2) if grey else ("RGBA (transparent)", 4)


def _all_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two `[H, W]` planes are equal: a sparse sample first, which settles most
    colour images without comparing every pixel."""
    if not np.array_equal(a[::7, ::7], b[::7, ::7]):
        return False
    return bool(np.array_equal(a, b))


def _alpha_is_opaque(image: np.ndarray) -> bool:
    """Whether the last channel of `[H, W, C]` is fully opaque (the dtype's maximum, or 1.0)."""
    opaque = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1.0
    return bool((image[:, :, -1] == opaque).all())


PERCENTILE_SAMPLES = 1_000_000
"""About how many values per channel `percentile` intensities take their percentiles from:
every n-th value, the same whether a volume is read whole or in bands."""


def percentile_step(values: int) -> int:
    """Every how many values `percentile` takes one (`PERCENTILE_SAMPLES`)."""
    return max(1, values // PERCENTILE_SAMPLES)


def percentile_bounds(
    samples: np.ndarray, low: float, high: float
) -> tuple[np.ndarray, np.ndarray]:
    """The `low` and `high` percentiles `[C]` of `samples` `[n, C]`, NaN and infinite values
    left out."""
    flat = samples.astype(np.float32)
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        flat = np.where(np.isfinite(flat), flat, np.nan)  # NaN, inf: no percentile
        return tuple(np.nanpercentile(flat, [low, high], axis=0))  # [C] each
    return tuple(np.percentile(flat, [low, high], axis=0))


def between(image: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """`lo..hi` (per channel, the last axis) -> 0..1, clipped, float32."""
    scale = np.where(hi > lo, hi - lo, 1.0)
    scaled = (image.astype(np.float32) - lo.astype(np.float32)) / scale.astype(np.float32)
    return np.clip(scaled, 0.0, 1.0)  # float32: np.percentile's float64 not carried on


def to_unit_range(
    image: np.ndarray,
    mode: str = "range",
    low: float = 1.0,
    high: float = 99.0,
    vmin: float = 0.0,
    vmax: float = 1.0,
    *,
    name: str | Path | None = None,
) -> np.ndarray:
    """Intensities to [0, 1] as `data.intensity` says; uint8 in `range` mode stays uint8.

    Modes: `range` divides by the type's maximum; `percentile` maps each image's
    `low`..`high` percentiles to 0..1; `fixed` maps the pixel values `vmin`..`vmax`
    (the same for every image: the plan's dataset percentiles) to 0..1. Both clip.

    Returns uint8 (to be divided by 255 once, after augmentation) or float32 in [0, 1].
    Shape kept: `[..., C]`, channels last (`[H, W, C]`, a volume's `[Z, Y, X, 1]`), or `[H, W]`,
    one channel; `percentile` takes each channel's percentiles over all its values, NaN and
    infinite values left out (they stay NaN). `name` (the file) prefixes errors.
    """
    if mode == "fixed":
        scale = np.float32(vmax - vmin) if vmax > vmin else np.float32(1.0)
        return np.clip((image.astype(np.float32) - np.float32(vmin)) / scale, 0.0, 1.0)
    if mode == "range":
        if image.dtype == np.uint8:
            return image
        if image.dtype == np.uint16:
            return image.astype(np.float32) / 65535.0
        low, high = np.nanmin(image), np.nanmax(image)  # NaN: not a value outside [0, 1]
        if low < 0 or high > 1:
            prefix = f"{name}: " if name else ""
            raise ValueError(
                f"{prefix}float image values span {low:.3g}..{high:.3g}, outside "
                "[0, 1]: set data.intensity.mode=percentile, or rescale the images"
            )
        return image.astype(np.float32, copy=False)
    if mode == "percentile":
        channels = image.shape[-1] if image.ndim >= 3 else 1  # channels last; [H, W]: one
        flat = image.reshape(-1, channels)
        lo, hi = percentile_bounds(flat[:: percentile_step(len(flat))], low, high)
        return between(image, lo, hi)
    raise ValueError(f"data.intensity.mode={mode!r}: choose 'range', 'percentile' or 'fixed'")
