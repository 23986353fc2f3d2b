"""`predict` on files, folders and globs: masks in the dataset's encoding, palette PNGs,
overlays, float probability maps, unreadable files listed while the others finish."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import CONF
from tests.forked import Forker
from tests.test_inference import image, make_checkpoint
from unet_seg import load_model
from unet_seg.data.masks import MaskEncoding
from unet_seg.predict import output_stems, predict
from unet_seg.visualize import class_colours

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "m.ckpt"
    return make_checkpoint(path, mask_values=(0, 100, 200), calibrate=image((64, 64)))


def config(**overrides) -> OmegaConf:
    """`conf/predict.yaml` composed by Hydra with `overrides` (output given explicitly)."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("predict", overrides=[f"{k}={v}" for k, v in overrides.items()])
    return cfg


def test_predict_a_folder_with_every_output(
    three_classes: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    shapes = {"a.png": (50, 70), "b.tif": (33, 41), "big.png": (150, 100)}
    for name, shape in shapes.items():
        cv2.imwrite(str(inputs / name), image(shape))
    (inputs / "broken.png").write_bytes(b"garbage")
    colour = np.stack([image((20, 20), s) for s in range(3)], axis=2)  # not grayscale
    cv2.imwrite(str(inputs / "colour.png"), colour)
    out = tmp_path / "out"
    cfg = config(ckpt=three_classes, input=inputs, output=out, device="cpu", tile_size=64,
                 batch_size=2, overlays=True, probabilities=True, tta="flips")  # fmt: skip
    with caplog.at_level(logging.WARNING):
        written = predict(cfg)

    assert sorted(p.name for p in written) == ["a.png", "b.png", "big.png"]
    assert "2 file(s) could not be read" in caplog.text
    assert "broken.png: cannot be read" in caplog.text
    assert "colour.png: RGB image but data.in_channels=1" in caplog.text
    model = load_model(three_classes, device="cpu", tile_size=64, tta="flips")
    for name, shape in shapes.items():
        stem = Path(name).stem
        mask = Image.open(out / f"{stem}.png")
        assert mask.mode == "P"  # three classes: a palette PNG whose indices are the values
        values = np.array(mask)
        assert values.shape == shape
        assert set(np.unique(values)) <= {0, 100, 200}
        img = cv2.imread(str(inputs / name), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(values, model.predict(img))
        ok, pages = cv2.imreadmulti(str(out / "probabilities" / f"{stem}.tif"),
                                    flags=cv2.IMREAD_UNCHANGED)  # fmt: skip
        assert ok and len(pages) == 3 and pages[0].dtype == np.float32
        probs = np.stack(pages)
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
        np.testing.assert_array_equal(np.array([0, 100, 200])[probs.argmax(0)], values)
        overlay = cv2.imread(str(out / "overlays" / f"{stem}.png"))[:, :, ::-1]
        assert overlay.shape[0] > shape[0] and overlay.shape[1] >= shape[1]  # legend below
        for colour in class_colours(3)[1:]:  # one swatch for each foreground class
            assert (overlay[shape[0] :] == colour).all(-1).sum() >= 9 * 9


def test_predict_a_glob_binary_masks_and_postprocessing(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "bin.ckpt", calibrate=image((64, 64)))
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "same.png"), image((40, 60)))
    cv2.imwrite(str(tmp_path / "x" / "same.tif"), image((40, 60), 5))
    out = tmp_path / "out"
    cfg = config(ckpt=ckpt, input=f"'{tmp_path}/*/same.*'", output=out, device="cpu",
                 mode="resize", size=32, **{"postprocess.min_size": 30,
                                             "postprocess.fill_holes": True})  # fmt: skip
    written = predict(cfg)
    assert len(written) == 3 == len(set(written))  # clashing names kept apart
    for path in written:
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # plain 8-bit PNG, 0/255
        assert mask.shape == (40, 60) and set(np.unique(mask)) <= {0, 255}
        count, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8))
        assert (stats[1:, cv2.CC_STAT_AREA] >= 30).all()


