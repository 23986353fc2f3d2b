"""Score a checkpoint: `python -m unet_seg.evaluate run_dir=RUN_DIR` (its test split)
or `python -m unet_seg.evaluate ckpt=PATH data_root=DIR` (every image/mask pair in DIR).

One evaluator for images and volumes: each case (an image, or a volume and its label
volume) is predicted as `predict` would, and scored by one `ScoreBook` (`unet_seg.scores`):
per class Dice, IoU, precision, recall, HD95 and the mean surface distance, in pixels for
images and in millimetres for volumes (from each file's spacing), each pooled over all
pixels or voxels and averaged per case (`image_mean`, `volume_mean`: the definition of
training's `val/volume_dice`). The headline `dice` and `iou` are what training reports:
pooled for images, the mean over volumes for volumes. With instance labels (2-D: the masks
with `mask_format=instances`, `instances_dir=`, or the run's `data.instances_dir`), also the
objects: AP over IoU 0.5..0.95 (the 2018 Data Science Bowl metric), F1 at 0.5, panoptic
quality (`unet_seg.instances`) and the matched / merged / split / missed counts
(`unet_seg.scores.object_counts`), of the predicted objects: the watershed-decoded objects
of a net trained on an instance target (`data.target=instances`, whose pixel scores are
then those of its foreground against the instance labels' foreground), else the
8-connected components of the predicted foreground. Outputs: a table in the log, JSON, a
CSV with a row per case (`<output>_per_image.csv` or `_per_volume.csv`) and a picture of
the worst cases (`<output>_worst.png`: an image, or a volume's axial, coronal and sagittal
slices through its structure). Inference options (`mode`, `tile_size`, `tta`, `level`,
`postprocess`, ...) are those of `predict`, checked by the same function
(`inference.check_options`: a volume checkpoint refuses the 2-D-only ones by name).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
from unet_seg.data.volume_cases import VolumeCase, find_volume_cases
from unet_seg.data.volume_dataset import at_spacing, load_case
from unet_seg.data.weight_map import read_instances
from unet_seg.files import json_safe, write_json, write_rows
from unet_seg.inference import (
    case_labels,
    check_options,
    checkpoint_is_volume,
    describe_volume_inference,
    load_volume_module,
    log_resampling,
)
from unet_seg.instances import RULES as INSTANCE_RULES
from unet_seg.instances import InstanceBook
from unet_seg.memory import peak_memory
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

log = logging.getLogger(__name__)

NO_DATA = (
    "evaluate needs the images to score: add data_root=DIR (DIR/images and DIR/masks), or "
    "data=folder data.root=DIR, or give run_dir=RUN instead of ckpt= (the run's test split)"
)
"""What `evaluate` says when it is given a checkpoint and no data."""

LABELS = {
    "dice": "Dice",
    "iou": "IoU",
    "precision": "precision",
    "recall": "recall",
    "hd95": "HD95",
    "msd": "MSD",
}


@dataclass
class Scored:
    """One case predicted: class indices of truth (`PAD_LABEL` unlabelled) and prediction,
    of any rank; `views` draws it for the worst-case picture (a list of `(RGB [H, W, 3],
    truth [H, W], prediction [H, W])`: one for an image, three orthogonal slices for a
    volume)."""

    name: str
    truth: np.ndarray
    pred: np.ndarray
    views: Callable[[], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]
    spacing: tuple[float, ...] | None = None  # mm per axis; None: pixels
    extra: dict = field(default_factory=dict)  # more columns of the case's CSV row
    objects: tuple[np.ndarray, np.ndarray] | None = None  # (true, predicted), to draw


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


class ImageCases:
    """The image/mask pairs to score and the 2-D predictor; iterating predicts them a batch
    at a time and yields a `Scored` per image (with its objects when there are instance
    labels)."""

    kind = "image"

    def __init__(self, cfg: DictConfig, ckpt: Path) -> None:
        self.predictor = load_model_from_config(ckpt, cfg)
        contract = self.contract = self.predictor.contract
        folders = contract.class_names[1:] if contract.mask_format == "folders" else None
        self.pairs, self.what = _pairs(cfg, folders)
        self.decoded = contract.instance_target  # pixel scores: the objects' foreground
        self.class_names = ["background", "foreground"] if self.decoded else contract.class_names
        self.background = self.decoded or contract.background  # decoded: their foreground
        self.instances = instance_paths(cfg, self.pairs, contract.mask_format)
        if self.decoded and self.instances is None:
            raise ValueError(
                f"{ckpt} predicts objects (data.target=instances) and is scored against "
                f"instance labels, but {self.what} has none: give instances_dir=FOLDER, or "
                "data.mask_format=instances when the masks are instance labels"
            )
        self.objects = dict.fromkeys(OBJECT_COUNTS, 0) if self.instances else None
        self.scores = InstanceBook() if self.instances else None
        p = self.predictor
        self.inference = {"mode": p.mode, "tta": p.tta, "level": cfg.get("level")}
        if p.mode == "tile":
            self.inference.update(tile_size=p.tile_size, overlap=p.overlap, halo=p.halo)
        self.how = f"mode={p.mode} tta={p.tta}"

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[Scored]:
        batch, contract = self.predictor.batch_size, self.contract
        for start in tqdm(range(0, len(self.pairs), batch), desc="evaluate", unit="batch"):
            chunk = self.pairs[start : start + batch]
            loaded = [contract.read_pair(image_path, mask_path) for image_path, mask_path in chunk]
            results = self.predictor.run_instances([image for image, _ in loaded])
            for i, ((path, _), (image, truth), (found, labels, _)) in enumerate(
                zip(chunk, loaded, results, strict=True), start=start
            ):
                yield self._scored(i, path.name, image, truth, found, labels)

    def _scored(self, i: int, name: str, image: np.ndarray, truth: np.ndarray,
                found: np.ndarray, labels: np.ndarray) -> Scored:  # fmt: skip
        true_objects, extra = None, {}
        if self.instances:  # the ignore value (unlabelled) is no object
            true_objects = self.contract.encoding.objects_of(read_instances(self.instances[i]))
        if self.decoded:  # foreground against foreground; unlabelled pixels stay unlabelled
            labels = (found > 0).astype(np.uint8)
            truth = np.where(truth == PAD_LABEL, PAD_LABEL, true_objects > 0).astype(np.uint8)
        if true_objects is not None:  # predicted objects (on labelled pixels) against true
            found = np.where(truth == PAD_LABEL, 0, found)
            extra = {f"instances/{k}": v for k, v in self.scores.add(found, true_objects).items()}
            counts = object_counts(found, true_objects, labelled=True)
            extra.update({f"objects/{k}": v for k, v in counts.items()})
            for key, value in counts.items():
                self.objects[key] += value
        # an instance target's picture shows objects: merged or split ones show there
        objects = (true_objects, found) if self.decoded and true_objects is not None else None
        return Scored(name, truth, labels, lambda: [(display_image(image), truth, labels)],
                      extra=extra, objects=objects)  # fmt: skip

    def summary(self) -> dict[str, float]:
        """The objects' scores and counts, logged."""
        results: dict[str, float] = {}
        if self.scores is not None:
            results.update(self.scores.summary())
            what = "watershed-decoded" if self.decoded else "connected components of the foreground"
            log.info("objects (%s):\n%s", what, format_instances(results))
        if self.objects is not None:
            objects = self.objects
            results.update({f"objects/{k}": v for k, v in objects.items()})
            log.info(
                "objects (predicted objects matched to true instances at IoU > 0.5): %d of %d "
                "matched, %d merged, %d split, %d missed, %d false positives; touching pairs "
                "separated: %d of %d", objects["matched"], objects["true_objects"],
                objects["merged"], objects["split"], objects["missed"],
                objects["false_positives"], objects["touching_pairs_separated"],
                objects["touching_pairs"],
            )  # fmt: skip
        return results

    @property
    def rules(self) -> tuple[str, ...]:
        return INSTANCE_RULES if self.scores is not None else ()


