"""Two-process DDP on the CPU (gloo): one run directory, and metrics that match one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from unet_seg.evaluate import evaluate

pytestmark = pytest.mark.slow


def test_two_process_ddp_matches_a_one_process_evaluation(tmp_path: Path) -> None:
    args = [
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
        "trainer.sync_batchnorm=false",  # PyTorch's SyncBatchNorm needs GPUs
        "data.synthetic.num_images=16", "data.synthetic.size=64", "data.crop_size=48",
        "data.batch_size=2", "data.val_fraction=0.25", "data.test_fraction=0.2",
        "arch.base_channels=4", "trainer.max_epochs=2", f"data.root={tmp_path / 'data'}",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "unet_seg.train", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "train").iterdir()  # one directory, not one per rank
    metrics = json.loads((run_dir / "metrics.json").read_text())
    splits = json.loads((run_dir / "splits.json").read_text())
    assert len(splits["val"]) == 4 and len(splits["test"]) == 3  # 3: uneven shares of 2 + 1
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 * 3  # 9 training images, 2 processes x batch 2: 3 steps

    for split in ("val", "test"):
        cfg = OmegaConf.create({"run_dir": str(run_dir), "ckpt": None, "split": split,
                                "data_root": None, "level": None, "device": "cpu",
                                "output": str(tmp_path / f"{split}.json")})  # fmt: skip
        one = evaluate(cfg)
        assert one["images"] == len(splits[split])
        pairs = {"dice": "dice", "iou": "iou", "dice/pooled/nucleus": "dice/nucleus",
                 "iou/pooled/background": "iou/background"}  # fmt: skip
        for key, logged in pairs.items():
            assert one[key] == pytest.approx(metrics[f"{split}/{logged}"], abs=1e-6), (split, key)
