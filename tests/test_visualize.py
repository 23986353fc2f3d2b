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
