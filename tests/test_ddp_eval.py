"""Two-process DDP on the CPU (gloo) with splits smaller than the process count: the run
trains to the end and its pooled scores are those of a one-process evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from unet_seg.data.sampler import ShardSampler, UnsizedShardSampler
from unet_seg.evaluate import evaluate


def test_shards_cover_every_image_once() -> None:
    for sampler in (ShardSampler, UnsizedShardSampler):
        for n, world in ((1, 2), (3, 2), (5, 4)):
            shares = [list(sampler(n, rank, world)) for rank in range(world)]
            assert sorted(sum(shares, [])) == list(range(n)), (sampler, n, world)
    with pytest.raises(TypeError):  # no length: Lightning then runs every process's loop
        len(UnsizedShardSampler(1, 1, 2))


@pytest.mark.slow
def test_two_processes_share_one_test_image(tmp_path: Path) -> None:
    args = [
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
        "trainer.sync_batchnorm=false", "trainer.num_sanity_val_steps=0",
        "data.synthetic.num_images=8", "data.synthetic.size=48", "data.crop_size=32",
        "data.batch_size=2", "data.val_fraction=0.125", "data.test_fraction=0.125",
        "arch.base_channels=4", "arch.depth=2", "trainer.max_epochs=1", "logger=none",
        f"data.root={tmp_path / 'data'}",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "unet_seg.train", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "train").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    splits = json.loads((run_dir / "splits.json").read_text())
    assert len(splits["val"]) == 1 and len(splits["test"]) == 1  # one process gets none

    for split in ("val", "test"):
        cfg = OmegaConf.create({"run_dir": str(run_dir), "ckpt": None, "split": split,
                                "data_root": None, "level": None, "device": "cpu",
                                "output": str(tmp_path / f"{split}.json")})  # fmt: skip
        one = evaluate(cfg)
        assert one["images"] == 1
        for key, logged in (("dice", "dice"), ("iou", "iou")):
            assert one[key] == pytest.approx(metrics[f"{split}/{logged}"], abs=1e-6), (split, key)
        assert f"{split}/loss" in metrics
