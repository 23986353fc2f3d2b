"""Layouts users already have: nnU-Net v2's raw folders (3-D and 2-D) and the Medical
Segmentation Decathlon's, planned from `data=auto data.root=DIR` alone, their `dataset.json`
naming classes and channels, and refused by name where it contradicts the files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose_train
from unet_seg.config import to_plain
from unet_seg.data.plan import is_volume_config, plan_data_config
from unet_seg.data.plan_rules import PlanError

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (16, 24, 24)  # z, y, x


def _labels_and_images(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A label volume `[Z, Y, X]` of 0 (background), 1 (a ball's shell), 2 (its core) and
    two channels `[C, Z, Y, X]` that show them."""
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    c = rng.uniform([6, 9, 9], [10, 15, 15])
    r = np.sqrt(((zz - c[0]) / 5) ** 2 + ((yy - c[1]) / 7) ** 2 + ((xx - c[2]) / 7) ** 2)
    labels = np.where(r <= 0.5, 2, np.where(r <= 1, 1, 0)).astype(np.uint8)
    noise = rng.normal(0, 20, (2, *SHAPE))
    images = np.stack([200 + 300 * (labels == 1), 200 + 300 * (labels == 2)]) + noise
    return labels, images.astype(np.float32)


def _save(path: Path, zyx_or_czyx: np.ndarray) -> None:
    """A NIfTI of a `[Z, Y, X]` volume, or `[C, Z, Y, X]` as a 4-D file `[X, Y, Z, C]`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.transpose(zyx_or_czyx, (3, 2, 1, 0)) if zyx_or_czyx.ndim == 4 else zyx_or_czyx.T
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array), np.diag([1.0, 1.0, 1.0, 1.0])),
             str(path))  # fmt: skip


NNUNET_JSON = {
    "channel_names": {"0": "FLAIR", "1": "T1c"},
    "labels": {"background": 0, "edema": 1, "tumour": 2, "necrosis": 3},  # 3: in no mask
    "numTraining": 4,
    "file_ending": ".nii.gz",
}


def nnunet_folder(root: Path, dataset: dict | None = None, n: int = 4) -> Path:
    """nnU-Net v2's raw layout: `imagesTr/<case>_0000.nii.gz`, `_0001`, `labelsTr/<case>`,
    `imagesTs/`, `dataset.json`; a stray `.nii` file, not of its file_ending, beside them."""
    rng = np.random.default_rng(0)
    for i in range(n):
        labels, images = _labels_and_images(rng)
        for c in range(2):
            _save(root / "imagesTr" / f"brain_{i:03d}_{c:04d}.nii.gz", images[c])
        _save(root / "labelsTr" / f"brain_{i:03d}.nii.gz", labels)
    _, images = _labels_and_images(rng)
    for c in range(2):
        _save(root / "imagesTs" / f"brain_900_{c:04d}.nii.gz", images[c])
    _save(root / "imagesTr" / "stray_0000.nii", images[0])  # no label: left out by file_ending
    (root / "dataset.json").write_text(json.dumps(dataset or NNUNET_JSON))
    return root


def decathlon_folder(root: Path, n: int = 4) -> Path:
    """The Decathlon's layout: 4-D NIfTI images (channels last), labels reversed in
    dataset.json (value -> name), `modality`, a `training` list, and macOS `._` files."""
    rng = np.random.default_rng(1)
    training = []
    for i in range(n):
        labels, images = _labels_and_images(rng)
        _save(root / "imagesTr" / f"BRATS_{i:03d}.nii.gz", images)
        _save(root / "labelsTr" / f"BRATS_{i:03d}.nii.gz", labels)
        training.append({"image": f"./imagesTr/BRATS_{i:03d}.nii.gz",
                         "label": f"./labelsTr/BRATS_{i:03d}.nii.gz"})  # fmt: skip
        for sub in ("imagesTr", "labelsTr"):
            (root / sub / f"._BRATS_{i:03d}.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac junk")
    _save(root / "imagesTs" / "BRATS_900.nii.gz", _labels_and_images(rng)[1])
    (root / "imagesTs" / "._BRATS_900.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac junk")
    (root / "dataset.json").write_text(json.dumps({
        "name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema", "2": "enhancing tumour"},
        "numTraining": n, "numTest": 1, "training": training,
        "test": ["./imagesTs/BRATS_900.nii.gz"]}))  # fmt: skip
    return root


def auto_data(root: Path, *overrides: str) -> dict:
    """`data=auto data.root=ROOT` (and `overrides`) as plain data."""
    return to_plain(compose_train(["data=auto", f"data.root={root}", *overrides]).data)


def test_nnunet_v2_folder_is_planned_from_its_folders_and_dataset_json(tmp_path: Path) -> None:
    root = nnunet_folder(tmp_path / "Dataset001_Brain")
    data = auto_data(root)
    assert is_volume_config(data)  # images/ absent: imagesTr/ holds the volumes
    planned, record = plan_data_config(data)
    assert (planned["images_dir"], planned["masks_dir"]) == ("imagesTr", "labelsTr")
    assert "nnU-Net" in record["plan"]["images_dir"]["why"]
    assert planned["class_names"] == ["background", "edema", "tumour", "necrosis"]
    assert planned["mask_values"] == [0, 1, 2, 3] and planned["num_classes"] == 4
    assert "dataset.json" in record["plan"]["class_names"]["why"]
    assert planned["in_channels"] == 2
    assert record["dataset_json"]["channel_names"] == ["FLAIR", "T1c"]
    assert "FLAIR, T1c" in record["plan"]["in_channels"]["why"]
    names = [e["name"] for e in record["fingerprint"]["cases"]]
    assert names == [f"brain_{i:03d}" for i in range(4)]  # stray_0000.nii: not .nii.gz


def test_decathlon_folder_reads_4d_files_reversed_labels_and_skips_mac_junk(
    tmp_path: Path,
) -> None:
    root = decathlon_folder(tmp_path / "Task01_BrainTumour")
    planned, record = plan_data_config(auto_data(root))
    assert (planned["images_dir"], planned["masks_dir"]) == ("imagesTr", "labelsTr")
    assert planned["class_names"] == ["background", "edema", "enhancing tumour"]
    assert planned["in_channels"] == 2 and planned["num_classes"] == 3
    assert record["dataset_json"]["channel_names"] == ["FLAIR", "T1w"]
    assert record["dataset_json"]["style"] == "Decathlon"
    assert len(record["fingerprint"]["cases"]) == 4  # the ._ files are no cases


def test_given_folders_and_class_names_win_over_the_layout(tmp_path: Path) -> None:
    root = nnunet_folder(tmp_path / "d")
    planned, record = plan_data_config(
        auto_data(
            root,
            "data.class_names=[bg,a,b,c]",
            "data.images_dir=imagesTr",
            "data.masks_dir=labelsTr",
        )  # fmt: skip
    )
    assert planned["class_names"] == ["bg", "a", "b", "c"]
    assert record["given"]["class_names"] == ["bg", "a", "b", "c"]
    assert "images_dir" not in record["plan"]  # given, not planned


def test_a_dataset_json_that_contradicts_the_files_is_refused_with_every_problem(
    tmp_path: Path,
) -> None:
    wrong = {"channel_names": {"0": "FLAIR", "1": "T1c", "2": "T2"},
             "labels": {"background": 0, "edema": 1}, "numTraining": 7,
             "file_ending": ".nii.gz"}  # fmt: skip
    root = nnunet_folder(tmp_path / "d", wrong)
    with pytest.raises(PlanError) as refused:
        plan_data_config(auto_data(root))
    text = str(refused.value)
    assert "do not list the value(s) [2]" in text and "brain_000.nii.gz" in text
    assert "3 channel(s) named ['FLAIR', 'T1c', 'T2'], but the images hold 2" in text
    assert "numTraining is 7, but 4" in text
    assert str(root / "dataset.json") in text


def test_an_ignore_label_is_no_class_but_the_ignore_value(tmp_path: Path) -> None:
    labels = {"background": 0, "edema": 1, "tumour": 2, "ignore": 9}
    root = nnunet_folder(tmp_path / "d", {**NNUNET_JSON, "labels": labels})
    planned, record = plan_data_config(auto_data(root))
    assert planned["ignore_value"] == 9 and "ignore" in record["plan"]["ignore_value"]["why"]
    assert planned["class_names"] == ["background", "edema", "tumour"]
    assert planned["mask_values"] == [0, 1, 2]


def test_region_labels_are_refused_by_name(tmp_path: Path) -> None:
    regions = {**NNUNET_JSON, "labels": {"background": 0, "whole tumour": [1, 2], "core": 2},
               "regions_class_order": [1, 2]}  # fmt: skip
    root = nnunet_folder(tmp_path / "d", regions)
    with pytest.raises(PlanError, match=r"\['whole tumour'\] are regions.*region-based training"):
        plan_data_config(auto_data(root))


def _png_folder(root: Path, channels: int = 1) -> Path:
    """nnU-Net's 2-D layout: `imagesTr/<case>_0000.png` (grey), `labelsTr/<case>.png`."""
    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for i in range(6):
        mask = np.zeros((48, 48), np.uint8)
        cv2.circle(mask, tuple(int(v) for v in rng.integers(14, 34, 2)), 9, 1, -1)
        for c in range(channels):
            image = (60 + 120 * mask + rng.normal(0, 10, mask.shape)).clip(0, 255)
            cv2.imwrite(
                str(root / "imagesTr" / f"cell_{i:02d}_{c:04d}.png"), image.astype(np.uint8)
            )
        cv2.imwrite(str(root / "labelsTr" / f"cell_{i:02d}.png"), mask)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {str(c): f"ch{c}" for c in range(channels)},
                "labels": {"background": 0, "cell": 1},
                "numTraining": 6,
                "file_ending": ".png",
            }
        )
    )
    return root


