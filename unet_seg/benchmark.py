"""Where training and inference time goes: `python -m unet_seg.benchmark [key=value ...]`.

Prints one table, in sections (see `conf/benchmark.yaml`):

a. overhead   training steps/s through `Trainer.fit` (`unet_seg.train.train`, default
              callbacks, logging, checkpointing) against a plain PyTorch loop.
b. data       training images/s out of the DataLoader for 0, 1, 2 workers, against the
              rate at which training consumes them.
c. models     forward+backward images/s, FLOPs/image, achieved FLOP/s and peak memory of
              our U-Net and UNet++ and MONAI's BasicUNet and BasicUNetPlusPlus.
d. inference  `Predictor.run` images/s and peak memory: resize and tile modes, +/- TTA.
e. fastpath   channels-last, torch.compile and UNet++ activation checkpointing.
f. precision  (not run by default; for a GPU) 32-true, 16-mixed, bf16-mixed, each with and
              without channels-last and compile, as images/s and a fraction of peak FLOP/s.
g. folder     your own images (`data=auto data.root=DIR`, or any `data=` option): the
              training config `python -m unet_seg.train` composes and plans for them, its
              whole step next to the net's own step and the loader, and where the
              difference goes per image (`unet_seg.bench.folder`). With a data folder only
              this section runs by default; without one it is skipped, said in one line.

With `output=FILE` the same figures are written as JSON, under the keys
`config`, `environment`, `targets`, `overhead`, `data`, `models`, `inference`,
`fastpath`, `precision`, `folder`, `notes`, `total_s` (a section not run is null).
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
import lightning
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from unet_seg.bench.folder import measure_folder
from unet_seg.bench.inference import measure_inference
from unet_seg.bench.measure import MEMORY_METHODS
from unet_seg.bench.models import (
    measure_fast_path,
    measure_models,
    measure_precision,
    monai_available,
)
from unet_seg.bench.overhead import measure_overhead
from unet_seg.bench.pipeline import measure_pipeline
from unet_seg.build import build_datamodule, build_module, plan_config, resolve_precision
from unet_seg.config import CONF_DIR, to_plain
from unet_seg.data.plan import is_volume_config
from unet_seg.files import write_json
from unet_seg.inference import resolve_device
from unet_seg.models.registry import ARCHITECTURES
from unet_seg.module import channels_last_wins
from unet_seg.threads import set_threads

log = logging.getLogger(__name__)

SECTIONS = ("overhead", "data", "models", "inference", "fastpath", "precision", "folder")
DEFAULT_SECTIONS = ("overhead", "data", "models", "inference", "fastpath")
"""`sections` in `conf/benchmark.yaml`: with a data folder given, `folder` runs instead."""
OWN_DATA_KEYS = ("num_images", "workers", "images")
"""The benchmark's own `data` keys (its synthetic set), beside a data group's."""
TARGETS = {"overhead_pct_cpu": 5.0, "overhead_pct_gpu": 3.0, "loader_over_consumption": 2.0}
"""The issue's targets: framework overhead at most 5% (CPU) / 3% (GPU) over a plain loop;
the loader delivering at least twice what training consumes."""


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    env = {
        "device": str(device),
        "device_name": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "monai": monai_available(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env


def train_overrides(cfg: DictConfig, device: torch.device, arch: str) -> list[str]:
    """Overrides of `conf/train.yaml` for the benchmark's net, crop, batch, data and device."""
    overrides = [
        f"arch={arch}",
        f"seed={cfg.seed}",
        "run_dir=.",  # replaced per run; keeps Hydra's runtime out of the composed config
        f"data.root={cfg.data.root}",
        f"data.crop_size={cfg.size}",
        f"data.batch_size={cfg.batch}",
        f"data.synthetic.size={cfg.size}",
        f"data.synthetic.num_images={cfg.data.num_images}",
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"trainer.precision={cfg.precision}",
        f"trainer.threads={torch.get_num_threads()}",  # the benchmark's own, set before
    ]
    if device.type == "cuda":
        overrides.append(f"trainer.devices=[{device.index or 0}]")
    if cfg.base_channels:
        overrides.append(f"arch.base_channels={cfg.base_channels}")
    else:
        overrides.append("scale=paper")
    return overrides + list(cfg.get("train_overrides") or [])


