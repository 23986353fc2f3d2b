"""Surface distances in mm: closed-form cases, a brute-force reference over every pair of
surface voxels, and the conventions for missed and absent structures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from unet_seg.surface import (
    hd95,
    mean_surface_distance,
    surface,
    surface_distances,
    worst_distance,
)


def cube(shape: tuple[int, ...], start: tuple[int, ...], side: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + side) for s in start)] = True
    return mask


def brute_force(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distances from each surface voxel of `a` to the nearest of `b`, on physical
    coordinates; surfaces by a hand-written face-neighbour test, not by erosion."""

    def edge_points(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, 1)
        inner = np.ones_like(mask)
        for axis in range(mask.ndim):
            for shift in (-1, 1):
                inner &= np.roll(padded, shift, axis)[tuple(slice(1, -1) for _ in mask.shape)]
        return np.argwhere(mask & ~inner) * np.asarray(spacing)

    return cKDTree(edge_points(b)).query(edge_points(a))[0]


def blobs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), 1.5) > 0.05


def test_two_cubes_offset_by_two_slices_at_anisotropic_spacing() -> None:
    """4x4x4 cubes, the second 2 slices deeper, slices 2 mm apart. Of each cube's 56 surface
    voxels, 24 lie on the other's surface (0 mm), 4 (cap centre, 1 slice in) are 1 mm from
    the other's side, 12 (the ring 1 slice in) 2 mm and 16 (the outer cap) 4 mm away, both
    ways: HD95 = 4 mm, MSD = (4 x 1 + 12 x 2 + 16 x 4) / 56 mm."""
    shape, spacing = (10, 8, 8), (2.0, 1.0, 1.0)
    a, b = cube(shape, (1, 2, 2), 4), cube(shape, (3, 2, 2), 4)
    to_b, to_a = surface_distances(a, b, spacing)
    for d in (to_b, to_a):
        values, counts = np.unique(d, return_counts=True)
        assert values.tolist() == [0, 1, 2, 4] and counts.tolist() == [24, 4, 12, 16]
    assert hd95(a, b, spacing) == pytest.approx(4.0, abs=1e-12)
    assert mean_surface_distance(a, b, spacing) == pytest.approx(92 / 56, abs=1e-12)
    # isotropic spacing halves every distance along z: the spacing is used, per axis
    assert mean_surface_distance(a, b, (1.0, 1.0, 1.0)) == pytest.approx(48 / 56, abs=1e-12)


def test_the_surface_is_face_connected_and_the_border_counts() -> None:
    assert surface(cube((6, 6, 6), (1, 1, 1), 4)).sum() == 64 - 8
    full = np.ones((3, 4, 5), bool)
    assert surface(full).sum() == full.size - 1 * 2 * 3  # the border is outside the mask
    plus = np.zeros((5, 5), bool)
    plus[2, 1:4] = plus[1:4, 2] = True
    assert surface(plus).sum() == 4  # the centre has all 4 face neighbours


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distances_agree_with_brute_force_on_random_blobs(seed: int) -> None:
    shape, spacing = (9, 14, 12), (2.5, 0.7, 1.1)
    pred, truth = blobs(shape, seed), blobs(shape, seed + 10)
    to_truth, to_pred = surface_distances(pred, truth, spacing)
    expected_to_truth, expected_to_pred = (
        brute_force(pred, truth, spacing),
        brute_force(truth, pred, spacing),
    )
    assert np.allclose(np.sort(to_truth), np.sort(expected_to_truth), atol=1e-6)
    assert np.allclose(np.sort(to_pred), np.sort(expected_to_pred), atol=1e-6)
    hd = max(np.percentile(expected_to_truth, 95), np.percentile(expected_to_pred, 95))
    msd = np.concatenate([expected_to_truth, expected_to_pred]).mean()
    assert hd95(pred, truth, spacing) == pytest.approx(hd, abs=1e-6)
    assert mean_surface_distance(pred, truth, spacing) == pytest.approx(msd, abs=1e-6)
    assert hd > 0 and msd > 0


def test_a_missed_structure_scores_the_diagonal_and_an_absent_one_nan() -> None:
    shape, spacing = (8, 16, 16), (3.0, 0.5, 0.5)
    diagonal = math.sqrt(24**2 + 8**2 + 8**2)
    assert worst_distance(shape, spacing) == pytest.approx(diagonal)
    truth, empty = cube(shape, (2, 4, 4), 3), np.zeros(shape, bool)
    for pred, target in ((empty, truth), (truth, empty)):  # missed; predicted where none is
        assert hd95(pred, target, spacing) == pytest.approx(diagonal)
        assert mean_surface_distance(pred, target, spacing) == pytest.approx(diagonal)
    assert math.isnan(hd95(empty, empty, spacing))
    assert math.isnan(mean_surface_distance(empty, empty, spacing))
    to_truth, to_pred = surface_distances(empty, truth, spacing)
    assert to_truth.size == 0 and np.isinf(to_pred).all() and to_pred.size == 27 - 1


def test_volume_scores_per_class_with_ignored_voxels() -> None:
    """`ScoreBook` scores a volume by these distances, in mm from its spacing."""
    from unet_seg.scores import ScoreBook

    shape, spacing = (8, 12, 12), (2.0, 1.0, 1.0)
    truth = np.zeros(shape, np.int64)
    truth[cube(shape, (1, 2, 2), 4)] = 1
    truth[cube(shape, (5, 7, 7), 3)] = 2  # class 2: missed by the prediction
    pred = np.zeros(shape, np.int64)
    pred[cube(shape, (3, 2, 2), 4)] = 1  # class 1: 2 slices deeper
    pred[0, 0, 0] = 3  # class 3: predicted in an unlabelled voxel only
    truth[0, 0, 0] = -1
    book = ScoreBook(["bg", "a", "b", "c", "d"], ignore_index=-1, case="volume")
    row = book.add("v", pred, truth, spacing)
    assert row["volume"] == "v"
    assert row["dice/a"] == pytest.approx(2 * 32 / 128)
    assert row["iou/a"] == pytest.approx(32 / 96)
    assert row["hd95/a"] == pytest.approx(4.0) and row["msd/a"] == pytest.approx(92 / 56)
    diagonal = worst_distance(shape, spacing)
    assert row["dice/b"] == 0 and row["hd95/b"] == row["msd/b"] == diagonal
    for name in ("dice", "iou", "hd95", "msd"):  # class c only where truth is ignored
        assert math.isnan(row[f"{name}/c"]) and math.isnan(row[f"{name}/d"])
    assert "hd95/bg" not in row and "msd/bg" not in row  # the background's surface: the others'
    assert 0 < row["dice/bg"] < 1
    summary = book.summary()
    assert summary["volumes"] == 1 and summary["missing/hd95/b"] == 1
    assert summary["hd95/pooled/a"] == pytest.approx(4.0)  # the distances where both are
    assert math.isnan(summary["hd95/pooled/b"])
    assert summary["msd/volume_mean/b"] == pytest.approx(diagonal)


def test_wrong_inputs_are_refused_all_at_once() -> None:
    a = np.zeros((4, 5, 6), np.int64)
    with pytest.raises(ValueError, match=r"differ in shape.*2 values for 3-D"):
        surface_distances(a.astype(bool), a[:3].astype(bool), (1.0, 1.0))
    with pytest.raises(ValueError, match="positive length"):
        hd95(a.astype(bool), a.astype(bool), (1.0, 0.0, 1.0))
