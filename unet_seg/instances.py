"""Instances: the three-class training target, its watershed decoding, and instance scores.

`data.target: instances` trains a net on three classes built from instance labels
(0 = background, 1..N = objects), as the U-Net paper's cell tracking entries and the
2018 Data Science Bowl winners did:

- background (0);
- interior (1): object pixels whose whole `(2w+1) x (2w+1)` neighbourhood lies in the
  same object (`w = boundary_width`);
- boundary (2): the other object pixels, the `w`-pixel rim of each object where it meets
  background or another object (two touching objects: a `2w`-pixel border between them).
  The image edge does not count as a boundary.

`decode_instances` turns the net's probabilities back into numbered objects: the
connected regions of confident interior (probability above `seed_threshold`) seed a
watershed (scikit-image) that floods the foreground (background probability below 0.5)
over the boundary probability; foreground regions no seed reaches become objects of
their own, and objects under `min_size` pixels are dropped. A seed threshold well above
0.5 keeps two touching objects apart where the net's interior leaks faintly across the
border between them.

The scores (`instance_scores`) match predicted and true objects one-to-one at IoU > t
(for t >= 0.5 each object has at most one partner, so no assignment is needed):

- AP over thresholds, as the 2018 Data Science Bowl defined it: at each IoU threshold
  t in 0.5, 0.55, ..., 0.95, TP(t) / (TP(t) + FP(t) + FN(t)), averaged over the ten;
- F1 at 0.5: 2 TP / (2 TP + FP + FN);
- panoptic quality (Kirillov et al., 2019): PQ = SQ x RQ, SQ the mean IoU of the pairs
  matched at 0.5, RQ = F1 at 0.5.

An image with no true and no predicted object scores 1 everywhere (nothing to find,
nothing found); one side empty scores 0 (SQ: NaN, no pair to average over).
Every count comes from one joint histogram of the label pairs (`overlaps`), never from
a loop over objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from omegaconf import OmegaConf
from PIL import Image
from scipy import ndimage
from skimage.segmentation import watershed

from unet_seg.config import CONF_DIR
from unet_seg.data.masks import write_png
from unet_seg.data.weight_map import consecutive_labels, object_edges

INSTANCE_CLASSES = ("background", "interior", "boundary")
"""The classes of an instance target, in class-index order."""

THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""The IoU thresholds of the 2018 Data Science Bowl metric: 0.5, 0.55, ..., 0.95."""

INSTANCE_SCORES = ("ap", "f1@0.5", "pq", "sq", "rq",
                   *(f"ap@{t:.2f}" for t in THRESHOLDS))  # fmt: skip
"""The keys of `instance_scores`, in report order."""

RULES = (
    "objects are matched one-to-one at IoU > t; ap: TP / (TP + FP + FN) at each t in 0.5, "
    "0.55, ..., 0.95, averaged (the 2018 Data Science Bowl metric); f1@0.5: 2 TP / (2 TP + "
    "FP + FN) at 0.5; pq = sq x rq, sq the mean IoU of the pairs matched at 0.5, rq = f1@0.5.",
    "image_mean: the mean of per-image scores; pooled: TP, FP, FN (and matched IoU) summed "
    "over images first. An image with no true and no predicted object scores 1; with one "
    "side empty 0 (sq: none, left out of the mean).",
)
"""How the instance scores are computed and reduced (written into evaluation JSONs)."""

DEFAULT_INSTANCES = dict(OmegaConf.load(Path(CONF_DIR) / "data" / "folder.yaml")["instances"])
"""`data.instances` defaults, read from their one home, `conf/data/folder.yaml` (with a
comment on each): boundary rim width (pixels), the smallest object kept (pixels), the
interior probability above which pixels seed the watershed (0.7: chosen on the validation
split of `experiments/instances`), and whether training weighs the cross-entropy by the
U-Net weight map of the objects' interiors. A checkpoint saved without a key takes it
from here."""