def compose_train(overrides: list[str]) -> DictConfig:
    """`conf/train.yaml` composed with `overrides`, inside or outside a Hydra app."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=overrides)
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="train", overrides=overrides)


def folder_given(cfg: DictConfig) -> bool:
    """Whether a data group was chosen on the command line (`data=auto`, `data=folder`,
    `data=isbi2012`, ...): its keys then sit in `cfg.data` beside the benchmark's own
    (every option extends `conf/data/folder.yaml`, whose `images_dir` the benchmark lacks)."""
    return "images_dir" in (cfg.get("data") or {})


def folder_config(cfg: DictConfig, device: torch.device) -> DictConfig:
    """The training config `python -m unet_seg.train data=<option> data.<key>=...` would
    compose and plan for the folder of `cfg.data`: `conf/train.yaml` with the benchmark's
    arch, width, seed, device, threads and `train_overrides`, its `data` the data group's
    node (the benchmark's own data keys left out), then `plan_config` as training plans it."""
    given = OmegaConf.to_container(cfg.data, resolve=False).get("root")
    own = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "benchmark.yaml").data,
                                 resolve=False)["root"]  # fmt: skip
    # `???` (conf/data/folder.yaml) does not replace a value in a merge: the root stays ours
    if OmegaConf.is_missing(cfg.data, "root") or given == own:
        raise ValueError("the folder section needs your folder: data.root=DIR (DIR/images/* "
                         "and DIR/masks/*, paired by name)")  # fmt: skip
    root = Path(str(cfg.data.root))
    if not root.is_dir():
        raise ValueError(f"data.root={root}: no such folder ({root.resolve()}); give the folder "
                         "that holds images/ and masks/")  # fmt: skip
    overrides = [
        f"arch={cfg.arch}",
        f"seed={cfg.seed}",
        "run_dir=.",  # replaced per run
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"trainer.threads={'null' if cfg.get('threads') is None else cfg.threads}",
    ]
    if device.type == "cuda":
        overrides.append(f"trainer.devices=[{device.index or 0}]")
    if cfg.base_channels:
        overrides.append(f"arch.base_channels={cfg.base_channels}")
    else:
        overrides.append("scale=paper")
    train_cfg = compose_train(overrides + list(cfg.get("train_overrides") or []))
    data = copy.deepcopy(cfg.data)
    with open_dict(data):
        for key in OWN_DATA_KEYS:
            data.pop(key, None)
    with open_dict(train_cfg):
        train_cfg.data = data
    planned, _ = plan_config(train_cfg)
    if is_volume_config(to_plain(planned.data)):
        raise ValueError(f"data.root={root}: a folder of volumes; the folder section measures "
                         "2-D image folders (volumes: not yet)")  # fmt: skip
    return planned