@pytest.mark.parametrize(
    "hparams,read_back",
    [
        ({"mask_values": (0, 1, 2)}, {"mask_format": "palette"}),  # multi-class: palette PNG
        ({"mask_values": (0, 7), "mask_format": "palette"}, {}),
        (
            {
                "mask_values": (0, 1, 2),
                "mask_format": "rgb",
                "mask_colors": [[0, 0, 0], [255, 0, 0], [0, 0, 255]],
            },
            {},
        ),  # fmt: skip
        ({"mask_values": (0, 1, 2), "mask_format": "folders"}, {}),
        ({"mask_values": (0, 1), "mask_format": "instances"}, {}),
    ],
    ids=["values", "palette", "rgb", "folders", "instances"],
)
def test_masks_are_written_in_the_dataset_format_and_read_back(
    tmp_path: Path, hparams: dict, read_back: dict
) -> None:
    """What predict writes, the data loader reads back as the predicted classes."""
    ckpt = make_checkpoint(tmp_path / "m.ckpt", calibrate=image((64, 64)), **hparams)
    inputs = tmp_path / "in"
    inputs.mkdir()
    img = image((48, 64), 3)
    cv2.imwrite(str(inputs / "a.png"), img)
    out = tmp_path / "out"
    predict(config(ckpt=ckpt, input=inputs, output=out, device="cpu"))
    model = load_model(ckpt, device="cpu")
    labels = model.labels(img)
    assert labels.max() > 0  # something to write
    k = len(hparams["mask_values"])
    encoding = MaskEncoding(
        **{"mask_values": hparams["mask_values"], "mask_format": "values", **hparams,
           **read_back, "class_names": ["background", *(f"class{i}" for i in range(1, k))]}
    )  # fmt: skip
    got = encoding.load(out / ("a" if encoding.mask_format == "folders" else "a.png"))
    np.testing.assert_array_equal(got, (labels > 0) if "instances" in str(hparams) else labels)


def test_output_stems_keep_clashing_names_apart(tmp_path: Path) -> None:
    files = [tmp_path / "a/x.png", tmp_path / "b/x.png", tmp_path / "a/x.tif", tmp_path / "a/y.png"]
    assert output_stems(files) == ["a_x_png", "b_x_png", "a_x_tif", "y"]


def test_the_configs_share_the_inference_keys() -> None:
    keys = {"device", "mode", "tile_size", "overlap", "tta", "batch_size", "size", "level",
            "postprocess"}  # fmt: skip
    for name in ("predict", "evaluate"):
        cfg = OmegaConf.load(CONF / f"{name}.yaml")
        assert keys <= set(cfg), name
    assert (
        OmegaConf.load(CONF / "predict.yaml").postprocess
        == OmegaConf.load(CONF / "evaluate.yaml").postprocess
    )


def test_predict_says_what_failed_and_fails_when_nothing_was_written(
    three_classes: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, forker: Forker
) -> None:
    """The last line counts the failures; the hint is one predict can follow (the checkpoint
    fixes the channels); with nothing written the command exits 1."""

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "broken.png").write_bytes(b"garbage")
    colour = np.stack([image((20, 20), s) for s in range(3)], axis=2)
    cv2.imwrite(str(inputs / "colour.png"), colour)
    cfg = config(ckpt=three_classes, input=inputs, output=tmp_path / "out", device="cpu")
    with caplog.at_level(logging.INFO):
        assert predict(cfg) == []
    assert "convert it to 1 channel(s): the model was trained on 1" in caplog.text
    assert "set data.in_channels" not in caplog.text
    assert caplog.records[-1].getMessage().endswith("2 of 2 file(s) failed (listed above)")
    proc = forker.run(
        ["-m", "unet_seg.predict", f"ckpt={three_classes}", f"input={inputs}",
         f"output={tmp_path / 'out2'}", "device=cpu"],
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1


# ---- checkpoints trained on volumes: the same predict, its options checked in one place ----


def volume_checkpoint(
    path: Path, arch: dict | None = None, in_channels: int = 1, mask_values=(0, 1), **data
) -> Path:
    """An untrained `SegModule` checkpoint for volumes (a 2-D U-Net on z slices, windows of
    16, unless `arch` and `data` say otherwise), saved as `python -m unet_seg.train` would."""
    import lightning.pytorch as pl
    import torch

    from unet_seg.module import SegModule

    torch.manual_seed(0)
    k = len(mask_values)
    arch = arch or {"name": "unet", "base_channels": 4, "depth": 2, "bilinear": False}
    data = {"volume": True, "dims": 2, "crop_size": 16, **data}
    module = SegModule(
        arch={**arch, "in_channels": in_channels, "num_classes": k},
        loss={"deep_supervision_weights": "equal"},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True},
        data={"class_names": ["background", *(f"class{i}" for i in range(1, k))],
              "in_channels": in_channels, "mask_values": list(mask_values),
              "mean": [0.0], "std": [1.0], "intensity": {"mode": "zscore"}, **data},
    )  # fmt: skip
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def write_nifti(path: Path, array: np.ndarray, labels: bool = False) -> Path:
    """`[Z, Y, X]` or `[Z, Y, X, C]` as NIfTI, 1 mm voxels (a 4-D file: channels last on
    disk, `[X, Y, Z, C]`, the Medical Segmentation Decathlon's layout)."""
    from unet_seg.data.volumes import VolumeMeta, write_volume

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = VolumeMeta(tuple(array.shape[:3]), (1.0, 1.0, 1.0), tuple(map(tuple, np.eye(4))),
                      "nifti")  # fmt: skip
    write_volume(path, array, meta, labels=labels)
    return path