def instance_settings(settings: dict | None) -> dict:
    """Checked `data.instances` (defaults filled in), naming a wrong key or value."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(DEFAULT_INSTANCES))
    if unknown:
        raise ValueError(
            f"data.instances: unknown keys {unknown}; known: {list(DEFAULT_INSTANCES)}"
        )
    out = {**DEFAULT_INSTANCES, **settings}
    out = {"boundary_width": int(out["boundary_width"]), "min_size": int(out["min_size"]),
           "seed_threshold": float(out["seed_threshold"]),
           "weight_map": bool(out["weight_map"])}  # fmt: skip
    if out["boundary_width"] < 1 or out["min_size"] < 0 or not 0 <= out["seed_threshold"] < 1:
        raise ValueError(
            "data.instances needs boundary_width >= 1, min_size >= 0 and 0 <= seed_threshold "
            f"< 1, got {out}"
        )
    return out


def instance_target(instances: np.ndarray, boundary_width: int = 1) -> np.ndarray:
    """Instance labels `[H, W]` (0 = background) -> uint8 classes 0 background, 1 interior,
    2 boundary (see the module docstring)."""
    labels, n = consecutive_labels(instances)
    target = (labels > 0).astype(np.uint8)
    if n == 0:
        return target
    target[object_edges(labels, n, boundary_width, background=True)] = 2
    return target


def components(foreground: np.ndarray) -> np.ndarray:
    """A foreground `[H, W]` (bool, or class indices > 0) -> its 8-connected objects, int32
    labels 1..N in raster order of their first pixel."""
    _, labels = cv2.connectedComponents((foreground > 0).astype(np.uint8), connectivity=8)
    return labels.astype(np.int32)


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Objects of fewer than `min_size` pixels set to 0; the rest renumbered 1..N in order."""
    areas = np.bincount(labels.ravel())
    keep = areas >= max(1, min_size)
    keep[0] = False
    new_ids = np.cumsum(keep).astype(np.int32) * keep  # old label -> new label (0: dropped)
    return new_ids[labels]


def decode_instances(
    probs: np.ndarray, min_size: int = 16, seed_threshold: float = 0.7
) -> np.ndarray:
    """Probabilities `[3, H, W]` (background, interior, boundary) -> int32 object labels
    `[H, W]` (0 = background, 1..N), by a seeded watershed (see the module docstring).

    Deterministic: seeds are numbered in raster order, and scikit-image's watershed breaks
    ties by the order pixels enter its queue.
    """
    if probs.ndim != 3 or probs.shape[0] != len(INSTANCE_CLASSES):
        raise ValueError(
            f"instance decoding needs probabilities [3, H, W] of {list(INSTANCE_CLASSES)}, "
            f"got {list(probs.shape)}"
        )
    foreground = probs[0] < 0.5
    seeds, n = ndimage.label(probs[1] > seed_threshold)  # 4-connected: a diagonal touch: 2
    labels = watershed(probs[2], seeds, mask=foreground).astype(np.int32)
    orphans = foreground & (labels == 0)  # foreground no seed reached: objects of their own
    if orphans.any():
        extra = components(orphans)
        labels = np.where(extra > 0, extra + n, labels)
    return remove_small(labels, min_size)


def write_objects(folder: Path, stem: str, objects: np.ndarray) -> Path:
    """Object labels `[H, W]` -> `folder/<stem>.png` (uint16; 0 = background), or a 32-bit
    `<stem>.tif` past 65535 objects; returns the file written."""
    if int(objects.max(initial=0)) <= 65535:
        return write_png(Path(folder) / f"{stem}.png", objects.astype(np.uint16))
    path = Path(folder) / f"{stem}.tif"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(objects.astype(np.int32)).save(path)  # mode I: 32-bit integers
    return path


