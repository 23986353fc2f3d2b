"""Reading image and mask files into arrays, with explicit channel and intensity rules.

How an image on disk becomes `data.in_channels` channels (anything else is an
error naming the file and the fix, never a guess):

- grayscale: as is for 1 channel, repeated for 3;
- RGB: as is for 3; for 1 only when R = G = B everywhere (grey saved as RGB);
- RGBA: as is for 4; for 3 only when alpha is fully opaque (then dropped);
- a multi-channel TIFF of C channels: only for C channels.

Pixel types: uint8, uint16 and float32/64 (float: finite values only).
Intensity (`data.intensity`): `range` divides by the type's maximum (float
images must already lie in [0, 1]); `percentile` maps each image's channel
percentiles `low`..`high` to 0..1 (for 16-bit microscopy, whose useful range
is often a small part of 0..65535).
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
JPEG_EXTENSIONS = (".jpg", ".jpeg")


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
        "image's size"
    )


def _unreadable(path: str | Path, why: str = "") -> ValueError:
    detail = f": {why}" if why else ""
    return ValueError(
        f"{path}: cannot be read as an image (unreadable, truncated or not an image{detail})"
    )


def read_array(path: str | Path) -> np.ndarray:
    """Decode a file as stored: `[H, W]` or `[H, W, C]`, colour in RGB(A) order.

    TIFF goes through tifffile (any channel count, planar or interleaved);
    other formats through OpenCV, with Pillow for what OpenCV cannot read (GIF).
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_EXTENSIONS:
        return _read_tiff(path)
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        array = _read_with_pillow(path)
    elif array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    return array


def _read_tiff(path: Path) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
    except Exception as err:  # noqa: BLE001 - tifffile raises many types for broken files
        # compressions tifffile needs extra codecs for (LZW, as OpenCV writes): try OpenCV
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise _unreadable(path, f"{type(err).__name__}: {err}") from err
        if array.ndim == 3 and array.shape[2] in (3, 4):
            array = cv2.cvtColor(
                array, cv2.COLOR_BGR2RGB if array.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
            )
        return array
    if axes in ("YX", "YXS"):
        return array
    if axes == "CYX" or (axes == "SYX" and array.ndim == 3):
        return np.moveaxis(array, 0, -1)  # planar -> [H, W, C]
    if array.ndim == 2:
        return array
    raise ValueError(
        f"{path}: TIFF with axes {axes!r} and shape {array.shape}: expected one 2-D image "
        "(YX), with channels (YXS or CYX); stacks and volumes must be split into slices"
    )


def _read_with_pillow(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                return np.asarray(im)
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for broken files
        raise _unreadable(path) from err


def read_image(path: str | Path, in_channels: int) -> np.ndarray:
    """An image as `[H, W, in_channels]`, following the rules in this module's docstring."""
    fix = "set data.in_channels={channels}"
    return fit_channels(read_array(path), in_channels, str(path), fix)


def fit_channels(
    image: np.ndarray, in_channels: int, name: str, fix: str = "set data.in_channels={channels}"
) -> np.ndarray:
    """Check pixel type and values, then give `[H, W(, C)]` exactly `in_channels` channels.

    The conversions are the module docstring's; anything else raises a ValueError
    that names the image (`name`) and ends with `fix` (`{channels}` is filled in).
    Float images must be finite and become float32.
    """
    if image.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise ValueError(
            f"{name}: pixel type {image.dtype} unsupported; expected 8 or 16 bit, or float"
        )
    if image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise ValueError(f"{name}: float image holds NaN or infinite values; fix the file")
        image = image.astype(np.float32, copy=False)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"{name}: expected [H, W] or [H, W, C], got shape {image.shape}")
    channels = image.shape[2]
    if channels == in_channels:
        return image
    if channels == 1 and in_channels == 3:
        return np.repeat(image, 3, axis=2)
    if channels == 3 and in_channels == 1 and (image[:, :, :1] == image).all():
        return image[:, :, :1]
    if channels == 4 and in_channels == 3:
        opaque = np.iinfo(image.dtype).max if image.dtype.kind == "u" else 1.0
        if (image[:, :, 3] == opaque).all():
            return image[:, :, :3]
        raise ValueError(
            f"{name}: RGBA image with transparent pixels, but data.in_channels=3; flatten "
            "the images onto a background, or set data.in_channels=4 to feed alpha to the net"
        )
    kind = {1: "grayscale", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}-channel")
    hint = fix.format(channels=channels)
    if channels == 3 and in_channels == 1:
        hint += " (the channels differ, so a grayscale conversion would be a guess)"
    raise ValueError(f"{name}: {kind} image but data.in_channels={in_channels}; {hint}")


