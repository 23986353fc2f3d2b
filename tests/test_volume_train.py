"""Volumes end to end: `train data=auto` on a folder of NIfTI volumes trains with the plan's
choice (recorded with its reason), `evaluate` scores per volume in mm, and `predict` writes
label volumes with the input's geometry; `data=synthetic3d` trains a 3-D U-Net."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose_train
from unet_seg.data.volumes import VolumeMeta, read_volume, write_volume
from unet_seg.evaluate import evaluate
from unet_seg.predict import predict
from unet_seg.train import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

QUICK = ["arch.base_channels=4", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
         "callbacks.validation_images.num_samples=1", "data.num_workers=0"]  # fmt: skip


def oblique_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """A RAS affine rotated 20 degrees about z, with spacing (z, y, x) and an offset."""
    z, y, x = spacing
    t = np.deg2rad(20)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([x, y, z])
    affine[:3, 3] = [-40.5, 12.25, 7.0]
    return affine


def mri_folder(root: Path, n: int = 5, shape=(10, 24, 20), spacing=(4.0, 1.0, 1.0)) -> Path:
    """MRI-like volumes (float intensities at arbitrary scale, so the plan picks z-score) of a
    bright ellipsoid (label 1) on noise, thick slices: the plan should pick 2-D along z."""
    rng = np.random.default_rng(0)
    affine = tuple(map(tuple, oblique_affine(spacing)))
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = rng.uniform([3, 8, 7], [7, 16, 13])
        r = rng.uniform([2, 4, 4], [3, 7, 6])
        inside = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2
        labels = (inside <= 1).astype(np.uint8)
        image = (300 + 400 * labels.astype(np.float32) + rng.normal(0, 60, shape)).astype(
            np.float32
        )
        meta = VolumeMeta(tuple(shape), tuple(spacing), affine, "nifti")
        write_volume(root / "images" / f"case{i}.nii.gz", image, meta)
        write_volume(root / "masks" / f"case{i}.nii.gz", labels, meta, labels=True)
    return root


def test_auto_plan_train_evaluate_predict_nifti(tmp_path: Path) -> None:
    data = mri_folder(tmp_path / "mri")
    run_dir = tmp_path / "run"
    cfg = compose_train([*QUICK, "data=auto", f"data.root={data}", f"run_dir={run_dir}",
                         "data.val_fraction=0.4", "data.test_fraction=0.0",
                         "data.crop_size=16", "data.train_repeats=2"])  # fmt: skip
    train(cfg)
    plan = json.loads((run_dir / "plan.json").read_text())
    planned = plan["plan"]
    assert planned["dims"]["value"] == 2 and planned["slice_axis"]["value"] == 0
    assert "anisotropy" in planned["dims"]["why"] and "4" in planned["dims"]["why"]
    assert planned["intensity"]["value"]["mode"] == "zscore"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["val/dice"] <= 1 and 0 <= metrics["val/volume_dice"] <= 1
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    contract = ckpt["hyper_parameters"]["data"]
    assert contract["volume"] and contract["dims"] == 2
    assert contract["spacing"] == pytest.approx([4.0, 1.0, 1.0])

    # evaluate: per volume, distances in mm
    out = tmp_path / "eval" / "evaluation.json"
    results = evaluate(OmegaConf.create({
        "run_dir": str(run_dir), "ckpt": None, "split": "val", "data_root": None,
        "device": "cpu", "output": str(out), "worst": 2, "tta": "none"}))  # fmt: skip
    assert results["volumes"] == 2
    rows = list(csv.DictReader(out.with_name("evaluation_per_volume.csv").open()))
    assert [r["volume"] for r in rows] == json.loads((run_dir / "splits.json").read_text())["val"]
    assert {"dice/class_1", "hd95/class_1", "msd/class_1"} <= set(rows[0]) or len(rows[0]) > 4
    assert out.with_name("evaluation_worst.png").is_file()

    # predict: label volumes in the input's geometry, written as the input's format
    masks = tmp_path / "pred"
    written = predict(OmegaConf.create({
        "ckpt": str(run_dir / "checkpoints" / "best.ckpt"), "input": str(data / "images"),
        "output": str(masks), "device": "cpu", "tta": "none"}))  # fmt: skip
    assert sorted(p.name for p in written) == [f"case{i}.nii.gz" for i in range(5)]
    image, image_meta = read_volume(data / "images" / "case0.nii.gz")
    labels, meta = read_volume(masks / "case0.nii.gz")
    assert labels.shape == image.shape and labels.dtype.kind in "ui"
    np.testing.assert_allclose(meta.affine_matrix(), image_meta.affine_matrix(), atol=1e-6)
    assert set(np.unique(labels)) <= {0, 1}
    # a volume at half the training slice thickness: resampled to 4 mm for the net, its labels
    # written back on its own 20-slice grid, in its own geometry
    other = tmp_path / "other"
    other.mkdir()
    affine = tuple(map(tuple, oblique_affine((2.0, 1.0, 1.0))))
    fine = VolumeMeta((20, 24, 20), (2.0, 1.0, 1.0), affine, "nifti")
    write_volume(other / "fine.nii.gz", np.random.default_rng(1).normal(size=(20, 24, 20)), fine)
    (path,) = predict(OmegaConf.create({
        "ckpt": str(run_dir / "checkpoints" / "best.ckpt"), "input": str(other / "fine.nii.gz"),
        "output": str(tmp_path / "pred_fine"), "device": "cpu"}))  # fmt: skip
    labels, meta = read_volume(path)
    assert labels.shape == (20, 24, 20)
    np.testing.assert_allclose(meta.affine_matrix(), oblique_affine((2.0, 1.0, 1.0)), atol=1e-6)


def test_synthetic3d_trains_a_3d_unet(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = compose_train([*QUICK, "data=synthetic3d", "arch=unet3d", f"run_dir={run_dir}",
                         f"data.root={tmp_path / 'synthetic3d'}", "data.synthetic3d.num_volumes=4",
                         "data.val_fraction=0.25", "data.test_fraction=0.25",
                         "data.train_repeats=2"])  # fmt: skip
    result = train(cfg)
    assert result["global_step"] > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["test/dice"] <= 1
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["arch"]["name"] == "unet3d"
    assert ckpt["hyper_parameters"]["data"]["dims"] == 3


def test_check_data_on_volumes_prints_spacing_anisotropy_and_the_choice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF
    from unet_seg.check_data import check_data

    data = mri_folder(tmp_path / "mri", n=3)
    out = tmp_path / "check.json"
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("check_data", [f"data.root={data}", f"output={out}",
                                     "data.val_fraction=0.34", "data.test_fraction=0"])  # fmt: skip
    with caplog.at_level("INFO"):
        report = check_data(cfg)
    assert report["problems"] == [] and report["volumes"] == 3
    text = caplog.text
    assert "spacing     median 4 x 1 x 1 mm" in text and "anisotropy  4" in text
    assert "2-D slices along the coarsest axis 0 (z)" in text
    assert json.loads(out.read_text())["plan"]["plan"]["dims"]["value"] == 2
    # a label value the plan did not see is named with its file, nothing else
    bad = np.zeros((10, 24, 20), np.uint8)
    bad[0, 0, 0] = 5
    meta = read_volume(data / "masks" / "case0.nii.gz")[1]
    write_volume(data / "masks" / "case0.nii.gz", bad, meta, labels=True)
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("check_data", [f"data.root={data}", f"output={out}", "data.mask_values=[0,1]",
                                     "data.val_fraction=0.34", "data.test_fraction=0"])  # fmt: skip
    report = check_data(cfg)
    assert len(report["problems"]) == 1 and "case0.nii.gz" in report["problems"][0]
    assert "[5]" in report["problems"][0]


def test_val_volume_dice_is_evaluates_dice_on_the_same_volumes(tmp_path: Path) -> None:
    """One definition of a volume Dice (`module.mean_over_volumes`): the run's
    `val/volume_dice` is what `evaluate` reports on its validation split."""
    data = mri_folder(tmp_path / "mri", n=4)
    run_dir = tmp_path / "run"
    train(compose_train([*QUICK, "data=auto", f"data.root={data}", f"run_dir={run_dir}",
                         "data.val_fraction=0.5", "data.test_fraction=0.0",
                         "data.crop_size=16", "data.train_repeats=1"]))  # fmt: skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base=None):  # conf's defaults
        cfg = compose(
            config_name="evaluate",
            overrides=[
                f"run_dir={run_dir}",
                "split=val",
                f"output={tmp_path / 'eval.json'}",
                "worst=0",
            ],
        )
    results = evaluate(cfg)  # overlap as validation runs it (conf/evaluate.yaml: null)
    assert results["volumes"] == 2
    assert results["dice"] == pytest.approx(metrics["val/volume_dice"], abs=1e-6)
