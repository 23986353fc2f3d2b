"""The real ISBI 2012 EM slices from ../shared (skipped where that folder is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import compose_train
from unet_seg.config import to_plain
from unet_seg.data.datamodule import SegDataModule
from unet_seg.train import build_module

ISBI = Path(__file__).parents[1] / ".." / "shared" / "data" / "isbi2012"
pytestmark = pytest.mark.skipif(
    not (ISBI / "images").is_dir(),
    reason=f"ISBI 2012 data not found at {ISBI.resolve()} (../shared beside the clone)",
)


def test_isbi_config_reads_the_real_slices(tmp_path: Path) -> None:
    cfg = compose_train(["data=isbi2012", f"data.root={ISBI}", "arch.base_channels=4"])
    dm = SegDataModule(**to_plain(cfg.data), splits_path=str(tmp_path / "splits.json"))
    dm.setup("fit")
    assert sum(len(v) for v in dm.splits.values()) == 30
    sample = dm.datasets["val"][0]
    assert sample["image"].shape == (1, 512, 512)
    membrane = (sample["mask"] == 0).float().mean().item()
    assert 0.1 < membrane < 0.35  # about 22% of pixels are membrane (class 0, pixel value 0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 256, 256)

    module = build_module(cfg)
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert module.contract.class_names == ["membrane", "cell"]