@pytest.fixture(scope="module")
def volume_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return volume_checkpoint(tmp_path_factory.mktemp("vol") / "v.ckpt")


def test_volume_predict_takes_overlap_zero_as_zero(
    volume_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`overlap=0` (windows side by side) reached the window as 0.5 (`or 0.5`)."""
    import torch

    from unet_seg.module import SegModule

    seen = []

    def probabilities(self, volume: torch.Tensor, **options: object) -> torch.Tensor:
        seen.append(options)
        return torch.full((2, *volume.shape[1:]), 0.5)

    def labels(self, volume: torch.Tensor, **options: object) -> np.ndarray:
        seen.append(options)
        return np.zeros(volume.shape[1:], np.uint8)

    monkeypatch.setattr(SegModule, "volume_probabilities", probabilities)
    monkeypatch.setattr(SegModule, "volume_labels", labels)  # the labels are decided by bands
    source = write_nifti(tmp_path / "in" / "a.nii.gz", np.zeros((3, 20, 24), np.float32))
    predict(config(ckpt=volume_ckpt, input=source, output=tmp_path / "out", device="cpu",
                   overlap=0))  # fmt: skip
    assert [s["overlap"] for s in seen] == [0.0]
    with pytest.raises(ValueError, match=r"predict: overlap=1: must be in \[0, 1\)"):
        predict(config(ckpt=volume_ckpt, input=source, output=tmp_path / "o2", overlap=1))


def test_volume_predict_takes_a_4d_multichannel_nifti(tmp_path: Path) -> None:
    """The Decathlon's layout: one file [X, Y, Z, C]; refused by name when C differs."""
    from unet_seg.data.volumes import read_volume

    two = volume_checkpoint(tmp_path / "two.ckpt", in_channels=2)
    rng = np.random.default_rng(0)
    source = write_nifti(tmp_path / "BRATS_001.nii.gz",
                         rng.normal(size=(3, 20, 24, 2)).astype(np.float32))  # fmt: skip
    (path,) = predict(config(ckpt=two, input=source, output=tmp_path / "out", device="cpu"))
    labels, meta = read_volume(path)
    assert path.name == "BRATS_001.nii.gz" and labels.shape == (3, 20, 24)
    one = volume_checkpoint(tmp_path / "one.ckpt", in_channels=1)
    with pytest.raises(ValueError, match=r"BRATS_001.nii.gz: 2 channel\(s\) in the file, but "
                       r"the checkpoint takes 1"):  # fmt: skip
        predict(config(ckpt=one, input=source, output=tmp_path / "o1", device="cpu"))
    three = volume_checkpoint(tmp_path / "three.ckpt", in_channels=3)
    with pytest.raises(ValueError, match=r"takes 3: give a 4-D file of 3 channels"):
        predict(config(ckpt=three, input=source, output=tmp_path / "o3", device="cpu"))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()


def test_volume_predict_refuses_image_only_options_by_name_before_writing(
    volume_ckpt: Path, tmp_path: Path
) -> None:
    """`mode`, `tile_size`, `size`, `palette` and `overlays` were ignored without a word
    for volumes; now every one is named, with why, and nothing is written."""
    from unet_seg.evaluate import evaluate

    source = write_nifti(tmp_path / "a.nii.gz", np.zeros((3, 20, 24), np.float32))
    out = tmp_path / "out"
    asked = {"mode": "whole", "tile_size": 256, "size": 64, "palette": True, "overlays": True}
    with pytest.raises(ValueError) as refused:
        predict(config(ckpt=volume_ckpt, input=source, output=out, tta="d4", **asked))
    message = str(refused.value)
    assert message.startswith("predict: 6 options do not fit this volume checkpoint")
    for key, value in asked.items():
        assert f"{key}={value} does not apply to volumes" in message
    assert "tile_size=256 does not apply to volumes: the window is the training patch" in message
    assert "tta=d4: choose one of none, flips" in message
    assert not out.exists()
    # the defaults of conf/predict.yaml ask for nothing, and so do the "no" values
    from unet_seg.inference import OPTIONS_FOR_IMAGES_ONLY, check_options

    check_options(config(ckpt=volume_ckpt, overlays=False, palette=False), "predict", True)
    check_options(config(ckpt=volume_ckpt, **asked, tta="d4"), "predict", False)  # 2-D: all
    assert set(OPTIONS_FOR_IMAGES_ONLY) >= set(asked)
    with pytest.raises(ValueError, match="evaluate: instances_dir=objects does not apply to vol"):
        evaluate(OmegaConf.create({"ckpt": str(volume_ckpt), "data_root": str(tmp_path),
                                   "run_dir": None, "instances_dir": "objects"}))  # fmt: skip


def test_volume_predict_prunes_a_nested3d_at_level(tmp_path: Path) -> None:
    """`level` was ignored for volumes: a pruned nested3d now predicts with head `level`."""
    import torch

    from unet_seg.data.volumes import read_volume
    from unet_seg.inference import load_for_inference
    from unet_seg.models.nested_unet import NestedUNet

    arch = {"name": "nested3d", "base_channels": 4, "deep_supervision": True, "bilinear": True}
    ckpt = volume_checkpoint(tmp_path / "n.ckpt", arch=arch, dims=3, patch=[16, 16, 16],
                             mask_values=(0, 1, 2))  # fmt: skip
    volume = np.random.default_rng(1).normal(size=(16, 16, 16)).astype(np.float32)
    source = write_nifti(tmp_path / "a.nii.gz", volume)
    levels = []
    original = NestedUNet.forward_level

    def forward_level(self, x: torch.Tensor, level: int) -> torch.Tensor:
        levels.append(level)
        return original(self, x, level)

    with pytest.MonkeyPatch.context() as patch:  # the net's own pruned head, counted
        patch.setattr(NestedUNet, "forward_level", forward_level)
        out = {level: predict(config(ckpt=ckpt, input=source, output=tmp_path / f"l{level}",
                                     device="cpu", level=level))[0]  # fmt: skip
               for level in (1, "null")}  # fmt: skip
    assert levels and set(levels) == {1}  # the full net (level=null) never prunes
    pruned = load_for_inference(ckpt, "cpu", 1).eval()
    with torch.no_grad():
        expected = pruned.volume_probabilities(torch.from_numpy(volume)[None]).argmax(0)
    assert np.array_equal(read_volume(out[1])[0], expected.numpy())
    with pytest.raises(ValueError, match="level must be in 1..4"):
        predict(config(ckpt=ckpt, input=source, output=tmp_path / "l9", level=9))
    unet = volume_checkpoint(tmp_path / "u.ckpt")
    with pytest.raises(ValueError, match="level=2 prunes UNet\\+\\+ only"):
        predict(config(ckpt=unet, input=source, output=tmp_path / "u2", level=2))


def test_volume_postprocessing_acts_in_3d(
    volume_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`postprocess.*` was ignored for volumes: objects are 26-connected, sizes in voxels
    (`PostProcess`, the one post-processing of every rank)."""
    import torch

    from unet_seg.data.volumes import read_volume
    from unet_seg.module import SegModule
    from unet_seg.postprocess import PostProcess

    def postprocess_volume(labels: np.ndarray, settings: dict) -> np.ndarray:
        return PostProcess(**settings)(labels)

    labels = np.zeros((6, 12, 12), np.uint8)
    labels[1:5, 1:7, 1:7] = 1  # a 4x6x6 block with a one-voxel cavity inside
    labels[2, 3, 3] = 0
    labels[5, 10, 10] = 1  # a speck, diagonal neighbours of nothing
    labels[4, 8, 8] = labels[5, 9, 9] = 1  # two voxels touching the block by corners only
    settings = {"min_size": 3, "fill_holes": False, "keep_largest": False}
    kept = postprocess_volume(labels, settings)
    assert kept[5, 10, 10] == 1 and kept[4, 8, 8] == 1  # 26-connected: one object of 3+...
    speck = labels.copy()
    speck[5, 9, 9] = 0  # now the voxel at (5, 10, 10) stands alone
    assert postprocess_volume(speck, settings)[5, 10, 10] == 0
    filled = postprocess_volume(labels, {"fill_holes": True})
    assert filled[2, 3, 3] == 1 and filled[0, 0, 0] == 0
    largest = postprocess_volume(speck, {"keep_largest": True})
    assert largest[5, 10, 10] == 0 and largest[1, 1, 1] == 1
    assert postprocess_volume(labels, {}) is labels  # nothing asked: untouched

    def probability_bands(self, volume: torch.Tensor, *args: object, **options: object):  # noqa: ANN202
        onehot = torch.from_numpy(speck).long()
        yield 0, torch.stack([1.0 - onehot, onehot.float()]).float()  # one band: the volume

    monkeypatch.setattr(SegModule, "volume_probability_bands", probability_bands)
    source = write_nifti(tmp_path / "a.nii.gz", np.zeros(speck.shape, np.float32))
    (plain,) = predict(config(ckpt=volume_ckpt, input=source, output=tmp_path / "plain"))
    (cleaned,) = predict(config(ckpt=volume_ckpt, input=source, output=tmp_path / "clean",
                                **{"postprocess.min_size": 3}))  # fmt: skip
    assert read_volume(plain)[0][5, 10, 10] == 1 and read_volume(cleaned)[0][5, 10, 10] == 0


def test_volume_predict_with_every_case_failing_says_so_and_exits_1(
    volume_ckpt: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, forker: Forker
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        (inputs / name).write_bytes(b"garbage")
    with caplog.at_level(logging.INFO):
        assert predict(config(ckpt=volume_ckpt, input=inputs, output=tmp_path / "out")) == []
    failed = [line for line in caplog.text.splitlines() if "cannot be read as NIfTI" in line]
    assert len(failed) == 2 and "a.nii.gz" in failed[0] and "b.nii.gz" in failed[1]
    assert caplog.records[-1].getMessage().startswith("predict: none of the 2 volume(s)")
    proc = forker.run(["-m", "unet_seg.predict", f"ckpt={volume_ckpt}", f"input={inputs}",
                       f"output={tmp_path / 'out2'}", "device=cpu"],
                      cwd=tmp_path, timeout=300)  # fmt: skip
    assert proc.returncode == 1
    assert "none of the 2 volume(s) could be read" in proc.stdout + proc.stderr
    proc = forker.run(["-m", "unet_seg.predict", f"ckpt={volume_ckpt}", f"input={inputs}",
                       "tile_size=256"], cwd=tmp_path, timeout=300)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "predict: tile_size=256 does not apply to volumes: the window is the training patch "
        "recorded in the checkpoint (data.patch for a 3-D net, data.crop_size for slices); "
        "leave tile_size out"
    ]


def test_predict_reads_a_channel_tiff_as_channels_of_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 2-channel ImageJ CYX TIFF is two channels of data (`readers.read_stored`), never
    grey+alpha: a 2-channel checkpoint predicts it as the channels are, and a 1-channel one
    refuses it by name (predict read it as grey with an opaque alpha and silently fed the
    first channel alone)."""
    import tifffile

    rng = np.random.default_rng(0)
    stain = rng.integers(0, 60000, (40, 48), dtype=np.uint16)
    flat = np.full_like(stain, 65535)  # a channel at the type's maximum: an "opaque alpha"
    channels = np.stack([stain, flat])  # [C, Y, X]
    source = tmp_path / "in" / "cells.tif"
    source.parent.mkdir()
    tifffile.imwrite(source, channels, imagej=True, metadata={"axes": "CYX"})

    two = make_checkpoint(tmp_path / "two.ckpt", in_channels=2)
    (written,) = predict(config(ckpt=two, input=source, output=tmp_path / "out2", device="cpu"))
    ((labels, _),) = load_model(two, device="cpu").run([np.moveaxis(channels, 0, -1)])
    np.testing.assert_array_equal(cv2.imread(str(written), cv2.IMREAD_UNCHANGED) > 0, labels > 0)

    one = make_checkpoint(tmp_path / "one.ckpt", in_channels=1)
    with caplog.at_level(logging.WARNING, logger="unet_seg.predict"):
        assert predict(config(ckpt=one, input=source, output=tmp_path / "out1",
                              device="cpu")) == []  # fmt: skip
    assert str(source) in caplog.text and "2 channels of data" in caplog.text
    assert not list((tmp_path / "out1").glob("*.png"))
