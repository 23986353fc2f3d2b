"""Every image and mask format the loader reads, and the ones it refuses."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unet_seg.data.dataset import SegDataset, find_pairs
from unet_seg.data.masks import MaskEncoding
from unet_seg.data.readers import read_image, to_unit_range

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
