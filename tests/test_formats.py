"""Every image and mask format the loader reads, and the ones it refuses."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unet_seg.data.dataset import SegDataset, find_pairs, list_images
from unet_seg.data.masks import MaskEncoding, looks_like_jpeg
from unet_seg.data.readers import (
    channel_kind,
    fit_channels,
    read_array,
    read_image,
    to_unit_range,
)

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp", ".jpg"])
def test_8_bit_grayscale_formats(tmp_path: Path, ext: str) -> None:
    image = RNG.integers(0, 255, (12, 10), dtype=np.uint8)
    path = tmp_path / f"a{ext}"
    cv2.imwrite(str(path), image)
    read = read_image(path, 1)
    assert read.shape == (12, 10, 1) and read.dtype == np.uint8
    if ext != ".jpg":  # lossless formats come back exactly
        assert (read[:, :, 0] == image).all()


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16_bit_images_and_percentile_scaling(tmp_path: Path, ext: str) -> None:
    image = np.full((20, 20), 1000, np.uint16)
    image[:, 10:] = 3000  # a 12-bit-like range inside 0..65535
    path = tmp_path / f"a{ext}"
    cv2.imwrite(str(path), image)
    read = read_image(path, 1)
    assert read.dtype == np.uint16 and int(read.max()) == 3000
    ranged = to_unit_range(read, "range")
    assert ranged.dtype == np.float32 and ranged.max() == pytest.approx(3000 / 65535)
    stretched = to_unit_range(read, "percentile", 1, 99)
    assert stretched.min() == 0.0 and stretched.max() == 1.0


def test_rgb_rgba_and_channel_order(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200  # red
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_image(tmp_path / "rgb.png", 3)[0, 0].tolist() == [200, 0, 0]
    rgba = np.dstack([rgb, np.full((4, 4), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    assert read_image(tmp_path / "opaque.png", 3)[0, 0].tolist() == [200, 0, 0]
    assert read_image(tmp_path / "opaque.png", 4).shape == (4, 4, 4)
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba).save(tmp_path / "see_through.png")
    with pytest.raises(ValueError, match=r"see_through\.png: RGBA image with transparent pixels"):
        read_image(tmp_path / "see_through.png", 3)
    with pytest.raises(ValueError, match=r"RGBA image but data.in_channels=1"):
        read_image(tmp_path / "opaque.png", 1)


@pytest.mark.parametrize("planar", [False, True])
def test_multichannel_tiff(tmp_path: Path, planar: bool) -> None:
    stack = RNG.integers(0, 4000, (5, 16, 12), dtype=np.uint16)  # 5 channels
    path = tmp_path / "multi.tif"
    if planar:
        tifffile.imwrite(path, stack, photometric="minisblack", planarconfig="separate")
    else:
        tifffile.imwrite(path, np.moveaxis(stack, 0, -1), photometric="minisblack",
                         planarconfig="contig")  # fmt: skip
    read = read_image(path, 5)
    assert read.shape == (16, 12, 5)
    assert (read == np.moveaxis(stack, 0, -1)).all()
    with pytest.raises(ValueError, match=r"multi\.tif: 5-channel image but data.in_channels=3"):
        read_image(path, 3)


def test_float_tiff_checked(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "ok.tif", np.full((6, 6), 0.5, np.float32))
    assert to_unit_range(read_image(tmp_path / "ok.tif", 1)).max() == 0.5
    tifffile.imwrite(tmp_path / "big.tif", np.full((6, 6), 7.0, np.float32))
    with pytest.raises(ValueError, match="outside \\[0, 1\\].*percentile"):
        to_unit_range(read_image(tmp_path / "big.tif", 1))
    nan = np.zeros((6, 6), np.float32)
    nan[2, 2] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    with pytest.raises(ValueError, match=r"nan\.tif: float image holds NaN"):
        read_image(tmp_path / "nan.tif", 1)


def test_16_bit_training_sample_is_scaled_once(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.full((8, 8), 65535, np.uint16))
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), np.zeros((8, 8), np.uint8))
    ds = SegDataset(find_pairs(tmp_path), MaskEncoding([0, 255]), 1, [0.0], [1.0])
    assert torch.allclose(ds[0]["image"], torch.ones(1, 8, 8))


# ---------------------------------------------------------------- masks


def test_palette_masks(tmp_path: Path) -> None:
    indices = np.array([[0, 1], [2, 1]], np.uint8)
    im = Image.fromarray(indices, mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    im.save(tmp_path / "m.png")
    enc = MaskEncoding([0, 1, 2], "palette")
    assert enc.load(tmp_path / "m.png").tolist() == indices.tolist()
    Image.fromarray(indices * 100).convert("RGB").save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png: data.mask_format=palette needs palette"):
        enc.load(tmp_path / "rgb.png")


def test_rgb_colour_masks(tmp_path: Path) -> None:
    colors = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
    truth = np.array([[0, 1, 2], [2, 2, 0]])
    Image.fromarray(np.asarray(colors, np.uint8)[truth]).save(tmp_path / "m.png")
    enc = MaskEncoding(mask_format="rgb", mask_colors=colors)
    assert enc.num_classes == 3
    assert enc.load(tmp_path / "m.png").tolist() == truth.tolist()
    assert enc.decode(truth).tolist() == np.asarray(colors)[truth].tolist()
    bad = np.asarray(colors, np.uint8)[truth]
    bad[0, 0] = [9, 9, 9]
    Image.fromarray(bad).save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"bad\.png: colours \[\[9, 9, 9\]\] are not in"):
        enc.load(tmp_path / "bad.png")


def test_one_folder_per_class(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    for name in ("cell", "nucleus"):
        (tmp_path / "masks" / name).mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((4, 4), np.uint8))
    cell = np.zeros((4, 4), np.uint8)
    cell[:2] = 255
    nucleus = np.zeros((4, 4), np.uint8)
    nucleus[3, 3] = 1
    cv2.imwrite(str(tmp_path / "masks" / "cell" / "a.png"), cell)
    cv2.imwrite(str(tmp_path / "masks" / "nucleus" / "a.png"), nucleus)
    names = ["background", "cell", "nucleus"]
    pairs = find_pairs(tmp_path, class_folders=names[1:])
    enc = MaskEncoding(mask_format="folders", class_names=names)
    indices = enc.load(pairs[0][1])
    assert indices[0, 0] == 1 and indices[3, 3] == 2 and indices[2, 0] == 0
    nucleus[0, 0] = 1  # now overlaps the cell
    cv2.imwrite(str(tmp_path / "masks" / "nucleus" / "a.png"), nucleus)
    with pytest.raises(ValueError, match=r"nucleus.*a\.png: 1 pixels are claimed by both"):
        enc.load(pairs[0][1])
    (tmp_path / "masks" / "nucleus" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"nucleus/a"):
        find_pairs(tmp_path, class_folders=names[1:])


def test_instance_labels_become_foreground(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 1], [300, 0, 2]], np.uint16)
    cv2.imwrite(str(tmp_path / "inst.png"), labels)
    enc = MaskEncoding(mask_format="instances")
    assert enc.load(tmp_path / "inst.png").tolist() == [[0, 1, 1], [1, 0, 1]]


def test_gif_masks_like_carvana(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8) * 255).convert("P").save(
        tmp_path / "car_mask.gif"
    )
    assert MaskEncoding([0, 255]).load(tmp_path / "car_mask.gif").tolist() == [[0, 1], [1, 0]]


def test_jpeg_mask_noise_is_named(tmp_path: Path) -> None:
    mask = np.zeros((32, 32), np.uint8)
    mask[5:19, 7:26] = 255  # edges off the 8x8 JPEG blocks: compression rings there
    cv2.imwrite(str(tmp_path / "m.jpg"), mask, [cv2.IMWRITE_JPEG_QUALITY, 60])
    with pytest.raises(ValueError, match=r"m\.jpg: mask values .* JPEG .* save them as PNG"):
        MaskEncoding([0, 255]).load(tmp_path / "m.jpg")


def test_unknown_mask_format_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"choose one of \['values', 'palette'"):
        MaskEncoding([0, 1], "labels")


# ---------------------------------------------------------------- public dataset layouts


def test_dsb2018_prepare_then_train_loader(tmp_path: Path) -> None:
    from tests.conftest import compose_train
    from unet_seg.data.prepare import main as prepare
    from unet_seg.train import build_datamodule

    src = tmp_path / "stage1_train"
    for k in range(4):
        sample = src / f"id{k}"
        (sample / "images").mkdir(parents=True)
        (sample / "masks").mkdir()
        rgba = np.dstack([RNG.integers(0, 255, (40, 40, 3), dtype=np.uint8),
                          np.full((40, 40), 255, np.uint8)])  # fmt: skip
        Image.fromarray(rgba).save(sample / "images" / f"id{k}.png")  # DSB images are RGBA
        for n in range(3):
            nucleus = np.zeros((40, 40), np.uint8)
            nucleus[5 + 10 * n : 12 + 10 * n, 5:12] = 255
            cv2.imwrite(str(sample / "masks" / f"n{n}.png"), nucleus)
    prepare(["dsb2018", str(src), str(tmp_path / "dsb")])
    labels = cv2.imread(str(tmp_path / "dsb" / "masks" / "id0.png"), cv2.IMREAD_UNCHANGED)
    assert labels.dtype == np.uint16 and sorted(np.unique(labels).tolist()) == [0, 1, 2, 3]

    cfg = compose_train(["data=dsb2018", f"data.root={tmp_path / 'dsb'}", "data.crop_size=32",
                         "data.val_fraction=0.25", "data.test_fraction=0.25"])  # fmt: skip
    dm = build_datamodule(cfg, tmp_path / "run")
    dm.setup()
    sample = dm.datasets["train"][(0, 0)]
    assert sample["image"].shape == (3, 32, 32) and set(sample["mask"].unique().tolist()) <= {0, 1}


def test_carvana_layout(tmp_path: Path) -> None:
    from tests.conftest import compose_train
    from unet_seg.train import build_datamodule

    (tmp_path / "train").mkdir()
    (tmp_path / "train_masks").mkdir()
    for car in ("00087a6bd4dc", "02159e548029", "03a857ce842d"):
        for view in range(1, 5):
            cv2.imwrite(str(tmp_path / "train" / f"{car}_{view:02d}.jpg"),
                        RNG.integers(0, 255, (40, 60, 3), dtype=np.uint8))  # fmt: skip
            mask = np.zeros((40, 60), np.uint8)
            mask[10:30, 15:45] = 1
            gif = Image.fromarray(mask, mode="P")
            gif.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
            gif.save(tmp_path / "train_masks" / f"{car}_{view:02d}_mask.gif")
    cfg = compose_train(["data=carvana", f"data.root={tmp_path}", "data.crop_size=32",
                         "data.val_fraction=0.3", "data.test_fraction=0.3"])  # fmt: skip
    dm = build_datamodule(cfg, tmp_path / "run")
    dm.setup()
    cars = {k: {n.split("_")[0] for n in v} for k, v in dm.splits.items()}
    assert len(cars["train"]) == len(cars["val"]) == len(cars["test"]) == 1  # whole cars
    assert (dm.datasets["val"][0]["mask"] == 1).sum() == 20 * 30


# ---------------------------------------------------------------- one decision: check and loader


def test_grey_alpha_png_counts_the_same_in_the_check_and_the_loader(tmp_path: Path) -> None:
    """A grey+alpha PNG was 2 channels to the header check and 4 (BGRA) to the loader."""
    from unet_seg.data.checks import check_pairs, read_header

    grey = RGB_RAMP[:, :, 0]
    la = np.dstack([grey, np.full_like(grey, 255)])
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    cv2.imwrite(str(tmp_path / "m.png"), np.zeros(grey.shape, np.uint8))
    assert read_array(tmp_path / "la.png").shape == (*grey.shape, 2)  # as stored
    assert read_header(tmp_path / "la.png")[2] == 1  # opaque alpha: feeds one channel
    for channels in (1, 2, 3):  # 1 and 3 drop the alpha, 2 keeps it
        check_pairs([(tmp_path / "la.png", tmp_path / "m.png")], channels)
        image = read_image(tmp_path / "la.png", channels)
        assert image.shape[2] == channels and (image[:, :, 0] == grey).all()
    check_pairs([(tmp_path / "la.png", tmp_path / "m.png")], 4)  # as RGBA: grey x 3, alpha
    assert read_image(tmp_path / "la.png", 4)[0, 0].tolist() == [grey[0, 0]] * 3 + [255]
    with pytest.raises(ValueError, match=r"la\.png: 2-channel image but data.in_channels=5: "
                       r"grey\+alpha with an opaque alpha; set data.in_channels=1"):  # fmt: skip
        check_pairs([(tmp_path / "la.png", tmp_path / "m.png")], 5)
    la[0, 0, 1] = 0  # one transparent pixel
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert read_header(tmp_path / "la.png")[2] == 2
    with pytest.raises(ValueError, match=r"la\.png: 2-channel .* grey\+alpha with transparent"):
        check_pairs([(tmp_path / "la.png", tmp_path / "m.png")], 1)
    assert read_image(tmp_path / "la.png", 2)[0, 0].tolist() == [grey[0, 0], 0]


RGB_RAMP = np.dstack([np.arange(48, dtype=np.uint8).reshape(6, 8) * 5] * 3)


def test_channel_kind_names_every_layout() -> None:
    grey = RGB_RAMP[:, :, 0]
    opaque = np.full_like(grey, 255)
    see_through = opaque.copy()
    see_through[0, 0] = 0
    colour = RGB_RAMP.copy()
    colour[:, :, 1] //= 2
    cases = {
        "grey": (grey, 1),
        "grey+alpha": (np.dstack([grey, opaque]), 1),
        "grey+alpha (transparent)": (np.dstack([grey, see_through]), 2),
        "grey as RGB": (RGB_RAMP, 1),
        "RGB": (colour, 3),
        "grey as RGBA": (np.dstack([RGB_RAMP, opaque]), 1),
        "grey as RGBA (transparent)": (np.dstack([RGB_RAMP, see_through]), 2),
        "RGBA": (np.dstack([colour, opaque]), 3),
        "RGBA (transparent)": (np.dstack([colour, see_through]), 4),
        "5-channel": (np.dstack([grey] * 5), 5),
    }
    for kind, (image, channels) in cases.items():
        assert channel_kind(image) == (kind, channels)
        assert fit_channels(image, channels, kind).shape[2] == channels  # its count is taken


def test_tiff_pages(tmp_path: Path) -> None:
    page = RNG.integers(0, 4000, (16, 12), dtype=np.uint16)
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tif:  # an image and its thumbnail
        tif.write(page)
        tif.write(page[:4, :3], subfiletype=1)
    assert (read_array(tmp_path / "thumb.tif") == page).all()
    with tifffile.TiffWriter(tmp_path / "sizes.tif") as tif:
        tif.write(page)
        tif.write(page[:8])
    with pytest.raises(ValueError, match=r"sizes\.tif: 2 pages of different sizes: split"):
        read_array(tmp_path / "sizes.tif")
    stack = np.stack([page, page // 2, page // 3])
    tifffile.imwrite(tmp_path / "z.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(ValueError, match=r"z\.tif: 3 pages \(axes ZYX\): split the stack"):
        read_array(tmp_path / "z.tif")
    five = np.stack([page + k for k in range(5)])
    tifffile.imwrite(tmp_path / "c.tif", five, imagej=True, metadata={"axes": "CYX"})
    assert (read_array(tmp_path / "c.tif") == np.moveaxis(five, 0, -1)).all()  # labelled
    tifffile.imwrite(tmp_path / "q.tif", stack, photometric="minisblack")  # unlabelled pages
    assert (read_array(tmp_path / "q.tif") == np.moveaxis(stack, 0, -1)).all()
    # OpenCV writes LZW, which tifffile cannot decode without imagecodecs: OpenCV reads it
    assert cv2.imwritemulti(str(tmp_path / "lzw.tif"), list(stack))
    assert (read_array(tmp_path / "lzw.tif") == np.moveaxis(stack, 0, -1)).all()
    assert cv2.imwritemulti(str(tmp_path / "lzw8.tif"), [page] * 8)
    with pytest.raises(ValueError, match=r"lzw8\.tif: 8 pages: split the stack"):
        read_array(tmp_path / "lzw8.tif")


def test_odd_tiffs(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "cmyk.tif", np.zeros((4, 4, 4), np.uint8), photometric="separated")
    with pytest.raises(ValueError, match=r"cmyk\.tif: CMYK TIFF; convert it to RGB"):
        read_array(tmp_path / "cmyk.tif")
    tifffile.imwrite(tmp_path / "bits.tif", np.eye(4, dtype=bool))
    assert read_array(tmp_path / "bits.tif").tolist() == (np.eye(4) * 255).tolist()
    tifffile.imwrite(tmp_path / "half.tif", np.full((4, 4), 0.25, np.float16))
    assert read_image(tmp_path / "half.tif", 1).dtype == np.float32
    tifffile.imwrite(tmp_path / "signed.tif", np.full((4, 4), -3, np.int16))
    with pytest.raises(ValueError, match=r"signed\.tif: pixel type int16 unsupported; save"):
        read_image(tmp_path / "signed.tif", 1)
    png = cv2.imencode(".png", np.full((4, 4), 7, np.uint8))[1]
    (tmp_path / "png.tif").write_bytes(png.tobytes())  # a PNG named .tif
    assert read_array(tmp_path / "png.tif").tolist() == [[7] * 4] * 4


def test_cmyk_jpeg_reads_as_rgb(tmp_path: Path) -> None:
    cmyk = np.zeros((8, 8, 4), np.uint8)
    cmyk[:, :, 0] = 255  # full cyan: no red
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg", quality=95)
    rgb = read_image(tmp_path / "c.jpg", 3)
    assert rgb.shape == (8, 8, 3)
    assert rgb[4, 4, 0] < 60 and rgb[4, 4, 1] > 200 and rgb[4, 4, 2] > 200


# ---------------------------------------------------------------- odd masks


def test_jpeg_verdict_is_about_compression_not_value_counts(tmp_path: Path) -> None:
    mask = np.zeros((64, 64), np.uint8)
    mask[5:40, 9:50] = 255
    jpeg = cv2.imdecode(cv2.imencode(".jpg", mask, [cv2.IMWRITE_JPEG_QUALITY, 70])[1], -1)
    cv2.imwrite(str(tmp_path / "was_jpeg.png"), jpeg)  # a JPEG saved again as PNG
    assert looks_like_jpeg(read_array(tmp_path / "was_jpeg.png"), tmp_path / "was_jpeg.png")
    cv2.imwrite(str(tmp_path / "exact.jpg"), mask, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert looks_like_jpeg(mask, tmp_path / "exact.jpg")  # the file is JPEG
    assert not looks_like_jpeg(mask)
    labels = np.zeros((64, 64), np.uint16)
    labels[::2, ::2] = np.arange(1, 32 * 32 + 1).reshape(32, 32)  # 1024 one-pixel objects
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    assert not looks_like_jpeg(read_array(tmp_path / "labels.tif"), tmp_path / "labels.tif")
    blobs = np.zeros((128, 128), np.uint8)
    for k in range(1, 41):  # 8-bit instance labels: 40 small objects, labels near 0
        cv2.circle(blobs, (int(RNG.integers(0, 128)), int(RNG.integers(0, 128))), 4, k, -1)
    assert not looks_like_jpeg(blobs)


def test_thin_rare_classes_of_index_masks_are_not_jpeg_noise() -> None:
    """CamVid-like class indices 0..11: large regions of a few classes, and rare classes
    (poles, signs) drawn one to three pixels wide, so none has interior pixels."""
    mask = np.zeros((120, 160), np.uint8)
    mask[60:, :] = 3  # road
    mask[20:60, :80] = 1  # building
    mask[20:60, 80:] = 5  # tree
    for k, x in enumerate(range(10, 150, 14)):  # poles, signs, pedestrians: thin, rare
        mask[25:70, x : x + 1 + k % 3] = (2, 6, 9, 10, 11)[k % 5]
    assert not looks_like_jpeg(mask)
    binary = np.where(mask == 3, 255, 0).astype(np.uint8)  # the road as a 0/255 mask
    noisy = cv2.imdecode(cv2.imencode(".jpg", binary, [cv2.IMWRITE_JPEG_QUALITY, 80])[1], -1)
    assert looks_like_jpeg(noisy)  # compressed: noise around 0 and 255


def test_masks_of_other_pixel_types(tmp_path: Path) -> None:
    enc = MaskEncoding([0, 1, 2])
    truth = np.array([[0, 1], [2, 1]])
    for dtype in (np.uint32, np.int32, np.float32):
        tifffile.imwrite(tmp_path / "m.tif", truth.astype(dtype))
        assert enc.load(tmp_path / "m.tif").tolist() == truth.tolist()
    tifffile.imwrite(tmp_path / "half.tif", np.array([[0, 0.5]], np.float32))
    with pytest.raises(ValueError, match=r"half\.tif: mask pixel type float32 with values "
                       r"0\.\.0\.5; masks must hold whole numbers"):  # fmt: skip
        enc.load(tmp_path / "half.tif")
    la = np.dstack([np.array([[0, 1], [2, 1]], np.uint8), np.full((2, 2), 255, np.uint8)])
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert enc.load(tmp_path / "la.png").tolist() == truth.tolist()  # alpha ignored
    labels = np.zeros((4, 4), np.uint32)
    labels[1, 1], labels[2, 3] = 70000, 3
    tifffile.imwrite(tmp_path / "inst.tif", labels)
    assert MaskEncoding(mask_format="instances").load(tmp_path / "inst.tif").sum() == 2


def test_palette_masks_with_transparency_read_as_indices(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    im = Image.fromarray(indices, "P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    im.save(tmp_path / "m.png", transparency=0)
    assert MaskEncoding([0, 1, 2], "palette").load(tmp_path / "m.png").tolist() == indices.tolist()
    with pytest.raises(ValueError, match=r"m\.png is a palette image: data.mask_format=palette"):
        MaskEncoding([0, 1, 2]).load(tmp_path / "m.png")


def test_listing_any_case_and_no_hidden_files(tmp_path: Path) -> None:
    for name in ("a.PNG", "b.Tif", "c.TIFF", "d.jpeg", "._a.png", "e.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "f.png").mkdir()  # a folder is no image
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.Tif", "c.TIFF", "d.jpeg"]


def test_images_without_alpha_get_an_opaque_one_next_to_transparent_ones() -> None:
    """A net fed an alpha (a folder with transparent images) takes RGB and grey images with a
    fully opaque alpha added, so that the folder trains; a 2-channel net takes no colour."""
    rgb = RGB_RAMP.copy()
    rgb[:, :, 2] = 7  # colour: the channels differ
    assert fit_channels(rgb, 4, "rgb.png")[:, :, :3].tolist() == rgb.tolist()
    assert (fit_channels(rgb, 4, "rgb.png")[:, :, 3] == 255).all()
    grey16 = RGB_RAMP[:, :, 0].astype(np.uint16) * 100
    assert fit_channels(grey16, 2, "g.tif")[:, :, 0].tolist() == grey16.tolist()
    assert (fit_channels(grey16, 2, "g.tif")[:, :, 1] == 65535).all()
    rgba = fit_channels(grey16.astype(np.float32) / 5e4, 4, "g.tif")
    assert rgba.dtype == np.float32 and (rgba[:, :, 3] == 1.0).all()
    with pytest.raises(ValueError, match=r"rgb\.png: RGB image but data.in_channels=2"):
        fit_channels(rgb, 2, "rgb.png")


def test_channel_tiffs_are_channels_of_data_not_grey_alpha_or_rgba(tmp_path: Path) -> None:
    """A TIFF of 2 or 4 fluorescence channels (ImageJ axes CYX, unlabelled pages, grey
    samples) was read as grey+alpha or RGBA: its second channel taken for an alpha (dropped
    when 'opaque', i.e. saturated), 4 channels of equal planes for grey. Only a declared alpha
    is one (a TIFF sample marked alpha, a PNG's)."""
    from unet_seg.data.checks import read_header
    from unet_seg.data.readers import read_stored

    saturated = np.full((8, 10), 65535, np.uint16)  # a saturated channel: not an alpha
    for channels in (2, 4):
        planes = np.stack([RNG.integers(0, 4000, (8, 10), dtype=np.uint16)] * (channels - 1)
                          + [saturated])  # fmt: skip
        files = {"imagej": dict(imagej=True, metadata={"axes": "CYX"}),
                 "pages": dict(photometric="minisblack"),
                 "samples": dict(photometric="minisblack", planarconfig="contig")}  # fmt: skip
        for how, kwargs in files.items():
            path = tmp_path / f"{how}{channels}.tif"
            data = np.moveaxis(planes, 0, -1) if how == "samples" else planes
            tifffile.imwrite(path, data, **kwargs)
            array, data_channels = read_stored(path)
            assert data_channels and array.shape == (8, 10, channels), how
            assert channel_kind(array, data_channels) == (f"{channels} channels", channels)
            assert read_header(path)[2] == channels
            assert (read_image(path, channels) == np.moveaxis(planes, 0, -1)).all()
            with pytest.raises(ValueError, match=rf"{how}{channels}\.tif: {channels}-channel "
                               rf"image but data.in_channels=1: {channels} channels of data.*"
                               rf"set data.in_channels={channels}"):  # fmt: skip
                read_image(path, 1)
    # a declared alpha stays one: grey+alpha TIFF, and a grey+alpha PNG
    grey_alpha = np.dstack([RNG.integers(0, 255, (8, 10), dtype=np.uint8),
                            np.full((8, 10), 255, np.uint8)])  # fmt: skip
    tifffile.imwrite(tmp_path / "ga.tif", grey_alpha, photometric="minisblack",
                     extrasamples=["unassalpha"])  # fmt: skip
    Image.fromarray(grey_alpha, "LA").save(tmp_path / "ga.png")
    for name in ("ga.tif", "ga.png"):
        array, data_channels = read_stored(tmp_path / name)
        assert not data_channels and channel_kind(array, data_channels) == ("grey+alpha", 1)
        assert read_image(tmp_path / name, 1).shape == (8, 10, 1)
