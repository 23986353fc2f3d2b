"""arch=unet_valid: the paper's valid-convolution U-Net (572 -> 388), centre-cropped targets
in training, mirrored context, and seamless overlap-tile prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_inference import ARCHS, image, make_checkpoint, predictor
from unet_seg.models.registry import build_net, context_margin
from unet_seg.models.unet import UNet
from unet_seg.models.unet_valid import (
    ValidUNet,
    mirror_pad,
    next_valid_size,
    valid_input_sizes,
    valid_output_size,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_paper_sizes_and_margin() -> None:
    assert valid_output_size(572, 4) == 388  # Ronneberger et al., 2015, Fig. 1
    assert ValidUNet.margin_for(4) == 92 == (572 - 388) // 2
    assert valid_output_size(256, 4) is None  # odd before a pooling step
    for depth in (1, 2, 3, 4):
        margin = ValidUNet.margin_for(depth)
        for n in valid_input_sizes(depth, 400):
            assert valid_output_size(n, depth) == n - 2 * margin
    assert next_valid_size(256, 4) == 268 and next_valid_size(268, 4) == 268
    assert ValidUNet.skip_crops_for(4) == [4, 16, 40, 88]  # 64 -> 56, ..., 568 -> 392


@pytest.mark.parametrize("bilinear", [False, True])
def test_parameter_count_equals_padded_unet(bilinear: bool) -> None:
    """Padding adds no weights: the valid net has exactly the padded U-Net's parameters."""
    valid = sum(p.numel() for p in ValidUNet(1, 2, bilinear=bilinear).parameters())
    padded = sum(p.numel() for p in UNet(1, 2, bilinear=bilinear).parameters())
    assert valid == padded
    if not bilinear:
        assert valid == 31_036_546


@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_output_shape_and_gradients(depth: int, bilinear: bool) -> None:
    net = ValidUNet(2, 3, base_channels=4, depth=depth, bilinear=bilinear)
    side = valid_input_sizes(depth, 300)[1]
    x = torch.randn(2, 2, side, side + 2**depth)
    out = net(x)
    m = net.margin
    assert out.shape == (2, 3, side - 2 * m, side + 2**depth - 2 * m)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_bad_size_names_the_nearest_sizes() -> None:
    net = ValidUNet(1, 2, base_channels=4)
    with pytest.raises(ValueError, match=r"input side 256 .* nearest sides \[252, 268\]"):
        net(torch.zeros(1, 1, 256, 268))


def test_output_sees_no_padding() -> None:
    """Shifting the input window by a step of the pooling grid shifts the logits and changes
    none: no logit sees padding (in a padded net, the border logits would see the zeros)."""
    torch.manual_seed(0)
    net = ValidUNet(1, 2, base_channels=4).eval()
    x = torch.randn(1, 1, 220, 236)
    with torch.no_grad():
        whole = net(x)  # [1, 2, 36, 52]
        part = net(x[..., 16 : 16 + 188, 32 : 32 + 204])  # [1, 2, 4, 20]
    torch.testing.assert_close(part, whole[..., 16:20, 32:52], atol=1e-5, rtol=0)


def test_mirror_pad_reflects_repeatedly() -> None:
    row = torch.tensor([0.0, 1.0, 2.0]).view(1, 1, 1, 3)
    padded = mirror_pad(row, 5, 4, 0, 0)
    assert padded.flatten().tolist() == [1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2]
    assert torch.equal(mirror_pad(row, 2, 0, 0, 0).flatten(), torch.tensor([2.0, 1, 0, 1, 2]))
    assert mirror_pad(row, 0, 0, 2, 1).shape == (1, 1, 4, 3)  # one row: repeated
    assert mirror_pad(torch.ones(1, 1, 1, 1), 3, 3, 3, 3).shape == (1, 1, 7, 7)


def test_forward_with_context_matches_a_crop_of_the_whole() -> None:
    """A tile on the pooling grid, with real context, gives the whole image's logits there."""
    torch.manual_seed(0)
    net = ValidUNet(1, 2, base_channels=4).eval()
    m = net.margin
    x = torch.randn(1, 1, 150, 130)
    with torch.no_grad():
        whole = net.forward_same(x)
        assert whole.shape == (1, 2, 150, 130)
        source = mirror_pad(x, m, m, m, m)
        tile = net.forward_with_context(source[..., 32 : 32 + 50 + 2 * m, 16 : 16 + 70 + 2 * m])
    torch.testing.assert_close(tile, whole[..., 32:82, 16:86], atol=1e-5, rtol=0)


def test_registry_and_context_margin() -> None:
    arch = {"name": "unet_valid", "in_channels": 1, "num_classes": 2, "base_channels": 4}
    assert isinstance(build_net(arch), ValidUNet)
    assert context_margin(arch) == 92
    assert context_margin({**arch, "depth": 3}) == 44
    assert context_margin({"name": "unet"}) == 0


