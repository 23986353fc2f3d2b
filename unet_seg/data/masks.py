"""Mask encodings: files on disk <-> class indices `0..K-1`, checked on load.

`data.mask_format` says how a mask file holds its classes:

- `values` (default): a single-channel image whose pixel values are listed in
  `data.mask_values`, one per class in class order: `[0, 255]` for binary
  0/255 masks, `[0, 1, 2]` for class-index images.
- `palette`: a palette (mode P) PNG; `data.mask_values` lists the palette
  index of each class.
- `rgb`: an RGB colour map; `data.mask_colors` lists the colour of each class.
- `folders`: one folder of binary masks per foreground class,
  `masks/<class name>/<stem>.png` (class 0, the background, has none); a pixel
  claimed by two classes is an error.
- `instances`: instance labels (0 = background, 1..N = objects, 8/16/32-bit),
  reduced to one foreground class.

Files are read by `unet_seg.data.readers.read_array` (8/16-bit PNG, TIFF, GIF,
BMP; upper-case extensions too). A mask stored as grey+alpha, or as RGB(A) with
R = G = B, counts as single-channel (the alpha is ignored); integer or whole
float masks of other pixel types (uint32, int16, float32 TIFF) are read when
their values lie in 0..65535. `palette` reads palette indices, whatever the
palette's colours or transparency. Masks that are (or were) JPEG files carry
compression noise and are refused with the advice to save them as PNG.

`data.ignore_value` marks pixels that carry no label (partly labelled images):
a pixel value for `values`, `palette` and `instances` (for `values` and instance labels
also a negative one such as -1, down to `LOWEST_VALUE` for `values`: label volumes often
mark unlabelled voxels -1; any other negative value is refused), an `[r, g, b]` colour for
`rgb`, and for `folders` the name of a folder of ignore masks
(`masks/<name>/<stem>.png`, non-zero = no label; an image without one is fully
labelled). Such pixels become `PAD_LABEL` (then `IGNORE_INDEX`), like padding:
no loss term, metric or foreground patch counts them.

Predictions are written back (`decode`) as mask values, palette indices or
colours; `folders` and `instances` come back as class-index images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from unet_seg.data.readers import (
    file_signature,
    is_image_file,
    is_jpeg_file,
    png_colour_type,
    read_array,
)

IGNORE_INDEX = -1
"""Class index of pixels that count for nothing (padding, `data.ignore_value`), in int64
target tensors."""

PAD_LABEL = 255
"""The same, while masks are uint8 index images (what `MaskEncoding.load` returns and the
augmentation pipeline sees)."""

MASK_FORMATS = ("values", "palette", "rgb", "folders", "instances")

LOWEST_VALUE = -32768
"""The lowest `data.ignore_value` of `values` masks (int16's): a negative ignore value (-1)
marks unlabelled voxels of signed label volumes; class values are 0..65535."""


class MaskEncoding:
    """How mask files map to class indices, and back.

    Args:
        mask_values: pixel value (or palette index) of each class, for `values`/`palette`.
        mask_format: one of `MASK_FORMATS`.
        mask_colors: RGB colour of each class, for `rgb`.
        class_names: one per class; `folders` reads `masks/<name>/` for classes 1..K-1.
        ignore_value: what marks unlabelled pixels (see the module docstring), or None.
    """

    def __init__(
        self,
        mask_values: Sequence[int] | None = None,
        mask_format: str = "values",
        mask_colors: Sequence[Sequence[int]] | None = None,
        class_names: Sequence[str] | None = None,
        ignore_value: int | Sequence[int] | str | None = None,
    ) -> None:
        if mask_format not in MASK_FORMATS:
            raise ValueError(
                f"data.mask_format={mask_format!r}: choose one of {list(MASK_FORMATS)}"
            )
        self.mask_format = mask_format
        self.class_names = list(class_names) if class_names else None
        self.mask_colors = [tuple(int(v) for v in c) for c in mask_colors] if mask_colors else None
        if mask_format == "rgb":
            self._check_colors()
            values = list(range(len(self.mask_colors)))
        elif mask_format == "folders":
            if not self.class_names or len(self.class_names) < 2:
                raise ValueError(
                    "data.mask_format=folders needs data.class_names, background first"
                )
            values = list(range(len(self.class_names)))
        elif mask_format == "instances":
            values = [0, 1]
        else:
            values = [int(v) for v in (mask_values or [])]
        if len(values) < 2 or len(set(values)) != len(values):
            raise ValueError(f"mask_values needs two or more distinct values, got {values}")
        if min(values) < 0 or max(values) > 65535:
            raise ValueError(f"mask_values must lie in 0..65535, got {values}")
        if len(values) > PAD_LABEL:
            raise ValueError(f"at most {PAD_LABEL} classes are supported, got {len(values)}")
        self.mask_values = values
        self.ignore_value = self._check_ignore(ignore_value)
        ignore = self.ignore_value if isinstance(self.ignore_value, int) else None
        if mask_format == "instances":
            ignore = None  # instance labels: read by `indices_of`, not the table
        # value v is at v + offset in the tables: a negative ignore value (-1) has a place
        self._offset = -min(0, ignore if ignore is not None else 0)
        self._lut = np.full(65536 + self._offset, PAD_LABEL, dtype=np.uint8)
        self._lut[np.asarray(values) + self._offset] = np.arange(len(values), dtype=np.uint8)
        self._known = np.zeros(65536 + self._offset, dtype=bool)  # values a mask may hold
        self._known[np.asarray(values) + self._offset] = True
        if ignore is not None:
            self._known[ignore + self._offset] = True  # and maps to PAD_LABEL

    def _check_ignore(
        self, value: int | Sequence[int] | str | None
    ) -> int | tuple[int, int, int] | str | None:
        """`data.ignore_value` in the form this format takes, refused when it is also a
        class (or of the wrong kind), naming the class."""
        if value is None:
            return None
        fmt, key = self.mask_format, f"data.ignore_value={value!r}"
        if fmt == "folders":
            if not isinstance(value, str) or not value or "/" in value:
                raise ValueError(f"{key}: with data.mask_format=folders it names the folder of "
                                 "ignore masks under masks/ (e.g. unlabelled)")  # fmt: skip
            if value in self.class_names:
                raise ValueError(f"{key} is also a class in data.class_names="
                                 f"{self.class_names}: name a folder of its own")  # fmt: skip
            return value
        if fmt == "rgb":
            if isinstance(value, str | int) or len(value) != 3:
                raise ValueError(f"{key}: with data.mask_format=rgb it is one colour [r, g, b]")
            color = tuple(int(v) for v in value)
            if color in self.mask_colors:
                name = self._class_name(self.mask_colors.index(color))
                raise ValueError(f"{key} is also the colour of class {name} in data.mask_colors="
                                 f"{[list(c) for c in self.mask_colors]}: the ignore colour "
                                 "must differ from every class colour")  # fmt: skip
            return color
        # instance labels and label values: also -1 and the like (signed label volumes)
        low = {"instances": -(2**31), "values": LOWEST_VALUE}.get(fmt, 0)
        if (
            isinstance(value, str | bytes)
            or not isinstance(value, int)
            or not low <= value <= 65535
        ):
            raise ValueError(f"{key}: with data.mask_format={fmt} it is one pixel value in "
                             f"{low}..65535 (an [r, g, b] colour needs mask_format=rgb; a "
                             "negative value, such as -1, marks unlabelled pixels of label "
                             "values, mask_format=values, or of instance labels, "
                             "mask_format=instances)")  # fmt: skip
        if fmt == "instances" and value == 0:
            raise ValueError(f"{key}: 0 is the background of instance labels; mark unlabelled "
                             "pixels with another value (e.g. 65535)")  # fmt: skip
        if fmt != "instances" and value in self.mask_values:
            name = self._class_name(self.mask_values.index(value))
            raise ValueError(f"{key} is also the value of class {name} in data.mask_values="
                             f"{self.mask_values}: the ignore value must differ from every "
                             "class value")  # fmt: skip
        return int(value)

    def _class_name(self, index: int) -> str:
        names = self.class_names
        return repr(names[index]) if names and index < len(names) else str(index)

    def _check_colors(self) -> None:
        colors = self.mask_colors
        if not colors or len(colors) < 2 or any(len(c) != 3 for c in colors):
            raise ValueError(
                f"data.mask_format=rgb needs data.mask_colors [[r, g, b], ...], got {colors}"
            )
        if len(set(colors)) != len(colors):
            raise ValueError(f"data.mask_colors must be distinct, got {colors}")

    @property
    def num_classes(self) -> int:
        return len(self.mask_values)

    # ---------------------------------------------------------------- reading

    def load(self, path: str | Path) -> np.ndarray:
        """Read the mask at `path` as uint8 class indices `[H, W]`, naming the file on error.

        For `folders`, `path` is `masks/<stem>`, and the files are `masks/<class>/<stem>.*`.
        """
        path = Path(path)
        if self.mask_format == "folders":
            return self._load_folders(path)
        if self.mask_format == "palette":
            return self.encode(read_palette_indices(path), path)
        try:
            return self.indices_of(read_array(path), path)
        except ValueError as err:
            if self.mask_format != "values" or not is_palette_file(path):
                raise
            raise ValueError(
                f"{err} {path.name} is a palette image: data.mask_format=palette reads its "
                "palette indices (data.mask_values then lists the index of each class)"
            ) from None

    def indices_of(self, array: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
        """A mask as `read_array` decodes it -> uint8 class indices `[H, W]`, for the
        `values`, `rgb` and `instances` formats (what `load` does after reading)."""
        if self.mask_format == "rgb":
            return self._encode_colors(array, path)
        array = single_channel(array, path)
        if self.mask_format == "instances":
            if array.dtype.kind not in "ui":
                raise ValueError(
                    f"{path}: instance labels must be integers, got {array.dtype}; save them as "
                    "16-bit PNG or 16/32-bit integer TIFF"
                )
            indices = (array > 0).astype(np.uint8)
            ignored = None if self.ignore_value is None else array == self.ignore_value
            if array.dtype.kind == "i":  # a negative id is the ignore value, or refused
                negative = array < 0
                if ignored is not None:
                    negative &= ~ignored
                if negative.any():
                    raise ValueError(
                        negative_ids_message(path, np.unique(array[negative]).tolist())
                    )
            if ignored is not None:
                indices[ignored] = PAD_LABEL
            return indices
        return self.encode(_whole_numbers(array, path), path)

    def encode(self, mask: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
        """Pixel values `[H, W]` (or `[Z, Y, X]`) -> uint8 class indices; unknown values raise,
        naming `path`. Takes 8/16-bit masks, and signed integers (`_whole_numbers` of label
        volumes holding -1)."""
        signed = mask.dtype.kind == "i"
        if mask.dtype not in (np.uint8, np.uint16) and not signed:
            raise ValueError(
                f"{path}: mask pixel type {mask.dtype} unsupported; expected 8 or 16 bit"
            )
        index, inside = mask, True
        if signed or self._offset:
            if mask.size:
                inside = bool(mask.min() >= -self._offset and mask.max() <= 65535)
            if inside:  # value v at v + offset
                index = mask.astype(np.int32) + np.int32(self._offset)
            else:  # values beyond the tables: a placeholder place, named below
                wide = mask.astype(np.int64) + self._offset
                index = np.where((wide >= 0) & (wide < len(self._lut)), wide, 0)
        indices = self._lut[index]
        if not inside or not self._known[index].all():
            found = np.unique(mask)
            unknown = [int(v) for v in found if not self._is_known(int(v))]
            jpeg = (
                " Masks saved as JPEG carry compression noise: save them as PNG."
                if looks_like_jpeg(mask, path)
                else ""
            )
            raise ValueError(
                f"{path}: mask values {unknown[:10]} are not in data.mask_values="
                f"{self.mask_values} (values found: {[int(v) for v in found[:20]]}). "
                "Set data.mask_values to the pixel value of each class in order "
                "(a 0/255 binary mask needs [0, 255]), or data.ignore_value to the value "
                f"of unlabelled pixels.{jpeg}"
            )
        return indices

    def _is_known(self, value: int) -> bool:
        """Whether pixel value `value` is a class value or the ignore value."""
        place = value + self._offset
        return 0 <= place < len(self._known) and bool(self._known[place])

    def objects_of(self, instances: np.ndarray) -> np.ndarray:
        """Instance labels `[H, W]` as the weight map and object counts take them: with
        `mask_format=instances`, the ignore value (unlabelled, not an object) made 0."""
        if self.mask_format != "instances" or self.ignore_value is None:
            return instances
        return np.where(instances == self.ignore_value, 0, instances).astype(instances.dtype)

    def _encode_colors(self, array: np.ndarray, path: Path) -> np.ndarray:
        if array.ndim != 3 or array.shape[2] not in (3, 4) or array.dtype != np.uint8:
            raise ValueError(
                f"{path}: data.mask_format=rgb needs 8-bit RGB masks, "
                f"got shape {array.shape}, {array.dtype}"
            )
        codes = pack_rgb(array)  # [H, W]
        palette = pack_rgb(np.array(self.mask_colors))
        order = np.argsort(palette)
        pos = np.clip(np.searchsorted(palette[order], codes), 0, len(palette) - 1)
        known = palette[order][pos] == codes
        ignored = None
        if self.ignore_value is not None:
            ignored = codes == pack_rgb(np.array(self.ignore_value))
            known |= ignored
        if not known.all():
            bad = np.unique(codes[~known])[:10]
            colors = [list(unpack_rgb(c)) for c in bad]
            raise ValueError(
                f"{path}: colours {colors} are not in "
                f"data.mask_colors={[list(c) for c in self.mask_colors]}; "
                "add them (one colour per class), set data.ignore_value to the colour of "
                "unlabelled pixels, or save the masks without anti-aliasing or JPEG"
            )
        indices = order[pos].astype(np.uint8)
        if ignored is not None:
            indices[ignored] = PAD_LABEL
        return indices

    def _load_folders(self, path: Path) -> np.ndarray:
        indices: np.ndarray | None = None
        for c, name in enumerate(self.class_names[1:], start=1):
            file = class_mask_file(path.parent, name, path.name)
            binary = single_channel(read_array(file), file) > 0
            if indices is None:
                indices = np.zeros(binary.shape, np.uint8)
            elif binary.shape != indices.shape:
                raise ValueError(
                    f"{file}: {binary.shape[::-1]} differs from the other classes' masks"
                )
            clash = binary & (indices > 0)
            if clash.any():
                other = self.class_names[int(indices[clash][0])]
                raise ValueError(
                    f"{file}: {int(clash.sum())} pixels are claimed by both {other!r} "
                    f"and {name!r}; "
                    "folder masks must not overlap (one class per pixel)"
                )
            indices[binary] = c
        if self.ignore_value is not None:
            file = ignore_mask_file(path.parent, self.ignore_value, path.name)
            if file is not None:  # no ignore mask: every pixel is labelled
                ignored = single_channel(read_array(file), file) > 0
                if ignored.shape != indices.shape:
                    raise ValueError(
                        f"{file}: {ignored.shape[::-1]} differs from the classes' masks"
                    )
                indices[ignored] = PAD_LABEL
        return indices

    # ---------------------------------------------------------------- writing

    def write(
        self, folder: Path, stem: str, indices: np.ndarray, palette: list[int] | None = None
    ) -> Path:
        """Class indices `[H, W]` -> a mask file of this format in `folder`, read back by
        `load` as the same indices; returns the (first) file written.

        `values`/`palette`: `<stem>.png` holding the class values (as palette indices when
        `palette`, a 768-entry RGB list, is given: see `writes_palette`); `rgb`: colours;
        `folders`: `<class>/<stem>.png` of 0/255 per foreground class; `instances`: the
        8-connected foreground objects numbered 1..N.
        """
        folder = Path(folder)
        if self.mask_format == "folders":  # masks/<class>/<stem>.png, 0/255 each
            files = [
                write_png(folder / name / f"{stem}.png", (indices == c).astype(np.uint8) * 255)
                for c, name in enumerate(self.class_names[1:], start=1)
            ]
            return files[0]
        target = folder / f"{stem}.png"
        if self.mask_format == "instances":
            return write_png(target, instance_labels(indices))
        return write_png(target, self.decode(indices), palette)

    def writes_palette(self, option: bool | str = "auto") -> bool:
        """Whether masks are written as palette PNGs: `auto` for palette masks and for mask
        values of more than two classes below 256 (read back with mask_format=palette);
        `True` is refused where a palette cannot hold the values."""
        values = self.mask_values
        if option == "auto":
            return self.mask_format == "palette" or (
                self.mask_format == "values" and len(values) > 2 and max(values) < 256
            )
        if option and (self.mask_format not in ("values", "palette") or max(values) > 255):
            raise ValueError(
                f"palette=true needs data.mask_format values or palette with values below 256, "
                f"got {self.mask_format} {values}"
            )
        return bool(option)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Class indices `[H, W]` -> what a mask file of this format holds.

        `values`/`palette`: the class values (uint8 when they fit, else uint16);
        `rgb`: colours `[H, W, 3]` uint8 RGB; `folders`/`instances`: the indices.
        """
        if self.mask_format == "rgb":
            return np.asarray(self.mask_colors, dtype=np.uint8)[indices]
        dtype = np.uint8 if max(self.mask_values) < 256 else np.uint16
        return np.asarray(self.mask_values, dtype=dtype)[indices]


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Colours `[..., 3+]` (extra channels ignored) -> one int64 code each, `r << 16 | g << 8
    | b`: the one packing of colour masks (their encoding and the fingerprint)."""
    rgb = np.asarray(rgb)[..., :3].astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def unpack_rgb(code: int) -> tuple[int, int, int]:
    """A `pack_rgb` code -> `(r, g, b)`."""
    return int(code) >> 16, (int(code) >> 8) & 255, int(code) & 255


def write_png(path: Path, array: np.ndarray, palette: list[int] | None = None) -> Path:
    """Write `[H, W]` (8/16-bit) or RGB `[H, W, 3]` as a PNG; with `palette`, a palette PNG
    whose pixel indices are the `[H, W]` uint8 values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette is not None:
        image = Image.fromarray(array)  # mode L
        image.putpalette(palette)  # now mode P: the indices are the values
        image.save(path)
        return path
    if array.ndim == 3:
        array = np.ascontiguousarray(array[:, :, ::-1])  # RGB -> BGR for OpenCV
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")
    return path


def instance_labels(labels: np.ndarray) -> np.ndarray:
    """Foreground `[H, W]` -> its 8-connected objects numbered 1..N (uint8, or uint16 past 255)."""
    count, objects = cv2.connectedComponents((labels > 0).astype(np.uint8), connectivity=8)
    return objects.astype(np.uint8 if count <= 256 else np.uint16)


def negative_ids_message(path: str | Path, values: Sequence[int]) -> str:
    """The refusal of instance labels holding negative values (that are not the ignore value)."""
    return (
        f"{path}: instance labels hold negative values {list(values)[:5]}: 0 is background and "
        f"1..N are objects. If {values[0]} marks unlabelled pixels, set data.ignore_value="
        f"{values[0]}; otherwise save the labels without negative values"
    )


def class_mask_file(masks_dir: Path, class_name: str, name: str) -> Path:
    """The mask of `class_name` for the image whose mask name is `name`, under `masks_dir`."""
    folder = masks_dir / class_name
    files = folder.iterdir() if folder.is_dir() else ()
    matches = sorted(p for p in files if p.stem == name and is_image_file(p))
    if not matches:
        raise FileNotFoundError(
            f"{folder}/{name}.*: missing; data.mask_format=folders needs one mask per image "
            f"in every class folder ({folder})"
        )
    return matches[0]


def ignore_mask_file(masks_dir: Path, folder: str, name: str) -> Path | None:
    """The ignore mask `masks_dir/<folder>/<name>.*` of `data.mask_format=folders`, or None
    when the image has none (it is then labelled everywhere); the folder must exist."""
    if not (masks_dir / folder).is_dir():
        raise FileNotFoundError(
            f"{masks_dir / folder} does not exist: data.ignore_value={folder!r} names the "
            f"folder of ignore masks under {masks_dir} (non-zero = no label)"
        )
    matches = sorted(p for p in (masks_dir / folder).iterdir()
                     if p.stem == name and is_image_file(p))  # fmt: skip
    return matches[0] if matches else None


def single_channel(array: np.ndarray, path: str | Path) -> np.ndarray:
    """`[H, W]`, `[H, W, 1]`, grey+alpha, or RGB(A) with R = G = B -> `[H, W]` (alpha ignored)."""
    if array.ndim == 3:
        if array.shape[2] in (1, 2):
            return array[:, :, 0]
        if array.shape[2] in (3, 4) and (array[:, :, :1] == array[:, :, :3]).all():
            return array[:, :, 0]
        raise ValueError(
            f"{path}: mask has {array.shape[2]} differing colour channels; use "
            "data.mask_format=rgb with data.mask_colors, or palette for palette PNGs"
        )
    return array


def _whole_numbers(mask: np.ndarray, path: str | Path) -> np.ndarray:
    """uint8/uint16 as they are; other integer or float masks as uint16 when every value is a
    whole number in 0..65535 (uint32 or float32 TIFFs of class values), as int32 when some
    are negative down to `LOWEST_VALUE` (-1 for unlabelled voxels: `encode` takes them when
    it is the ignore value, and names them otherwise), else refused."""
    if mask.dtype in (np.uint8, np.uint16) or mask.dtype.kind not in "uif" or mask.size == 0:
        return mask  # `encode` names types it cannot take
    lo, hi = mask.min(), mask.max()
    whole = mask.dtype.kind in "ui" or bool(np.isfinite([lo, hi]).all())
    if whole and mask.dtype.kind == "f":
        whole = bool((mask == np.round(mask)).all())
    if whole and lo >= LOWEST_VALUE and hi <= 65535:
        return mask.astype(np.uint16 if lo >= 0 else np.int32)
    raise ValueError(
        f"{path}: mask pixel type {mask.dtype} with values {lo:.6g}..{hi:.6g}; masks must hold "
        f"whole numbers 0..65535 (and {LOWEST_VALUE}..-1 for a data.ignore_value such as -1): "
        "save them as 8 or 16-bit PNG or TIFF"
    )


def looks_like_jpeg(mask: np.ndarray, path: str | Path | None = None) -> bool:
    """Whether a mask is, or once was, a JPEG: the file holds JPEG data, or its 8-bit
    values are a few dominant ones with compression noise around them (noise values near
    a dominant value, scattered single pixels along region edges rather than regions or
    lines of their own). Lossless label images (16-bit instance labels, class indices) are not
    called JPEG however many distinct values they hold.
    """
    if path is not None and is_jpeg_file(path):
        return True
    if mask.dtype != np.uint8 or mask.ndim != 2 or mask.size == 0:
        return False  # JPEG decodes to 8 bits
    values, counts = np.unique(mask, return_counts=True)
    major = counts >= 0.02 * mask.size
    dominant, others, other_counts = values[major], values[~major], counts[~major]
    noise_pixels = int(other_counts.sum())
    if not len(dominant) or len(others) < 3 or noise_pixels > 0.3 * mask.size:
        return False
    gap = np.abs(others[:, None].astype(int) - dominant[None, :].astype(int)).min(axis=1)
    if other_counts[gap <= 48].sum() < 0.9 * noise_pixels:
        return False
    padded = np.pad(mask, 1, mode="edge")
    interior = (
        (padded[1:-1, :-2] == mask) & (padded[1:-1, 2:] == mask)
        & (padded[:-2, 1:-1] == mask) & (padded[2:, 1:-1] == mask)
    )  # fmt: skip
    noise = ~np.isin(mask, dominant)
    if interior[noise].mean() >= 0.2:
        return False
    if mask.max() < 32:  # class indices (CamVid's 0..11): a rare class drawn thin (a pole,
        # one to three pixels wide) has no interior, but its pixels lie next to their own
        # value, where JPEG noise is scattered
        touching = (
            (padded[1:-1, :-2] == mask) | (padded[1:-1, 2:] == mask)
            | (padded[:-2, 1:-1] == mask) | (padded[2:, 1:-1] == mask)
        )  # fmt: skip
        return bool(touching[noise].mean() < 0.5)
    return True


def is_palette_file(path: str | Path) -> bool:
    """Whether `path` is a palette image (a PNG of colour type 3, or a GIF): its pixels are
    palette indices."""
    return png_colour_type(path) == 3 or file_signature(path, 4) == b"GIF8"


def read_palette_indices(path: str | Path) -> np.ndarray:
    """The palette indices `[H, W]` of a palette (mode P) image, whatever its palette's colours
    or transparency (a grayscale image is taken as its own indices); errors name `path`."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "PA", "L"):
                raise ValueError(
                    f"{path}: data.mask_format=palette needs palette (mode P) PNGs, "
                    f"got mode {im.mode}; use data.mask_format=values (or rgb for colour maps)"
                )
            indices = np.asarray(im)
            return indices[:, :, 0] if indices.ndim == 3 else indices
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for broken files
        raise ValueError(f"{path}: cannot be read as a palette mask ({err})") from err
