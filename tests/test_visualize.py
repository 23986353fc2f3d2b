"""Pictures: colours of classes and of errors, grid layout, attention gates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unet_seg.visualize import attention_strip, colorize, error_map, prediction_grid, to_rgb8


def test_colorize_binary_and_ignored() -> None:
    rgb = colorize(np.array([[0, 1, -1]]))
    assert rgb.tolist() == [[[0, 0, 0], [255, 255, 255], [128, 128, 128]]]
    assert colorize(np.array([[40]])).shape == (1, 1, 3)  # beyond the palette still works


def test_error_map_marks_false_positives_and_misses() -> None:
    truth = np.array([[0, 1, 0, 1, 2]])
    pred = np.array([[0, 1, 1, 0, 1]])
    rgb = error_map(truth, pred)
    assert rgb[0, 0].tolist() == [0, 0, 0]  # right background
    assert rgb[0, 1].tolist() == [85, 85, 85]  # right foreground, dimmed
    assert rgb[0, 2].tolist() == [255, 0, 0]  # false positive
    assert rgb[0, 3].tolist() == [0, 90, 255]  # miss
    assert rgb[0, 4].tolist() == [255, 225, 25]  # wrong class


def test_prediction_grid_layout() -> None:
    a = (to_rgb8(np.zeros((1, 4, 5))), np.zeros((4, 5), int), np.ones((4, 5), int))
    b = (to_rgb8(np.ones((3, 2, 3))), np.zeros((2, 3), int), np.zeros((2, 3), int))
    grid = prediction_grid([a, b], gap=2)
    assert grid.dtype == np.uint8
    assert grid.shape == (4 + 2 + 2 + 2, 4 * 5 + 3 * 2, 3)
    assert grid[0, 2 * 7 + 1].tolist() == [255, 255, 255]  # the third panel: predicted class 1


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
