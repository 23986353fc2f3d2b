"""Evaluation scores against independent references: NumPy counts, SciPy boundary
distances (brute force), the pooled training metric, and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from unet_seg.metrics import SegmentationScores, confusion_counts, ratio_scores
from unet_seg.scores import ScoreBook
from unet_seg.surface import surface as boundary
from unet_seg.surface import surface_scores


def hd95(a: np.ndarray, b: np.ndarray) -> float:
    """HD95 in pixels (`surface_scores` at a spacing of 1), the one ScoreBook takes."""
    return surface_scores(a, b, (1.0,) * a.ndim)[0]


def blobs(shape: tuple[int, int], seed: int, n: int = 3) -> np.ndarray:
    """A boolean image of `n` random discs and rectangles."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros(shape, bool)
    for _ in range(n):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(2, max(3, h // 4))
        if rng.random() < 0.5:
            out |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        else:
            out[max(cy - r, 0) : cy + r, max(cx - r, 0) : cx + 2 * r] = True
    return out


def reference_hd95(a: np.ndarray, b: np.ndarray) -> float:
    """SciPy: boundaries by binary erosion (cross, outside = background), all-pairs distances."""
    cross = ndimage.generate_binary_structure(2, 1)
    edges = [m & ~ndimage.binary_erosion(m, cross, border_value=0) for m in (a, b)]
    points = [np.argwhere(e) for e in edges]
    d = cdist(points[0], points[1])
    return float(max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95)))


@pytest.mark.parametrize("seed", range(8))
def test_hd95_matches_a_scipy_brute_force_reference(seed: int) -> None:
    shape = (48, 64) if seed % 2 else (61, 37)
    a, b = blobs(shape, seed), blobs(shape, seed + 100)
    if not a.any() or not b.any():
        pytest.skip("empty draw")
    assert hd95(a, b) == pytest.approx(reference_hd95(a, b), abs=1e-3)
    assert hd95(b, a) == pytest.approx(hd95(a, b))


def test_hd95_of_a_shifted_square_is_the_shift() -> None:
    a = np.zeros((40, 40), bool)
    a[10:20, 10:20] = True
    b = np.roll(a, 3, axis=1)
    assert hd95(a, b) == pytest.approx(3.0)
    assert hd95(a, a) == 0.0
    assert hd95(a, np.zeros_like(a)) == pytest.approx(40 * 2**0.5)  # missed: the diagonal


def test_boundary_counts_the_image_edge_as_outside() -> None:
    full = np.ones((5, 6), bool)
    edge = boundary(full)
    assert edge.sum() == 2 * 5 + 2 * 6 - 4
    assert not edge[1:-1, 1:-1].any()


def test_confusion_counts_and_the_empty_class_rules() -> None:
    truth = np.array([[0, 0, 1, 1], [0, 2, 2, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 0]])
    counts = confusion_counts(pred, truth, num_classes=4)
    np.testing.assert_array_equal(counts[0], [2, 2, 0, 0])  # tp
    np.testing.assert_array_equal(counts[1], [3, 1, 0, 0])  # fp
    np.testing.assert_array_equal(counts[2], [1, 1, 2, 0])  # fn
    r = ratio_scores(counts)
    assert r["dice"][1] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert r["iou"][0] == pytest.approx(2 / 6)
    assert r["precision"][2] == 0.0 and r["recall"][2] == 0.0  # in truth, never predicted
    assert all(np.isnan(r[m][3]) for m in r)  # absent from both: left out
    assert ratio_scores(counts, empty=1.0)["dice"][3] == 1.0


