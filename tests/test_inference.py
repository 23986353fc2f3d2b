"""Inference: tiling with Gaussian blending, TTA, resize mode, batching, `load_model`, and the
errors a user meets (wrong channel count, checkpoints that are not ours)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn

from unet_seg.data.contract import DataContract
from unet_seg.inference import (
    Predictor,
    check_image,
    gaussian_weights,
    load_for_inference,
)
from unet_seg.models.base import SegNet
from unet_seg.module import SegModule
from unet_seg.volume_inference import tile_starts

ARCHS = {
    "unet": {"name": "unet", "base_channels": 4, "depth": 4, "bilinear": False},
    "nested": {"name": "nested", "base_channels": 4, "deep_supervision": True, "bilinear": True},
    "unet_valid": {"name": "unet_valid", "base_channels": 4, "depth": 4, "bilinear": False},
}


def make_checkpoint(
    path: Path,
    arch: str = "unet",
    in_channels: int = 1,
    mask_values: tuple[int, ...] = (0, 255),
    seed: int = 0,
    calibrate: np.ndarray | None = None,
    **hparams,
) -> Path:
    """Save an untrained `SegModule` checkpoint (random weights, randomised batch-norm
    statistics so that the net is far from constant) as `python -m unet_seg.train` would.

    With `calibrate` (an `[H, W]` uint8 image), the head biases are set so that every
    foreground class wins on some pixels of that image: predictions that are not empty.
    `hparams` go to the data contract as they are (e.g. `mask_format`, `mask_colors`).
    """
    torch.manual_seed(seed)
    k = len(mask_values)
    module = SegModule(
        arch={**ARCHS[arch], "in_channels": in_channels, "num_classes": k},
        loss={"deep_supervision_weights": "equal"},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True},
        data={"class_names": ["background", *(f"class{i}" for i in range(1, k))],
              "in_channels": in_channels, "mask_values": list(mask_values),
              "mean": [0.5], "std": [0.25], **hparams},
    )  # fmt: skip
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.3, 2.0)
    if calibrate is not None:
        module.eval()
        x = (torch.from_numpy(calibrate).float()[None, None] / 255 - 0.5) / 0.25
        with torch.no_grad():
            logits = module(x)[0]  # [K, H, W]
            for head in getattr(module.net, "heads", None) or [module.net.head]:
                for c in range(1, k):  # class c beats the background on ~50% / (K - 1)
                    margin = torch.quantile(logits[c] - logits[0], 1 - 0.5 / (k - 1))
                    head.bias[c] -= margin
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "unet": make_checkpoint(root / "unet.ckpt", "unet", mask_values=(0, 100, 200)),
        "nested": make_checkpoint(root / "nested.ckpt", "nested"),
        "rgb": make_checkpoint(root / "rgb.ckpt", "unet", in_channels=3),
    }


class Pointwise(SegNet):
    """A 1x1 conv as a net: every output pixel sees only its own input pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def predictor(ckpt: Path, level: int | None = None, **kwargs) -> Predictor:
    return Predictor(load_for_inference(ckpt, "cpu", level), **kwargs)


def image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Smooth blobs plus noise: structure at several scales, so nets disagree with shifts."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    yy, xx = np.mgrid[:h, :w]
    base = 128 + 60 * np.sin(yy / 7.0) * np.cos(xx / 11.0) + rng.normal(0, 25, (h, w))
    return np.clip(base, 0, 255).astype(np.uint8).reshape(shape)


@pytest.mark.parametrize("length,tile,stride", [(10, 32, 24), (32, 32, 24), (100, 32, 24),
                                                (101, 32, 16), (1000, 256, 192)])  # fmt: skip
def test_tile_starts_cover_the_axis_evenly(length: int, tile: int, stride: int) -> None:
    starts = tile_starts(length, tile, stride)
    assert starts[0] == 0
    assert starts[-1] == max(0, length - tile)
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (gaps <= stride).all()
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()


