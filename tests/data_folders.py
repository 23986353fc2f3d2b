"""Random image/mask folders for the property test of the data path (tests/test_data_property.py).

A folder is described by a `FolderSpec` (hypothesis draws it with `folder_specs()`) and written
by `write_spec`: images as PNG, TIFF, JPEG or GIF (uint8, uint16 over any sub-range, float32;
grey, grey+alpha, RGB, RGBA, palettes; sizes down to 8x8), masks holding class values, colours,
palette indices, instance ids with gaps or negative ids, an ignore value, empty masks, and now
and then a user's mistake (a missing or mis-sized mask, a JPEG mask, a broken file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import tifffile
from hypothesis import strategies as st
from PIL import Image

IMAGE_KINDS = ("grey", "grey_alpha", "rgb", "rgba", "grey_rgb", "palette")
MASK_KINDS = ("binary01", "binary255", "classes", "sparse_values", "rgb", "palette",
              "instances", "negative_ids")  # fmt: skip
FAULTS = ("missing_mask", "orphan_mask", "mask_size", "broken_image", "text_file", "jpeg_mask",
          "tiny_image")  # fmt: skip


@dataclass
class ImageSpec:
    """One image and its mask."""

    kind: str  # IMAGE_KINDS
    ext: str  # png, tif, jpg, gif
    dtype: str  # uint8, uint16, float32
    low: float  # the pixel range the content spans
    high: float
    height: int
    width: int
    alpha_opaque: bool
    mask_ext: str
    empty_mask: bool
    seed: int


@dataclass
class FolderSpec:
    """A folder: its images, one mask encoding, the overrides given to both commands."""

    images: list[ImageSpec]
    mask_kind: str  # MASK_KINDS
    num_values: int  # classes or objects
    ignore: bool  # a 255 (or white) border marked data.ignore_value
    mask_suffix: str
    faults: list[str] = field(default_factory=list)
    give_suffix: bool = True  # data.mask_suffix typed (else left to the plan)

    @property
    def ignore_value(self) -> int | list[int]:
        """The value of unlabelled pixels: white, or 128 where 255 is a class."""
        return [255, 255, 255] if self.mask_kind == "rgb" else (
            128 if self.mask_kind == "binary255" else 255)  # fmt: skip

    @property
    def valid(self) -> bool:
        """Whether the folder should train: no mistake in it and enough images for the three
        splits (a mask suffix need not be typed: data=auto finds it). Objects numbered -1,
        -2, ... are a mistake: only the ignore value may be negative, and the refusal names
        each mask and the fix."""
        return not self.faults and len(self.images) >= 3 and self.mask_kind != "negative_ids"

    def overrides(self) -> list[str]:
        """The data keys a user would type for this folder besides data.root."""
        args = []
        if self.ignore:
            args.append(f"data.ignore_value={self.ignore_value}".replace(" ", ""))
        if self.mask_suffix and self.give_suffix:
            args.append(f"data.mask_suffix={self.mask_suffix}")
        return args


# ------------------------------------------------------------------ strategies


def _formats(kind: str, dtype: str) -> list[str]:
    """The file formats that can hold this kind of image at this pixel type."""
    if dtype == "float32":
        return ["tif"]
    if dtype == "uint16":
        return ["tif"] if kind in ("grey_alpha", "palette") else ["png", "tif"]
    if kind == "palette":
        return ["png", "gif"]
    if kind in ("grey_alpha", "rgba"):
        return ["png", "tif", "PNG", "tiff"]
    return ["png", "tif", "jpg", "gif", "bmp", "jpeg", "TIF"] if kind in ("grey", "grey_rgb") else [
        "png", "tif", "jpg", "bmp", "PNG"]  # fmt: skip


@st.composite
def image_specs(draw, kind: str, dtype: str, size: tuple[int, int], mask_ext: str) -> ImageSpec:
    ext = draw(st.sampled_from(_formats(kind, dtype)))
    if dtype == "uint16":
        low = draw(st.integers(0, 60000))
        span = draw(st.sampled_from([1, 300, 5000, 65535]))
        high = draw(st.integers(low, min(65535, low + span)))
    elif dtype == "float32":
        low, high = draw(st.sampled_from([(0.0, 1.0), (0.0, 0.01), (-3.0, 7.5), (100.0, 4000.0)]))
    else:
        low = draw(st.integers(0, 255))
        high = draw(st.integers(low, 255))
    return ImageSpec(kind=kind, ext=ext, dtype=dtype, low=float(low), high=float(high),
                     height=size[0], width=size[1], alpha_opaque=draw(st.booleans()),
                     mask_ext=mask_ext, empty_mask=draw(st.integers(0, 5)) == 0,
                     seed=draw(st.integers(0, 2**16)))  # fmt: skip


def _mask_formats(kind: str) -> list[str]:
    """Mask file formats; `png1` (1-bit), `png16` (16-bit) and `pnga` (RGBA) are PNG files."""
    if kind in ("instances", "negative_ids"):
        return ["tif"] if kind == "negative_ids" else ["png", "tif"]
    if kind == "palette":
        return ["png", "gif"]
    if kind == "rgb":
        return ["png", "tif", "pnga", "bmp"]
    if kind in ("binary01", "binary255"):
        return ["png", "tif", "gif", "png1", "bmp"]
    return ["png", "tif", "gif", "png16"]


@st.composite
def folder_specs(draw) -> FolderSpec:
    """A random folder: 2-6 images of one or mixed kinds and sizes, masks of one encoding."""
    n = draw(st.sampled_from([3, 4, 5, 6, 2]))  # 2: too few for train, val and test splits
    mask_kind = draw(st.sampled_from(MASK_KINDS))
    mask_ext = draw(st.sampled_from(_mask_formats(mask_kind)))
    mixed = draw(st.integers(0, 3)) == 0  # images of several kinds, types and sizes
    kind = draw(st.sampled_from(IMAGE_KINDS))
    dtype = draw(st.sampled_from(["uint8", "uint8", "uint16", "float32"]))
    size = (draw(st.integers(8, 64)), draw(st.integers(8, 64)))
    images = []
    for _ in range(n):
        if mixed:
            kind = draw(st.sampled_from(IMAGE_KINDS))
            dtype = draw(st.sampled_from(["uint8", "uint16", "float32"]))
            size = (draw(st.integers(8, 64)), draw(st.integers(8, 64)))
        if kind == "palette" or (kind in ("grey_alpha",) and dtype == "float32"):
            dtype = "uint8" if kind == "palette" else dtype
        images.append(draw(image_specs(kind, dtype, size, mask_ext)))
    faults = draw(st.lists(st.sampled_from(FAULTS), max_size=2, unique=True))
    if draw(st.integers(0, 2)) > 0:
        faults = []  # most folders are valid
    num_values = draw(st.integers(2, 6)) if mask_kind != "instances" else draw(st.integers(1, 8))
    return FolderSpec(images=images, mask_kind=mask_kind, num_values=num_values,
                      ignore=draw(st.integers(0, 4)) == 0,
                      mask_suffix=draw(st.sampled_from(["", "", "", "_mask"])),
                      faults=faults, give_suffix=draw(st.booleans()))  # fmt: skip


# ------------------------------------------------------------------ writing


def _content(spec: ImageSpec, rng: np.random.Generator) -> np.ndarray:
    """Grey content in [0, 1]: a gradient, noise and bright boxes, [H, W] float64."""
    h, w = spec.height, spec.width
    base = np.linspace(0, 0.4, w)[None, :] + rng.random((h, w)) * 0.2
    for _ in range(3):
        y, x = rng.integers(0, h), rng.integers(0, w)
        base[y : y + h // 3 + 1, x : x + w // 3 + 1] += 0.4
    return np.clip(base, 0, 1)


def _scale(unit: np.ndarray, spec: ImageSpec) -> np.ndarray:
    values = spec.low + unit * (spec.high - spec.low)
    if spec.dtype == "float32":
        return values.astype(np.float32)
    return np.round(values).astype(spec.dtype)


def _image_array(spec: ImageSpec, rng: np.random.Generator) -> np.ndarray:
    grey = _content(spec, rng)
    if spec.kind in ("grey", "palette"):
        return _scale(grey, spec)
    top = {"uint8": 255, "uint16": 65535, "float32": 1.0}[spec.dtype]
    alpha = np.full(grey.shape, top, spec.dtype)
    if not spec.alpha_opaque:
        alpha[: max(1, spec.height // 4)] = 0 if spec.dtype != "float32" else 0.25
    if spec.kind == "grey_alpha":
        return np.dstack([_scale(grey, spec), alpha])
    if spec.kind == "grey_rgb":
        return np.dstack([_scale(grey, spec)] * 3)
    rgb = np.dstack([_scale(grey, spec), _scale(grey[:, ::-1], spec), _scale(1 - grey, spec)])
    return rgb if spec.kind == "rgb" else np.dstack([rgb, alpha])


def write_image(path: Path, array: np.ndarray, kind: str) -> Path:
    """Write an image array (RGB(A) channel order) in the format of `path`'s extension."""
    ext = path.suffix.lower()
    if kind == "palette":
        im = Image.fromarray(array.astype(np.uint8), "L").convert("RGB")
        im.quantize(colors=16).save(path)
        return path
    if ext in (".tif", ".tiff"):
        photometric = "rgb" if array.ndim == 3 and array.shape[2] in (3, 4) else "minisblack"
        extras = {"extrasamples": ["unassalpha"]} if array.ndim == 3 and array.shape[2] in (
            2, 4) else {}  # fmt: skip
        tifffile.imwrite(path, array, photometric=photometric, **extras)
        return path
    if ext == ".gif":
        mode = "L" if array.ndim == 2 else "RGB"
        Image.fromarray(array.astype(np.uint8), mode).save(path)
        return path
    if array.ndim == 3 and array.shape[2] == 2:  # grey+alpha PNG: Pillow's LA mode
        Image.fromarray(array.astype(np.uint8), "LA").save(path)
        return path
    if array.ndim == 3:
        order = cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        array = cv2.cvtColor(array, order)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"cannot write {path}")
    return path


