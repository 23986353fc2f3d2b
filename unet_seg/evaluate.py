"""Score a checkpoint: `python -m unet_seg.evaluate run_dir=RUN_DIR` (its test split)
or `python -m unet_seg.evaluate ckpt=PATH data_root=DIR` (every image/mask pair in DIR).

Per class: Dice, IoU, precision, recall and HD95, each pooled over all pixels and
averaged per image (the rules are in `unet_seg.scores`). With instance labels (the
masks with `mask_format=instances`, `instances_dir=`, or the run's `data.instances_dir`),
also the objects: AP over IoU 0.5..0.95 (the 2018 Data Science Bowl metric), F1 at 0.5,
panoptic quality (`unet_seg.instances`) and the matched / merged / split / missed counts
(`unet_seg.scores.object_counts`), of the predicted objects: the watershed-decoded
objects of a net trained on an instance target (`data.target=instances`, whose pixel
scores are then those of its foreground against the instance labels' foreground), else
the 8-connected components of the predicted foreground. Outputs: a table in the log,
JSON, a per-image CSV and a picture of the worst images. Inference options (`mode`,
`tile_size`, `tta`, `level`, `postprocess`, ...) are those of `predict`, checked by the
same function (`inference.check_options`: a volume checkpoint refuses the 2-D-only ones
by name). A volume checkpoint is scored per volume (`volume_eval.evaluate_volumes`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import sys
from pathlib import Path

import cv2
import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tqdm import tqdm

from unet_seg.api import load_model_from_config
from unet_seg.config import CONF_DIR
from unet_seg.data.dataset import find_instances, find_pairs
from unet_seg.data.masks import IGNORE_INDEX, PAD_LABEL
from unet_seg.data.weight_map import read_instances
from unet_seg.files import json_safe, write_json, write_rows
from unet_seg.inference import check_options
from unet_seg.instances import RULES as INSTANCE_RULES
from unet_seg.instances import InstanceBook
from unet_seg.run_dir import RunDir, hydra_log_file
from unet_seg.scores import METRICS, OBJECT_COUNTS, RULES, ScoreBook, mean_key, object_counts
from unet_seg.threads import set_threads
from unet_seg.visualize import (
    class_legend,
    display_image,
    error_legend,
    error_map,
    match_objects,
    object_overlay,
    overlay,
    with_legend,
)
from unet_seg.volume_eval import NO_DATA, checkpoint_is_volume, evaluate_volumes

log = logging.getLogger(__name__)

LABELS = {
    "dice": "Dice",
    "iou": "IoU",
    "precision": "precision",
    "recall": "recall",
    "hd95": "HD95 (px)",
}


def _checkpoint(cfg: DictConfig) -> Path:
    """`ckpt=`, else the run's best checkpoint; refused (`NO_DATA`) without data to score:
    no `run_dir`, `data_root` or `data.root`."""
    data = cfg.get("data") or {}
    if not (cfg.get("run_dir") or cfg.get("data_root") or data.get("root")):
        raise ValueError(NO_DATA)
    if cfg.ckpt:
        return Path(cfg.ckpt)
    if not cfg.run_dir:
        raise ValueError(
            "evaluate needs the net to score: add ckpt=PATH (a .ckpt written by train), or give "
            "run_dir=RUN (its best checkpoint and its test split)"
        )
    return RunDir(cfg.run_dir).best


def _pairs(cfg: DictConfig, class_folders: list[str] | None) -> tuple[list, str]:
    """(image/mask pairs, a label for what is evaluated): the run's split, or a folder."""
    if cfg.run_dir:
        run = RunDir(cfg.run_dir)
        return run.split_pairs(cfg.split, class_folders), f"{cfg.split} split of {run}"
    data = cfg.get("data") or {}
    if data.get("root"):  # data=folder data.root=DIR (train's data options)
        pairs = find_pairs(data.root, data.get("images_dir", "images"),
                           data.get("masks_dir", "masks"), data.get("mask_suffix") or "",
                           class_folders)  # fmt: skip
        return pairs, str(data.root)
    if not cfg.data_root:
        raise ValueError(NO_DATA)
    pairs = find_pairs(cfg.data_root, mask_suffix=cfg.get("mask_suffix") or "",
                       class_folders=class_folders)  # fmt: skip
    return pairs, str(cfg.data_root)