def test_nnunet_2d_png_folder_is_planned_as_images(tmp_path: Path) -> None:
    root = _png_folder(tmp_path / "Dataset002_Cells")
    data = auto_data(root)
    assert not is_volume_config(data)
    planned, record = plan_data_config(data)
    assert (planned["images_dir"], planned["masks_dir"]) == ("imagesTr", "labelsTr")
    assert planned["class_names"] == ["background", "cell"] and planned["in_channels"] == 1
    assert planned["mask_values"] == [0, 1]
    assert "nnU-Net" in record["plan"]["mask_suffix"]["why"]
    assert "ch0" in record["plan"]["in_channels"]["why"]


@pytest.mark.slow
def test_nnunet_2d_png_folder_trains(tmp_path: Path) -> None:
    from unet_seg.train import train

    root = _png_folder(tmp_path / "Dataset002_Cells")
    run_dir = tmp_path / "run"
    train(compose_train(["data=auto", f"data.root={root}", f"run_dir={run_dir}",
                         "arch.base_channels=4", "arch.depth=2", "trainer.max_epochs=1",
                         "data.crop_size=32", "data.train_repeats=1", "data.test_fraction=0.0",
                         "data.num_workers=0",
                         "callbacks.validation_images.num_samples=1"]))  # fmt: skip
    config = OmegaConf.load(run_dir / "config.yaml")
    assert config.data.images_dir == "imagesTr" and config.data.class_names[1] == "cell"


