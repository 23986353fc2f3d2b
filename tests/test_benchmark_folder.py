"""The benchmark's folder section (`unet_seg.bench.folder`): your own images, through the
training config `python -m unet_seg.train data=auto data.root=DIR` composes and plans."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import unet_seg.bench.folder as bench_folder
from unet_seg.benchmark import format_table, task
from unet_seg.config import CONF_DIR
from unet_seg.run_dir import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")


def write_four_classes(root: Path, n: int = 6, side: int = 96) -> Path:
    """`n` grey images with masks of values 0..3: a common background and class 1, and two
    rare classes (a small square, a few pixels)."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        mask = np.zeros((side, side), np.uint8)
        mask[:, side // 2 :] = 1
        y, x = rng.integers(8, side - 16, 2)
        mask[y : y + 6, x : x + 6] = 2
        mask[rng.integers(0, side, 5), rng.integers(0, side, 5)] = 3
        image = (40 * mask + rng.integers(0, 60, (side, side))).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"s{i:02d}.png"), image)
        cv2.imwrite(str(root / "masks" / f"s{i:02d}.png"), mask)
    return root


def bench_config(tmp_path: Path, *overrides: str):
    tiny = [f"paths.output_dir={tmp_path}", "device=cpu", "threads=1", "base_channels=4",
            f"output={tmp_path / 'bench.json'}", "folder.warmup=1", "folder.steps=2",
            "folder.repeats=1", "folder.loader_images=8", "folder.samples=4"]  # fmt: skip
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="benchmark", overrides=[*tiny, *overrides])


def test_folder_section_reports_the_planned_step_and_where_its_time_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_four_classes(tmp_path / "em")
    read: list[Path] = []
    real_read = bench_folder.read_image

    def counting_read(path: Path, in_channels: int) -> np.ndarray:
        read.append(Path(path))
        return real_read(path, in_channels)

    monkeypatch.setattr(bench_folder, "read_image", counting_read)
    cfg = bench_config(
        tmp_path,
        "data=auto",
        f"data.root={root}",
        "data.num_workers=0",
        "data.batch_size=4",  # the plan would take 28 patches of 96 px: fewer, faster
        f"work_dir={tmp_path / 'work'}",
    )
    result = task(cfg)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["overhead"] is None and saved["models"] is None  # the folder alone ran
    f = saved["folder"]
    assert f["root"] == str(root) and f["arch"] == "unet" and f["base_channels"] == 4
    assert f["crop_size"] == 96  # the plan's patch: the images' side
    force = f["in_force"]
    assert force["threads"] == 1 and force["workers"] == 0 and force["device"] == "cpu"
    assert force["batch_shape"] == [f["batch_size"], 1, 96, 96]
    assert force["precision"] == f["net"]["precision"]  # the net step runs as the fit did
    assert force["channels_last"] == f["net"]["channels_last"]

    step, net, loader = f["step"], f["net"], f["loader"]
    assert step["seconds"] > 0 and step["inside_seconds"] > 0 and step["wait_seconds"] > 0
    assert step["images_per_s"] == pytest.approx(f["batch_size"] / step["seconds"])
    assert net["seconds"] > 0 and net["first_step_s"] > 0
    assert net["images_per_s"] == pytest.approx(f["batch_size"] / net["seconds"])
    assert loader["workers"] == 0 and loader["images"] >= 8
    assert loader["over_step"] == pytest.approx(loader["images_per_s"] / step["images_per_s"])

    per = f["per_image_ms"]
    assert per["step"] == pytest.approx(1e3 * step["seconds"] / f["batch_size"])
    assert per["net"] == pytest.approx(1e3 * net["seconds"] / f["batch_size"])
    assert per["difference"] == pytest.approx(per["step"] - per["net"])
    assert per["loader_not_hidden"] == pytest.approx(1e3 * step["wait_seconds"] / f["batch_size"])
    assert per["host_to_device"] == 0  # none on a CPU
    assert per["rest"] == pytest.approx(
        per["difference"] - per["loader_not_hidden"] - per["host_to_device"]
    )

    work = f["work"]
    assert work["samples"] == max(4, f["batch_size"]) and work["patch_shape"] == [1, 96, 96]
    for key in ("sample_ms", "decode_ms", "cut_augment_ms", "collate_ms"):
        assert work[key] > 0, key
    # decoding is timed on the training images' own files: those read, and their masks
    train = json.loads(RunDir(tmp_path / "work" / "folder" / "data").splits_path.read_text())
    assert len(read) == work["decoded_images"] >= 1 and work["files_read"] == 2 * len(read)
    assert {p.name for p in read} <= set(train["train"])
    assert all(p.parent == root / "images" for p in read)
    size = sum(p.stat().st_size + (root / "masks" / p.name).stat().st_size for p in read)
    assert work["mib_read"] == pytest.approx(size / 2**20)

    table = format_table(result)
    assert "g. Your folder" in table and "file decode (image + mask)" in table
    assert "rest (Python, Lightning)" in table and "skipped" not in table


def test_without_a_folder_the_section_is_skipped_in_one_line(tmp_path: Path) -> None:
    result = task(bench_config(tmp_path, "sections=[folder]"))
    assert result["folder"] is None
    assert "g. Your folder: skipped, no data folder given" in format_table(result)


def test_folder_section_refuses_a_missing_root_by_name(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_folder"
    with pytest.raises(ValueError, match=f"data.root={missing}: no such folder"):
        task(bench_config(tmp_path, "data=auto", f"data.root={missing}"))
    with pytest.raises(ValueError, match="needs your folder: data.root=DIR"):
        task(bench_config(tmp_path, "data=auto"))
    assert not (tmp_path / "bench.json").exists()


def test_folder_runs_alone_and_refuses_other_sections(tmp_path: Path) -> None:
    root = write_four_classes(tmp_path / "em", n=2, side=32)
    with pytest.raises(ValueError, match="only the folder section runs"):
        task(bench_config(tmp_path, "data=folder", f"data.root={root}", "sections=[models]"))


def test_data_group_composes_beside_the_benchmarks_own_data_keys(tmp_path: Path) -> None:
    cfg = bench_config(tmp_path, "data=isbi2012", "data.root=/x", "data.crop_size=128")
    assert cfg.data.root == "/x" and cfg.data.crop_size == 128 and cfg.data.in_channels == 1
    assert list(cfg.data.workers) == [0, 1, 2]  # the benchmark's own, left out of training's
    plain = bench_config(tmp_path)
    assert "images_dir" not in plain.data and plain.data.root.endswith("_128px")
