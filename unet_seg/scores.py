"""Evaluation scores per image and pooled: Dice, IoU, precision, recall (from pixel counts)
and the 95th-percentile Hausdorff distance HD95 (from boundary distances), per class, and
the pixel error. The counts and the scores from counts are those of the training metric
(`unet_seg.metrics`). The rules for empty classes and reductions are in `RULES` (also
written into every evaluation JSON).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from unet_seg.data.masks import PAD_LABEL
from unet_seg.data.weight_map import consecutive_labels, touching_border
from unet_seg.metrics import confusion_counts, pixel_error, ratio_scores

RATIO_METRICS = ("dice", "iou", "precision", "recall")
METRICS = (*RATIO_METRICS, "hd95")
REDUCTIONS = ("pooled", "image_mean")

RULES = (
    "pooled: pixel counts summed over all evaluated images (the training metric's "
    "reduction); a class absent from every truth and every prediction scores 1.",
    "image_mean: the mean of per-image scores; an image where a class is absent from both "
    "truth and prediction is left out of that class's mean (an empty CSV cell); n/<metric>/"
    "<class> says how many images each mean covers.",
    "precision with no predicted pixel of a class (but some in truth) is 0, and so is recall "
    "with no true pixel (but some predicted).",
    "hd95 (pixels): the larger of the two directed 95th percentiles of the distances between "
    "the boundary pixels of truth and prediction (MONAI's percentile=95); boundary pixels have "
    "a 4-neighbour outside the region, the image edge counting as outside. It needs the class "
    "in both truth and prediction: other images are left out of its mean, and those where only "
    "one of them has the class are counted in missing/hd95/<class>. Pooled HD95 takes the "
    "percentiles over the distances of all images together.",
    "mean_fg: the mean over the foreground classes 1..K-1 (class 0 is the background); where "
    "the data has no background (data.background=false) it is mean, over all K classes.",
    "unlabelled truth pixels (data.ignore_value) count in no score: not in the pixel counts, "
    "and HD95 measures the prediction on labelled pixels only.",
    "pixel_error: the share of misclassified pixels, 1 - sum(TP) / sum(TP + FN) over the "
    "classes: per image in the CSV, and pixel_error/pooled over the pixels of all images (the "
    "training metric's pixel_error).",
)
"""How every score is reduced and what an empty class scores."""


_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def boundary(region: np.ndarray) -> np.ndarray:
    """Boolean `[H, W]` -> its boundary: pixels of the region with a 4-neighbour outside it."""
    inside = region.astype(np.uint8)
    eroded = cv2.erode(inside, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return inside.astype(bool) & ~eroded.astype(bool)


def surface_distances(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Euclidean distance from each boundary pixel of `source` to the nearest boundary pixel
    of `target` (both boolean `[H, W]`, non-empty). Returns `[N]` float64."""
    to_target = cv2.distanceTransform(
        (~boundary(target)).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
    )  # [H, W] distance to the nearest zero pixel, i.e. to target's boundary
    return to_target[boundary(source)].astype(np.float64)


