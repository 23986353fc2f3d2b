"""Evaluation scores per case and pooled, for images and volumes alike: Dice, IoU,
precision, recall (from pixel or voxel counts), the 95th-percentile Hausdorff distance
HD95 and the mean surface distance MSD (from surface distances, `unet_seg.surface`: in
pixels for images, in millimetres for volumes), per class, and the pixel error. The counts
and the scores from counts are those of the training metric (`unet_seg.metrics`). The rules
for empty classes and reductions are in `RULES` (also written into every evaluation JSON).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from unet_seg.data.masks import PAD_LABEL
from unet_seg.data.weight_map import consecutive_labels, touching_border
from unet_seg.metrics import confusion_counts, pixel_error, ratio_scores
from unet_seg.surface import distance_scores, surface_scores

RATIO_METRICS = ("dice", "iou", "precision", "recall")
DISTANCE_METRICS = ("hd95", "msd")
METRICS = (*RATIO_METRICS, *DISTANCE_METRICS)

RULES = (
    "pooled: pixel (voxel) counts summed over all evaluated cases (the training metric's "
    "reduction); a class absent from every truth and every prediction scores 1.",
    "image_mean / volume_mean: the mean of per-case scores; a case where a class is absent "
    "from both truth and prediction is left out of that class's mean (an empty CSV cell); "
    "n/<metric>/<class> says how many cases each mean covers. For volumes this is the mean "
    "over volumes of training's val/volume_dice (nnU-Net's convention).",
    "precision with no predicted pixel of a class (but some in truth) is 0, and so is recall "
    "with no true pixel (but some predicted).",
    "hd95 and msd (pixels for images, millimetres for volumes, from the file's spacing): the "
    "surface of a region is its pixels with a face neighbour outside it, the array's edge "
    "counting as outside; hd95 is the larger of the two directed 95th percentiles of the "
    "distances between the surfaces of truth and prediction (MONAI's percentile=95), msd the "
    "mean of both directions' distances pooled. A class in exactly one of truth and "
    "prediction scores the case's diagonal (the worst distance, never NaN), counted in "
    "missing/hd95/<class>; a class in neither is left out. Pooled hd95 and msd take the "
    "distances of all cases where the class is in both. Computed for the scored classes only "
    "(the background's surface is the others').",
    "mean_fg: the mean over the foreground classes 1..K-1 (class 0 is the background); where "
    "the data has no background (data.background=false) it is mean, over all K classes.",
    "unlabelled truth pixels (data.ignore_value) count in no score: not in the pixel counts, "
    "and the distances measure the prediction on labelled pixels only.",
    "pixel_error: the share of misclassified pixels, 1 - sum(TP) / sum(TP + FN) over the "
    "classes: per case in the CSV, and pixel_error/pooled over the pixels of all cases (the "
    "training metric's pixel_error).",
)
"""How every score is reduced and what an empty class scores."""


def mean_key(background: bool) -> str:
    """The name of the classes' mean in a score key (`dice/pooled/<it>`): `mean_fg` over
    classes 1..K-1 when class 0 is the background, else `mean` over all K."""
    return "mean_fg" if background else "mean"


class ScoreBook:
    """Accumulates per-case rows and pooled statistics over an evaluation.

    Args:
        class_names: one per class index.
        ignore_index: truth value of unlabelled pixels (`PAD_LABEL`, as
            `MaskEncoding.load` marks `data.ignore_value`): no score counts them.
        background: class 0 is the background: the means (`mean_fg`) are over classes
            1..K-1; else over all K, named `mean`.
        case: what a case is, `image` or `volume`: the name of a row's first column, of
            the per-case reduction (`image_mean`, `volume_mean`) and of the count.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        ignore_index: int = PAD_LABEL,
        background: bool = True,
        case: str = "image",
    ) -> None:
        self.ignore_index = ignore_index
        self.class_names = list(class_names)
        self.mean_name = mean_key(background)
        self.scored = self.class_names[1:] if background else list(self.class_names)
        self.first_scored = len(self.class_names) - len(self.scored)
        self.num_classes = len(self.class_names)
        self.case, self.case_mean = case, f"{case}_mean"
        self.reductions = ("pooled", self.case_mean)
        self.counts = np.zeros((3, self.num_classes), dtype=np.int64)
        self.rows: list[dict[str, float | str]] = []
        self.missing = np.zeros(self.num_classes, dtype=np.int64)
        # surface distances of all cases, per class: (pred -> truth, truth -> pred)
        self.distances: list[tuple[list[np.ndarray], list[np.ndarray]]] = [
            ([], []) for _ in range(self.num_classes)
        ]

    def add(
        self,
        name: str,
        pred: np.ndarray,
        truth: np.ndarray,
        spacing: Sequence[float] | None = None,
    ) -> dict[str, float | str]:
        """Score one case (class indices of one shape, any rank); return its row
        (`metric/class`). `spacing`: the size of a voxel in mm per axis (None: distances in
        pixels). Unlabelled truth pixels are left out: of the counts, and of the predicted
        regions whose surfaces the distances measure."""
        spacing = tuple(float(s) for s in spacing) if spacing else (1.0,) * truth.ndim
        counts = confusion_counts(pred, truth, self.num_classes, self.ignore_index)
        labelled = truth != self.ignore_index
        self.counts += counts
        row: dict[str, float | str] = {self.case: name}
        ratios = ratio_scores(counts)
        for c, cls in enumerate(self.class_names):
            for metric in RATIO_METRICS:
                row[f"{metric}/{cls}"] = float(ratios[metric][c])
        for c in range(self.first_scored, self.num_classes):
            cls = self.class_names[c]
            hd, msd, distances = surface_scores((pred == c) & labelled, truth == c, spacing)
            row[f"hd95/{cls}"], row[f"msd/{cls}"] = hd, msd
            if distances is not None:
                self.distances[c][0].append(distances[0].astype(np.float32))
                self.distances[c][1].append(distances[1].astype(np.float32))
            elif not np.isnan(hd):  # missed, or found where there is none: the diagonal
                self.missing[c] += 1
        fg = [row[f"dice/{cls}"] for cls in self.scored]
        row[f"dice/{self.mean_name}"] = _nanmean(fg)
        row["pixel_error"] = float(pixel_error(counts))
        self.rows.append(row)
        return row

    def summary(self) -> dict[str, float]:
        """Flat scores `metric/reduction/class` (classes and `mean_fg` or `mean`; the
        distances for the scored classes), with `n/...` counts, `missing/hd95/...` and
        `pixel_error/pooled`."""
        out: dict[str, float] = {f"{self.case}s": len(self.rows)}
        pooled = ratio_scores(self.counts, empty=1.0)
        pooled["hd95"], pooled["msd"] = np.full((2, self.num_classes), np.nan)
        for c in range(self.first_scored, self.num_classes):
            forward, backward = self.distances[c]
            if forward:
                forward, backward = np.concatenate(forward), np.concatenate(backward)
                pooled["hd95"][c], pooled["msd"][c] = distance_scores(forward, backward)
        for metric in METRICS:
            classes = self.scored if metric in DISTANCE_METRICS else self.class_names
            for cls in classes:
                values = [r[f"{metric}/{cls}"] for r in self.rows]
                out[f"{metric}/pooled/{cls}"] = float(pooled[metric][self.class_names.index(cls)])
                out[f"{metric}/{self.case_mean}/{cls}"] = _nanmean(values)
                out[f"n/{metric}/{cls}"] = int(np.count_nonzero(~np.isnan(values)))
            for reduction in self.reductions:
                fg = [out[f"{metric}/{reduction}/{cls}"] for cls in self.scored]
                out[f"{metric}/{reduction}/{self.mean_name}"] = _nanmean(fg)
        for c in range(self.first_scored, self.num_classes):  # scored the worst distance
            out[f"missing/hd95/{self.class_names[c]}"] = int(self.missing[c])
        out["pixel_error/pooled"] = float(pixel_error(self.counts))
        return out


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