def test_module_scores_the_centre_in_training(tmp_path: Path) -> None:
    """A training batch carries `context` pixels around the target; the loss is computed on
    the logits of the target's pixels, and validation takes whole images."""
    from unet_seg.module import SegModule

    torch.manual_seed(0)
    module = SegModule(
        arch={**ARCHS["unet_valid"], "in_channels": 1, "num_classes": 2},
        loss={"ce_weight": 1.0, "dice_weight": 0.0},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True},
        data={"class_names": ["background", "fg"], "in_channels": 1, "mask_values": [0, 255]},
    )
    c = module.net.margin
    assert c == 92
    images = torch.randn(2, 1, 40 + 2 * c, 40 + 2 * c)
    masks = torch.randint(0, 2, (2, 40 + 2 * c, 40 + 2 * c))
    loss = module._shared_step({"image": images, "mask": masks}, "train")
    logits = module.net.forward_with_context(images)
    assert logits.shape[-2:] == (40, 40)
    expected = torch.nn.functional.cross_entropy(logits, masks[:, c:-c, c:-c])
    torch.testing.assert_close(loss, expected)
    module.eval()
    with torch.no_grad():
        assert module(torch.randn(1, 1, 37, 53)).shape == (1, 2, 37, 53)
        module._shared_step({"image": torch.randn(2, 1, 37, 53),
                             "mask": torch.randint(0, 2, (2, 37, 53))}, "val")  # fmt: skip
    assert module.val_scores.compute()["dice"] >= 0


@pytest.fixture(scope="module")
def valid_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("valid")
    return make_checkpoint(root / "valid.ckpt", "unet_valid", calibrate=image((96, 96)))


@pytest.mark.parametrize(("shape", "tile"), [((150, 170), 64), ((97, 61), 40), ((64, 64), 128)])
def test_overlap_tile_prediction_is_seamless(valid_checkpoint: Path, shape, tile) -> None:
    """Tiles with real context on the net's pooling grid reproduce the whole-image pass
    exactly: no seams, whatever the tile size and the image's remainder."""
    img = image(shape, seed=1)
    whole = predictor(valid_checkpoint, mode="whole").probabilities(img)
    tiled = predictor(valid_checkpoint, mode="tile", tile_size=tile, overlap=0.25)
    probs = tiled.probabilities(img)
    assert probs.shape == whole.shape == (2, *shape)
    np.testing.assert_allclose(probs, whole, atol=1e-5)
    labels = tiled.labels(img)
    assert 0.05 < labels.mean() < 0.95  # calibrated: not a constant prediction


def test_overlap_tile_with_tta(valid_checkpoint: Path) -> None:
    img = image((120, 90), seed=2)
    whole = predictor(valid_checkpoint, mode="whole", tta="flips").probabilities(img)
    tiled = predictor(valid_checkpoint, mode="tile", tile_size=48, tta="flips")
    # flipped tiles sit on another pooling phase than the flipped whole image: close, not equal
    assert np.abs(tiled.probabilities(img) - whole).mean() < 0.02


def test_tile_smaller_than_the_pooling_grid_is_refused(valid_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="tile_size >= 16"):
        predictor(valid_checkpoint, mode="tile", tile_size=8).labels(image((40, 40)))


def test_training_patches_carry_context(tmp_path: Path) -> None:
    """The training data of a valid net: patches `crop + 2 * margin` wide, the mask ignored
    outside the scored patch; mirrored image content where the context leaves the image."""
    from tests.conftest import compose_train
    from unet_seg.data.masks import IGNORE_INDEX
    from unet_seg.train import build_datamodule

    # no affine warp: it would turn the ignored rim into the scored patch, which is right
    # for training but not what this test looks at (flips and quarter turns keep the centre)
    cfg = compose_train([
        "arch=unet_valid", "arch.depth=2", "data.synthetic.num_images=4",
        "data.synthetic.size=48", "data.crop_size=24", f"data.root={tmp_path / 'data'}",
        "data.augment.affine.p=0",
    ])  # fmt: skip
    dm = build_datamodule(cfg, tmp_path)
    dm.setup("fit")
    c = ValidUNet.margin_for(2)
    assert dm.datasets["train"].context == c == 20
    sample = dm.datasets["train"][(0, 7)]
    assert sample["image"].shape == (1, 24 + 2 * c, 24 + 2 * c)
    mask = sample["mask"]
    scored = mask[c:-c, c:-c]
    assert (scored != IGNORE_INDEX).all()  # the scored patch lies inside the image
    val = dm.datasets["val"][0]
    assert val["image"].shape == (1, 48, 48)  # whole images, no context: the module mirrors
