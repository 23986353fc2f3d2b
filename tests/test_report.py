"""`python -m unet_seg.report`: grouping replicates, ranking, tables and pictures."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

from unet_seg.report import main, report


def fake_run(root: Path, arch: str, fold: int, dice: float, lr: float = 1e-3) -> Path:
    run = root / f"{arch}_{fold}_{lr}"
    run.mkdir(parents=True)
    cfg = {"arch": {"name": arch, "base_channels": 16}, "data": {"fold": fold, "root": str(run)},
           "optimizer": {"lr": lr}, "seed": 42, "run_dir": str(run)}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "metrics.json").write_text(
        f'{{"val/dice": {dice}, "val/pixel_error": {1 - dice}, "epochs": 3}}'
    )
    writer = SummaryWriter(str(run / "tensorboard"))
    for step in range(5):
        writer.add_scalar("train/loss", 1 / (step + 1), step)
        writer.add_scalar("val/dice", dice * step / 4, step)
    writer.close()
    return run


def test_folds_grouped_ranked_and_drawn(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for fold, (u, n) in enumerate([(0.80, 0.85), (0.82, 0.86), (0.78, 0.90)]):
        fake_run(sweep, "unet", fold, u)
        fake_run(sweep, "nested", fold, n)
    out = tmp_path / "out"
    result = report([sweep], out)
    assert result["setting"] == ["arch.name"]  # fold is a replicate key; seed, lr are equal
    best, second = result["groups"]
    assert best["setting"] == {"arch.name": "nested"} and best["n"] == 3
    assert best["stats"]["val/dice"][0] == pytest.approx(0.87)
    assert best["stats"]["val/dice"][1] == pytest.approx(0.026457513, rel=1e-6)  # sample std
    md = (out / "report.md").read_text()
    assert md.index("nested") < md.index("unet") and "0.8700 ± 0.0265" in md
    rows = list(csv.reader(open(out / "runs.csv")))
    assert len(rows) == 7 and "data.fold" in rows[0]
    for picture in ("learning_curves.png", "results.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG"


def test_lower_is_better_metrics_rank_ascending(tmp_path: Path) -> None:
    fake_run(tmp_path / "s", "unet", 0, 0.9, lr=1e-3)
    fake_run(tmp_path / "s", "unet", 0, 0.7, lr=1e-2)
    result = report([tmp_path / "s"], tmp_path / "o", metric="val/pixel_error")
    assert result["best"]["setting"] == {"optimizer.lr": 0.001}


def test_report_prints_no_tensorboard_progress(tmp_path: Path, caplog) -> None:
    """TensorBoard said `Directory watcher advancing from ...` at every event file read."""
    run = fake_run(tmp_path / "s", "unet", 0, 0.9)
    writer = SummaryWriter(str(run / "tensorboard"))  # a second event file, as a resume writes
    writer.add_scalar("train/loss", 0.1, 5)
    writer.close()
    caplog.set_level(logging.INFO)
    report([tmp_path / "s"], tmp_path / "o")
    assert "wrote " in caplog.text and "report.md" in caplog.text  # its own lines stay
    assert "Directory watcher" not in caplog.text


def test_cli_and_errors(tmp_path: Path, capsys) -> None:
    fake_run(tmp_path / "s", "unet", 0, 0.9)
    main([str(tmp_path / "s")])
    assert (tmp_path / "s" / "report" / "report.md").is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no finished runs"):
        report([tmp_path / "empty"], tmp_path / "o2")
    with pytest.raises(ValueError, match="metric 'val/nope'"):
        report([tmp_path / "s"], tmp_path / "o3", metric="val/nope")
