"""Pictures: colours of classes and of errors, grid layout."""

from __future__ import annotations

import numpy as np

from unet_seg.visualize import colorize, error_map, prediction_grid, to_rgb8


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