def directed_distances(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boundary distances pred -> truth and truth -> pred (see `surface_distances`) of two
    boolean `[H, W]` regions; both empty unless both regions are non-empty."""
    if not pred.any() or not truth.any():
        return np.empty(0), np.empty(0)
    return surface_distances(pred, truth), surface_distances(truth, pred)


def hd95_from_distances(forward: np.ndarray, backward: np.ndarray) -> float:
    """The larger of the 95th percentiles of the two directed distances; NaN without any."""
    if not forward.size or not backward.size:
        return float("nan")
    return float(max(np.percentile(forward, 95), np.percentile(backward, 95)))


def hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    """95th-percentile Hausdorff distance in pixels between two boolean `[H, W]` regions.

    Returns NaN unless both regions are non-empty (see the module rules).
    """
    return hd95_from_distances(*directed_distances(pred, truth))


def mean_key(background: bool) -> str:
    """The name of the classes' mean in a score key (`dice/pooled/<it>`): `mean_fg` over
    classes 1..K-1 when class 0 is the background, else `mean` over all K."""
    return "mean_fg" if background else "mean"


class ScoreBook:
    """Accumulates per-image rows and pooled statistics over an evaluation.

    Args:
        class_names: one per class index.
        ignore_index: truth value of unlabelled pixels (`PAD_LABEL`, as
            `MaskEncoding.load` marks `data.ignore_value`): no score counts them.
        background: class 0 is the background: the means (`mean_fg`) are over classes
            1..K-1; else over all K, named `mean`.
    """

    def __init__(
        self, class_names: Sequence[str], ignore_index: int = PAD_LABEL, background: bool = True
    ) -> None:
        self.ignore_index = ignore_index
        self.class_names = list(class_names)
        self.mean_name = mean_key(background)
        self.scored = self.class_names[1:] if background else list(self.class_names)
        self.num_classes = len(self.class_names)
        self.counts = np.zeros((3, self.num_classes), dtype=np.int64)
        self.rows: list[dict[str, float | str]] = []
        # directed boundary distances of all images, per class: (pred -> truth, truth -> pred)
        self.distances: list[tuple[list[np.ndarray], list[np.ndarray]]] = [
            ([], []) for _ in range(self.num_classes)
        ]

    def add(self, name: str, pred: np.ndarray, truth: np.ndarray) -> dict[str, float | str]:
        """Score one image (class indices `[H, W]` each); return its row (`metric/class`).
        Unlabelled truth pixels are left out: of the counts, and of the predicted regions
        whose boundaries HD95 measures."""
        counts = confusion_counts(pred, truth, self.num_classes, self.ignore_index)
        labelled = truth != self.ignore_index
        self.counts += counts
        row: dict[str, float | str] = {"image": name}
        ratios = ratio_scores(counts)
        for c, cls in enumerate(self.class_names):
            for metric in RATIO_METRICS:
                row[f"{metric}/{cls}"] = float(ratios[metric][c])
            forward, backward = directed_distances((pred == c) & labelled, truth == c)
            row[f"hd95/{cls}"] = hd95_from_distances(forward, backward)
            if forward.size:
                self.distances[c][0].append(forward.astype(np.float32))
                self.distances[c][1].append(backward.astype(np.float32))
        fg = [row[f"dice/{cls}"] for cls in self.scored]
        row[f"dice/{self.mean_name}"] = _nanmean(fg)
        row["pixel_error"] = float(pixel_error(counts))
        self.rows.append(row)
        return row

    def summary(self) -> dict[str, float]:
        """Flat scores `metric/reduction/class` (classes and `mean_fg` or `mean`), with
        `n/...` counts, and `pixel_error/pooled`."""
        out: dict[str, float] = {"images": len(self.rows)}
        pooled = ratio_scores(self.counts, empty=1.0)
        pooled["hd95"] = np.array([self._pooled_hd95(c) for c in range(self.num_classes)])
        for metric in METRICS:
            for c, cls in enumerate(self.class_names):
                values = [r[f"{metric}/{cls}"] for r in self.rows]
                out[f"{metric}/pooled/{cls}"] = float(pooled[metric][c])
                out[f"{metric}/image_mean/{cls}"] = _nanmean(values)
                out[f"n/{metric}/{cls}"] = int(np.count_nonzero(~np.isnan(values)))
            for reduction in REDUCTIONS:
                fg = [out[f"{metric}/{reduction}/{cls}"] for cls in self.scored]
                out[f"{metric}/{reduction}/{self.mean_name}"] = _nanmean(fg)
        for cls in self.class_names:
            out[f"missing/hd95/{cls}"] = sum(
                1 for r in self.rows
                if np.isnan(r[f"hd95/{cls}"]) and not np.isnan(r[f"dice/{cls}"])
            )  # fmt: skip
        out["pixel_error/pooled"] = float(pixel_error(self.counts))
        return out

    def _pooled_hd95(self, c: int) -> float:
        forward, backward = self.distances[c]
        if not forward:
            return float("nan")
        return hd95_from_distances(np.concatenate(forward), np.concatenate(backward))


def _nanmean(values: Sequence[float]) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


OBJECT_COUNTS = ("true_objects", "predicted_objects", "matched", "merged", "split", "missed",
                 "false_positives", "touching", "touching_matched", "touching_pairs",
                 "touching_pairs_separated")  # fmt: skip
"""The keys of `object_counts`, in report order."""


def object_counts(
    pred: np.ndarray,
    instances: np.ndarray,
    iou_threshold: float = 0.5,
    connectivity: int = 8,
    labelled: bool = False,
) -> dict[str, int]:
    """How many true objects come out as objects of their own in a predicted foreground.

    The predicted objects are the connected components of `pred` (8-connected by
    default, so a separating gap must be 4-connected background), or with `labelled`
    the objects `pred` numbers (an instance prediction). A true object
    is *matched* when one component has IoU > `iou_threshold` with it (with 0.5
    or more each object matches at most one component and vice versa). Every
    true object falls into exactly one class:

    - matched: IoU > threshold with a component;
    - merged: not matched, and its main component (the one overlapping it most)
      is also the main component of another true object;
    - split: neither, and 2 or more components have it as their main true object;
    - missed: the rest (nothing, or one poor component, there).

    A component is a false positive when it is matched to nothing and fewer than
    half of its pixels lie on true objects. `touching` counts the true objects
    with an 8-neighbour pixel in another object, `touching_matched` those of
    them that are matched; `touching_pairs` counts the pairs of 8-adjacent
    objects, `touching_pairs_separated` the pairs whose two objects are both
    matched (and so lie in two different components).

    Args:
        pred: `[H, W]` predicted foreground (bool, or class indices > 0), or with
            `labelled` predicted object labels (0 = background).
        instances: `[H, W]` true instance labels (0 = background, 1..N).
        iou_threshold: at least 0.5.
        connectivity: 4 or 8, for the predicted components.
        labelled: `pred` numbers its objects: take them as they are.
    Returns:
        `{key: count}` for the keys of `OBJECT_COUNTS`.
    """
    if pred.shape != instances.shape:
        raise ValueError(f"prediction {pred.shape} and instances {instances.shape} differ")
    if iou_threshold < 0.5:
        raise ValueError(f"iou_threshold must be >= 0.5 (one-to-one matches), got {iou_threshold}")
    truth, n_true = consecutive_labels(instances)
    if labelled:
        comp, n_pred = consecutive_labels(pred)
        n_comp = n_pred + 1
    else:
        n_comp, comp = cv2.connectedComponents((pred > 0).astype(np.uint8),
                                               connectivity=connectivity)  # fmt: skip
        n_pred = n_comp - 1
    pairs = truth.ravel().astype(np.int64) * n_comp + comp.ravel()
    overlap = np.bincount(pairs, minlength=(n_true + 1) * n_comp).reshape(n_true + 1, n_comp)
    inter = overlap[1:, 1:]  # [true, component] shared pixels, background row/column dropped
    area_true, area_pred = overlap[1:].sum(1), overlap[:, 1:].sum(0)
    union = area_true[:, None] + area_pred[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)
    matched = (iou > iou_threshold).any(1) if n_pred else np.zeros(n_true, bool)
    comp_matched = (iou > iou_threshold).any(0) if n_true else np.zeros(n_pred, bool)

    counts = dict.fromkeys(OBJECT_COUNTS, 0)
    counts.update(true_objects=n_true, predicted_objects=n_pred, matched=int(matched.sum()))
    if n_pred:
        hits = inter.sum(0)  # pixels of each component on true objects
        counts["false_positives"] = int((~comp_matched & (2 * hits < area_pred)).sum())
    if n_true and n_pred:
        has_main = inter.max(1) > 0
        main = np.where(has_main, inter.argmax(1), -1)  # each truth's main component
        shared = np.bincount(main[has_main], minlength=n_pred) >= 2
        merged = ~matched & has_main & shared[np.maximum(main, 0)]
        comp_main = np.where(inter.max(0) > 0, inter.argmax(0), -1)  # each component's truth
        pieces = np.bincount(comp_main[comp_main >= 0], minlength=n_true)
        split = ~matched & ~merged & (pieces >= 2)
        counts.update(merged=int(merged.sum()), split=int(split.sum()))
    counts["missed"] = n_true - counts["matched"] - counts["merged"] - counts["split"]
    if n_true:
        touching = np.zeros(n_true + 1, bool)
        touching[np.unique(truth[touching_border(truth)])] = True
        counts["touching"] = int(touching[1:].sum())
        counts["touching_matched"] = int((touching[1:] & matched).sum())
        pairs = adjacent_pairs(truth)
        counts["touching_pairs"] = len(pairs)
        counts["touching_pairs_separated"] = int(
            sum(matched[a - 1] and matched[b - 1] for a, b in pairs)
        )
    return counts


def adjacent_pairs(labels: np.ndarray) -> list[tuple[int, int]]:
    """Pairs `(a, b)`, a < b, of different non-zero labels that are 8-neighbours somewhere."""
    labels = labels.astype(np.int64)
    h, w = labels.shape
    found = set()
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # each neighbour relation once
        a = labels[: h - dy, max(0, -dx) : w - max(0, dx)]
        b = labels[dy:, max(0, dx) : w - max(0, -dx)]  # the neighbour at (+dy, +dx)
        touch = (a > 0) & (b > 0) & (a != b)
        lo, hi = np.minimum(a[touch], b[touch]), np.maximum(a[touch], b[touch])
        found.update(zip(lo.tolist(), hi.tolist(), strict=True))
    return sorted(found)