def test_score_book_pooled_and_image_means() -> None:
    book = ScoreBook(["bg", "fg"])
    truth = np.zeros((10, 10), np.uint8)
    truth[:5] = 1  # 50 foreground pixels
    perfect = truth.copy()
    half = np.zeros_like(truth)
    half[:5, :5] = 1  # 25 of 50 found
    empty = np.zeros_like(truth)
    book.add("a", perfect, truth)
    book.add("b", half, truth)
    book.add("c", empty, empty)  # no foreground anywhere: left out of the foreground means
    s = book.summary()
    assert s["images"] == 3
    assert s["dice/image_mean/fg"] == pytest.approx((1 + 2 * 25 / (2 * 25 + 25)) / 2)
    assert s["n/dice/fg"] == 2 and s["n/dice/bg"] == 3
    assert s["dice/pooled/fg"] == pytest.approx(2 * 75 / (2 * 75 + 25))
    assert s["recall/pooled/fg"] == pytest.approx(75 / 100)
    assert s["precision/pooled/fg"] == 1.0
    assert s["dice/pooled/mean_fg"] == s["dice/pooled/fg"]
    assert s["hd95/image_mean/fg"] == pytest.approx(np.mean([0.0, hd95(half == 1, truth == 1)]))
    assert book.rows[2]["dice/fg"] != book.rows[2]["dice/fg"]  # NaN in the CSV row
    book.add("d", empty, truth)  # the class is missed entirely: Dice 0, HD95 the diagonal
    s = book.summary()
    assert book.rows[3]["hd95/fg"] == pytest.approx(200**0.5)
    assert s["missing/hd95/fg"] == 1 and s["n/hd95/fg"] == 3
    assert s["dice/image_mean/fg"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_pooled_dice_and_iou_equal_the_training_metric() -> None:
    rng = np.random.default_rng(0)
    names = ["bg", "a", "b"]
    book, metric = ScoreBook(names), SegmentationScores(names)
    for i in range(4):
        truth = rng.integers(0, 3, (20, 30))
        pred = np.where(rng.random((20, 30)) < 0.7, truth, rng.integers(0, 3, (20, 30)))
        book.add(str(i), pred, truth)
        metric.update(torch.from_numpy(pred), torch.from_numpy(truth))
    s, ref = book.summary(), metric.compute()
    for name in names:
        assert s[f"dice/pooled/{name}"] == pytest.approx(float(ref[f"dice/{name}"]), abs=1e-6)
        assert s[f"iou/pooled/{name}"] == pytest.approx(float(ref[f"iou/{name}"]), abs=1e-6)
    assert s["dice/pooled/mean_fg"] == pytest.approx(float(ref["dice"]), abs=1e-6)


def test_pooled_mean_foreground_scores_and_pixel_error_equal_the_training_metric() -> None:
    """What scoring the fold ensemble through ScoreBook relies on: pooled mean-foreground
    Dice and IoU and the pixel error are the training metric's, whatever the image sizes."""
    rng = np.random.default_rng(1)
    names = ["bg", "a", "b"]
    book, metric = ScoreBook(names), SegmentationScores(names)
    wrong = pixels = 0
    for i, shape in enumerate([(20, 30), (17, 23), (32, 9), (25, 25)]):
        classes = 2 if i == 1 else 3  # one image without class b at all
        truth = rng.integers(0, classes, shape)
        pred = np.where(rng.random(shape) < 0.7, truth, rng.integers(0, classes, shape))
        row = book.add(str(i), pred, truth)
        metric.update(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])
        assert row["pixel_error"] == pytest.approx(np.mean(pred != truth))
        wrong, pixels = wrong + np.count_nonzero(pred != truth), pixels + pred.size
    s, ref = book.summary(), metric.compute()
    assert s["dice/pooled/mean_fg"] == pytest.approx(float(ref["dice"]), abs=1e-6)
    assert s["iou/pooled/mean_fg"] == pytest.approx(float(ref["iou"]), abs=1e-6)
    assert s["pixel_error/pooled"] == pytest.approx(float(ref["pixel_error"]), abs=1e-6)
    assert s["pixel_error/pooled"] == pytest.approx(wrong / pixels)


def test_a_book_without_background_reports_the_mean_of_every_class() -> None:
    """`mean` over all classes in place of `mean_fg` (which would leave out a real class)."""
    truth = np.array([[0, 0, 1, 1], [2, 2, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 2, 1, 0]], np.uint8)
    names = ["sky", "road", "car"]
    every, foreground = ScoreBook(names, background=False), ScoreBook(names)
    for book in (every, foreground):
        book.add("a.png", pred, truth)
    got, fg = every.summary(), foreground.summary()
    dice = [got[f"dice/pooled/{n}"] for n in names]
    assert got["dice/pooled/mean"] == pytest.approx(np.mean(dice))
    assert "dice/pooled/mean_fg" not in got and "dice/pooled/mean" not in fg
    assert fg["dice/pooled/mean_fg"] == pytest.approx(np.mean(dice[1:]))
    assert every.rows[0]["dice/mean"] == pytest.approx(np.mean(dice))
