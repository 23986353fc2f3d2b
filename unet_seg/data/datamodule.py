"""`SegDataModule`: image/mask folders -> reproducible splits -> DataLoaders."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from unet_seg.data.checks import check_pairs, read_header
from unet_seg.data.contract import DataContract
from unet_seg.data.dataset import SegDataset, find_pairs, instance_files, pad_collate
from unet_seg.data.masks import MaskEncoding
from unet_seg.data.plan import decide_cache
from unet_seg.data.sampler import SeededShuffleSampler, ShardSampler, UnsizedShardSampler
from unet_seg.data.splits import cut_split, load_splits, save_splits, split_problems
from unet_seg.data.synthetic import ensure_synthetic
from unet_seg.data.transforms import build_train_transform
from unet_seg.instances import instance_settings
from unet_seg.problems import ProblemList
from unet_seg.threads import allowed_cpus

log = logging.getLogger(__name__)


def loader_workers(num_workers: int) -> int:
    """`data.num_workers`, at most the cores this process may use (a run pinned to one
    core, `taskset -c 0`, gets one worker: more only queue on that core), said in the log."""
    cores = len(allowed_cpus())
    if cores and num_workers > cores:
        log.info("data.num_workers=%d: %d loader worker(s), the cores this process may use",
                 num_workers, cores)  # fmt: skip
        return cores
    return num_workers


class SegDataModule(pl.LightningDataModule):
    """Reads `root/images` and `root/masks`, splits them reproducibly, augments training data.

    Args:
        root: dataset folder.
        in_channels, num_classes, class_names, mask_format, mask_values, mask_colors,
        ignore_value, intensity, mean, std, crop_size: the data contract (`DataContract`, built here
            once, as `self.contract`); `crop_size` is the training patch side (validation
            and test use whole images).
        foreground_crop: share of training patches centred on foreground (nnU-Net: 1/3).
        pad_to_crop: pad images smaller than the patch instead of refusing them.
        train_repeats: times each training image is drawn per epoch (a new patch each time).
        splits_path: where the split in force is written; an existing file there is reused.
        split_file: an explicit split (JSON with train/val/test lists of image names).
        num_folds, fold, group_regex, fold_order: k-fold cross-validation (`make_folds`).
        cache: `true` decodes the training and validation images once, in `setup` (this
            process, before the loaders' workers start: they share the arrays), and keeps
            them in memory as uint8/uint16; `auto` does so when they take at most
            `plan.CACHE_SHARE` of the memory available (`plan.decide_cache`, estimated
            from the first training image), saying why in the log; `false` reads every
            sample from its file.
        rare_classes: classes under 1% of the training pixels (the plan's); read by the
            loss (`loss.class_weights=rare`, `unet_seg.build.build_module`), kept here.
        upright: the images have an up (road scenes, photos): training leaves out
            `augment`'s vertical flips and quarter turns.
        background: class 0 is the background, left out of the mean scores (None: true);
            false where it is a class like the others (`DataContract.background`).
        cache_memory: bytes of memory available for `cache: auto` (None: MemAvailable).
        seed: seeds the training order and augmentation of each epoch.
        synthetic: parameters of `ensure_synthetic` to generate the data first, or None.
        instances_dir: folder of instance labels (0 = background, 1..N = objects) named
            like the images, for `weight_map`; `mask_format=instances` uses the masks.
        weight_map: `loss.weight_map` (loss=weighted_ce_dice): training samples carry
            the U-Net weight map, computed once per image in `setup`. Validation and
            test keep their masks as they are and carry no weights, so their loss
            and scores mean the same under every loss.
        context: pixels of mirrored or real context around each training patch (the
            margin of `arch=unet_valid`, set by `train` from the architecture, not by a
            data config); validation and test images come whole, without.
        target: `semantic` (the masks' classes) or `instances`: every split's masks are
            the background / interior / boundary classes of its instance labels (the masks
            with `mask_format=instances`, else `instances_dir`), see `unet_seg.instances`.
        instances: `data.instances` for `target=instances` (`unet_seg.instances`); with
            its `weight_map` (the default) and no `weight_map` argument, training samples
            carry the U-Net weight map of the objects' interiors at its default settings.
        volume, dims, slab, slice_axis, spacing, patch, synthetic3d: for volumes, which
            `VolumeDataModule` reads (`unet_seg.data.volume_datamodule`); a 2-D folder
            leaves them None (the contract refuses them there).
    """

    def __init__(
        self,
        root: str,
        in_channels: int,
        num_classes: int,
        class_names: Sequence[str],
        mask_values: Sequence[int] | None = None,
        mask_format: str = "values",
        mask_colors: Sequence[Sequence[int]] | None = None,
        ignore_value: int | Sequence[int] | str | None = None,
        images_dir: str = "images",
        masks_dir: str = "masks",
        mask_suffix: str = "",
        crop_size: int | None = 256,
        foreground_crop: float = 0.0,
        pad_to_crop: bool = False,
        train_repeats: int = 1,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.2,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        split_file: str | None = None,
        num_folds: int | None = None,
        fold: int = 0,
        group_regex: str | None = None,
        fold_order: str = "shuffled",
        splits_path: str | None = None,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.25,),
        intensity: dict | None = None,
        augment: dict | None = None,
        cache: bool | str = False,
        cache_memory: int | None = None,
        rare_classes: Sequence[int] | None = None,
        upright: bool = False,
        background: bool | None = None,
        seed: int = 0,
        synthetic: dict | None = None,
        instances_dir: str | None = None,
        weight_map: dict | None = None,
        context: int = 0,
        target: str = "semantic",
        instances: dict | None = None,
        volume: bool | None = None,
        dims: float | None = None,
        slab: int | None = None,
        slice_axis: int | None = None,
        spacing: Sequence[float] | None = None,
        patch: Sequence[int] | None = None,
        synthetic3d: dict | None = None,
    ) -> None:
        super().__init__()
        self.context = int(context)
        self.target = target
        if target == "instances":
            check_instance_target(root, mask_format, instances_dir)
            if weight_map is None and instance_settings(instances)["weight_map"]:
                weight_map = {}  # the weight map's defaults (loss=weighted_ce_dice's)
        if weight_map is not None and mask_format != "instances" and not instances_dir:
            raise ValueError(
                "loss=weighted_ce_dice computes its weight map from instance labels, and "
                f"the data at {root} has none configured: set data.instances_dir to a folder "
                "beside images/ and masks/ holding one instance label image per image (0 = "
                "background, 1..N = objects, 16-bit PNG or TIFF), or use "
                "data.mask_format=instances when the masks are instance labels"
            )
        self.instances_dir = instances_dir
        self.weight_map = dict(weight_map) if weight_map is not None else None
        self.contract = DataContract.from_config({
            "in_channels": in_channels, "num_classes": num_classes, "class_names": class_names,
            "mask_format": mask_format, "mask_values": mask_values, "mask_colors": mask_colors,
            "ignore_value": ignore_value, "intensity": intensity, "mean": mean, "std": std,
            "crop_size": crop_size, "target": target, "instances": instances,
            "volume": volume, "dims": dims, "slab": slab, "slice_axis": slice_axis,
            "spacing": spacing, "patch": patch, "background": background,
        })  # fmt: skip
        if synthetic3d and not volume:
            raise ValueError("data.synthetic3d generates volumes: it needs data.volume=true")
        self.mask_format = mask_format  # of the files (the contract's: instances for a target)
        self.root = Path(root)
        class_folders = class_names[1:] if mask_format == "folders" else None
        self.folders = {"images_dir": images_dir, "masks_dir": masks_dir,
                        "mask_suffix": mask_suffix, "class_folders": class_folders}  # fmt: skip
        self.crop = {"crop_size": crop_size, "foreground_crop": foreground_crop,
                     "pad_to_crop": pad_to_crop}  # fmt: skip
        self.train_repeats = train_repeats
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = loader_workers(num_workers)
        self.split = {"val_fraction": val_fraction, "test_fraction": test_fraction,
                      "split_seed": split_seed, "split_file": split_file,
                      "num_folds": num_folds, "fold": fold, "group_regex": group_regex,
                      "fold_order": fold_order}  # fmt: skip
        self.splits_path = Path(splits_path) if splits_path else None
        self.augment = augment
        if upright and augment:  # a street upside down or on its side is no test image
            self.augment = {**augment, "vflip": 0.0, "rotate90": 0.0}
        if cache not in (True, False, "auto"):
            raise ValueError(f"data.cache={cache!r}: choose true, false or auto")
        self.cache = cache
        self.cache_memory = cache_memory
        self.rare_classes = list(rare_classes or [])
        self.seed = seed
        self.synthetic = synthetic
        self._synthetic_ready = False  # prepare_data and setup both ask: check once
        self.splits: dict[str, list[str]] | None = None
        self._checked = False  # check() found every file fit: setup need not read them again
        self.pairs: dict[str, tuple[Path, Path]] = {}
        self.datasets: dict[str, SegDataset] = {}

    def prepare_data(self) -> None:
        if not self.datasets:
            self._ensure_synthetic()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self._ensure_synthetic()  # also when prepare_data was not called (direct use, tests)
        pairs, self.splits = self._pairs_and_splits(save=True)
        self.pairs = pairs
        train_pairs = [pairs[n] for n in self.splits["train"]]
        if not self._checked:  # check() already read every file (train's preflight)
            channels, crop = self.contract.in_channels, self._crop_to_check()
            check_pairs(train_pairs, channels, crop, self._labelled())
            check_pairs([pairs[n] for n in self.splits["val"] + self.splits["test"]], channels)
        c = self.contract
        common = {"encoding": c.encoding, "in_channels": c.in_channels, "mean": c.mean,
                  "std": c.std, "intensity": c.intensity}  # fmt: skip
        cached = self.cache is not False  # `auto` decides below, from the first image
        self.datasets["train"] = SegDataset(
            train_pairs, transform=build_train_transform(self.augment), **self.crop, **common,
            **{**self._weight_args(train_pairs), **self._target_args(train_pairs)},
            context=self.context, cache=cached,
        )  # fmt: skip
        if self.weight_map is not None:  # once per image, before workers copy the dataset
            start = time.perf_counter()
            self.datasets["train"].precompute_weights()
            log.info("weight maps of %d training images computed in %.1f s",
                     len(train_pairs), time.perf_counter() - start)  # fmt: skip
        for name in ("val", "test"):
            split = [pairs[n] for n in self.splits[name]]
            self.datasets[name] = SegDataset(split, **common, **self._target_args(split),
                                             cache=cached and name == "val")  # fmt: skip
        if cached:
            self._fill_caches()
        log.info(
            "data %s: %s", self.root, ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
        )

    def _fill_caches(self) -> None:
        """Decode the training and validation images into their datasets' caches now, in
        this process (before any worker starts), or, for `cache: auto` when they would take
        too much memory, drop the caches; the decision and its reason go to the log."""
        train, val = self.datasets["train"], self.datasets["val"]
        if self.cache == "auto" and len(train):
            count = len(train) + len(val)
            first = train.decoded(0)  # kept: the cache's first entry
            needed = (first[0].nbytes + first[1].nbytes) * count
            on, why = decide_cache(needed, self.cache_memory)
            log.info("data.cache=auto: %s (%s; estimated from %s x %d images)",
                     "on" if on else "off", why, train.pairs[0][0].name, count)  # fmt: skip
            if not on:
                train.drop_cache()
                val.drop_cache()
                return
        start = time.perf_counter()
        size = train.fill_cache(what="training images") + val.fill_cache(what="validation images")
        log.info("%d training and %d validation images decoded once, %.0f MiB kept in memory "
                 "(%.1f s)", len(train), len(val), size / 2**20,
                 time.perf_counter() - start)  # fmt: skip

    def _ensure_synthetic(self) -> None:
        """Generate the synthetic data unless this data module has already made sure of it."""
        if self.synthetic and not self._synthetic_ready:
            ensure_synthetic(self.root, **self.synthetic)
            self._synthetic_ready = True

    def check(self) -> list[str]:
        """Every problem that would stop training, each naming its file and the fix, found
        without writing anything: missing folders or masks, a split listing vanished images,
        unreadable files, sizes, channels, images smaller than the patch."""
        if self.synthetic:
            return []  # generated on first use, by the same code that reads it
        try:
            pairs, splits = self._pairs_and_splits(save=False)
        except (FileNotFoundError, ValueError) as err:
            return [str(err)]
        self._warn_grey_into_colour([pairs[n][0] for n in splits["train"][:16]])
        problems = []
        crop = self._crop_to_check()
        for names, size, labelled in (
            (splits["train"], crop, self._labelled()),
            (splits["val"] + splits["test"], None, None),
        ):
            try:
                check_pairs([pairs[n] for n in names], self.contract.in_channels, size, labelled)
            except ValueError as err:  # a ProblemList holds every problem, not only those shown
                problems += err.problems if isinstance(err, ProblemList) else [str(err)]
        self._checked = not problems
        return problems

    def _pairs_and_splits(self, save: bool) -> tuple[dict, dict[str, list[str]]]:
        """`{image name: (image, mask)}` of the folder and the split in force (written to
        `splits_path` when `save`)."""
        pairs = {img.name: (img, mask) for img, mask in find_pairs(self.root, **self.folders)}
        return pairs, self._load_or_make_splits(sorted(pairs), save=save)

    def _labelled(self) -> MaskEncoding | None:
        """The encoding, when training masks must be decoded to check that each holds a
        labelled pixel (`data.ignore_value` set; a patch is always drawn around one)."""
        encoding = self.contract.encoding
        return encoding if encoding.ignore_value is not None else None

    def _crop_to_check(self) -> int | None:
        """The side every training image must reach (None when smaller ones are padded)."""
        return None if self.crop["pad_to_crop"] else self.crop["crop_size"]

    def _warn_grey_into_colour(self, images: list[Path]) -> None:
        """Say so when grey images would feed a colour net (data=folder's in_channels: 3):
        it trains, on three copies of one channel, and the checkpoint then wants 3."""
        if self.contract.in_channels != 3 or not images:
            return
        try:
            feeds = {read_header(path)[2] for path in images}
        except ValueError:
            return  # unreadable files are reported by the checks
        if feeds == {1}:
            log.warning(
                "the images of %s are grey but data.in_channels=3: each is fed as three "
                "copies of one channel. Set data.in_channels=1 (data=auto plans it).",
                self.root,
            )

    def _weight_args(self, pairs: list[tuple[Path, Path]]) -> dict:
        """`SegDataset` arguments for the weight map: instance files and settings."""
        if self.weight_map is None:
            return {}
        return {"instance_paths": self._instance_files(pairs), "weight_map": self.weight_map}

    def _target_args(self, pairs: list[tuple[Path, Path]]) -> dict:
        """`SegDataset` arguments for an instance target: instance files and boundary width."""
        if not self.contract.instance_target:
            return {}
        width = self.contract.instances["boundary_width"]
        return {"instance_paths": self._instance_files(pairs), "instance_target": width}

    def _instance_files(self, pairs: list[tuple[Path, Path]]) -> list[Path]:
        folder = self.root / (self.instances_dir or "")
        return instance_files(pairs, self.mask_format, folder, self.folders["mask_suffix"])

    def _load_or_make_splits(self, names: list[str], save: bool = True) -> dict[str, list[str]]:
        """The run's own split if it has one, else an explicit file, folds, or ratios
        (written to `splits_path` when `save`)."""
        s = self.split
        source = self.splits_path if self.splits_path and self.splits_path.is_file() else None
        source = source or (Path(s["split_file"]) if s["split_file"] else None)
        if source:
            splits = load_splits(source)
            missing = sorted(set().union(*splits.values()) - set(names))
            if missing:
                raise FileNotFoundError(
                    f"{source} lists {len(missing)} image(s) not in {self.root}, "
                    f"e.g. {missing[:5]}: restore them or fix the split"
                )
        elif problems := split_problems(names, s, self.root):  # the folder named
            raise ValueError(problems[0])
        else:
            splits = cut_split(names, s)
        if save and self.splits_path and source != self.splits_path:
            save_splits(splits, self.splits_path)
        return splits

    def class_frequencies(self) -> np.ndarray:
        """Pixel (voxel) share of each class over the training split (decodes every training
        mask)."""
        self.setup()
        k, train = self.contract.num_classes, self.datasets["train"]
        counts = np.zeros(k, np.int64)
        for index in range(len(train)):  # unlabelled pixels (PAD_LABEL) are cut off by [:k]
            counts += np.bincount(train.mask(index).ravel(), minlength=k)[:k]
        return counts / max(1, counts.sum())

    collate = staticmethod(pad_collate)
    """How a batch is put together (`VolumeDataModule`: windows or one whole volume)."""
    eval_workers = True
    """Whether validation and test read in the loader's workers (volumes: in this process)."""

    def _loader(self, stage: str, batch_size: int, sampler: Sampler) -> DataLoader:
        workers = self.num_workers if stage == "train" or self.eval_workers else 0
        return DataLoader(
            self.datasets[stage],
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=self.collate,
        )

    def _rank(self) -> tuple[int, int]:
        """(this process's rank, number of processes): (0, 1) outside DDP."""
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

    def train_dataloader(self) -> DataLoader:
        n = len(self.datasets["train"])
        sampler = SeededShuffleSampler(n, self.seed, self.train_repeats, *self._rank())
        return self._loader("train", self.batch_size, sampler)

    def _eval_loader(self, stage: str) -> DataLoader:
        """Validation or test: each process its own share, no image twice (the pooled
        scores are summed across processes); with fewer images than processes some shares
        are empty, and the loaders declare no length so those processes still take part."""
        rank, world_size = self._rank()
        n = len(self.datasets[stage])
        shard = UnsizedShardSampler if n < world_size else ShardSampler
        return self._loader(stage, self.eval_batch_size, shard(n, rank, world_size))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


def check_instance_target(root: str, mask_format: str, instances_dir: str | None) -> None:
    """Refuse `data.target=instances` without instance labels."""
    if mask_format != "instances" and not instances_dir:
        raise ValueError(
            f"data.target=instances builds its classes from instance labels, and the data at "
            f"{root} has none configured (data.mask_format={mask_format}): use "
            "data.mask_format=instances when the masks are instance labels (0 = background, "
            "1..N = objects), or set data.instances_dir to a folder of them named like the images"
        )
