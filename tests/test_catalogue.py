"""A catalogue of odd inputs, each written as a tiny dataset by the test itself.

Every case either trains (one training batch from `SegDataModule`, finite
float32 patches of the asked channel count, and masks of exactly the expected
classes) or is refused with an error that names the offending file and holds
the fix. The checks before training (`check_pairs` inside `setup`,
`inspect_folder` behind `check_data`) must agree with the loader: the channel
count they report is one the loader takes, and they refuse what it refuses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unet_seg.data.checks import inspect_folder, read_header
from unet_seg.data.datamodule import SegDataModule
from unet_seg.data.dataset import list_images
from unet_seg.data.readers import read_image, to_unit_range

H, W = 32, 40
N = 4
AUGMENT = {"hflip": 0.5, "rotate90": 0.5,
           "affine": {"p": 0.5, "scale": [0.9, 1.1], "rotate": [-10, 10]},
           "brightness_contrast": {"p": 0.5}}  # fmt: skip
SETTINGS = {"in_channels": 1, "num_classes": 2, "class_names": ["background", "foreground"],
            "mask_values": [0, 255], "crop_size": 16, "batch_size": 2, "num_workers": 0,
            "val_fraction": 0.25, "test_fraction": 0.25, "augment": AUGMENT}  # fmt: skip


# ---------------------------------------------------------------- writing fixtures


def grey(i: int, dtype=np.uint8, top: int = 255) -> np.ndarray:
    """A `[H, W]` ramp with a bright square, different for each `i`, spanning 0..top."""
    rng = np.random.default_rng(i)
    image = rng.random((H, W)) * 0.5
    image[4 + i : 16 + i, 6 + 2 * i : 22 + 2 * i] += 0.5
    return np.round(image * top).astype(dtype)


def colour(i: int) -> np.ndarray:
    """A `[H, W, 3]` uint8 RGB image whose channels differ."""
    g = grey(i)
    return np.dstack([g, 255 - g, g // 2])


def square(i: int, values: tuple[int, ...] = (0, 255), dtype=np.uint8) -> np.ndarray:
    """A `[H, W]` mask: background `values[0]`, then one rectangle of each further value."""
    mask = np.full((H, W), values[0], dtype)
    for k, value in enumerate(values[1:]):
        y, x = 2 + 9 * k, 3 + 2 * i + 6 * k
        mask[y : y + 8, x : x + 12] = value
    return mask


def save(path: Path, array: np.ndarray, **pillow) -> None:
    """`[H, W]` / `[H, W, C]` (RGB order) to PNG, JPEG or BMP via OpenCV, TIFF via tifffile;
    with Pillow keywords (`mode=...`) through Pillow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if pillow:
        mode = pillow.pop("mode")
        Image.fromarray(array, mode).save(path, **pillow)
    elif path.suffix.lower() in (".tif", ".tiff"):
        tifffile.imwrite(path, array)
    else:
        if array.ndim == 3 and array.shape[2] in (3, 4):
            array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR if array.shape[2] == 3 else
                                 cv2.COLOR_RGBA2BGRA)  # fmt: skip
        assert cv2.imwrite(str(path), array), path


def folder(
    image: Callable[[int], np.ndarray] = grey,
    mask: Callable[[int], np.ndarray] = square,
    image_ext: str = ".png",
    mask_ext: str = ".png",
    image_kw: Callable[[int], dict] | None = None,
    mask_kw: Callable[[int], dict] | None = None,
    names: list[str] | None = None,
) -> Callable[[Path], None]:
    """A writer of `N` pairs `root/images/<name><image_ext>`, `root/masks/<name><mask_ext>`."""

    def write(root: Path) -> None:
        for i, name in enumerate(names or [f"img{k:02d}" for k in range(N)]):
            options = image_kw(i) if image_kw else {}
            save(root / "images" / f"{name}{image_ext}", image(i), **options)
            save(root / "masks" / f"{name}{mask_ext}", mask(i), **(mask_kw(i) if mask_kw else {}))

    return write


def then(*writers: Callable[[Path], None]) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        for w in writers:
            w(root)

    return write


def la(i: int, transparent: bool = False) -> np.ndarray:
    alpha = np.full((H, W), 255, np.uint8)
    if transparent:
        alpha[:5, :5] = 0
    return np.dstack([grey(i), alpha])


def rgba(i: int, grey_content: bool = False, transparent: bool = False) -> np.ndarray:
    rgb = np.repeat(grey(i)[:, :, None], 3, axis=2) if grey_content else colour(i)
    alpha = np.full((H, W), 255, np.uint8)
    if transparent:
        alpha[-4:, -4:] = 100
    return np.dstack([rgb, alpha])