class VolumeCases:
    """The volumes to score (with their label volumes) and the volume net; iterating reads,
    predicts and yields a `Scored` per volume, on the file's own grid (a case at another
    spacing is predicted at the training spacing and its labels taken back)."""

    kind = "volume"
    rules: tuple[str, ...] = ()

    def __init__(self, cfg: DictConfig, ckpt: Path) -> None:
        self.cfg = cfg
        self.module = load_volume_module(ckpt, cfg)
        self.contract = self.module.contract
        self.class_names, self.background = self.contract.class_names, self.contract.background
        self.cases, self.what = evaluation_cases(cfg)
        self.how = self.inference = describe_volume_inference(self.module)

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[Scored]:
        for case in tqdm(self.cases, desc="evaluate", unit="volume"):
            loaded = load_case(case, self.contract, resample=False)  # scored on its own grid
            net_input = at_spacing(loaded, self.contract.spacing)
            log_resampling(self.module, net_input)
            pred = case_labels(self.module, net_input, self.cfg)
            spacing = tuple(loaded.meta.spacing)
            yield Scored(case.name, loaded.labels, pred,
                         lambda loaded=loaded, pred=pred: volume_views(loaded, pred),
                         spacing=spacing)  # fmt: skip

    def summary(self) -> dict[str, float]:
        return {}


