"""`python -m unet_seg.check_data`: what it reports about good and bad folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_train, write_folder
from unet_seg.check_data import check_data


def data_cfg(root: Path, output: Path, *extra: str):
    cfg = compose_train(["data=folder", f"data.root={root}", "data.in_channels=1",
                         "data.crop_size=32", *extra])  # fmt: skip
    return OmegaConf.create({"data": OmegaConf.to_container(cfg.data, resolve=True),
                             "output": str(output)})  # fmt: skip


def test_a_clean_folder(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", n=4)
    report = check_data(data_cfg(root, tmp_path / "r.json"))
    assert report["pairs"] == 4 and report["problems"] == []
    assert report["image_sizes"] == {"48x40": 4} and report["image_channels"] == {1: 4}
    assert report["suggested_mask_values"] == [0, 255]
    masks = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((root / "masks").iterdir())]
    fg = float(np.mean([m > 0 for m in masks]))
    assert report["class_pixel_share"]["foreground"] == pytest.approx(fg)
    w = report["suggested_class_weights"]
    assert w[1] / w[0] == pytest.approx((1 - fg) / fg)
    assert json.loads((tmp_path / "r.json").read_text())["pairs"] == 4


def test_a_messy_folder_names_every_problem(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", n=5)
    (root / "masks" / "img01.png").unlink()  # image without mask
    cv2.imwrite(str(root / "masks" / "orphan.png"), np.zeros((40, 48), np.uint8))
    (root / "images" / "readme.txt").write_text("notes")
    noisy = np.zeros((40, 48), np.uint8)
    noisy[5:21, 7:30] = 255
    (root / "masks" / "img02.png").unlink()
    cv2.imwrite(str(root / "masks" / "img02.jpg"), noisy, [cv2.IMWRITE_JPEG_QUALITY, 50])
    cv2.imwrite(str(root / "masks" / "img03.png"), np.zeros((10, 10), np.uint8))
    report = check_data(data_cfg(root, tmp_path / "r.json"))
    assert report["images_without_mask"] == ["img01.png"]
    assert report["masks_without_image"] == ["orphan.png"]
    assert report["ignored_files"] == ["readme.txt"]
    assert report["masks_jpeg_like"] == ["img02.jpg"]
    text = "\n".join(report["problems"])
    assert "img01.png: no mask" in text
    assert "img02.jpg: mask values" in text and "JPEG" in text
    assert "img03.png: mask is 10x10" in text
    assert report["suggested_mask_values"] is None or len(report["suggested_mask_values"]) > 2


def test_cli_exit_status(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", n=3)
    args = [sys.executable, "-m", "unet_seg.check_data", "data=folder", f"data.root={root}",
            "data.in_channels=1", "data.crop_size=32", f"output={tmp_path / 'r.json'}"]  # fmt: skip
    ok = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "3 image/mask pairs" in ok.stdout + ok.stderr
    (root / "images" / "img00.png").write_bytes(b"broken")
    bad = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "img00.png: cannot be read" in bad.stdout + bad.stderr


def test_a_refused_plan_and_missing_masks_are_one_clean_line(tmp_path: Path) -> None:
    """As train does: exit 1 with the message naming the file and the fix, no traceback,
    and no output directory left behind."""
    noisy = write_folder(tmp_path / "noisy", n=3)  # 40 values, each in pieces: no plan
    blocks = (np.arange(10)[:, None] * 12 + np.arange(12)[None, :]) % 40  # 4x4 px blocks
    for path in sorted((noisy / "masks").iterdir()):
        cv2.imwrite(str(path), np.kron(blocks, np.ones((4, 4))).astype(np.uint8))
    missing = write_folder(tmp_path / "missing", n=3)
    (missing / "masks" / "img01.png").unlink()
    for root, message in ((noisy, "40 distinct values, too many for classes"),
                          (missing, "have no mask in")):  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "unet_seg.check_data", f"data.root={root}",
             "paths.output_dir=out"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        output = proc.stdout + proc.stderr
        assert proc.returncode == 1, output[-2000:]
        assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output
        assert message in output and str(root) in output
        assert not any(p.is_file() for p in (tmp_path / "out" / "check_data").rglob("*"))