def channel_kind(image: np.ndarray) -> tuple[str, int]:
    """What the channels of a decoded `[H, W(, C)]` image are, and how many it feeds a net.

    Returns:
        `(kind, channels)`: `grey` 1; `grey+alpha` (opaque: 1); `grey as RGB` (R = G = B) 1;
        `RGB` 3; `grey as RGBA` (R = G = B, opaque) 1; `RGBA` (opaque: 3, else 4);
        `C-channel` C. An alpha that carries transparency counts as a channel.
    """
    if image.ndim == 2 or image.shape[2] == 1:
        return "grey", 1
    channels = image.shape[2]
    opaque = _alpha_is_opaque(image) if channels in (2, 4) else False
    if channels == 2:
        return ("grey+alpha", 1) if opaque else ("grey+alpha (transparent)", 2)
    grey = channels in (3, 4) and bool((image[:, :, :1] == image[:, :, :3]).all())
    if channels == 3:
        return ("grey as RGB", 1) if grey else ("RGB", 3)
    if channels == 4:
        if opaque:
            return ("grey as RGBA", 1) if grey else ("RGBA", 3)
        return "RGBA (transparent)", 4
    return f"{channels}-channel", channels


def _alpha_is_opaque(image: np.ndarray) -> bool:
    """Whether the last channel of `[H, W, C]` is fully opaque (the dtype's maximum, or 1.0)."""
    opaque = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1.0
    return bool((image[:, :, -1] == opaque).all())


def to_unit_range(
    image: np.ndarray,
    mode: str = "range",
    low: float = 1.0,
    high: float = 99.0,
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> np.ndarray:
    """Intensities to [0, 1] as `data.intensity` says; uint8 in `range` mode stays uint8.

    Modes: `range` divides by the type's maximum; `percentile` maps each image's
    `low`..`high` percentiles to 0..1; `fixed` maps the pixel values `vmin`..`vmax`
    (the same for every image: the plan's dataset percentiles) to 0..1. Both clip.

    Returns uint8 (to be divided by 255 once, after augmentation) or float32 in [0, 1].
    Shape `[H, W, C]` kept.
    """
    if mode == "fixed":
        scale = np.float32(vmax - vmin) if vmax > vmin else np.float32(1.0)
        return np.clip((image.astype(np.float32) - np.float32(vmin)) / scale, 0.0, 1.0)
    if mode == "range":
        if image.dtype == np.uint8:
            return image
        if image.dtype == np.uint16:
            return image.astype(np.float32) / 65535.0
        if image.min() < 0 or image.max() > 1:
            raise ValueError(
                f"float image values span {image.min():.3g}..{image.max():.3g}, outside [0, 1]: "
                "set data.intensity.mode=percentile, or rescale the images"
            )
        return image.astype(np.float32, copy=False)
    if mode == "percentile":
        flat = image.reshape(-1, image.shape[2])
        flat = flat[:: max(1, len(flat) // 1_000_000)].astype(np.float32)  # <= ~1M samples
        lo, hi = np.percentile(flat, [low, high], axis=0)  # [C] each
        scale = np.where(hi > lo, hi - lo, 1.0)
        scaled = (image.astype(np.float32) - lo.astype(np.float32)) / scale.astype(np.float32)
        return np.clip(scaled, 0.0, 1.0)  # float32: np.percentile's float64 not carried on
    raise ValueError(f"data.intensity.mode={mode!r}: choose 'range', 'percentile' or 'fixed'")
