"""Post-processing on hand-made label maps."""

from __future__ import annotations

import numpy as np

from unet_seg.postprocess import PostProcess, fill_holes, keep_largest, remove_small_objects


def canvas() -> np.ndarray:
    return np.zeros((12, 14), np.uint8)


def test_remove_small_objects_per_class() -> None:
    labels = canvas()
    labels[1:3, 1:3] = 1  # 4 px of class 1
    labels[5:9, 5:9] = 1  # 16 px of class 1
    labels[1:3, 10:12] = 2  # 4 px of class 2
    labels[10, 0] = labels[11, 1] = 2  # 2 px touching at a corner: one 8-connected object
    out = remove_small_objects(labels, min_size=5)
    expected = labels.copy()
    expected[1:3, 1:3] = 0
    expected[1:3, 10:12] = 0
    expected[10, 0] = expected[11, 1] = 0
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(remove_small_objects(labels, min_size=3), np.where(
        (labels == 2) & (np.arange(12)[:, None] >= 10), 0, labels))  # fmt: skip
    assert labels[1, 1] == 1  # the input is not modified


def test_fill_holes_fills_enclosed_background_only() -> None:
    labels = canvas()
    labels[1:6, 1:6] = 1
    labels[2:5, 2:5] = 0  # a 3x3 hole inside class 1
    labels[3, 3] = 2  # holding an object of class 2
    labels[7:12, 8:14] = 1
    labels[9:12, 10:12] = 0  # a notch open to the image border: not a hole
    out = fill_holes(labels)
    expected = labels.copy()
    expected[2:5, 2:5] = 1
    expected[3, 3] = 2
    np.testing.assert_array_equal(out, expected)


def test_fill_holes_leaves_a_region_enclosed_by_two_classes() -> None:
    labels = canvas()
    labels[2:7, 2:5] = 1
    labels[2:7, 5:8] = 2
    labels[3:6, 4:6] = 0  # bordered by class 1 on the left and class 2 on the right
    np.testing.assert_array_equal(fill_holes(labels), labels)


def test_keep_largest_keeps_one_object_per_class() -> None:
    labels = canvas()
    labels[0:2, 0:2] = 1
    labels[4:9, 4:9] = 1
    labels[10:12, 0:3] = 2
    labels[0, 12] = 2
    out = keep_largest(labels)
    expected = labels.copy()
    expected[0:2, 0:2] = 0
    expected[0, 12] = 0
    np.testing.assert_array_equal(out, expected)


def test_postprocess_runs_the_steps_in_order() -> None:
    labels = canvas()
    labels[1:8, 1:8] = 1
    labels[3:5, 3:5] = 0  # a hole
    labels[10, 10:13] = 1  # a 3 px speck
    steps = PostProcess(min_size=4, fill_holes=True, keep_largest=True)
    out = steps(labels)
    expected = canvas()
    expected[1:8, 1:8] = 1
    np.testing.assert_array_equal(out, expected)
    assert not PostProcess().active
    np.testing.assert_array_equal(PostProcess()(labels), labels)


def test_the_steps_act_in_3d_and_match_2d_on_a_one_slice_volume() -> None:
    """One post-processing for every rank (the volume twin is gone): objects fully connected
    (26 in 3-D), the background around a hole face-connected (6), sizes in voxels; a
    `[1, H, W]` volume is post-processed exactly as its `[H, W]` image."""
    labels = np.zeros((5, 8, 8), np.uint8)
    labels[1:4, 1:5, 1:5] = 1  # a 3x4x4 block: 48 voxels...
    labels[2, 2:4, 2:4] = 0  # ...around a 4-voxel cavity
    labels[4, 5, 5] = 1  # touching the block by a corner only: the same object
    labels[0, 7, 7] = 1  # a lone voxel
    labels[3, 7, 0] = 2  # a lone voxel of class 2
    out = remove_small_objects(labels, min_size=2)
    assert out[4, 5, 5] == 1 and out[0, 7, 7] == 0 and out[3, 7, 0] == 0
    filled = fill_holes(labels)
    assert (filled[2, 2:4, 2:4] == 1).all() and filled[0, 0, 0] == 0
    notch = labels.copy()
    notch[2, 2:4, 0:4] = 0  # the cavity opened to the border through a face: not a hole
    assert (fill_holes(notch)[2, 2:4, 2:4] == 0).all()
    largest = keep_largest(labels)
    assert largest[0, 7, 7] == 0 and largest[4, 5, 5] == 1 and largest[3, 7, 0] == 2
    steps = PostProcess(min_size=2, fill_holes=True, keep_largest=True)
    image = canvas()
    image[1:8, 1:8] = 1
    image[3:5, 3:5] = 0
    image[10, 10:13] = 1
    image[0, 12] = 2
    np.testing.assert_array_equal(steps(image[None])[0], steps(image))
    assert steps(image[None]).shape == (1, *image.shape)


def test_a_volume_cavity_touching_the_object_by_an_edge_is_a_hole() -> None:
    """The background is face-connected: a cavity whose only way out is across an edge of
    the object's voxels (diagonal in a plane) stays enclosed and is filled."""
    labels = np.ones((5, 5, 5), np.uint8)
    labels[2, 2, 2] = 0  # the cavity
    labels[1, 1, 2] = 0  # an edge-neighbour of the cavity, open to nothing by a face
    labels[0, 0, 2] = 0  # and one more, on the border, edge-adjacent to the last
    out = fill_holes(labels)
    assert out[2, 2, 2] == 1 and out[1, 1, 2] == 1 and out[0, 0, 2] == 0
