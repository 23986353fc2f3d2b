"""score.py against unet-seg's own metrics: `pytest -q experiments/camvid/test_score.py`.

Kept beside the experiment (not in tests/): it needs no CamVid download, only tmp_path.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unet_seg.metrics import SegmentationScores, confusion_counts

_spec = importlib.util.spec_from_file_location("camvid_score", Path(__file__).with_name("score.py"))
score = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(score)

K, VOID = len(score.CLASSES), score.VOID


def _pair(rng: np.random.Generator, shape=(12, 16)) -> tuple[np.ndarray, np.ndarray]:
    truth = rng.integers(0, K + 1, shape)  # 0..11: 11 is void
    pred = np.where(rng.random(shape) < 0.6, np.minimum(truth, K - 1), rng.integers(0, K, shape))
    return pred, truth


def test_matrix_matches_confusion_counts_and_by_hand() -> None:
    pred = np.array([[0, 1, 1], [2, 2, 10]])
    truth = np.array([[0, 1, 2], [2, VOID, 10]])
    m = score.confusion_matrix(pred, truth)
    assert m.sum() == 5  # the void pixel is left out
    assert m[2, 1] == 1 and m[2, 2] == 1 and m[0, 0] == m[1, 1] == m[10, 10] == 1
    rng = np.random.default_rng(0)
    total, counts = np.zeros((K, K), np.int64), np.zeros((3, K), np.int64)
    for _ in range(5):
        p, t = _pair(rng)
        total += score.confusion_matrix(p, t)
        counts += confusion_counts(p, t, K, VOID)
    tp = np.diag(total)
    np.testing.assert_array_equal(np.stack([tp, total.sum(0) - tp, total.sum(1) - tp]), counts)


def test_scores_match_segmentation_scores() -> None:
    """IoU per class and pixel accuracy equal the training metric's on the same pixels;
    mIoU is the mean over all 11 classes (the metric's mean leaves class 0 out)."""
    import torch

    rng = np.random.default_rng(1)
    p, t = _pair(rng, (3, 20, 24))
    result = score.scores(score.confusion_matrix(p, t))
    metric = SegmentationScores(score.CLASSES, ignore_index=VOID)
    metric.update(torch.from_numpy(p), torch.from_numpy(t))
    ref = metric.compute()
    for name in score.CLASSES:
        assert result["iou"][name] == pytest.approx(float(ref[f"iou/{name}"]), abs=1e-6)
    assert result["pixel_accuracy"] == pytest.approx(1 - float(ref["pixel_error"]), abs=1e-6)
    assert result["miou"] == pytest.approx(np.mean(list(result["iou"].values())))


def test_score_folder_reads_palette_and_grey_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    (tmp_path / "masks").mkdir()
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    names, expected = ["a.png", "b.png"], np.zeros((K, K), np.int64)
    for i, name in enumerate(names):
        p, t = _pair(rng)
        Image.fromarray(t.astype(np.uint8)).save(tmp_path / "masks" / name)
        image = Image.fromarray(p.astype(np.uint8))
        if i == 0:  # as unet_seg.predict writes them: a palette PNG of indices
            image = Image.fromarray(p.astype(np.uint8), mode="P")
            image.putpalette([v for c in range(256) for v in (c, 255 - c, (7 * c) % 256)])
        image.save(pred_dir / name)
        expected += score.confusion_matrix(p, t)
    (tmp_path / "split.json").write_text(json.dumps({"train": [], "test": names}))
    result = score.score_folder(pred_dir, tmp_path)
    np.testing.assert_array_equal(np.array(result["confusion"]), expected)
    (pred_dir / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="no prediction for 1 of 2"):
        score.score_folder(pred_dir, tmp_path)


def test_refuses_colour_masks_and_out_of_range_predictions(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="not class indices"):
        score.read_indices(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="outside 0..10"):
        score.confusion_matrix(np.full((2, 2), 11), np.zeros((2, 2), np.int64))