def test_gaussian_weights_peak_in_the_centre_and_never_vanish() -> None:
    w = gaussian_weights(33, 20)
    assert w.shape == (33, 20)
    assert float(w.max()) == pytest.approx(1.0, abs=1e-3)
    assert float(w.min()) >= 0.99e-4
    assert torch.equal(w, w.flip(0)) and torch.equal(w, w.flip(1))


@pytest.mark.parametrize("overlap,batch_size", [(0.25, 3), (0.5, 1), (0.0, 8)])
def test_tiles_reassemble_exactly_for_a_pointwise_net(
    checkpoints: dict[str, Path], overlap: float, batch_size: int
) -> None:
    """With a 1x1 conv as the net every tile agrees with the whole image, so any
    difference would come from the blending and band bookkeeping alone."""
    whole = predictor(checkpoints["unet"], mode="whole")
    torch.manual_seed(1)
    whole.module.net = Pointwise()
    tiled = Predictor(whole.module, mode="tile", tile_size=32, overlap=overlap,
                      batch_size=batch_size)  # fmt: skip
    img = image((101, 157))
    expected = whole.probabilities(img)
    got = tiled.probabilities(img)
    assert got.shape == expected.shape == (3, 101, 157)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_array_equal(tiled.labels(img), expected.argmax(0))


@pytest.mark.parametrize("arch", ["unet", "nested"])
def test_tiling_matches_the_whole_image_within_tolerance(
    checkpoints: dict[str, Path], arch: str
) -> None:
    img = image((150, 230))
    whole = predictor(checkpoints[arch], mode="whole").probabilities(img)
    tiled = predictor(checkpoints[arch], mode="tile", tile_size=64, overlap=0.5)
    probs = tiled.probabilities(img)
    diff = np.abs(probs - whole)
    # tiles see zero padding where the whole image sees neighbours: small differences,
    # smallest far from tile borders; the labels hardly change
    assert diff.max() < 0.05
    assert diff.mean() < 2e-3
    assert (probs.argmax(0) == whole.argmax(0)).mean() > 0.995
    np.testing.assert_array_equal(tiled.labels(img), probs.argmax(0))


def test_an_image_within_one_tile_is_one_plain_forward_pass(checkpoints: dict[str, Path]) -> None:
    p = predictor(checkpoints["unet"], mode="tile", tile_size=512)
    img = image((60, 90))
    x = (torch.from_numpy(img).float()[None, None] / 255 - 0.5) / 0.25
    with torch.no_grad():
        expected = torch.softmax(p.module(x), dim=1)[0].numpy()
    np.testing.assert_allclose(p.probabilities(img), expected, atol=1e-6)


D4 = [
    lambda a: a, lambda a: np.rot90(a, 1), lambda a: np.rot90(a, 2), lambda a: np.rot90(a, 3),
    lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: a.T, lambda a: np.rot90(a, 1)[::-1],
]  # fmt: skip


def _on_probs(g, probs: np.ndarray) -> np.ndarray:
    return np.stack([g(p) for p in probs])


@pytest.mark.parametrize(
    "mode,shape,kwargs",
    [("whole", (64, 64), {}), ("tile", (80, 80), {"tile_size": 32, "overlap": 0.25})],
)
def test_d4_tta_is_invariant_to_flips_and_rotations(
    checkpoints: dict[str, Path], mode: str, shape: tuple[int, int], kwargs: dict
) -> None:
    """Predicting a transformed image = transforming the prediction (side a multiple of
    16 and a symmetric tile grid, so that the net's own padding is symmetric too)."""
    img = image(shape)
    p = predictor(checkpoints["unet"], mode=mode, tta="d4", **kwargs)
    reference = p.probabilities(img)
    for g in D4[1:]:
        got = p.probabilities(np.ascontiguousarray(g(img)))
        np.testing.assert_allclose(got, _on_probs(g, reference), atol=1e-5)
    # without TTA the same net is not invariant: the check above can fail
    plain = predictor(checkpoints["unet"], mode=mode, **kwargs)
    flipped = plain.probabilities(np.ascontiguousarray(img[:, ::-1]))
    assert np.abs(flipped - _on_probs(D4[4], plain.probabilities(img))).max() > 1e-3