def overlaps(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The IoU of every overlapping (true, predicted) object pair, from one joint histogram.

    Args:
        pred, truth: integer label maps `[H, W]` (0 = background; any object numbers).
    Returns:
        `(iou [P] float64 of the P overlapping pairs, their true object index [P] (0-based),
        number of true objects, number of predicted objects)`.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ")
    t, n_true = consecutive_labels(truth)
    p, n_pred = consecutive_labels(pred)
    area_true = np.bincount(t.ravel(), minlength=n_true + 1)
    area_pred = np.bincount(p.ravel(), minlength=n_pred + 1)
    both = (t > 0) & (p > 0)
    codes = t[both].astype(np.int64) * (n_pred + 1) + p[both]
    pairs, inter = np.unique(codes, return_counts=True)
    ti, pi = np.divmod(pairs, n_pred + 1)
    union = area_true[ti] + area_pred[pi] - inter
    return inter / union, ti - 1, n_true, n_pred


def match_counts(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray | int | float]:
    """TP per threshold of `THRESHOLDS` `[10]`, the true and predicted object counts, and the
    summed IoU of the pairs matched at 0.5 (for SQ): what `instance_scores` needs, and what
    adds up over images."""
    iou, _, n_true, n_pred = overlaps(pred, truth)
    tp = (iou[None, :] > np.asarray(THRESHOLDS)[:, None]).sum(1)  # [10]
    return {"tp": tp, "true": n_true, "pred": n_pred, "iou_sum": float(iou[iou > 0.5].sum())}


def scores_from_counts(counts: dict) -> dict[str, float]:
    """`match_counts` (of one image, or summed over images) -> `INSTANCE_SCORES`."""
    tp = np.asarray(counts["tp"], np.float64)
    fp, fn = counts["pred"] - tp, counts["true"] - tp
    if counts["true"] == 0 and counts["pred"] == 0:
        return dict.fromkeys(INSTANCE_SCORES, 1.0)
    ap = tp / (tp + fp + fn)  # [10]; the denominator is > 0 when either side has objects
    f1 = 2 * tp[0] / (2 * tp[0] + fp[0] + fn[0])
    sq = counts["iou_sum"] / tp[0] if tp[0] else float("nan")
    out = {"ap": float(ap.mean()), "f1@0.5": float(f1), "sq": float(sq), "rq": float(f1),
           "pq": float(sq * f1) if tp[0] else 0.0}  # fmt: skip
    out.update({f"ap@{t:.2f}": float(a) for t, a in zip(THRESHOLDS, ap, strict=True)})
    return {k: out[k] for k in INSTANCE_SCORES}


def instance_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """AP over IoU 0.5..0.95, F1@0.5, PQ, SQ and RQ of predicted against true object labels
    `[H, W]` (see the module docstring)."""
    return scores_from_counts(match_counts(pred, truth))


class InstanceBook:
    """Per-image instance scores and their two reductions over an evaluation:
    `image_mean` (the mean of per-image scores: the 2018 Data Science Bowl's AP) and
    `pooled` (TP, FP, FN and matched IoU summed over all images first)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.total = {"tp": np.zeros(len(THRESHOLDS), np.int64), "true": 0, "pred": 0,
                      "iou_sum": 0.0}  # fmt: skip

    def add(self, pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        """Score one image's object labels; return its scores (`INSTANCE_SCORES`)."""
        counts = match_counts(pred, truth)
        for key in self.total:
            self.total[key] = self.total[key] + counts[key]
        row = scores_from_counts(counts)
        self.rows.append(row)
        return row

    def summary(self) -> dict[str, float]:
        """`instances/<score>/image_mean` and `instances/<score>/pooled`."""
        pooled = scores_from_counts(self.total)
        out = {}
        for key in INSTANCE_SCORES:
            out[f"instances/{key}/image_mean"] = _nanmean([r[key] for r in self.rows])
            out[f"instances/{key}/pooled"] = pooled[key]
        return out


def _nanmean(values: Sequence[float]) -> float:
    values = np.asarray(values, np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")