def instance_paths(cfg: DictConfig, pairs: list, mask_format: str) -> list[Path] | None:
    """One instance label file per pair, to count separated objects; None when there are none:
    `instances_dir=` (or the run's `data.instances_dir`, beside its images), or the masks
    themselves when they are instance labels."""
    folder, root, suffix = cfg.get("instances_dir"), cfg.data_root, cfg.get("mask_suffix")
    data = RunDir(cfg.run_dir).load_config().data if cfg.run_dir else cfg.get("data")
    if data is not None and data.get("root"):  # the run's data, or data=... data.root=DIR
        folder = folder or data.get("instances_dir")
        root, suffix = data.root, data.get("mask_suffix")
        mask_format = data.get("mask_format") or mask_format  # the files' own format
    if folder:  # a folder named is used, whatever the masks are
        return find_instances(Path(root) / folder, [image for image, _ in pairs], suffix or "")
    return [mask for _, mask in pairs] if mask_format == "instances" else None


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Score a checkpoint on images with masks; log a table, write JSON, CSV and a picture.

    Returns:
        Flat scores `metric/reduction/class` (reduction `pooled` or `image_mean`, class a
        name, or `mean_fg`: over the foreground classes, `mean`: over all where the data has
        no background), counts `n/metric/class` and `missing/hd95/class`, `images`, and the
        headline `dice` and `iou` (that mean, pooled, as in training).
    """
    ckpt = _checkpoint(cfg)
    volume = checkpoint_is_volume(ckpt)
    check_options(cfg, "evaluate", volume)  # before anything is read or written
    if volume:  # per volume, distances in mm
        output = Path(cfg.output) if cfg.output else _default_output(cfg)
        return evaluate_volumes(cfg, output)
    set_threads(cfg.get("threads", "auto"), "threads")
    predictor = load_model_from_config(ckpt, cfg)
    contract = predictor.contract
    folders = contract.class_names[1:] if contract.mask_format == "folders" else None
    pairs, what = _pairs(cfg, folders)
    decoded = contract.instance_target  # pixel scores: the objects' foreground
    scored_classes = ["background", "foreground"] if decoded else contract.class_names
    background = decoded or contract.background  # decoded objects: their foreground
    book = ScoreBook(scored_classes, background=background)
    instances = instance_paths(cfg, pairs, contract.mask_format)
    if decoded and instances is None:
        raise ValueError(
            f"{ckpt} predicts objects (data.target=instances) and is scored against instance "
            f"labels, but {what} has none: give instances_dir=FOLDER, or data.mask_format="
            "instances when the masks are instance labels"
        )
    objects = dict.fromkeys(OBJECT_COUNTS, 0) if instances else None
    scores = InstanceBook() if instances else None
    worst = _WorstCases(int(cfg.get("worst", 4)), scored_classes, background)
    log.info("evaluating %s on %s, %d images", ckpt, what, len(pairs))
    for start in tqdm(range(0, len(pairs), predictor.batch_size), desc="evaluate", unit="batch"):
        chunk = pairs[start : start + predictor.batch_size]
        loaded = [contract.read_pair(image_path, mask_path) for image_path, mask_path in chunk]
        results = predictor.run_instances([image for image, _ in loaded])
        for i, ((path, _), (image, truth), (found, labels, _)) in enumerate(
            zip(chunk, loaded, results, strict=True), start=start
        ):
            true_objects = None
            if instances:  # the ignore value (unlabelled) is no object
                true_objects = contract.encoding.objects_of(read_instances(instances[i]))
            if decoded:  # foreground against foreground; unlabelled pixels stay unlabelled
                labels = (found > 0).astype(np.uint8)
                truth = np.where(truth == PAD_LABEL, PAD_LABEL, true_objects > 0).astype(np.uint8)
            row = book.add(path.name, labels, truth)
            if true_objects is not None:  # predicted objects (on labelled pixels) against true
                found = np.where(truth == PAD_LABEL, 0, found)
                row.update({f"instances/{k}": v
                            for k, v in scores.add(found, true_objects).items()})  # fmt: skip
                counts = object_counts(found, true_objects, labelled=True)
                row.update({f"objects/{k}": v for k, v in counts.items()})
                for key, value in counts.items():
                    objects[key] += value
            # an instance target's picture shows objects: merged or split ones show there
            pair = (true_objects, found) if decoded and true_objects is not None else None
            worst.offer(row, image, truth, labels, pair)
    results = book.summary()
    results["dice"] = results[f"dice/pooled/{book.mean_name}"]
    results["iou"] = results[f"iou/pooled/{book.mean_name}"]
    log.info("%s, %d images:\n%s", what, len(pairs),
             format_table(results, book.class_names, book.mean_name))  # fmt: skip
    if scores is not None:
        results.update(scores.summary())
        log.info("objects (%s):\n%s", "watershed-decoded" if decoded else
                 "connected components of the foreground", format_instances(results))  # fmt: skip
    if objects is not None:
        results.update({f"objects/{k}": v for k, v in objects.items()})
        log.info(
            "objects (predicted objects matched to true instances at IoU > 0.5): %d of %d "
            "matched, %d merged, %d split, %d missed, %d false positives; touching pairs "
            "separated: %d of %d", objects["matched"], objects["true_objects"],
            objects["merged"], objects["split"], objects["missed"], objects["false_positives"],
            objects["touching_pairs_separated"], objects["touching_pairs"],
        )  # fmt: skip

    output = Path(cfg.output) if cfg.output else _default_output(cfg)
    output.parent.mkdir(parents=True, exist_ok=True)
    inference = {"mode": predictor.mode, "tta": predictor.tta, "level": cfg.get("level")}
    if predictor.mode == "tile":
        inference.update(
            tile_size=predictor.tile_size, overlap=predictor.overlap, halo=predictor.halo
        )
    meta = {"checkpoint": str(ckpt), "evaluated": what, "inference": inference,
            "rules": RULES + (INSTANCE_RULES if scores is not None else ())}  # fmt: skip
    write_json({**meta, **json_safe(results)}, output)
    table = output.with_name(f"{output.stem}_per_image.csv")
    write_rows(book.rows, table)
    picture = output.with_name(f"{output.stem}_worst.png")
    if worst.write(picture):
        log.info("wrote %s, %s and %s", output, table, picture)
    else:
        log.info("wrote %s and %s", output, table)
    return results


def format_table(
    results: dict[str, float], class_names: list[str], mean_name: str = "mean_fg"
) -> str:
    """Rows `metric, reduction`, columns the classes and their mean (`mean_fg`: over the
    foreground classes; `mean`: over all, for data without a background)."""
    columns = [*class_names, mean_name]
    width = max(10, *(len(c) + 2 for c in columns))
    lines = [f"{'':<34}" + "".join(f"{c:>{width}}" for c in columns)]
    for metric in METRICS:
        pooled = "pooled over boundaries" if metric == "hd95" else "pooled over pixels"
        for reduction, label in (("pooled", pooled), ("image_mean", "mean of images")):
            cells = [results[f"{metric}/{reduction}/{c}"] for c in columns]
            name = f"{LABELS[metric]}, {label}"
            lines.append(f"{name:<34}" + "".join(f"{v:>{width}.4f}" for v in cells))
    counted = (("dice", "images in Dice..recall means"), ("hd95", "images in HD95 means"))
    for metric, what in counted:
        counts = [f"{results[f'n/{metric}/{c}']:>{width}d}" for c in class_names]
        lines.append(f"{what:<34}" + "".join(counts))
    return "\n".join(lines)


def format_instances(results: dict[str, float]) -> str:
    """Rows AP@0.5:0.95, F1@0.5, PQ, SQ, RQ; columns the two reductions."""
    lines = [f"{'':<34}{'mean of images':>16}{'pooled':>10}"]
    names = (("ap", "AP, IoU 0.5..0.95 (DSB2018)"), ("f1@0.5", "F1, IoU > 0.5"),
             ("pq", "panoptic quality PQ"), ("sq", "segmentation quality SQ"),
             ("rq", "recognition quality RQ"))  # fmt: skip
    for key, label in names:
        mean, pooled = (results[f"instances/{key}/{r}"] for r in ("image_mean", "pooled"))
        lines.append(f"{label:<34}{mean:>16.4f}{pooled:>10.4f}")
    return "\n".join(lines)


class _WorstCases:
    """Keeps the `n` images with the lowest mean foreground Dice and draws them, with a
    legend of the class and error colours."""

    def __init__(
        self, n: int, class_names: list[str], background: bool = True, max_side: int = 384
    ) -> None:
        self.n, self.max_side = n, max_side
        self.class_names = class_names
        self.background = background  # else class 0 is drawn and scored as any class
        self.mean_name = mean_key(background)  # the mean Dice that ranks the images
        self.heap: list[tuple[float, int, str, tuple]] = []
        self.counter = itertools.count()  # breaks ties without comparing arrays

    def offer(
        self,
        row: dict,
        image: np.ndarray,
        truth: np.ndarray,
        pred: np.ndarray,
        objects: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """`truth`: uint8 class indices, `PAD_LABEL` where unlabelled (drawn grey).
        `objects`: (true, predicted) object labels `[H, W]` (0 = background), drawn in place
        of the classes, one colour per object."""
        truth = np.where(truth == PAD_LABEL, IGNORE_INDEX, truth).astype(np.int16)
        score = row[f"dice/{self.mean_name}"]
        score = 1.0 if _is_nan(score) else score  # nothing to find and nothing found
        if self.n <= 0:
            return
        item = (-score, next(self.counter), row["image"],
                self._shrink(image, truth, pred, objects))  # fmt: skip
        if len(self.heap) < self.n:
            heapq.heappush(self.heap, item)
        elif item[0] > self.heap[0][0]:
            heapq.heapreplace(self.heap, item)

    def _shrink(
        self,
        image: np.ndarray,
        truth: np.ndarray,
        pred: np.ndarray,
        objects: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple:
        rgb = display_image(image)
        scale = self.max_side / max(truth.shape)
        objects = None if objects is None else tuple(o.astype(np.int32) for o in objects)
        if scale < 1:
            size = (round(truth.shape[1] * scale), round(truth.shape[0] * scale))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            truth = cv2.resize(truth, size, interpolation=cv2.INTER_NEAREST)
            pred = cv2.resize(pred, size, interpolation=cv2.INTER_NEAREST)
            if objects is not None:
                objects = tuple(cv2.resize(o, size, interpolation=cv2.INTER_NEAREST)
                                for o in objects)  # fmt: skip
        return rgb, truth, pred, objects

    def write(self, path: Path) -> bool:
        """Rows `input | truth | prediction | errors` (an instance target: `input | true
        objects | predicted objects | errors`, one colour per object), worst first; False if
        nothing to draw."""
        if not self.heap:
            return False
        rows, drew_objects = [], False
        for neg_score, _, name, (rgb, truth, pred, objects) in sorted(self.heap, reverse=True):
            if objects is None:
                bg = self.background
                shown = [overlay(rgb, truth, background=bg), overlay(rgb, pred, background=bg)]
                heads = "truth | prediction"
            else:
                true_objects, predicted = objects[0], match_objects(*objects)  # one colour each
                shown = [object_overlay(rgb, true_objects), object_overlay(rgb, predicted)]
                heads, drew_objects = "true objects | predicted", True
            panels = [rgb, *shown, error_map(truth, pred, self.background)]
            gap = np.full((rgb.shape[0], 4, 3), 128, np.uint8)
            row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
            title = np.full((22, row.shape[1], 3), 255, np.uint8)
            mean = self.mean_name.replace("_", " ")
            text = f"{name}  Dice ({mean}) {-neg_score:.3f}  | input | {heads} | errors"
            cv2.putText(title, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
            rows.append(np.concatenate([title, row], axis=0))
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                for r in rows]  # fmt: skip
        named = class_legend(self.class_names, self.background)
        classes = [("objects: one colour each", None)] if drew_objects else [
            ("truth, prediction:", None), *named]  # fmt: skip
        entries = [*classes, ("errors:", None),
                   *error_legend(len(self.class_names), self.background)]  # fmt: skip
        picture = with_legend(np.concatenate(rows, axis=0), entries)
        cv2.imwrite(str(path), picture[:, :, ::-1])  # RGB -> BGR
        return True


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _default_output(cfg: DictConfig) -> Path:
    if cfg.run_dir:
        return RunDir(cfg.run_dir).evaluation(cfg.split)
    return Path(HydraConfig.get().runtime.output_dir) / "evaluation.json"


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base=None)
def main(cfg: DictConfig) -> None:
    output = RunDir(HydraConfig.get().runtime.output_dir)
    fresh = not output.holds_run
    log_file, log_kept = hydra_log_file()  # cut back to this size if refused
    try:
        evaluate(cfg)
    except (ValueError, FileNotFoundError) as refused:  # no data, an option, a checkpoint
        log.debug("refused", exc_info=True)
        if fresh:
            output.discard(log_file, log_kept)  # Hydra's .hydra/ and this command's log lines
        sys.exit(f"{refused}")  # the message alone, on stderr; exit status 1


if __name__ == "__main__":
    main()
