"""`VolumeDataModule`: the data module of a folder of volumes (`data.volume: true`).

It keeps `SegDataModule`'s contract, split, sampler and loader rules and changes
what a sample is: cases (`volume_cases.find_volume_cases`) split by case name;
training draws slices, slabs or 3-D patches from them (`VolumeDataset`), and
validation and test see one whole volume per item, scored as a volume.

Memory is bounded by the plan, not by the dataset (`data.cache`, nnU-Net's way): the cases
are kept in memory as float32 when they take at most `plan.CACHE_SHARE` of the memory
available (`auto`, or `true`), else each is preprocessed once into a copy on disk
(`VolumeDataset.store`, under the run's `.cache/volumes` unless `cache_dir` is given) and
memory-mapped, so a training window reads only the pages it touches (`false`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch

from unet_seg.data.datamodule import SegDataModule
from unet_seg.data.volume_cases import VolumeCase, find_volume_cases
from unet_seg.data.volume_dataset import LoadedCase, VolumeDataset, load_case

log = logging.getLogger(__name__)


def collate_volumes(batch: list[dict]) -> dict:
    """Stack samples of one size: training windows `[B, C, *S]`, or evaluation volumes
    (one per batch, as their sizes differ)."""
    out = {"image": torch.stack([s["image"] for s in batch]), "name": [s["name"] for s in batch]}
    if "mask" in batch[0]:
        out["mask"] = torch.stack([s["mask"] for s in batch])
    return out


class VolumeDataModule(SegDataModule):
    """Volumes in `root/images` (one file per case, or nnU-Net's `<case>_0000..` channels)
    with label volumes in `root/masks`.

    Args:
        synthetic3d: parameters of `ensure_synthetic3d` to generate the data first, or None.
        cache_dir: the folder of the preprocessed copies on disk (None: `.cache/volumes`
            beside the splits file, i.e. in the run; else the system's temporary folder).
            `cache` (default `auto`) and `cache_memory` choose memory or disk (the module
            docstring).
        **kwargs: `SegDataModule`'s arguments. The contract's volume fields (`dims`, `slab`,
            `slice_axis`, `spacing`, `patch`) say what a sample is: 2-D and 2.5-D train on
            `crop_size` windows of slices along `slice_axis`, 3-D on `patch` windows. The
            2-D-only ones (`weight_map`, `context`, `instances_dir`, `target=instances`)
            are refused.
    """

    collate = staticmethod(collate_volumes)
    eval_workers = False  # whole volumes, one at a time: read in this process

    def __init__(
        self, synthetic3d: dict | None = None, cache_dir: str | None = None, **kwargs
    ) -> None:
        kwargs.setdefault("cache", "auto")
        unsupported = [k for k in ("weight_map", "instances_dir", "context") if kwargs.get(k)]
        unsupported += ["target=instances"] if kwargs.get("target") == "instances" else []
        if unsupported:
            raise ValueError(
                f"{', '.join(unsupported)}: not available for volumes yet (2-D images only); "
                "leave it out, or cut the volumes into 2-D images"
            )
        kwargs.pop("weight_map", None)
        kwargs.pop("context", None)
        super().__init__(**{**kwargs, "volume": True}, synthetic3d=synthetic3d)
        if self.contract.dims == 3 and not self.contract.patch:
            raise ValueError("data.dims=3 trains on 3-D patches: set data.patch=[d, h, w]")
        self.synthetic3d = synthetic3d
        self.eval_batch_size = 1  # whole volumes, each of its own size
        self.cases: dict[str, VolumeCase] = {}
        self._preloaded: dict[str, LoadedCase] = {}
        if cache_dir is None:
            run = Path(self.splits_path).parent if self.splits_path else None
            cache_dir = run / ".cache" / "volumes" if run else Path(
                tempfile.gettempdir()) / "unet_seg" / "volumes"  # fmt: skip
        self.cache_dir = Path(cache_dir)
        self.in_memory: bool | None = None if self.cache == "auto" else bool(self.cache)
        """Whether the cases are kept in memory (else memory-mapped from copies on disk);
        None until `auto` has decided (`_decide`)."""

    def _decide(self, first: LoadedCase, count: int) -> None:
        """`data.cache: auto`: memory or disk for all `count` cases, estimated from the
        `first` read (`VolumeDataset.memory_decision`); logged once with its reason."""
        if self.in_memory is not None:
            return
        size = first.image.nbytes + (first.labels.nbytes if first.labels is not None else 0)
        self.in_memory, why = VolumeDataset.memory_decision(size * count, self.cache_memory,
                                                            self.cache_dir)  # fmt: skip
        log.info("data.cache=auto: %s (%s; estimated from %s x %d cases)",
                 "in memory" if self.in_memory else "on disk", why, first.name,
                 count)  # fmt: skip

    def _keep(self, case: VolumeCase, loaded: LoadedCase) -> None:
        """A case read by `check`: kept for `setup` in memory, or written to its copy on
        disk and let go."""
        if self.in_memory:
            self._preloaded[case.name] = loaded
        else:
            VolumeDataset.store(case, self.contract, self.cache_dir, loaded)

    def _ensure_synthetic(self) -> None:
        if self.synthetic3d and not self._synthetic_ready:
            from unet_seg.data.synthetic3d import ensure_synthetic3d

            ensure_synthetic3d(self.root, **self.synthetic3d)
            self._synthetic_ready = True
        super()._ensure_synthetic()

    def _find_cases(self) -> dict[str, VolumeCase]:
        f = self.folders
        cases = find_volume_cases(self.root, f["images_dir"], f["masks_dir"], f["mask_suffix"])
        return {case.name: case for case in cases}

    def _pairs_and_splits(self, save: bool) -> tuple[dict, dict[str, list[str]]]:
        cases = self._find_cases()
        return cases, self._load_or_make_splits(sorted(cases), save=save)

    def check(self) -> list[str]:
        """Every problem that would stop training, each naming its file: the folder's (a
        missing mask, a channel gap, ...), then every case read: channels, grids, label
        values. The cases read are kept for `setup`, in memory or as their copies on disk
        (`data.cache`)."""
        self._ensure_synthetic()
        try:
            cases, _ = self._pairs_and_splits(save=False)
        except (FileNotFoundError, ValueError) as err:
            return [str(err)]
        problems = []
        for case in cases.values():
            try:
                loaded = load_case(case, self.contract)
                self._decide(loaded, len(cases))
                self._keep(case, loaded)
                del loaded
            except (ValueError, OSError) as err:
                problems.append(str(err))
        self._checked = not problems
        return problems

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self._ensure_synthetic()
        self.cases, self.splits = self._pairs_and_splits(save=True)
        self.pairs = {n: (c.images[0], c.mask) for n, c in self.cases.items()}
        c = self.contract
        window = c.patch if c.dims == 3 else [self.crop["crop_size"]] * 2
        start = time.perf_counter()
        if self.in_memory is None and self.cases:  # auto, not decided by check()
            first = self.cases[(self.splits["train"] or sorted(self.cases))[0]]
            loaded = load_case(first, self.contract)
            self._decide(loaded, len(self.cases))
            self._keep(first, loaded)
            del loaded
        for name in ("train", "val", "test"):
            dataset = VolumeDataset(
                [self.cases[n] for n in self.splits[name]], c, train=name == "train",
                crop=window, foreground_crop=self.crop["foreground_crop"],
                augment=self.augment, cache=self.in_memory is not False,
                cache_dir=self.cache_dir,
            )  # fmt: skip
            for i, n in enumerate(self.splits[name]):  # already read by check()
                if n in self._preloaded:
                    dataset._loaded[i] = self._preloaded.pop(n)
            dataset.load_all()  # once, before loader workers copy the dataset
            self.datasets[name] = dataset
        log.info(
            "volumes %s: %s (read in %.1f s, %s); %s",
            self.root, ", ".join(f"{k} {len(v)}" for k, v in self.splits.items()),
            time.perf_counter() - start, "in memory" if self.in_memory is not False else
            f"memory-mapped from {self.cache_dir}", self.describe_sampling(),
        )  # fmt: skip

    def describe_sampling(self) -> str:
        """One line: what a training sample is."""
        c = self.contract
        axis = "zyx"[c.slice_axis]
        if c.dims == 3:
            return f"3-D patches {c.patch}"
        what = f"2.5-D slabs of {c.slab} slices" if c.dims == 2.5 else "2-D slices"
        return f"{what} along {axis}, windows of {self.crop['crop_size']} px"