def test_flips_tta_is_invariant_to_horizontal_and_vertical_flips(
    checkpoints: dict[str, Path],
) -> None:
    img = image((64, 96))
    p = predictor(checkpoints["nested"], mode="whole", tta="flips")
    reference = p.probabilities(img)
    for g in (D4[4], D4[5], D4[2]):
        got = p.probabilities(np.ascontiguousarray(g(img)))
        np.testing.assert_allclose(got, _on_probs(g, reference), atol=1e-5)


def test_resize_mode_predicts_at_native_size(checkpoints: dict[str, Path]) -> None:
    img = image((70, 110))
    resized = predictor(checkpoints["unet"], mode="resize", size=64)
    probs = resized.probabilities(img)
    assert probs.shape == (3, 70, 110)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    # at the image's own size, resize mode is the whole-image prediction
    same = predictor(checkpoints["unet"], mode="resize", size=[70, 110]).probabilities(img)
    whole = predictor(checkpoints["unet"], mode="whole").probabilities(img)
    np.testing.assert_allclose(same, whole, atol=1e-6)
    with pytest.raises(ValueError, match="mode=resize needs size"):
        predictor(checkpoints["unet"], mode="resize")


def test_batched_run_equals_one_image_at_a_time(checkpoints: dict[str, Path]) -> None:
    p = predictor(checkpoints["unet"], mode="tile", tile_size=64, batch_size=2)
    images = [image((48, 64), 1), image((150, 100), 2), image((48, 64), 3), image((48, 64), 4)]
    together = p.run(images, probabilities=True)
    for img, (labels, probs) in zip(images, together, strict=True):
        alone = p.probabilities(img)
        np.testing.assert_allclose(probs, alone, atol=1e-5)
        np.testing.assert_array_equal(labels, p.labels(img))


def test_load_model_predicts_masks_in_the_dataset_encoding(checkpoints: dict[str, Path]) -> None:
    from unet_seg import load_model

    model = load_model(checkpoints["unet"], device="cpu", tile_size=64, tta="flips")
    img = image((90, 130))
    mask = model.predict(img)
    labels = model.labels(img)
    assert mask.shape == labels.shape == (90, 130)
    assert labels.dtype == np.uint8 and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 100, 200}
    np.testing.assert_array_equal(mask, np.array([0, 100, 200], np.uint8)[labels])
    # an RGB array whose channels are equal is accepted by a grayscale model
    np.testing.assert_array_equal(model.labels(np.repeat(img[:, :, None], 3, axis=2)), labels)


def test_unet_plus_plus_levels(checkpoints: dict[str, Path]) -> None:
    from unet_seg import load_model

    img = image((64, 64))
    probs = [load_model(checkpoints["nested"], device="cpu", level=level).probabilities(img)
             for level in (1, 2, 3, 4)]  # fmt: skip
    full = load_model(checkpoints["nested"], device="cpu").probabilities(img)
    np.testing.assert_allclose(probs[3], full, atol=1e-6)  # level 4 is the full net
    assert np.abs(probs[0] - probs[3]).max() > 1e-3
    with pytest.raises(ValueError, match="prunes UNet\\+\\+ only"):
        load_model(checkpoints["unet"], device="cpu", level=2)
    with pytest.raises(ValueError, match="level must be in 1..4"):
        load_model(checkpoints["nested"], device="cpu", level=5)


