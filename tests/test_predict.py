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
