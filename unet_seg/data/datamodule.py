"""`SegDataModule`: image/mask folders -> reproducible splits -> DataLoaders."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler

from unet_seg.data.checks import check_pairs
from unet_seg.data.dataset import SegDataset, find_pairs, pad_collate
from unet_seg.data.masks import MaskEncoding
from unet_seg.data.sampler import SeededShuffleSampler
from unet_seg.data.splits import load_splits, make_splits, save_splits
from unet_seg.data.synthetic import ensure_synthetic
from unet_seg.data.transforms import build_train_transform

log = logging.getLogger(__name__)


def check_class_config(num_classes: int, mask_values: Sequence[int], class_names: Sequence[str]):
    """Raise unless `num_classes`, `mask_values` and `class_names` agree.

    `num_classes: 1` means a binary task with a sigmoid output (two mask values).
    """
    expected = 2 if num_classes == 1 else num_classes
    if len(mask_values) != expected:
        raise ValueError(
            f"data.num_classes={num_classes} needs {expected} data.mask_values, got "
            f"{list(mask_values)}: give one pixel value per class (num_classes: 1 is binary)"
        )
    if len(class_names) != expected:
        raise ValueError(
            f"data.class_names={list(class_names)} must name {expected} classes "
            f"(background first) to match data.mask_values={list(mask_values)}"
        )


class SegDataModule(pl.LightningDataModule):
    """Reads `root/images` and `root/masks`, splits them reproducibly, augments training data.

    Args:
        root: dataset folder.
        in_channels, num_classes, mask_values, class_names: see `check_class_config`.
        crop_size: training patch side; validation and test use whole images.
        splits_path: where the split is written; an existing file there is reused.
        seed: seeds the training order and augmentation of each epoch.
        synthetic: parameters of `ensure_synthetic` to generate the data first, or None.
    """

    def __init__(
        self,
        root: str,
        in_channels: int,
        num_classes: int,
        mask_values: Sequence[int],
        class_names: Sequence[str],
        images_dir: str = "images",
        masks_dir: str = "masks",
        mask_suffix: str = "",
        crop_size: int | None = 256,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.2,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        seed: int = 0,
        splits_path: str | None = None,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.25,),
        augment: dict | None = None,
        synthetic: dict | None = None,
    ) -> None:
        super().__init__()
        check_class_config(num_classes, mask_values, class_names)
        self.root = Path(root)
        self.in_channels = in_channels
        self.encoding = MaskEncoding(mask_values)
        self.folders = {
            "images_dir": images_dir,
            "masks_dir": masks_dir,
            "mask_suffix": mask_suffix,
        }
        self.crop_size = crop_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.fractions = (val_fraction, test_fraction)
        self.split_seed = split_seed
        self.seed = seed
        self.splits_path = Path(splits_path) if splits_path else None
        self.mean, self.std = list(mean), list(std)
        self.augment = augment
        self.synthetic = synthetic
        self.splits: dict[str, list[str]] | None = None
        self.datasets: dict[str, SegDataset] = {}

    def prepare_data(self) -> None:
        if self.synthetic and not self.datasets:
            ensure_synthetic(self.root, **self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.synthetic:  # also when prepare_data was not called (direct use, tests)
            ensure_synthetic(self.root, **self.synthetic)
        pairs = {img.name: (img, mask) for img, mask in find_pairs(self.root, **self.folders)}
        self.splits = self._load_or_make_splits(sorted(pairs))
        train_pairs = [pairs[n] for n in self.splits["train"]]
        check_pairs(train_pairs, self.in_channels, self.crop_size)
        eval_pairs = [pairs[n] for n in self.splits["val"] + self.splits["test"]]
        check_pairs(eval_pairs, self.in_channels)
        for name, split in self.splits.items():
            transform = (
                build_train_transform(self.crop_size, self.augment) if name == "train" else None
            )
            self.datasets[name] = SegDataset(
                [pairs[n] for n in split],
                self.encoding,
                self.in_channels,
                self.mean,
                self.std,
                transform,
            )
        log.info(
            "data %s: %s", self.root, ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
        )

    def _load_or_make_splits(self, names: list[str]) -> dict[str, list[str]]:
        if self.splits_path and self.splits_path.is_file():
            splits = load_splits(self.splits_path)
            missing = sorted(set().union(*splits.values()) - set(names))
            if missing:
                raise FileNotFoundError(
                    f"{self.splits_path} lists {len(missing)} image(s) no longer in "
                    f"{self.root}, e.g. {missing[:5]}: restore them or start a new run"
                )
            return splits
        splits = make_splits(names, *self.fractions, seed=self.split_seed)
        if self.splits_path:
            save_splits(splits, self.splits_path)
        return splits

    def _loader(self, stage: str, batch_size: int, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            self.datasets[stage],
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=pad_collate,
        )

    def train_dataloader(self) -> DataLoader:
        sampler = SeededShuffleSampler(len(self.datasets["train"]), self.seed)
        return self._loader("train", self.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)