def test_wrong_images_get_clear_errors(checkpoints: dict[str, Path]) -> None:
    rgb = np.stack([image((40, 40), s) for s in range(3)], axis=2)
    with pytest.raises(ValueError, match=r"RGB image but data.in_channels=1; convert the image"):
        check_image(rgb, 1)
    with pytest.raises(ValueError, match="pixel type int32"):
        check_image(rgb.astype(np.int32), 3)
    with pytest.raises(ValueError, match="expected \\[H, W\\] or \\[H, W, C\\]"):
        check_image(np.zeros((2, 3, 4, 5), np.uint8), 1)
    assert check_image(image((40, 40)), 3).shape == (40, 40, 3)
    model = predictor(checkpoints["rgb"])
    assert model.labels(rgb).shape == (40, 40)
    with pytest.raises(ValueError, match=r"image 0: 2-channel image but data.in_channels=3"):
        model.labels(rgb[:, :, :2])
    # float images in [0, 1] are the uint8 ones divided by 255; opaque alpha is dropped
    np.testing.assert_allclose(
        model.probabilities(rgb / 255.0), model.probabilities(rgb), atol=1e-5
    )
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        model.labels(rgb * 2.0)
    alpha = np.full((40, 40, 1), 255, np.uint8)
    np.testing.assert_array_equal(model.labels(np.concatenate([rgb, alpha], 2)), model.labels(rgb))
    with pytest.raises(ValueError, match=r"RGBA image with transparent pixels"):
        model.labels(np.concatenate([rgb, alpha // 2], 2))


def _corrupt(src: Path, dst: Path, edit) -> Path:
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def test_checkpoints_that_are_not_ours_get_clear_errors(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    good = checkpoints["unet"]
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    cases = {
        "not a loadable unet-seg checkpoint": text,
        "bare weights": _corrupt(good, tmp_path / "w.ckpt", lambda c: [
            c.update(c.pop("state_dict")), [c.pop(k) for k in list(c) if "." not in k]]),
        "not written by unet-seg": _corrupt(good, tmp_path / "l.ckpt",
                                            lambda c: c.pop("unet_seg_format")),
        "format 0 \\(an older unet-seg\\)": _corrupt(good, tmp_path / "o.ckpt",
                                                     lambda c: c.update(unet_seg_format=0)),
        "unknown architecture 'segformer'": _corrupt(good, tmp_path / "a.ckpt",
            lambda c: c["hyper_parameters"]["arch"].update(name="segformer")),
        "weights do not fit the net it names": _corrupt(good, tmp_path / "s.ckpt",
            lambda c: c["hyper_parameters"]["arch"].update(base_channels=8)),
        "does not exist": tmp_path / "missing.ckpt",
    }  # fmt: skip
    for message, path in cases.items():
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            SegModule.from_checkpoint(path)


def test_format_1_checkpoints_still_load(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """Checkpoints written before the data contract (format 1: its fields separate, the
    patch size in `input_size` or only in the run's config) load as the same model."""
    from omegaconf import OmegaConf

    def to_format_1(c: dict, input_size: bool) -> None:
        hp, data = c["hyper_parameters"], c["hyper_parameters"].pop("data")
        hp.update(class_names=data["class_names"], mask_values=data["mask_values"],
                  mask_format=data["mask_format"], mask_colors=data["mask_colors"],
                  normalization={k: data[k] for k in ("mean", "std", "intensity")})  # fmt: skip
        if input_size:
            hp["input_size"] = 40
        c["unet_seg_format"] = 1

    new = SegModule.from_checkpoint(checkpoints["unet"])
    old = SegModule.from_checkpoint(
        _corrupt(checkpoints["unet"], tmp_path / "v1.ckpt", lambda c: to_format_1(c, True))
    )
    assert old.contract == DataContract.from_dict({**new.contract.to_dict(), "crop_size": 40})
    for key, value in new.state_dict().items():
        torch.testing.assert_close(old.state_dict()[key], value)
    run = tmp_path / "run"  # the oldest: the patch size only in the run's config.yaml
    (run / "checkpoints").mkdir(parents=True)
    OmegaConf.save({"data": {"crop_size": 24}}, run / "config.yaml")
    oldest = _corrupt(
        checkpoints["unet"], run / "checkpoints" / "best.ckpt", lambda c: to_format_1(c, False)
    )
    assert SegModule.from_checkpoint(oldest).contract.crop_size == 24