def palette_image(path_kw: dict, grey_palette: bool = False) -> Callable[[Path], None]:
    """Writer of palette (mode P) PNG images: indices 0..3 under a colour or grey palette."""
    colours = [[0, 0, 0], [80, 80, 80], [160, 160, 160], [255, 255, 255]] if grey_palette else \
        [[0, 0, 0], [200, 30, 30], [30, 200, 30], [30, 30, 200]]  # fmt: skip
    flat = [v for c in colours for v in c] + [0] * (768 - 3 * len(colours))

    def write(root: Path) -> None:
        for i in range(N):
            im = Image.fromarray((grey(i) // 64).astype(np.uint8), "P")
            im.putpalette(flat)
            (root / "images").mkdir(parents=True, exist_ok=True)
            im.save(root / "images" / f"img{i:02d}.png", **path_kw)
            save(root / "masks" / f"img{i:02d}.png", square(i))

    return write


def instances(i: int, dtype=np.uint16) -> np.ndarray:
    """> 255 objects: one-pixel objects on a grid, each its own label (0 = background)."""
    labels = np.zeros((H, W), dtype)
    k = 0
    for y in range(0, H, 2):
        for x in range(0, W, 2):
            k += 1
            labels[y, x] = k + 1000 * i
    assert k > 255
    return labels


def float_image(i: int, nan: bool = False, scale: float = 1.0) -> np.ndarray:
    image = grey(i).astype(np.float32) / 255 * scale
    if nan:
        image[3, 3] = np.nan
    return image


def jpeg_masks(root: Path) -> None:
    (root / "masks").mkdir(parents=True)
    for i in range(N):
        save(root / "images" / f"img{i:02d}.png", grey(i))
        mask = square(i)
        cv2.imwrite(str(root / "masks" / f"img{i:02d}.jpg"), mask, [cv2.IMWRITE_JPEG_QUALITY, 70])


def one_mask(name: str, array: np.ndarray) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        save(root / "masks" / name, array)

    return write


def cmyk_jpegs(root: Path) -> None:
    for i in range(N):
        c = colour(i)
        cmyk = np.dstack([255 - c, np.zeros((H, W), np.uint8)])
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(cmyk, "CMYK").save(root / "images" / f"img{i:02d}.jpg", quality=95)
        save(root / "masks" / f"img{i:02d}.png", square(i))


def symlinked_images(root: Path) -> None:
    real = root.parent / "elsewhere"
    folder()(real)
    root.mkdir(parents=True)
    os.symlink(real / "images", root / "images", target_is_directory=True)
    os.symlink(real / "masks", root / "masks", target_is_directory=True)


def empty(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "images" / "notes.txt").write_text("the images are elsewhere")


def unlink(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).unlink()


def not_an_image(root: Path) -> None:
    (root / "images" / "img01.png").write_text("this is not a PNG")


def pages(count: int) -> Callable[[int], np.ndarray]:
    return lambda i: np.stack([np.roll(grey(i), k, axis=1) for k in range(count)])


def tiff_stack(count: int) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        for i in range(N):
            (root / "images").mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / "images" / f"img{i:02d}.tif", pages(count)(i),
                             photometric="minisblack")  # fmt: skip
            save(root / "masks" / f"img{i:02d}.png", square(i))

    return write


def class_folders(root: Path) -> None:
    for i in range(N):
        save(root / "images" / f"img{i:02d}.png", grey(i))
        save(root / "masks" / "cell" / f"img{i:02d}.PNG", square(i))
        nucleus = np.zeros((H, W), np.uint8)
        nucleus[-4:, -6:] = 255
        save(root / "masks" / "nucleus" / f"img{i:02d}.PNG", nucleus)


def palette_masks(root: Path) -> None:
    """Palette masks whose palette makes index 0 transparent: read as their indices."""
    (root / "masks").mkdir(parents=True)
    for i in range(N):
        save(root / "images" / f"img{i:02d}.png", grey(i))
        im = Image.fromarray(square(i, (0, 1, 2)), "P")
        im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
        im.save(root / "masks" / f"img{i:02d}.png", transparency=0)


# ---------------------------------------------------------------- the catalogue


@dataclass
class Case:
    """An odd input: `write(root)` makes it; `settings` override `SETTINGS`.

    Accepted: `channels` is the count the checks report for every image (what
    `data.in_channels` can be), `classes` the mask classes found over all images.
    Refused: `refused` = (the file named, the fix), regexes both; `late` when only
    the loader (not the checks) can see the problem.
    """

    id: str
    write: Callable[[Path], None]
    settings: dict = field(default_factory=dict)
    channels: int | None = None
    classes: set[int] | None = None
    refused: tuple[str, str] | None = None
    error: type[Exception] = ValueError
    late: bool = False


LA_KW = {"mode": "LA"}
CASES = [
    # --- channels
    Case("grey+alpha PNG, opaque", folder(image=la, image_kw=lambda i: LA_KW),
         channels=1, classes={0, 1}),
    Case("grey+alpha PNG, opaque, to 3 channels", folder(image=la, image_kw=lambda i: LA_KW),
         {"in_channels": 3}, channels=1, classes={0, 1}),
    Case("grey+alpha PNG with transparency",
         folder(image=lambda i: la(i, transparent=True), image_kw=lambda i: LA_KW),
         refused=(r"img\d\d\.png: 2-channel image but data.in_channels=1: grey\+alpha with "
                  r"transparent pixels", r"flatten the images onto a background, or set "
                  r"data.in_channels=2")),
    Case("grey+alpha PNG with transparency, alpha fed",
         folder(image=lambda i: la(i, transparent=True), image_kw=lambda i: LA_KW),
         {"in_channels": 2}, channels=2, classes={0, 1}),
    Case("grey RGBA, opaque", folder(image=lambda i: rgba(i, grey_content=True)),
         channels=1, classes={0, 1}),
    Case("grey RGBA, opaque, to 3 channels", folder(image=lambda i: rgba(i, grey_content=True)),
         {"in_channels": 3}, channels=1, classes={0, 1}),
    Case("grey RGBA with transparency",
         folder(image=lambda i: rgba(i, grey_content=True, transparent=True)),
         refused=(r"img\d\d\.png: grey RGBA image with transparent pixels",
                  r"flatten the images onto a background, or set data.in_channels=2")),
    Case("grey RGB", folder(image=lambda i: np.repeat(grey(i)[:, :, None], 3, axis=2)),
         channels=1, classes={0, 1}),
    Case("RGBA, opaque", folder(image=rgba), {"in_channels": 3}, channels=3, classes={0, 1}),
    Case("RGBA with transparency", folder(image=lambda i: rgba(i, transparent=True)),
         {"in_channels": 3},
         refused=(r"img\d\d\.png: RGBA image with transparent pixels",
                  r"flatten the images onto a background, or set data.in_channels=4")),
    Case("palette image", palette_image({}), {"in_channels": 3}, channels=3, classes={0, 1}),
    Case("palette image, grey palette", palette_image({}, grey_palette=True),
         channels=1, classes={0, 1}),
    Case("palette image with transparency", palette_image({"transparency": 0}),
         {"in_channels": 3},
         refused=(r"img\d\d\.png: RGBA image with transparent pixels",
                  r"set data.in_channels=4")),
    Case("palette image with transparency, alpha fed", palette_image({"transparency": 0}),
         {"in_channels": 4}, channels=4, classes={0, 1}),
    Case("CMYK JPEG", cmyk_jpegs, {"in_channels": 3}, channels=3, classes={0, 1}),
    Case("RGB image, 1 channel asked", folder(image=colour),
         refused=(r"img\d\d\.png: RGB image but data.in_channels=1", r"set data.in_channels=3")),
    # --- pixel types and TIFF
    Case("16-bit PNG, full range", folder(image=lambda i: grey(i, np.uint16, 65535)),
         channels=1, classes={0, 1}),
    Case("16-bit PNG, 0..260", folder(image=lambda i: grey(i, np.uint16, 260)),
         channels=1, classes={0, 1}),
    Case("16-bit TIFF, full range", folder(image=lambda i: grey(i, np.uint16, 65535),
                                           image_ext=".tif"), channels=1, classes={0, 1}),
    Case("16-bit TIFF, 0..260, percentile",
         folder(image=lambda i: grey(i, np.uint16, 260), image_ext=".tif"),
         {"intensity": {"mode": "percentile", "low": 1.0, "high": 99.0}},
         channels=1, classes={0, 1}),
    Case("float32 TIFF", folder(image=float_image, image_ext=".tif"), channels=1,
         classes={0, 1}),
    Case("float32 TIFF with NaN",
         folder(image=lambda i: float_image(i, nan=i == 2), image_ext=".tif"),
         refused=(r"img02\.tif: float image holds NaN", r"nan_to_num\) or remove the image")),
    Case("float32 TIFF beyond [0, 1]",
         folder(image=lambda i: float_image(i, scale=300.0), image_ext=".tif"),
         refused=(r"img\d\d\.tif: float image values span", r"data.intensity.mode=percentile"),
         late=True),
    Case("3-page TIFF as channels", tiff_stack(3), {"in_channels": 3}, channels=3,
         classes={0, 1}),
    Case("8-page TIFF stack", tiff_stack(8),
         refused=(r"img\d\d\.tif: 8 pages", r"split the stack into one file per slice")),
    Case("not an image", then(folder(), not_an_image),
         refused=(r"img01\.png: cannot be read as an image", r"replace or remove the file")),
    # --- masks
    Case("masks 0/1", folder(mask=lambda i: square(i, (0, 1))), {"mask_values": [0, 1]},
         channels=1, classes={0, 1}),
    Case("masks 0/255", folder(), channels=1, classes={0, 1}),
    Case("masks 0..3", folder(mask=lambda i: square(i, (0, 1, 2, 3))),
         {"num_classes": 4, "class_names": ["bg", "a", "b", "c"], "mask_values": [0, 1, 2, 3]},
         channels=1, classes={0, 1, 2, 3}),
    Case("16-bit PNG masks of class values",
         folder(mask=lambda i: square(i, (0, 1000, 60000), np.uint16)),
         {"num_classes": 3, "class_names": ["bg", "a", "b"], "mask_values": [0, 1000, 60000]},
         channels=1, classes={0, 1, 2}),
    Case("16-bit TIFF masks of class values",
         folder(mask=lambda i: square(i, (0, 300, 7), np.uint16), mask_ext=".tif"),
         {"num_classes": 3, "class_names": ["bg", "a", "b"], "mask_values": [0, 300, 7]},
         channels=1, classes={0, 1, 2}),
    Case("uint16 instance TIFF, > 255 objects", folder(mask=instances, mask_ext=".tif"),
         {"mask_format": "instances", "mask_values": None}, channels=1, classes={0, 1}),
    Case("uint32 instance TIFF, > 255 objects",
         folder(mask=lambda i: instances(i, np.uint32), mask_ext=".tif"),
         {"mask_format": "instances", "mask_values": None}, channels=1, classes={0, 1}),
    Case("palette masks with transparency", palette_masks,
         {"mask_format": "palette", "num_classes": 3, "class_names": ["bg", "a", "b"],
          "mask_values": [0, 1, 2]}, channels=1, classes={0, 1, 2}),
    Case("class folders, upper-case .PNG", class_folders,
         {"mask_format": "folders", "num_classes": 3, "mask_values": None,
          "class_names": ["background", "cell", "nucleus"]}, channels=1, classes={0, 1, 2}),
    Case("JPEG masks", jpeg_masks,
         refused=(r"img\d\d\.jpg: mask values", r"JPEG carry compression noise: save them as PNG")),
    Case("mask of another size", then(folder(), one_mask("img01.png", np.zeros((20, 16),
                                                                                np.uint8))),
         refused=(r"img01\.png: mask is 16x20 but its image img01\.png is 40x32",
                  r"masks must match their image's size")),
    Case("an all-background mask",
         then(folder(), one_mask("img02.png", np.zeros((H, W), np.uint8))),
         channels=1, classes={0, 1}),
    Case("a class in no mask", folder(mask=lambda i: square(i, (0, 1))),
         {"num_classes": 3, "class_names": ["bg", "a", "b"], "mask_values": [0, 1, 2]},
         channels=1, classes={0, 1}),
    # --- sizes, names, folders
    Case("images smaller than the patch", folder(), {"crop_size": 48},
         refused=(r"img\d\d\.png: 40x32 is smaller than data.crop_size=48",
                  r"set data.pad_to_crop=true")),
    Case("images smaller than the patch, padded", folder(),
         {"crop_size": 48, "pad_to_crop": True}, channels=1, classes={0, 1}),
    Case("upper-case extensions", folder(image_ext=".PNG", mask_ext=".TIF"), channels=1,
         classes={0, 1}),
    Case("upper-case .TIFF images", folder(image_ext=".TIFF"), channels=1, classes={0, 1}),
    Case("unicode names", folder(names=["zelle_ä", "細胞_1", "клетка", "naïve façade"]),
         channels=1, classes={0, 1}),
    Case("symlinked folders", symlinked_images, channels=1, classes={0, 1}),
    Case("hidden macOS files", then(folder(), lambda root: (root / "images" / "._img00.png")
                                    .write_bytes(b"\x00\x05\x16\x07")),
         channels=1, classes={0, 1}),
    Case("an empty folder", empty, error=FileNotFoundError,
         refused=(r"images holds no images", r"put the images there")),
    Case("an image without a mask", then(folder(), unlink("masks/img03.png")),
         error=FileNotFoundError,
         refused=(r"img03\.png", r"Add the masks, remove the images")),
    Case("two masks for one image", then(folder(), one_mask("img01.tif", square(1))),
         refused=(r"masks \['img01\.png', 'img01\.tif'\]", r"keep one of them")),
]  # fmt: skip


def datamodule(root: Path, case: Case) -> SegDataModule:
    return SegDataModule(str(root), **(SETTINGS | case.settings))


def inspect(root: Path, dm: SegDataModule, settings: dict) -> dict:
    crop = None if settings.get("pad_to_crop") else settings["crop_size"]
    c = dm.contract
    return inspect_folder(root, c.encoding, c.in_channels, crop_size=crop)


def test_the_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 25
    assert sum(c.refused is None for c in CASES) >= 15 and sum(bool(c.refused) for c in CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_catalogue(tmp_path: Path, case: Case) -> None:
    root = tmp_path / "data"
    case.write(root)
    settings = SETTINGS | case.settings
    dm = datamodule(root, case)
    report = inspect(root, dm, settings)
    if case.refused:
        file, fix = case.refused
        with pytest.raises(case.error) as caught:
            dm.setup("fit")
            next(iter(dm.train_dataloader()))
            for name in ("val", "test"):  # a late refusal may sit in any split
                for i in range(len(dm.datasets[name])):
                    dm.datasets[name][i]
        message = str(caught.value)
        assert re_search(file, message) and re_search(fix, message), message
        if not case.late:  # check_data finds it too, naming the same file
            problems = "\n".join(report["problems"])
            assert re_search(file, problems), problems
        if case.id == "JPEG masks":
            assert len(report["masks_jpeg_like"]) == N
        return

    assert report["problems"] == [], report["problems"]
    assert report["masks_jpeg_like"] == []  # not even 16-bit labels of many values
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    side = 48 if settings.get("pad_to_crop") else settings["crop_size"]
    image, mask = batch["image"], batch["mask"]
    assert image.shape == (2, settings["in_channels"], side, side)
    assert image.dtype == torch.float32 and torch.isfinite(image).all()
    assert image.std() > 0  # the pixels arrived, not a constant
    assert set(mask.unique().tolist()) - {-1} <= case.classes
    found = set()
    for ds in dm.datasets.values():
        for i in range(len(ds)):
            found |= set(np.unique(ds.load(i)[1]).tolist())
    assert found == case.classes
    # the checks and the loader agree on what each image feeds the net
    images = list_images(root / "images")
    assert report["image_channels"] == {case.channels: len(images)}
    for path in images:
        assert read_header(path)[2] == case.channels
        assert read_image(path, case.channels).shape[2] == case.channels


def re_search(pattern: str, text: str) -> bool:
    return re.search(pattern, text) is not None


# ---------------------------------------------------------------- percentile scaling


def test_percentile_scaling_returns_float32() -> None:
    for image in (grey(0, np.uint16, 260)[:, :, None], grey(1)[:, :, None],
                  float_image(2)[:, :, None].astype(np.float64)):  # fmt: skip
        scaled = to_unit_range(image, "percentile", 1.0, 99.0)
        assert scaled.dtype == np.float32 and scaled.shape == image.shape
        assert scaled.min() == 0.0 and scaled.max() == 1.0


def test_16_bit_percentile_dataset_trains(tmp_path: Path) -> None:
    """`intensity.mode=percentile` on 16-bit images through augmentation (np.percentile's
    float64 once crashed albumentations: "expected a uint8, uint16 or float32 image")."""
    root = tmp_path / "data"
    folder(image=lambda i: grey(i, np.uint16, 260))(root)
    intensity = {"mode": "percentile", "low": 1.0, "high": 99.0}
    dm = SegDataModule(str(root), **(SETTINGS | {"intensity": intensity}))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.float32 and torch.isfinite(batch["image"]).all()
    raw = dm.datasets["train"].load(0)[0]
    assert raw.dtype == np.float32 and raw.min() == 0.0 and raw.max() == 1.0


def test_low_16_bit_range_is_hinted(tmp_path: Path) -> None:
    root = tmp_path / "data"
    folder(image=lambda i: grey(i, np.uint16, 260))(root)
    dm = SegDataModule(str(root), **SETTINGS)
    hints = inspect(root, dm, SETTINGS)["hints"]
    assert len(hints) == 1 and "260 of 65535" in hints[0] and "percentile" in hints[0]