def evaluation_cases(cfg: DictConfig) -> tuple[list[VolumeCase], str]:
    """(volume cases with masks, what they are): the run's split, or `data_root` /
    `data.root`."""
    if cfg.get("run_dir"):
        run = RunDir(cfg.run_dir)
        data = run.load_config().data
        cases = {c.name: c for c in find_volume_cases(
            data.root, data.get("images_dir", "images"), data.get("masks_dir", "masks"),
            data.get("mask_suffix") or "")}  # fmt: skip
        names = run.split(cfg.split)
        missing = [n for n in names if n not in cases]
        if missing:
            raise FileNotFoundError(f"{data.root}: split volumes missing, e.g. {missing[:5]}")
        return [cases[n] for n in names], f"{cfg.split} split of {run}"
    data = cfg.get("data") or {}
    root = data.get("root") or cfg.get("data_root")
    if not root:
        raise ValueError(NO_DATA)
    suffix = data.get("mask_suffix") or cfg.get("mask_suffix") or ""
    return find_volume_cases(root, data.get("images_dir", "images"),
                             data.get("masks_dir", "masks"), suffix), str(root)  # fmt: skip


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Score a checkpoint on images or volumes with masks; log a table, write JSON, CSV and
    a picture.

    Returns:
        Flat scores `metric/reduction/class` (reduction `pooled`, or `image_mean` /
        `volume_mean`; class a name, or `mean_fg`: over the foreground classes, `mean`: over
        all where the data has no background), counts `n/metric/class` and
        `missing/hd95/class`, `images` or `volumes`, and the headline `dice` and `iou`
        (that mean: pooled for images, over volumes for volumes, as in training).
    """
    ckpt = _checkpoint(cfg)
    volume = checkpoint_is_volume(ckpt)
    check_options(cfg, "evaluate", volume)  # before anything is read or written
    set_threads(cfg.get("threads", "auto"), "threads")
    cases = VolumeCases(cfg, ckpt) if volume else ImageCases(cfg, ckpt)
    book = ScoreBook(cases.class_names, background=cases.background, case=cases.kind)
    worst = WorstCases(int(cfg.get("worst", 4)), cases.class_names, cases.background)
    log.info("evaluating %s on %s, %d %s(s) (%s)", ckpt, cases.what, len(cases), cases.kind,
             cases.how)  # fmt: skip
    for case in cases:
        row = book.add(case.name, case.pred, case.truth, case.spacing)
        row.update(case.extra)
        worst.offer(row, case)
    results = book.summary()
    headline = book.case_mean if volume else "pooled"  # training's val/volume_dice, val/dice
    results["dice"] = results[f"dice/{headline}/{book.mean_name}"]
    results["iou"] = results[f"iou/{headline}/{book.mean_name}"]
    unit = "mm" if volume else "px"
    log.info("%s, %d %s(s):\n%s", cases.what, len(book.rows), cases.kind,
             format_table(results, book, unit))  # fmt: skip
    results.update(cases.summary())

    output = Path(cfg.output) if cfg.output else _default_output(cfg)
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"checkpoint": str(ckpt), "evaluated": cases.what, "inference": cases.inference,
            "distances": "mm, from each file's spacing" if volume else "pixels",
            "rules": RULES + cases.rules}  # fmt: skip
    write_json({**meta, **json_safe(results)}, output)
    table = output.with_name(f"{output.stem}_per_{cases.kind}.csv")
    write_rows(book.rows, table)
    picture = output.with_name(f"{output.stem}_worst.png")
    wrote = [str(output), str(table)] + ([str(picture)] if worst.write(picture) else [])
    log.info("wrote %s; %s", ", ".join(wrote), peak_memory())
    return results


def format_table(results: dict[str, float], book: ScoreBook, unit: str = "px") -> str:
    """Rows `metric, reduction`, columns the classes and their mean (`mean_fg`: over the
    foreground classes; `mean`: over all, for data without a background); the distances
    (in `unit`) of the scored classes only."""
    columns = [*book.class_names, book.mean_name]
    width = max(10, *(len(c) + 2 for c in columns))
    lines = [f"{'':<34}" + "".join(f"{c:>{width}}" for c in columns)]
    per_case = f"mean of {book.case}s"
    for metric in METRICS:
        distance = metric in ("hd95", "msd")
        pixels = "voxels" if book.case == "volume" else "pixels"
        pooled = "pooled over surfaces" if distance else f"pooled over {pixels}"
        for reduction, label in (("pooled", pooled), (book.case_mean, per_case)):
            cells = [results.get(f"{metric}/{reduction}/{c}") for c in columns]
            name = f"{LABELS[metric]}{f' ({unit})' if distance else ''}, {label}"
            form = ".4g" if distance else ".4f"  # EM distances in mm: 0.00125, not 0.0012
            shown = (f"{'':>{width}}" if v is None else f"{v:>{width}{form}}" for v in cells)
            lines.append(f"{name:<34}" + "".join(shown))
    counted = (("dice", f"{book.case}s in Dice..recall means"),
               ("hd95", f"{book.case}s in HD95, MSD means"))  # fmt: skip
    for metric, what in counted:
        counts = [results.get(f"n/{metric}/{c}") for c in book.class_names]
        lines.append(f"{what:<34}" + "".join(
            f"{'':>{width}}" if n is None else f"{n:>{width}d}" for n in counts))  # fmt: skip
    missing = [results.get(f"missing/hd95/{c}") for c in book.class_names]
    if any(missing):
        lines.append(f"{'scored the diagonal (one empty)':<34}" + "".join(
            f"{'':>{width}}" if n is None else f"{n:>{width}d}" for n in missing))  # fmt: skip
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


class WorstCases:
    """Keeps the `n` cases with the lowest mean foreground Dice and draws them, with a
    legend of the class and error colours: one block per case, a row per view (an image;
    a volume's axial, coronal and sagittal slices), columns `input | truth | prediction |
    errors` (an instance target's: `input | true objects | predicted objects | errors`).
    A view longer than `max_side` is shrunk to it; one shorter than `min_side` enlarged by
    a whole factor (pixels kept square and sharp), so that small volumes can be read."""

    def __init__(
        self,
        n: int,
        class_names: list[str],
        background: bool = True,
        max_side: int = 384,
        min_side: int = 128,
    ) -> None:
        self.n, self.max_side, self.min_side = n, max_side, min_side
        self.class_names = class_names
        self.background = background  # else class 0 is drawn and scored as any class
        self.mean_name = mean_key(background)  # the mean Dice that ranks the cases
        self.heap: list[tuple[float, int, str, list]] = []
        self.counter = itertools.count()  # breaks ties without comparing arrays
        self.drew_objects = False

    def offer(self, row: dict, case: Scored) -> None:
        """Keep `case` if it is among the `n` worst so far (its views drawn small now, so
        that a volume is not held)."""
        score = row[f"dice/{self.mean_name}"]
        score = 1.0 if _is_nan(score) else score  # nothing to find and nothing found
        if self.n <= 0 or (len(self.heap) >= self.n and -score <= self.heap[0][0]):
            return
        item = (-score, next(self.counter), case.name, self._rows(case))
        if len(self.heap) < self.n:
            heapq.heappush(self.heap, item)
        else:
            heapq.heapreplace(self.heap, item)

    def _rows(self, case: Scored) -> list[np.ndarray]:
        """The case's panel rows, each view `input | truth | prediction | errors`."""
        rows = []
        for rgb, truth, pred in case.views():
            truth = truth.astype(np.int16)  # before IGNORE_INDEX (-1) is written into it
            truth[truth == PAD_LABEL] = IGNORE_INDEX
            objects = case.objects
            side = max(truth.shape)  # shrunk to max_side, or enlarged whole times to min_side
            scale = self.max_side / side if side > self.max_side else max(1, self.min_side // side)
            if scale != 1:
                size = (round(truth.shape[1] * scale), round(truth.shape[0] * scale))
                rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1
                                 else cv2.INTER_NEAREST)  # fmt: skip
                truth, pred = (cv2.resize(a, size, interpolation=cv2.INTER_NEAREST)
                               for a in (truth, pred))  # fmt: skip
                if objects is not None:
                    objects = tuple(cv2.resize(o.astype(np.int32), size,
                                               interpolation=cv2.INTER_NEAREST)
                                    for o in objects)  # fmt: skip
            # the labels over the image's brightness in grey, so each class keeps the colour
            # of the legend (a tint over a colour or a composite's green would not)
            grey = np.repeat(rgb.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
            if objects is None:
                bg = self.background
                shown = [overlay(grey, truth, background=bg), overlay(grey, pred, background=bg)]
            else:
                true_objects, predicted = objects[0], match_objects(*objects)  # one colour each
                shown = [object_overlay(grey, true_objects), object_overlay(grey, predicted)]
                self.drew_objects = True
            panels = [rgb, *shown, error_map(truth, pred, self.background)]
            gap = np.full((rgb.shape[0], 4, 3), 128, np.uint8)
            rows.append(np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1))
        return rows

    def write(self, path: Path) -> bool:
        """Write the picture, worst first; False if there is nothing to draw."""
        if not self.heap:
            return False
        blocks = []
        heads = "true objects | predicted" if self.drew_objects else "truth | prediction"
        for neg_score, _, name, rows in sorted(self.heap, reverse=True):
            mean = self.mean_name.replace("_", " ")
            text = f"{name}  Dice ({mean}) {-neg_score:.3f}  | input | {heads} | errors"
            font = cv2.FONT_HERSHEY_SIMPLEX
            width = max(cv2.getTextSize(text, font, 0.45, 1)[0][0] + 8,
                        *(r.shape[1] for r in rows))  # fmt: skip
            title = np.full((22, width, 3), 255, np.uint8)
            cv2.putText(title, text, (4, 16), font, 0.45, (0, 0, 0), 1)
            blocks += [title, *rows]
        width = max(b.shape[1] for b in blocks)
        blocks = [np.pad(b, ((0, 0 if b.shape[0] == 22 else 4), (0, width - b.shape[1]), (0, 0)),
                         constant_values=255) for b in blocks]  # fmt: skip
        named = class_legend(self.class_names, self.background)
        classes = [("objects: one colour each", None)] if self.drew_objects else [
            ("truth, prediction:", None), *named]  # fmt: skip
        entries = [*classes, ("errors:", None),
                   *error_legend(len(self.class_names), self.background)]  # fmt: skip
        picture = with_legend(np.concatenate(blocks, axis=0), entries)
        cv2.imwrite(str(path), picture[:, :, ::-1])  # RGB -> BGR
        return True


def volume_views(loaded, pred: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A volume's axial, coronal and sagittal slices through its structure (`_centre`),
    each `(RGB, truth, prediction)` at the physical aspect; the channels are modalities,
    never RGB: a composite of each."""
    centre = _centre(loaded.labels, pred)
    spacing = loaded.meta.spacing
    image = np.moveaxis(loaded.image, 0, -1)  # [Z, Y, X, C]
    views = (orthogonal_slices(v, spacing, centre) for v in (image, loaded.labels, pred))
    return [(display_image(img if img.ndim == 3 else img[..., None], colour=False), t, p)
            for img, t, p in zip(*views, strict=True)]  # fmt: skip


def orthogonal_slices(
    volume: np.ndarray, spacing: tuple[float, float, float], centre: tuple[int, int, int]
) -> list[np.ndarray]:
    """The axial `[Y, X]`, coronal `[Z, X]` and sagittal `[Z, Y]` slices through `centre` of
    `[Z, Y, X(, C)]`, with rows stretched to the physical aspect (nearest neighbour); the
    coronal and sagittal ones with z upwards (the last slice at the top)."""
    z, y, x = centre
    views = [(volume[z], spacing[1], spacing[2]), (volume[::-1, y], spacing[0], spacing[2]),
             (volume[::-1, :, x], spacing[0], spacing[1])]  # fmt: skip
    out = []
    for view, row_mm, col_mm in views:
        rows = max(1, round(view.shape[0] * row_mm / col_mm))
        view = np.ascontiguousarray(view)
        out.append(cv2.resize(view, (view.shape[1], rows), interpolation=cv2.INTER_NEAREST))
    return out


def _centre(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """Where to cut: the centre of the truth's foreground (what should be found), else of
    the errors (what was found where nothing is), else the middle."""
    labelled = truth != PAD_LABEL
    for mask in ((truth > 0) & labelled, (truth != pred) & labelled):
        where = np.argwhere(mask)
        if where.size:
            return tuple(int(v) for v in np.median(where, axis=0).round())
    return tuple(n // 2 for n in truth.shape)


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
