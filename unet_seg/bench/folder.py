"""Your own folder: where the time of a training step on your images goes.

For the training config `python -m unet_seg.train data=auto data.root=DIR` composes and
plans (the plan's patch, batch and workers; the precision, memory format, threads and
workers the Trainer puts in force), four measurements side by side:

- the whole training step: `Trainer.fit` on the real data module (`overhead.fit_rate`,
  `StepTimer`), a few timed steps after warm-up, with `StepProbe` recording what was in
  force and how long each step waited for its batch;
- the net's own step on a ready batch of the same shape: forward, loss, backward and the
  configured optimizer, outside Lightning, in the precision and memory format in force;
- the train DataLoader's images/s with the workers in force, nothing consuming them
  (`pipeline.loader_rate`);
- the loader's work per image, in this process: reading and decoding the image and mask
  files, patch cut + augmentation, collation, and the copy to the device (none on a CPU).

The difference between the whole step and the net's goes to the loader time the workers
did not hide (the time each step waited for its batch inside `fit`: the fetch, and the
copy to the device) and the rest (Python, Lightning's hooks, logging).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import statistics
import time
from itertools import islice
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from omegaconf import DictConfig, open_dict

from unet_seg.bench.measure import AUTOCAST, synchronize, time_per_step
from unet_seg.bench.overhead import fit_rate
from unet_seg.bench.pipeline import loader_rate
from unet_seg.build import build_datamodule, build_module
from unet_seg.data.dataset import SegDataset
from unet_seg.data.readers import read_image, to_unit_range
from unet_seg.models.blocks import center_crop
from unet_seg.module import FastPath, apply_fast_path

log = logging.getLogger(__name__)

IN_FORCE = ("threads", "threads_seen", "workers", "precision", "channels_last", "compile",
            "device", "batch_shape", "batch_dtype")  # fmt: skip
"""What `StepProbe` saw the fit run with, reported under `in_force`."""


class StepProbe(pl.Callback):
    """Records, over training batches `warmup .. warmup + steps` of the first epoch, what a
    `Trainer.fit` run had in force (torch threads, loader workers, precision, channels-last,
    the `FastPath` options, the batch's shape) and, per step, the time spent inside the
    step (batch start to batch end) and the time waiting for the next batch (batch end to
    the next batch's start: the fetch from the loader and the copy to the device).
    Writes them as JSON to `output` when training ends.

    Added to a training config as `callbacks.folder_probe` by `measure_folder`.
    """

    def __init__(self, output: str, warmup: int, steps: int) -> None:
        self.output = Path(output)
        self.warmup, self.steps = warmup, steps
        self.facts: dict[str, Any] = {}
        self.inside: list[float] = []
        self.waits: list[float] = []
        self.threads: list[int] = []
        self._end: float | None = None
        self._start = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        fast = next((c for c in trainer.callbacks if isinstance(c, FastPath)), None)
        options = dict(fast.options) if fast is not None else {}
        self.facts.update(
            workers=int(getattr(loader, "num_workers", 0)),
            precision=str(trainer.precision),
            compile=bool(options.get("compile")),
            checkpointing=bool(options.get("checkpointing")),
            channels_last=is_channels_last(pl_module.net),
            device=str(pl_module.device),
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch or not self.warmup <= batch_idx <= self.warmup + self.steps:
            return
        synchronize(pl_module.device)
        now = time.perf_counter()
        if batch_idx > self.warmup and self._end is not None:
            self.waits.append(now - self._end)
        self._start = now
        if batch_idx == self.warmup:
            self.facts["batch_shape"] = list(batch["image"].shape)
            self.facts["batch_dtype"] = str(batch["image"].dtype).removeprefix("torch.")
            self.facts["channels_last"] = is_channels_last(pl_module.net)  # after setup hooks
        self.threads.append(torch.get_num_threads())

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        batch_idx = args[-1]
        if trainer.current_epoch or not self.warmup <= batch_idx < self.warmup + self.steps:
            return
        synchronize(pl_module.device)
        self._end = time.perf_counter()
        self.inside.append(self._end - self._start)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.facts.update(inside_s=self.inside, wait_s=self.waits,
                          threads=max(self.threads) if self.threads else torch.get_num_threads(),
                          threads_seen=sorted(set(self.threads)))  # fmt: skip
        self.output.write_text(json.dumps(self.facts))


def is_channels_last(net: torch.nn.Module) -> bool:
    """Whether the net's convolution weights are in channels-last (NHWC / NDHWC) order."""
    for p in net.parameters():
        if p.dim() in (4, 5) and not p.is_contiguous():
            fmt = torch.channels_last if p.dim() == 4 else torch.channels_last_3d
            if p.is_contiguous(memory_format=fmt):
                return True
    return False


def enough_batches(cfg: DictConfig, train_images: int, batches: int) -> tuple[DictConfig, str]:
    """`cfg` with `data.train_repeats` raised, if need be, so that the first epoch has
    `batches` training batches (repeats change which patches are drawn, not a step's
    cost); and a note saying so ('' when nothing changed)."""
    batch, repeats = int(cfg.data.batch_size), int(cfg.data.train_repeats or 1)
    if math.ceil(train_images * repeats / batch) >= batches:
        return cfg, ""
    needed = math.ceil(batches * batch / train_images)
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.data.train_repeats = needed
    return cfg, (
        f"folder: data.train_repeats {repeats} -> {needed} for the timed fit, so that "
        f"its first epoch holds {batches} batches of {train_images} training images"
    )


def net_step(
    cfg: DictConfig,
    datamodule: Any,
    facts: dict[str, Any],
    device: torch.device,
    warmup: int,
    steps: int,
    repeats: int,
    seed: int,
) -> dict[str, Any]:
    """The net's own training step on a ready batch of the training loader: forward (with
    the net's context, as `SegModule` trains), the configured loss, backward and the
    configured optimizer, in the precision and memory format `facts` (a `StepProbe`'s)
    say the fit ran with, on as many threads. Seconds per step, best of `repeats`."""
    torch.manual_seed(seed)
    module = build_module(cfg, datamodule).to(device).train()
    apply_fast_path(module.net, channels_last=facts["channels_last"], compile=facts["compile"],
                    checkpointing=facts["checkpointing"])  # fmt: skip
    optimizer = module.configure_optimizers()["optimizer"]
    dtype = AUTOCAST.get(facts["precision"])
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    datamodule.num_workers, workers = 0, datamodule.num_workers
    try:
        batch = next(iter(datamodule.train_dataloader()))
    finally:
        datamodule.num_workers = workers
    images, masks = batch["image"].to(device), batch["mask"].to(device)
    weights = batch.get("weight")
    weights = None if weights is None else weights.to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = module.net.forward_with_context(images)
            logits = outputs[-1] if isinstance(outputs, list) else outputs
            target = center_crop(masks, logits.shape[-2:])
            extra = [] if weights is None else [center_crop(weights, logits.shape[-2:])]
            loss = module.loss_fn(outputs, target, *extra)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    threads = torch.get_num_threads()
    torch.set_num_threads(int(facts["threads"]))
    try:
        start = time.perf_counter()
        step()
        synchronize(device)
        first = time.perf_counter() - start
        seconds = time_per_step(step, device, warmup, steps, repeats)
    finally:
        torch.set_num_threads(threads)
    return {"seconds": seconds, "images_per_s": len(images) / seconds, "first_step_s": first,
            "batch_shape": list(images.shape), "threads": int(facts["threads"]),
            "precision": facts["precision"], "channels_last": facts["channels_last"],
            "compile": facts["compile"]}  # fmt: skip


def file_size(path: Path) -> int:
    """Bytes of a mask or image file; of every file under it for a folder of class masks."""
    if path.is_file():
        return path.stat().st_size
    parent, stem = path.parent, path.name  # mask_format=folders: masks/<class>/<stem>.*
    return sum(p.stat().st_size for p in parent.glob(f"*/{stem}.*") if p.is_file())


def loader_work(
    dataset: SegDataset, sampler: Any, collate: Any, batch: int, samples: int,
    device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """The training loader's work per image, in this process, on the first `samples` keys
    of its `sampler` (the same patches and augmentations as training draws):

    - `sample_ms`: `dataset[key]` as the loader calls it (what each worker does per image);
    - `decode_ms`: reading and decoding the image and mask files of the distinct images
      those keys draw (`read_image` and the intensity scaling, `dataset.mask`: what
      `SegDataset.decoded` does with the files; with `data.cache` on, once per image
      before training, not per sample), with the files' count and size, and `cached`;
    - `cut_augment_ms`: `dataset[key]` with the decoded arrays served from memory: the
      patch cut, augmentation, normalisation and conversion to tensors;
    - `collate_ms`: the loader's `collate` of `batch` samples, per image;
    - `host_to_device_ms`: the batch's copy to `device` (0 on a CPU: there is none).
    """
    keys = list(islice(iter(sampler), samples))
    if not keys:
        raise ValueError("folder: the training split is empty; there is nothing to measure")
    index_of = [k[0] if isinstance(k, tuple) else k for k in keys]
    sample_s, items = [], []
    for key in keys:
        start = time.perf_counter()
        items.append(dataset[key])
        sample_s.append(time.perf_counter() - start)
    collate_s, batches = 0.0, []
    for i in range(0, len(items), batch):
        start = time.perf_counter()
        batches.append(collate(items[i : i + batch]))
        collate_s += time.perf_counter() - start
    copy_s = 0.0
    if device.type != "cpu":
        for b in batches:
            synchronize(device)
            start = time.perf_counter()
            for name in ("image", "mask", "weight"):
                if name in b:
                    b[name].to(device, non_blocking=True)
            synchronize(device)
            copy_s += time.perf_counter() - start
    distinct = list(dict.fromkeys(index_of))
    decode_s, files, size = [], 0, 0
    for index in distinct:
        image_path, mask_path = dataset.pairs[index]
        start = time.perf_counter()
        image = read_image(image_path, dataset.in_channels)
        to_unit_range(image, **dataset.intensity, name=image_path)
        dataset.mask(index)
        decode_s.append(time.perf_counter() - start)
        files += 2
        size += file_size(Path(image_path)) + file_size(Path(mask_path))
    arrays = {index: dataset.decoded(index) for index in distinct}
    served = [0]

    def from_memory(index: int) -> tuple[np.ndarray, np.ndarray]:
        served[0] += 1
        return arrays[index]

    cut_s = []
    dataset.decoded = from_memory  # this process's dataset only, for the timed calls below
    try:
        for key in keys:
            start = time.perf_counter()
            dataset[key]
            cut_s.append(time.perf_counter() - start)
    finally:
        del dataset.decoded
    if served[0] != len(keys):
        raise RuntimeError(
            f"folder: SegDataset.__getitem__ called decoded() {served[0]} times for {len(keys)} "
            "samples; the cut + augmentation timing assumes one call per sample"
        )
    n = len(keys)
    return {
        "samples": n,
        "sample_ms": 1e3 * sum(sample_s) / n,
        "decode_ms": 1e3 * statistics.mean(decode_s),
        "decoded_images": len(distinct),
        "cached": dataset._cache is not None,
        "files_read": files,
        "mib_read": size / 2**20,
        "cut_augment_ms": 1e3 * sum(cut_s) / n,
        "collate_ms": 1e3 * collate_s / n,
        "host_to_device_ms": 1e3 * copy_s / n,
        "patch_shape": list(items[0]["image"].shape),
    }


def measure_folder(
    cfg: DictConfig,
    work_dir: Path,
    device: torch.device,
    warmup: int,
    steps: int,
    net_repeats: int,
    loader_images: int,
    samples: int,
) -> dict[str, Any]:
    """The folder section (see the module docstring) for a planned training config `cfg`.

    Returns:
        `root`, `train_images` / `val_images`, `arch`, `base_channels`, `crop_size`,
        `batch_size`; `in_force` (threads, workers, precision, channels_last, compile,
        device); `step` (the whole training step: `seconds` mean, `median_seconds`,
        `inside_seconds`, `wait_seconds`, `images_per_s`), `net` (`seconds`,
        `images_per_s`, `first_step_s`), `loader` (`workers`, `images_per_s`,
        `over_step`: over what the whole step consumes, `over_net`: over what the net's
        step alone would), `work` (`loader_work`), `per_image_ms` (the step, the net,
        their difference and where it goes: `loader_not_hidden`, `host_to_device`,
        `rest`), `notes`.
    """
    notes: list[str] = []
    datamodule = build_datamodule(cfg, work_dir / "data")
    datamodule.prepare_data()
    datamodule.setup("fit")
    train = datamodule.datasets["train"]
    batch = int(cfg.data.batch_size)
    fit_cfg, note = enough_batches(cfg, len(train), warmup + steps + 2)
    notes += [note] if note else []
    probe_file = work_dir / "probe.json"
    with open_dict(fit_cfg):
        probe = {"_target_": f"{StepProbe.__module__}.StepProbe", "output": str(probe_file),
                 "warmup": warmup, "steps": steps}  # fmt: skip
        if fit_cfg.get("callbacks"):
            fit_cfg.callbacks.folder_probe = probe
        else:
            fit_cfg.callbacks = {"folder_probe": probe}
    fit = fit_rate(fit_cfg, work_dir / "fit", warmup, steps, count_steps=1)
    facts = json.loads(probe_file.read_text())
    log.info("folder: fit %.3f s/step (%s, %d threads, %d workers)", fit["seconds_per_step"],
             facts["precision"], facts["threads"], facts["workers"])  # fmt: skip
    net = net_step(cfg, datamodule, facts, device, 1, max(2, steps // 2), 2, int(cfg.seed))
    log.info("folder: net %.3f s/step", net["seconds"])
    loader = loader_rate(datamodule, facts["workers"], max(loader_images, 2 * batch))
    log.info("folder: loader %.1f img/s with %d workers", loader["images_per_s"],
             facts["workers"])  # fmt: skip
    sampler = datamodule.train_dataloader().sampler
    work = loader_work(train, sampler, datamodule.train_dataloader().collate_fn, batch,
                       max(samples, batch), device)  # fmt: skip
    step_s = fit["seconds_per_step"]
    wait_s = statistics.mean(facts["wait_s"]) if facts["wait_s"] else 0.0
    step = {"seconds": step_s, "median_seconds": statistics.median(fit["step_seconds"])
            if fit.get("step_seconds") else None,
            "inside_seconds": statistics.mean(facts["inside_s"]), "wait_seconds": wait_s,
            "images_per_s": batch / step_s, "warmup": warmup, "steps": steps}  # fmt: skip
    per = {"step": 1e3 * step_s / batch, "net": 1e3 * net["seconds"] / batch}
    per["difference"] = per["step"] - per["net"]
    per["loader_not_hidden"] = 1e3 * wait_s / batch
    per["host_to_device"] = work["host_to_device_ms"]
    per["rest"] = per["difference"] - per["loader_not_hidden"]
    if device.type == "cpu":
        notes.append("folder: host-to-device copy 0: on a CPU the batch is used where it is")
    loader.update(over_step=loader["images_per_s"] / step["images_per_s"],
                  over_net=loader["images_per_s"] / net["images_per_s"])  # fmt: skip
    return {
        "root": str(cfg.data.root),
        "train_images": len(train),
        "val_images": len(datamodule.datasets["val"]),
        "arch": str(cfg.arch.name),
        "base_channels": cfg.arch.get("base_channels"),
        "crop_size": cfg.data.crop_size,
        "batch_size": batch,
        "in_force": {k: facts[k] for k in IN_FORCE},
        "step": step,
        "net": net,
        "loader": loader,
        "work": work,
        "per_image_ms": per,
        "notes": notes,
    }