COLOURS = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 128, 255),
           (128, 0, 128)]  # fmt: skip


def _mask_array(folder: FolderSpec, spec: ImageSpec, rng: np.random.Generator) -> np.ndarray:
    """The mask of one image: labels as the folder's encoding stores them."""
    h, w, k = spec.height, spec.width, folder.num_values
    labels = np.zeros((h, w), np.int64)  # 0 = background, 1.. = class or object
    if not spec.empty_mask:
        count = k if folder.mask_kind in ("instances", "negative_ids") else k - 1
        for i in range(1, count + 1):
            y, x = rng.integers(0, h), rng.integers(0, w)
            labels[y : y + max(2, h // 4), x : x + max(2, w // 4)] = i
    kind = folder.mask_kind
    if kind == "rgb":
        out = np.zeros((h, w, 3), np.uint8)
        for i in range(1, k):
            out[labels == i] = COLOURS[i]
        if folder.ignore:
            out[0, :] = folder.ignore_value
        return out
    if kind == "binary01":
        out = (labels > 0).astype(np.uint8)
    elif kind == "binary255":
        out = (labels > 0).astype(np.uint8) * 255
    elif kind == "classes":
        out = labels.astype(np.uint8)
    elif kind == "sparse_values":
        values = np.array([0, 30, 60, 90, 120, 150, 200])
        out = values[labels].astype(np.uint8)
    elif kind == "palette":
        out = labels.astype(np.uint8)
    elif kind == "instances":  # object ids with gaps, as crops of a big labelled image
        ids = np.concatenate([[0], np.sort(rng.choice(np.arange(1, 400), k, replace=False))])
        out = ids[labels].astype(np.uint16)
    else:  # negative_ids: background 0, objects numbered -1, -2, ... (int16/int32 TIFF)
        out = (-labels).astype(np.int32 if spec.seed % 2 else np.int16)
    if folder.ignore:
        out[0, :] = folder.ignore_value
    return out


def write_mask(path: Path, mask: np.ndarray, kind: str) -> Path:
    ext = path.suffix.lower()
    if ext in (".png1", ".png16", ".pnga"):  # PNG variants: 1-bit, 16-bit, RGBA
        path = path.with_suffix(".png")
        if ext == ".png1":
            Image.fromarray(mask > 0).save(path)  # mode "1"
            return path
        if ext == ".png16":
            mask = mask.astype(np.uint16)
        elif mask.ndim == 3:
            mask = np.dstack([mask, np.full(mask.shape[:2], 255, np.uint8)])
            cv2.imwrite(str(path), cv2.cvtColor(mask, cv2.COLOR_RGBA2BGRA))
            return path
    if kind == "palette":
        im = Image.fromarray(mask.astype(np.uint8), "P")
        im.putpalette([c for rgb in COLOURS + [(255, 255, 255)] * 249 for c in rgb][:768])
        (im.convert("RGB") if ext == ".jpg" else im).save(path)  # JPEG holds no palette
        return path
    if ext == ".tif":
        tifffile.imwrite(path, mask, photometric="rgb" if mask.ndim == 3 else "minisblack")
        return path
    if ext == ".gif":
        mode = "L" if mask.ndim == 2 else "RGB"
        Image.fromarray(mask.astype(np.uint8), mode).save(path)
        return path
    if mask.ndim == 3:
        mask = cv2.cvtColor(mask, cv2.COLOR_RGB2BGR)
    if ext == ".jpg":
        cv2.imwrite(str(path), mask, [cv2.IMWRITE_JPEG_QUALITY, 60])
        return path
    if not cv2.imwrite(str(path), mask):
        raise OSError(f"cannot write {path}")
    return path


def write_spec(folder: FolderSpec, root: Path) -> Path:
    """Write the folder under root/images and root/masks; return root."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i, spec in enumerate(folder.images):
        rng = np.random.default_rng(spec.seed)
        if "tiny_image" in folder.faults and i == 0:
            spec.height, spec.width = 3, 5
        image = write_image(root / "images" / f"im{i}.{spec.ext}", _image_array(spec, rng),
                            spec.kind)  # fmt: skip
        if "broken_image" in folder.faults and i == len(folder.images) - 1:
            image.write_bytes(b"not an image")
        if "missing_mask" in folder.faults and i == 0:
            continue
        mask = _mask_array(folder, spec, rng)
        if "mask_size" in folder.faults and i == 1:
            mask = mask[: max(1, mask.shape[0] - 2)]
        ext = "jpg" if "jpeg_mask" in folder.faults and i == 0 else spec.mask_ext
        write_mask(root / "masks" / f"im{i}{folder.mask_suffix}.{ext}", mask, folder.mask_kind)
    if "orphan_mask" in folder.faults:
        cv2.imwrite(str(root / "masks" / "stray.png"), np.zeros((8, 8), np.uint8))
    if "text_file" in folder.faults:
        (root / "images" / "notes.txt").write_text("notes")
    return root