def with_arch_name(cfg: DictConfig) -> DictConfig:
    """A copy of `cfg` whose `arch` is the architecture's name. On the command line
    `arch=nested` selects `conf/arch/nested.yaml`, as for training; only its name is used."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.arch = str(cfg.arch.name if OmegaConf.is_dict(cfg.arch) else cfg.arch)
    return cfg


def benchmark(cfg: DictConfig) -> dict[str, Any]:
    """Run the sections of `cfg.sections`; return the results (see the module docstring)."""
    start = time.perf_counter()
    cfg = with_arch_name(cfg)
    sections = list(cfg.sections)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"sections: unknown {unknown}; choose from {list(SECTIONS)}")
    folder = folder_given(cfg)
    if folder and sections == list(DEFAULT_SECTIONS):  # your folder: its section alone
        sections = ["folder"]
    elif folder and sections != ["folder"]:
        raise ValueError(
            f"sections={sections}: with a data folder (data=...) only the folder section runs; "
            "run the others without data=, on the benchmark's synthetic images"
        )
    if cfg.arch not in ("unet", "nested", "attention_unet", "res_unet"):
        raise ValueError(
            f"arch={cfg.arch}: the overhead, data, inference and fast-path sections run unet, "
            "nested, attention_unet or res_unet; every architecture is in models.names"
        )
    device = resolve_device(str(cfg.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={cfg.device}: this machine has no CUDA device (torch {torch.__version__}, "
            "torch.cuda.is_available() is False); run this on a GPU machine, or use device=cpu"
        )
    set_threads(cfg.get("threads"), "threads")
    if folder:  # the training config of your folder, as train composes and plans it
        train_cfg, archs = folder_config(cfg, device), {}
    else:
        train_cfg = compose_train(train_overrides(cfg, device, cfg.arch))
        archs = {a: to_plain(compose_train(train_overrides(cfg, device, a)).arch)
                 for a in sorted(ARCHITECTURES)}  # fmt: skip
    if device.type == "cuda":  # as training sets it (trainer.matmul_precision: TF32)
        torch.set_float32_matmul_precision(train_cfg.trainer.get("matmul_precision") or "highest")
    result: dict[str, Any] = {
        "config": to_plain(cfg),
        "environment": environment(device),
        "targets": TARGETS,
        "notes": [],
        **dict.fromkeys(SECTIONS),
    }
    if "folder" in sections and not folder:  # the table says so (FOLDER_SKIPPED)
        sections.remove("folder")
    with tempfile.TemporaryDirectory(prefix="unet_seg_bench_") as tmp:
        work = Path(cfg.work_dir) if cfg.get("work_dir") else Path(tmp)
        for section in sections:
            log.info("benchmark section: %s", section)
            RUNNERS[section](cfg, train_cfg, archs, device, work, result)
    result["total_s"] = time.perf_counter() - start
    return result


def _overhead(cfg, train_cfg, archs, device, work, result) -> None:  # noqa: ANN001
    o = cfg.overhead
    count = o.get("count_steps", 10)
    out = measure_overhead(train_cfg, work, device, o.warmup, o.steps, o.repeats, count)
    target = TARGETS["overhead_pct_gpu" if device.type == "cuda" else "overhead_pct_cpu"]
    judged = out["overhead_median_pct"]  # on a CPU; a GPU has the window's mean only
    judged = out["overhead_pct"] if judged is None else judged
    out.update(target_pct=target, met=judged <= target)
    if o.get("probe"):  # the framework's fixed cost per step, on a net too small to hide it
        probe_cfg = copy.deepcopy(train_cfg)
        with open_dict(probe_cfg):
            probe_cfg.arch.base_channels = o.probe.base_channels
            probe_cfg.data.crop_size = o.probe.size
        probe = measure_overhead(probe_cfg, work / "probe", device, o.warmup, o.probe.steps,
                                 o.repeats, count)  # fmt: skip
        key = "seconds_per_step" if probe["overhead_median_pct"] is None else "median_step_s"
        ms = probe["framework_ms_per_step"]  # fit - plain, in the same statistic as `key`
        out["probe"] = {
            **to_plain(o.probe),
            "plain_ms_per_step": 1e3 * probe["plain"][key],
            "fit_ms_per_step": 1e3 * probe["fit"][key],
            "framework_ms_per_step": ms,
            "host_reads_per_step": probe["fit"]["host_reads_per_step"],
            "share_of_this_step_pct": 100 * ms / (1e3 * out["plain"][key]),
        }
    result["overhead"] = out


def _data(cfg, train_cfg, archs, device, work, result) -> None:  # noqa: ANN001
    datamodule = build_datamodule(train_cfg, work / "data")
    rows = measure_pipeline(datamodule, list(cfg.data.workers), cfg.data.images)
    consumption = (result.get("overhead") or {}).get("fit", {}).get("images_per_s")
    source = "Trainer.fit, section a"
    if consumption is None:  # no overhead section: time the plain model step instead
        net_rows, _ = measure_models([cfg.arch], archs, to_plain(train_cfg.loss), [cfg.size],
                                     cfg.batch, cfg.base_channels, device, 1, 3, 1)  # fmt: skip
        consumption, source = net_rows[0]["images_per_s"], "model training step"
    for row in rows:
        row["over_consumption"] = row["images_per_s"] / consumption
    default = int(train_cfg.data.num_workers)
    at_default = next((r for r in rows if r["workers"] == default), None)
    ratio = at_default["over_consumption"] if at_default else None
    target = TARGETS["loader_over_consumption"]
    result["data"] = {
        "loader": rows,
        "consumption_images_per_s": consumption,
        "consumption_source": source,
        "default_workers": default,
        "ratio_at_default": ratio,
        "target_ratio": target,
        "met": None if ratio is None else ratio >= target,
        "train_images": len(datamodule.datasets["train"]),
    }


def _models(cfg, train_cfg, archs, device, work, result) -> None:  # noqa: ANN001
    m = cfg.models
    rows, notes = measure_models(list(m.names), archs, to_plain(train_cfg.loss), list(m.sizes),
                                 cfg.batch, cfg.base_channels, device, m.warmup, m.steps,
                                 m.repeats, cfg.seed)  # fmt: skip
    pairs = {"monai_unet": "unet", "monai_nested": "nested", "monai_nested_ds": "nested_ds"}
    ours = {(r["name"], r["size"]): r for r in rows}
    for row in rows:
        match = ours.get((pairs.get(row["name"]), row["size"]))
        if match:  # a MONAI row: how fast ours is next to it
            match["vs_monai"] = match["images_per_s"] / row["images_per_s"]
    result["models"] = rows
    result["notes"] += notes


def _inference(cfg, train_cfg, archs, device, work, result) -> None:  # noqa: ANN001
    i = cfg.inference
    result["inference"] = measure_inference(build_module(train_cfg), device, cfg.size,
                                            i.image_size, i.images, cfg.batch, i.overlap, i.tta,
                                            cfg.seed)  # fmt: skip


def _fastpath(cfg, train_cfg, archs, device, work, result) -> None:  # noqa: ANN001
    f = cfg.fastpath
    result["fastpath"] = measure_fast_path(list(f.options), archs, cfg.arch,
                                           to_plain(train_cfg.loss), cfg.size, cfg.batch,
                                           cfg.base_channels, device, f.warmup, f.steps,
                                           f.repeats, cfg.seed)  # fmt: skip


def _precision(cfg, train_cfg, archs, device, work, result) -> None:  # noqa: ANN001
    p = cfg.precision_sweep
    peak = to_plain(p.peak_tflops) if p.get("peak_tflops") else None
    result["precision"] = measure_precision(archs[cfg.arch], cfg.arch, to_plain(train_cfg.loss),
                                            cfg.size, cfg.batch, cfg.base_channels, device,
                                            list(p.precisions), list(p.channels_last),
                                            list(p.compile), p.warmup, p.steps, p.repeats, peak,
                                            cfg.seed)  # fmt: skip
    # the benchmark's own `precision` (the overhead section's) is left out of this question
    default = training_default(compose_train(list(cfg.get("train_overrides") or [])), device)
    for row in result["precision"]:
        row["default"] = (row["precision"], row["channels_last"], row["compile"]) == default


def training_default(train_cfg: DictConfig, device: torch.device) -> tuple[str, bool, bool]:
    """The (precision, channels-last, compile) a training run of `train_cfg` uses on `device`:
    `trainer.precision: auto` and `FastPath`'s `channels_last: auto` decided as the Trainer
    decides them."""
    trainer = OmegaConf.create(
        {"precision": train_cfg.trainer.precision,
         "accelerator": "gpu" if device.type == "cuda" else "cpu"}
    )  # fmt: skip
    precision = str(resolve_precision(trainer).precision)
    fast = (train_cfg.get("callbacks") or {}).get("fast_path") or {}
    cl = fast.get("channels_last", False)
    cl = channels_last_wins(device.type, precision) if cl == "auto" else bool(cl)
    return precision, cl, bool(fast.get("compile", False))


def _folder(cfg, train_cfg, archs, device, work, result) -> None:  # noqa: ANN001
    f = cfg.folder
    out = measure_folder(train_cfg, work / "folder", device, f.warmup, f.steps, f.repeats,
                         f.loader_images, f.samples)  # fmt: skip
    result["notes"] += out["notes"]
    result["folder"] = out


RUNNERS = {"overhead": _overhead, "data": _data, "models": _models, "inference": _inference,
           "fastpath": _fastpath, "precision": _precision, "folder": _folder}  # fmt: skip
FOLDER_SKIPPED = (
    "g. Your folder: skipped, no data folder given; benchmark yours with "
    "python -m unet_seg.benchmark data=auto data.root=DIR"
)


# ---- the table ---------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]], widths: list[int]) -> list[str]:
    """Rows of cells as text lines; a negative width left-aligns that column."""
    lines = []
    for cells in [header, *rows]:
        texts = [_cell(c) for c in cells]
        out = [t.ljust(-w) if w < 0 else t.rjust(w) for t, w in zip(texts, widths, strict=True)]
        lines.append(("  " + " ".join(out)).rstrip())
    return lines


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else "met" if ok else "NOT met"


def _overhead_lines(o: dict, cfg: dict) -> list[str]:
    c = cfg["overhead"]
    rows = [
        [label, o[k]["steps_per_s"], o[k]["images_per_s"], o[k]["host_reads_per_step"]]
        for k, label in (("plain", "plain PyTorch loop"), ("fit", "Trainer.fit (unet_seg.train)"))
    ]
    fit = o["fit"]
    return [
        f"a. Framework overhead: {cfg['arch']} training, {c['steps']} timed steps after "
        f"{c['warmup']}, best of {c['repeats']}",
        *_table(["", "steps/s", "images/s", "host reads/step"], rows, [-30, 8, 9, 16]),
        *_overhead_verdict(o),
        *_probe_lines(o.get("probe")),
        f"  epoch end {fit['epoch_end_s']:.2f} s: validation of {fit['val_images']} images "
        f"{fit['validation_s']:.2f} s, checkpoints, pictures and logs "
        f"{fit['epoch_end_s'] - fit['validation_s']:.2f} s",
    ]


def _overhead_verdict(o: dict) -> list[str]:
    target = f"(target <= {o['target_pct']:g}%: {_met(o['met'])})"
    if o["overhead_median_pct"] is None:
        return [f"  overhead {o['overhead_pct']:+.1f}% {target}"]
    ms = {k: 1e3 * o[k]["median_step_s"] for k in ("plain", "fit")}
    return [
        f"  overhead {o['overhead_median_pct']:+.1f}% in the median step (fit {ms['fit']:.1f} "
        f"vs plain {ms['plain']:.1f} ms) {target}; {o['overhead_pct']:+.1f}% in the mean",
    ]


def _probe_lines(p: dict | None) -> list[str]:
    if not p:
        return []
    return [
        f"  fixed cost per step, on a tiny net (width {p['base_channels']}, {p['size']} px, "
        f"{p['steps']} steps): fit {p['fit_ms_per_step']:.1f} - plain "
        f"{p['plain_ms_per_step']:.1f} = {p['framework_ms_per_step']:.1f} ms, "
        f"{p['share_of_this_step_pct']:.1f}% of the step above",
    ]


def _data_lines(d: dict, cfg: dict) -> list[str]:
    rows = [[r["workers"], r["images_per_s"], r["over_consumption"]] for r in d["loader"]]
    ratio = d["ratio_at_default"]
    verdict = (
        f"{ratio:.1f}x (target >= {d['target_ratio']:g}x: {_met(d['met'])})" if ratio else "n/a"
    )
    return [
        f"b. Data pipeline: train DataLoader (read, decode, augment, normalise, collate), "
        f"{cfg['data']['images']} images per setting, {d['train_images']} in the split",
        *_table(["workers", "images/s", "x consumption"], rows, [9, 10, 14]),
        f"  consumption {d['consumption_images_per_s']:.3g} images/s "
        f"({d['consumption_source']}); the default {d['default_workers']} workers: {verdict}",
    ]


def _models_lines(m: list[dict], cfg: dict) -> list[str]:
    c = cfg["models"]
    header = ["net", "impl", "px", "in px", "width", "params", "GFLOP/im", "fwd+bwd",
              "images/s", "GFLOP/s", "peak MiB", "vs MONAI"]  # fmt: skip
    rows = [
        [r["label"], r["impl"], r["size"], r.get("input_size", r["size"]), r["base_channels"],
         f"{r['params']:,}",
         r["gflop_fwd_per_image"], r["gflop_train_per_image"], r["images_per_s"],
         r["gflops_per_s"], r["peak_mib"], f"{r['vs_monai']:.2f}x" if "vs_monai" in r else ""]
        for r in m
    ]  # fmt: skip
    return [
        f"c. Models: training step (forward, CE+Dice, backward, Adam), batch {cfg['batch']}, "
        f"{c['steps']} timed steps after {c['warmup']}, best of {c['repeats']} rounds; px: "
        "the side scored (logits), in px: the input side (a valid-convolution net needs context)",
        *_table(header, rows, [-28, -6, 5, 6, 6, 10, 9, 9, 9, 8, 9, 9]),
    ]


def _inference_lines(i: list[dict], cfg: dict) -> list[str]:
    rows = [[r["mode"], r["tta"], r["passes_per_image"], r["images_per_s"], r["peak_mib"]]
            for r in i]  # fmt: skip
    side = i[0]["image_size"]
    return [
        f"d. Inference: Predictor.run on {side}x{side} images, net input / tile "
        f"{i[0]['net_input']} px, overlap {cfg['inference']['overlap']}",
        *_table(["mode", "TTA", "passes/im", "images/s", "peak MiB"], rows, [-8, -6, 11, 10, 9]),
    ]


def _fastpath_lines(f: list[dict], cfg: dict) -> list[str]:
    header = ["net", "option", "images/s", "speed-up", "peak MiB", "memory", "first step s"]
    rows = [[r["label"], r["option"], r["images_per_s"], f"{r['speedup']:.2f}x", r["peak_mib"],
             f"{r['memory_ratio']:.2f}x", r["first_step_s"]] for r in f]  # fmt: skip
    c = cfg["fastpath"]
    return [
        f"e. Fast path: training step, batch {cfg['batch']}, {cfg['size']} px, {c['steps']} "
        f"timed steps after {c['warmup']}, best of {c['repeats']} rounds",
        *_table(header, rows, [-18, -15, 10, 9, 9, 8, 13]),
    ]


def _precision_lines(p: list[dict], cfg: dict) -> list[str]:
    header = ["precision", "channels-last", "compile", "images/s", "speed-up", "GFLOP/s",
              "of peak", "peak MiB", "first step s"]  # fmt: skip
    rows = [[r["precision"] + (" *" if r.get("default") else ""), r["channels_last"],
             r["compile"], r["images_per_s"],
             f"{r['speedup']:.2f}x" if "speedup" in r else "", r["gflops_per_s"],
             f"{r['fraction_of_peak']:.1%}" if "fraction_of_peak" in r else "",
             r["peak_mib"], r["first_step_s"]] for r in p]  # fmt: skip
    c = cfg["precision_sweep"]
    return [
        f"f. Precision: {cfg['arch']} training step, batch {cfg['batch']}, {cfg['size']} px, "
        f"{c['steps']} timed steps after {c['warmup']}, best of {c['repeats']} rounds",
        *_table(header, rows, [-12, 13, 8, 9, 9, 9, 8, 9, 13]),
        "  speed-up: against float32, NCHW, eager; * the training default on this device "
        "(trainer.precision=auto, channels_last=auto)",
    ]


def _folder_lines(f: dict, cfg: dict) -> list[str]:
    force, step, net, loader, work, per = (f[k] for k in ("in_force", "step", "net", "loader",
                                                           "work", "per_image_ms"))  # fmt: skip
    yes = {True: "yes", False: "no"}
    workers = loader["workers"]
    rows = [
        ["whole training step (Trainer.fit)", per["step"], step["images_per_s"],
         f"mean of {step['steps']} steps after {step['warmup']}; median "
         f"{step['median_seconds'] or step['seconds']:.3g} s/step"],
        ["net's own step (a ready batch)", per["net"], net["images_per_s"],
         f"forward, loss, backward, optimizer; first step {net['first_step_s']:.3g} s"],
        ["difference", per["difference"], "", ""],
        ["  loader not hidden by the workers", per["loader_not_hidden"], "",
         "the wait for each batch inside fit"],
        ["  host-to-device copy", per["host_to_device"], "",
         "none on a CPU" if force["device"].startswith("cpu") else "measured alone"],
        ["  rest (Python, Lightning)", per["rest"], "", "difference - the two above"
         + ("; also the workers' use of the step's cores" if workers else "")],
        [f"train DataLoader, {workers} worker{'s' * (workers != 1)}, alone",
         1e3 / loader["images_per_s"], loader["images_per_s"],
         f"{loader['over_step']:.2g}x what the step consumes, {loader['over_net']:.2g}x the "
         "net's"],
        ["loader's work per image, one process:", "", "", f"{work['samples']} patches "
         f"{'x'.join(map(str, work['patch_shape']))}"],
        ["  a sample as the loader draws it", work["sample_ms"], "", ""],
        ["    file decode (image + mask)", work["decode_ms"], "",
         f"{work['decoded_images']} images: {work['files_read']} files, "
         f"{work['mib_read']:.3g} MiB read"
         + ("; data.cache on: once per image before training" if work.get("cached") else "")],
        ["    patch cut + augmentation", work["cut_augment_ms"], "",
         "decoded arrays served from memory"],
        ["  collation", work["collate_ms"], "", ""],
    ]  # fmt: skip
    return [
        f"g. Your folder: {f['root']} ({f['train_images']} training images), {f['arch']} "
        f"width {f['base_channels']}, patch {f['crop_size']} px, batch {f['batch_size']}, "
        "as python -m unet_seg.train plans them",
        f"  in force: {force['threads']} torch thread(s), {workers} loader worker(s), "
        f"precision {force['precision']}, channels-last {yes[force['channels_last']]}, "
        f"compile {yes[force['compile']]}, {force['device']}; batch "
        f"{'x'.join(map(str, force['batch_shape']))} {force['batch_dtype']}",
        *_table(["", "ms/image", "images/s", ""], rows, [-38, 9, 9, -10]),
    ]


SECTION_LINES = {"overhead": _overhead_lines, "data": _data_lines, "models": _models_lines,
                 "inference": _inference_lines, "fastpath": _fastpath_lines,
                 "precision": _precision_lines, "folder": _folder_lines}  # fmt: skip


def format_table(result: dict[str, Any]) -> str:
    """The results as one plain-text table, section by section."""
    cfg, env = result["config"], result["environment"]
    settings = (  # the folder section's net, patch and batch are the plan's: in its lines
        f"arch={cfg['arch']} size={cfg['size']} batch={cfg['batch']} "
        f"base_channels={cfg['base_channels']} device={env['device']} "
        f"precision={cfg['precision']}"
        if not result.get("folder")
        else f"your folder, device={env['device']}"
    )
    lines = [
        f"unet-seg benchmark: {settings}",
        f"on {env['device_name']}, {env['cpu_count']} CPUs, {env['torch_threads']} torch "
        f"threads; torch {env['torch']}, lightning {env['lightning']}, "
        f"MONAI {env['monai'] or 'not installed'}",
    ]
    for section, to_lines in SECTION_LINES.items():
        if result.get(section):
            lines += ["", *to_lines(result[section], cfg)]
    if not result.get("folder"):
        lines += ["", FOLDER_SKIPPED]
    method = MEMORY_METHODS["cuda" if env["device"].startswith("cuda") else "cpu"]
    legend = [  # the units of sections c-f
        "peak MiB: tensor memory above what the step started with (weights, gradients and "
        f"optimizer state excluded), from {method}",
        "FLOPs: torch.utils.flop_counter.FlopCounterMode (a multiply-add counts 2)",
    ]
    if not any(result.get(s) for s in ("models", "inference", "fastpath", "precision")):
        legend = []
    lines += [
        "",
        *legend,
        *(f"note: {n}" for n in result["notes"]),
        f"total {result['total_s']:.0f} s",
    ]
    return "\n".join(lines) + "\n"


def task(cfg: DictConfig) -> dict[str, Any]:
    """Run the benchmark, write the table to stdout and, with `cfg.output`, the JSON."""
    result = benchmark(cfg)
    sys.stdout.write(format_table(result))
    if cfg.get("output"):
        log.info("wrote %s", write_json(result, cfg.output, sort_keys=False))  # documented order
    return result


@hydra.main(config_path=CONF_DIR, config_name="benchmark", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        task(cfg)
    except ValueError as refused:  # a setting this machine or benchmark cannot run
        log.debug("refused", exc_info=True)
        log.error("%s", refused)
        sys.exit(1)


if __name__ == "__main__":
    main()
