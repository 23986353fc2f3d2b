"""Pictures: colours of classes and of errors, grid layout, attention gates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unet_seg.visualize import (
    FALSE_POSITIVE,
    MISSED,
    WRONG_CLASS,
    attention_strip,
    class_colours,
    class_legend,
    colorize,
    composite_colours,
    display_image,
    error_legend,
    error_map,
    legend,
    overlay,
    prediction_grid,
    to_rgb8,
    with_legend,
)


def test_colorize_binary_and_ignored() -> None:
    rgb = colorize(np.array([[0, 1, -1]]))
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 2].tolist() == [128, 128, 128]
    assert rgb[0, 1].tolist() == list(class_colours(2)[1])
    assert colorize(np.array([[40]])).shape == (1, 1, 3)  # beyond the palette still works


@pytest.mark.parametrize("num_classes", [2, 8, 20])
def test_class_colours_are_distinct_and_none_near_white(num_classes: int) -> None:
    """On bright nuclei or grey EM a near-white class disappears into the input."""
    colours = np.array(class_colours(num_classes), np.int32)
    assert len({tuple(c) for c in colours}) == num_classes
    foreground = colours[1:]
    assert (foreground.min(axis=1) < 200).all()  # not white nor near white
    assert (foreground.max(axis=1) - foreground.min(axis=1) > 60).all()  # not grey either
    distances = np.abs(colours[:, None] - colours[None]).sum(-1) + 999 * np.eye(num_classes)
    assert distances.min() > 40


def test_overlay_tints_regions_and_outlines_them_in_full_colour() -> None:
    image = np.full((6, 6, 3), 230, np.uint8)  # bright: white would vanish on it
    labels = np.zeros((6, 6), int)
    labels[1:5, 1:5] = 1
    out = overlay(image, labels)
    colour = class_colours(2)[1]
    assert out[0, 0].tolist() == [230, 230, 230]  # background as it is
    assert out[1, 1].tolist() == list(colour)  # the region's edge in its colour
    inside = out[2, 2].astype(int)  # tinted towards the class colour
    assert np.abs(inside - np.array(colour)).sum() < np.abs(230 - np.array(colour)).sum()
    assert np.abs(inside - 230).sum() > 60


def test_error_map_marks_false_positives_and_misses() -> None:
    truth = np.array([[0, 1, 0, 1, 2]])
    pred = np.array([[0, 1, 1, 0, 1]])
    rgb = error_map(truth, pred)
    assert rgb[0, 0].tolist() == [0, 0, 0]  # right background
    assert rgb[0, 1].tolist() == [c // 3 for c in class_colours(2)[1]]  # right, dimmed
    assert rgb[0, 2].tolist() == list(FALSE_POSITIVE)
    assert rgb[0, 3].tolist() == list(MISSED)
    assert rgb[0, 4].tolist() == list(WRONG_CLASS)
    assert len({FALSE_POSITIVE, MISSED, WRONG_CLASS}) == 3


def test_without_a_background_class_0_is_drawn_and_confused_like_any_class() -> None:
    """CamVid's sky (class 0): tinted and named in the legend, and sky taken for building
    is a wrong class, not a miss or a false positive."""
    image = np.full((4, 4, 3), 230, np.uint8)
    labels = np.zeros((4, 4), int)
    labels[2:, :] = 1
    labels[0, 0] = -1  # ignored: left as it is
    out = overlay(image, labels, background=False)
    entries = class_legend(["sky", "building", "road"], background=False)
    assert [name for name, _ in entries] == ["sky", "building", "road"]
    sky, building = entries[0][1], entries[1][1]
    assert len({sky, building, entries[2][1], (0, 0, 0)}) == 4  # a colour each, none black
    assert out[1, 1].tolist() != [230, 230, 230] and out[0, 0].tolist() == [230, 230, 230]
    assert np.abs(out[1, 1].astype(int) - sky).sum() < np.abs(230 - np.array(sky)).sum()
    assert out[2, 1].tolist() == list(building)  # the building region's edge in its colour
    truth, pred = np.array([[0, 1, 0, 2]]), np.array([[0, 0, 1, 2]])
    rgb = error_map(truth, pred, background=False)
    assert rgb[0, 1].tolist() == rgb[0, 2].tolist() == list(WRONG_CLASS)
    assert rgb[0, 0].tolist() == [c // 3 for c in sky]  # right, dimmed in its colour
    assert error_legend(3, background=False) == [("wrong class", WRONG_CLASS)]


def test_legends_name_the_colours_they_show() -> None:
    entries = class_legend(["background", "nucleus", "membrane"])
    assert [name for name, _ in entries] == ["nucleus", "membrane"]  # background is untinted
    assert [c for _, c in entries] == class_colours(3)[1:]
    assert [name for name, _ in error_legend(2)] == ["false positive", "missed"]
    assert ("wrong class", WRONG_CLASS) in error_legend(3)

    band = legend([*entries, ("errors:", None), *error_legend(3)], width=120)
    assert band.shape[1] == 120 and band.shape[0] > 2 * 18  # wrapped onto several rows
    for colour in [*class_colours(3)[1:], FALSE_POSITIVE, MISSED, WRONG_CLASS]:
        assert (band == colour).all(-1).sum() >= 9 * 9, colour  # each swatch is drawn
    dark = (band.max(-1) < 100).sum()
    assert dark > 300  # the names are written (swatch borders alone are ~44 px each)
    assert legend([("a much longer class name", (0, 0, 0))], width=20).shape[1] > 20

    image = np.full((10, 30, 3), 7, np.uint8)
    framed = with_legend(image, entries)
    assert (framed[:10, :30] == 7).all()  # the picture stays where it was, legend below
    assert framed.shape[0] > 10 and framed.shape[1] >= 30


def test_prediction_grid_layout() -> None:
    a = (to_rgb8(np.zeros((1, 4, 5))), np.zeros((4, 5), int), np.ones((4, 5), int))
    b = (to_rgb8(np.ones((3, 2, 3))), np.zeros((2, 3), int), np.zeros((2, 3), int))
    grid = prediction_grid([a, b], gap=2)
    assert grid.dtype == np.uint8
    assert grid.shape == (4 + 2 + 2 + 2, 4 * 5 + 3 * 2, 3)
    assert grid[0, 2 * 7 + 1].tolist() == list(class_colours(2)[1])  # third panel: class 1


def stripes(channels: int, size: int = 10) -> np.ndarray:
    """`[C, size, C * size]` float in [0, 1]: channel i bright (1) in the i-th block of
    columns only, dark (0) elsewhere."""
    image = np.zeros((channels, size, channels * size), np.float32)
    for i in range(channels):
        image[i, :, i * size : (i + 1) * size] = 1.0
    return image


PIXEL_TYPES = [np.uint8, np.uint16, np.float32]


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 5])
def test_every_channel_count_is_drawn_as_rgb(channels: int) -> None:
    """2 MRI modalities, 2 stains, 4 modalities, 5 bands: every picture function gives RGB
    uint8 (a 2-channel input panel or overlay base was a traceback)."""
    chw = stripes(channels)
    h, w = chw.shape[1:]
    truth, pred = np.zeros((h, w), int), np.ones((h, w), int)
    for colour in (True, False):
        rgb = to_rgb8(chw, colour=colour)
        assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
        grid = prediction_grid([(rgb, truth, pred)], gap=2)
        assert grid.shape == (h + 2, 4 * w + 3 * 2, 3) and grid.dtype == np.uint8
    for dtype in PIXEL_TYPES:
        hwc = (chw.transpose(1, 2, 0) * (255 if dtype == np.uint8 else 1000)).astype(dtype)
        for colour in (True, False):
            base = display_image(hwc, colour=colour)
            assert base.shape == (h, w, 3) and base.dtype == np.uint8
            assert overlay(base, pred).shape == (h, w, 3)
        for raw in (hwc, hwc[:, :, 0]):  # not RGB yet: drawn first, not a traceback
            out = overlay(raw, pred)
            assert out.shape == (h, w, 3) and out.dtype == np.uint8
            assert prediction_grid([(raw, truth, pred)]).shape[2] == 3


@pytest.mark.parametrize("channels", [2, 3, 4, 5])
@pytest.mark.parametrize("dtype", PIXEL_TYPES)
def test_composite_gives_each_channel_its_own_colour(channels: int, dtype: type) -> None:
    """Channels that are not colours are drawn like Fiji's composite: channel i where it
    alone is bright shows its own colour, and no two channels share one."""
    chw = stripes(channels)
    scale = 255 if dtype == np.uint8 else 1000
    hwc = (chw.transpose(1, 2, 0) * scale).astype(dtype)
    colours = composite_colours(channels)
    assert len({tuple(c) for c in colours.tolist()}) == channels
    assert colours.max(axis=1).min() == 255  # bright, none black
    for rgb in (to_rgb8(chw, colour=False), display_image(hwc, colour=False)):
        for i in range(channels):
            assert rgb[5, i * 10 + 5].tolist() == colours[i].tolist(), i
    assert to_rgb8(chw, colour=False).tolist() == to_rgb8(chw, colour=False).tolist()


def test_composite_stretches_each_channel_on_its_own() -> None:
    """A dim second stain (values up to 40 of 65535) shows as brightly as the first."""
    image = np.zeros((8, 16, 2), np.uint16)
    image[:, :8, 0] = 60000
    image[:, 8:, 1] = 40
    rgb = display_image(image)
    assert rgb[4, 2].tolist() == composite_colours(2)[0].tolist()
    assert rgb[4, 12].tolist() == composite_colours(2)[1].tolist()


def test_grey_and_colour_images_are_drawn_as_they_are() -> None:
    """1 channel grey; 3 RGB and 4 RGBA (alpha dropped) by default; the same 3 or 4
    channels as a composite with `colour=False` (4 MRI modalities are not RGBA)."""
    grey = np.linspace(0, 1, 12, dtype=np.float32).reshape(1, 3, 4)
    rgb = to_rgb8(grey)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    rgba = np.random.default_rng(0).random((4, 3, 4)).astype(np.float32)
    assert to_rgb8(rgba).tolist() == (rgba[:3].transpose(1, 2, 0) * 255).round().tolist()
    photo = (rgba.transpose(1, 2, 0) * 255).astype(np.uint8)
    assert display_image(photo).tolist() == photo[:, :, :3].tolist()
    four = stripes(4)
    assert to_rgb8(four)[5, 35].tolist() == [0, 0, 0]  # RGBA: the 4th channel is alpha
    assert to_rgb8(four, colour=False)[5, 35].tolist() == composite_colours(4)[3].tolist()


def test_overlay_tints_a_two_channel_image() -> None:
    """`evaluate`'s worst-volume picture of a 2-modality volume: a float `[H, W, 2]` slice
    drawn as a composite under the labels."""
    image = np.random.default_rng(1).normal(size=(12, 12, 2)).astype(np.float32)
    labels = np.zeros((12, 12), int)
    labels[3:9, 3:9] = 1
    base = display_image(image)
    out = overlay(image, labels)
    assert out.shape == (12, 12, 3) and out.dtype == np.uint8
    assert (out[0, 0] == base[0, 0]).all()  # background as it is
    assert out[3, 3].tolist() == list(class_colours(2)[1])  # the region's edge


def test_attention_strip_upsamples_each_gate_over_the_input() -> None:
    image = np.full((4, 6, 3), 100, np.uint8)
    closed_left = np.array([[0.0, 1.0]])  # one row, two columns: left closed, right open
    strip = attention_strip(image, [np.ones((4, 6)), closed_left], gap=1)
    assert strip.shape == (4, 3 * 6 + 2, 3) and strip.dtype == np.uint8
    assert strip[0, :6].tolist() == image.tolist()[0]  # the input as it is
    open_px, closed_px = strip[2, 7 + 7 + 5], strip[2, 7 + 7 + 0]  # third panel
    assert open_px.tolist() == [178, 50, 50]  # half input, half red
    assert closed_px.tolist() == [50, 50, 178]  # half input, half blue
    assert (strip[:, 6] == 128).all()  # the grey spacer


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_attention_unet_logs_its_gates_to_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.conftest import compose_train
    from unet_seg.train import train

    run_dir = tmp_path / "run"
    train(compose_train([
        "arch=attention_unet", "arch.base_channels=4", "data.synthetic.num_images=8",
        "data.synthetic.size=48", "data.crop_size=32", "trainer.max_epochs=1",
        f"data.root={tmp_path / 'data'}", f"run_dir={run_dir}",
    ]))  # fmt: skip
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "val/attention_gates" in events.Tags()["images"]
    pictures = events.Images("val/attention_gates")  # each validation, the final one too
    assert pictures
    picture = pictures[-1]
    assert picture.width == 5 * 48 + 4 * 2 and picture.height == 48  # input + 4 gates


def test_predicted_objects_take_the_number_of_the_true_object_they_cover() -> None:
    """One nucleus, one colour in both panels: a predicted object takes its true object's
    number; of a split object only the larger part keeps it; leftovers get new numbers."""
    from unet_seg.visualize import match_objects

    truth = np.zeros((10, 30), np.int32)
    truth[:, 0:10], truth[:, 10:20], truth[:, 20:30] = 5, 2, 9
    pred = np.zeros_like(truth)
    pred[:, 0:10] = 7  # object 5, found whole
    pred[:, 10:16], pred[:, 16:20] = 3, 4  # object 2, split 6 : 4 columns
    pred[0:3, 22:28] = 8  # part of object 9
    pred[5:7, 22:28] = 1  # another part of object 9, smaller
    matched = match_objects(truth, pred)
    assert matched[0, 0] == 5 and matched[0, 12] == 2 and matched[0, 24] == 9
    others = {int(matched[0, 17]), int(matched[6, 24])}
    assert len(others) == 2 and min(others) > 9  # new numbers, after the true ones
    assert (matched[pred == 0] == 0).all()
    merged = np.where(truth > 0, 1, 0)  # one object over all three: takes one of them
    assert set(np.unique(match_objects(truth, merged))) in ({2}, {5}, {9})