def test_nnunet_2d_folder_with_several_channel_files_is_refused_with_the_workaround(
    tmp_path: Path,
) -> None:
    root = _png_folder(tmp_path / "d", channels=2)
    with pytest.raises(ValueError, match=r"past _0000.*multi-channel TIFF \(axes CYX"):
        plan_data_config(auto_data(root))


@pytest.mark.slow
def test_train_evaluate_predict_on_an_nnunet_folder_name_the_classes(tmp_path: Path) -> None:
    from unet_seg.evaluate import evaluate
    from unet_seg.predict import predict
    from unet_seg.train import train

    root = nnunet_folder(tmp_path / "Dataset001_Brain")
    run_dir = tmp_path / "run"
    train(compose_train([
        "data=auto", f"data.root={root}", f"run_dir={run_dir}", "arch.base_channels=4",
        "trainer.max_epochs=1", "trainer.log_every_n_steps=1", "data.num_workers=0",
        "callbacks.validation_images.num_samples=1", "data.val_fraction=0.25",
        "data.test_fraction=0.0", "data.train_repeats=1", "data.patch=[16,16,16]"]))  # fmt: skip
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["plan"]["images_dir"]["value"] == "imagesTr"
    assert plan["dataset_json"]["channel_names"] == ["FLAIR", "T1c"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["data"]["class_names"][1] == "edema"
    out = tmp_path / "eval" / "evaluation.json"
    results = evaluate(OmegaConf.create({
        "run_dir": str(run_dir), "ckpt": None, "split": "val", "data_root": None,
        "device": "cpu", "output": str(out), "worst": 1, "tta": "none"}))  # fmt: skip
    assert any("edema" in key for key in results), sorted(results)
    assert not any("class_1" in key for key in results)
    written = predict(OmegaConf.create({
        "ckpt": str(run_dir / "checkpoints" / "last.ckpt"), "input": str(root / "imagesTs"),
        "output": str(tmp_path / "pred"), "device": "cpu", "tta": "none"}))  # fmt: skip
    assert [p.name for p in written] == ["brain_900.nii.gz"]


@pytest.mark.slow
def test_predict_reads_a_decathlon_imagests_folder(tmp_path: Path) -> None:
    """4-D files read as channels, `._` files left out."""
    from unet_seg.predict import predict
    from unet_seg.train import train

    root = decathlon_folder(tmp_path / "Task01_BrainTumour", n=3)
    run_dir = tmp_path / "run"
    train(compose_train([
        "data=auto", f"data.root={root}", f"run_dir={run_dir}", "arch.base_channels=4",
        "trainer.max_epochs=1", "data.num_workers=0", "callbacks.validation_images.num_samples=1",
        "data.val_fraction=0.34", "data.test_fraction=0.0", "data.train_repeats=1"]))  # fmt: skip
    written = predict(OmegaConf.create({
        "ckpt": str(run_dir / "checkpoints" / "last.ckpt"), "input": str(root / "imagesTs"),
        "output": str(tmp_path / "pred"), "device": "cpu", "tta": "none"}))  # fmt: skip
    assert [p.name for p in written] == ["BRATS_900.nii.gz"]
    assert nib.load(str(written[0])).shape == SHAPE[::-1]
