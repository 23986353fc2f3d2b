"""Volume inference: the N-D sliding window against whole-volume passes, flip TTA, and the
slice-by-slice path of 2-D and 2.5-D nets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from unet_seg.data.volume_cases import slab
from unet_seg.inference import gaussian_weights
from unet_seg.volume_inference import (
    gaussian_weights_nd,
    slicewise,
    sliding_window,
    tile_starts,
    window_memory_bytes,
)


def pointwise(in_channels: int, num_classes: int, seed: int = 0) -> nn.Module:
    """A 1x1x1 conv and a softmax: every voxel's output depends on that voxel alone."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(in_channels, num_classes, 1), nn.Softmax(dim=1))


def conv_net(in_channels: int, num_classes: int, seed: int = 0) -> nn.Module:
    """Three 3x3x3 convolutions (zero padded) and a softmax: a 7-voxel receptive field."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv3d(in_channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv3d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv3d(4, num_classes, 3, padding=1),
        nn.Softmax(dim=1),
    )


def volume(shape: tuple[int, ...], channels: int = 2, seed: int = 0) -> Tensor:
    return torch.randn(channels, *shape, generator=torch.Generator().manual_seed(seed))


def test_gaussian_weights_nd_peaks_once_and_is_the_2d_function() -> None:
    w = gaussian_weights_nd((7, 8, 9))
    assert w.shape == (7, 8, 9) and w.dtype == torch.float32
    assert float(w[3, 3:5, 4].min()) == pytest.approx(w.max().item()) and w.max() <= 1
    assert w.min() >= 0.99e-4
    for dim in range(3):
        assert torch.equal(w, w.flip(dim))
    assert torch.equal(gaussian_weights(5, 6), gaussian_weights_nd((5, 6)))
    separable = gaussian_weights_nd((5, 6))[..., None] * gaussian_weights_nd((4,))
    unfloored = separable > 1e-3  # the floor at 1e-4 is applied once, to the product
    w3 = gaussian_weights_nd((5, 6, 4))
    assert torch.allclose(w3, separable, atol=1e-4)
    assert torch.allclose(w3[unfloored], separable[unfloored], rtol=1e-6)
    with pytest.raises(ValueError, match="shape is empty"):
        gaussian_weights_nd(())


def test_one_window_over_the_whole_volume_is_one_pass() -> None:
    net = conv_net(2, 3)
    vol = volume((6, 10, 12))
    direct = net(vol[None])[0]
    stitched = sliding_window(net, vol, patch=(6, 10, 12), num_classes=3)
    assert stitched.shape == (3, 6, 10, 12) and stitched.device.type == "cpu"
    assert torch.allclose(stitched, direct, atol=1e-6)


@torch.no_grad()
def test_a_patch_larger_than_the_volume_pads_with_zeros_and_crops_back() -> None:
    net = conv_net(2, 3, seed=1)
    vol = volume((5, 9, 12))
    padded = torch.zeros(2, 8, 16, 12)
    padded[:, :5, :9] = vol
    expected = net(padded[None])[0, :, :5, :9]
    stitched = sliding_window(net, vol, patch=(8, 16, 12), num_classes=3)
    assert stitched.shape == (3, 5, 9, 12)
    assert torch.allclose(stitched, expected, atol=1e-4)


@pytest.mark.parametrize(
    "shape,patch,overlap,batch",
    [((9, 17, 13), (4, 8, 6), 0.5, 3), ((3, 11, 19), (6, 5, 7), 0.25, 2),
     ((7, 10, 10), (7, 4, 4), 0.0, 1)],
)  # fmt: skip
def test_overlapping_windows_reproduce_a_pointwise_net(
    shape: tuple[int, ...], patch: tuple[int, ...], overlap: float, batch: int
) -> None:
    """A pointwise net's windows all agree with the whole pass, so any difference comes
    from the window placement, padding or blending; odd sizes and an axis shorter than the
    patch (3 < 6) included."""
    net = pointwise(2, 3)
    vol = volume(shape)
    whole = net(vol[None])[0].detach()
    calls = []

    def predict(x: Tensor) -> Tensor:
        calls.append(tuple(x.shape))
        return net(x)

    stitched = sliding_window(predict, vol, patch, 3, overlap=overlap, batch_size=batch)
    assert stitched.shape == (3, *shape)
    assert torch.allclose(stitched, whole, atol=1e-5)
    assert all(c[0] <= batch and c[1:] == (2, *patch) for c in calls)
    assert sum(c[0] for c in calls) > 1  # several windows were blended


def test_a_3d_conv_net_on_overlapping_windows_stays_close_to_the_whole_pass() -> None:
    """Not equal (each window pads its own border), but the Gaussian weights favour each
    window's centre, where the net sees the same context as in the whole pass."""
    net = conv_net(2, 2)
    vol = volume((8, 16, 16))
    whole = net(vol[None])[0].detach()
    stitched = sliding_window(net, vol, (8, 12, 12), 2, overlap=0.5)
    assert (stitched - whole).abs().mean() < 0.02
    assert (stitched - whole).abs().max() > 1e-6  # the windows did see different borders


@pytest.mark.parametrize("shape", [(7, 11, 9), (3, 11, 9)])  # z: longer, shorter than the patch
def test_flip_tta_makes_the_window_invariant_to_flipping_the_input(shape: tuple[int, ...]) -> None:
    net = conv_net(2, 3, seed=2)
    vol = volume(shape)
    base = sliding_window(net, vol, (4, 6, 6), 3, overlap=0.5, batch_size=4, tta="flips")
    plain = sliding_window(net, vol, (4, 6, 6), 3, overlap=0.5, batch_size=4)
    assert torch.allclose(base.sum(0), torch.ones(shape), atol=1e-5)
    for dims in ([1], [2, 3], [1, 2, 3]):
        flipped = sliding_window(net, vol.flip(dims), (4, 6, 6), 3, overlap=0.5,
                                 batch_size=4, tta="flips")  # fmt: skip
        assert torch.allclose(flipped, base.flip(dims), atol=1e-5)
    plain_flipped = sliding_window(net, vol.flip([1, 2, 3]), (4, 6, 6), 3, overlap=0.5)
    assert not torch.allclose(plain_flipped, plain.flip([1, 2, 3]), atol=1e-5)


def test_flip_tta_runs_every_flip_and_a_2d_volume_works_too() -> None:
    torch.manual_seed(0)
    net2d = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Softmax(dim=1))
    image = volume((13, 10), channels=1)
    calls = []

    def predict(x: Tensor) -> Tensor:
        calls.append(x.shape[0])
        return net2d(x)

    out = sliding_window(predict, image, (8, 8), 2, overlap=0.5, batch_size=16, tta="flips")
    windows = 3 * 2  # tile_starts(13, 8, 4) == [0, 2, 5], tile_starts(10, 8, 4) == [0, 2]
    assert sum(calls) == 4 * windows and out.shape == (2, 13, 10)
    flipped = sliding_window(net2d, image.flip(1), (8, 8), 2, overlap=0.5, tta="flips")
    assert torch.allclose(flipped, out.flip(1), atol=1e-5)


def test_a_wrong_prediction_shape_and_bad_arguments_are_refused() -> None:
    vol = volume((4, 6, 6))
    with pytest.raises(
        ValueError, match=r"predict returned shape \(1, 2, 4, 6, 6\).*num_classes=3"
    ):
        sliding_window(pointwise(2, 2), vol, (4, 6, 6), num_classes=3)
    with pytest.raises(ValueError, match="tta='d4'.*batch_size=0") as err:
        sliding_window(pointwise(2, 2), vol, (4, 6, 6), 2, tta="d4", batch_size=0)
    assert "volume has shape" not in str(err.value)
    with pytest.raises(ValueError, match=r"expected \[C, 3 spatial axes\]"):
        slicewise(pointwise(2, 2), vol[0], axis=0, slab=1, num_classes=2)
    with pytest.raises(ValueError, match="axis=3: .*slab=2: must be odd"):
        slicewise(pointwise(2, 2), vol, axis=3, slab=2, num_classes=2)
    with pytest.raises(ValueError, match=r"overlap=1: .*patch=\[4, 0, 6\]: .*tta='x'"):
        sliding_window(pointwise(2, 2), vol, (4, 0, 6), 2, overlap=1, tta="x")


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slicewise_feeds_slabs_and_reassembles_along_each_axis(axis: int) -> None:
    """The net's input is `slab()` of the volume with `axis` moved first, and its output
    (a known function of the centre slice) lands back on that slice."""
    vol = volume((5, 6, 7), channels=2)
    stack = vol.movedim(axis + 1, 1)  # [C, S, H, W]
    seen = []

    def predict(x: Tensor) -> Tensor:
        seen.append(x)
        centre = x[:, [1, 4]]  # [B, 2, H, W]: channel-major slab of 3, centre of each channel
        return torch.stack([centre[:, 0] * 2, centre[:, 1] - centre[:, 0] + 0.5], dim=1)

    out = slicewise(predict, vol, axis=axis, slab=3, num_classes=2, batch_size=4)
    inputs = torch.cat(seen)  # [S, C * 3, H, W]
    assert inputs.shape == (stack.shape[1], 6, *stack.shape[2:])
    for i in range(stack.shape[1]):
        assert torch.equal(inputs[i], slab(stack, i, 3))
    assert out.shape == (2, 5, 6, 7)
    assert torch.allclose(out[0], vol[0] * 2) and torch.allclose(out[1], vol[1] - vol[0] + 0.5)


def test_slicewise_flip_tta_averages_the_four_2d_flips() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Softmax(dim=1))
    vol = volume((4, 6, 8), channels=1)
    out = slicewise(net, vol, axis=0, slab=3, num_classes=2, tta="flips")
    expected = torch.stack([
        sum(net(slab(vol, i, 3)[None].flip(d)).flip(d) for d in ([], [2], [3], [2, 3]))[0] / 4
        for i in range(4)
    ], dim=1)  # fmt: skip
    assert torch.allclose(out, expected, atol=1e-6)
    flipped = slicewise(net, vol.flip([2, 3]), axis=0, slab=3, num_classes=2, tta="flips")
    assert torch.allclose(flipped, out.flip([2, 3]), atol=1e-6)


def test_window_memory_counts_the_cpu_accumulators() -> None:
    sizes = window_memory_bytes((300, 512, 512), (64, 128, 128), num_classes=2, batch_size=2)
    voxels = 300 * 512 * 512
    assert sizes["output"] == 2 * 4 * voxels and sizes["weights"] == 4 * voxels
    assert sizes["cpu"] == sizes["input"] + sizes["output"] + sizes["weights"] == 16 * voxels
    assert sizes["device_batch"] == 2 * 3 * 4 * 64 * 128 * 128


def pointwise_2d(in_channels: int, num_classes: int, seed: int = 0) -> nn.Module:
    """A 1x1 conv and a softmax: translation-equivariant, blind to any window's border."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(in_channels, num_classes, 1), nn.Softmax(dim=1))


@pytest.mark.parametrize("slab_size,axis", [(1, 0), (3, 1)])
def test_slicewise_tiles_a_slice_larger_than_the_window(
    slab_size: int, axis: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slices ran whole (16 at a time, no tiling: large EM slices ran out of memory); now each
    is tiled by the window, and a translation-equivariant net gives the untiled result."""
    vol = volume((5, 37, 50), channels=2)
    net = pointwise_2d(2 * slab_size, 3)
    seen = []

    def predict(x: Tensor) -> Tensor:
        seen.append(tuple(x.shape))
        return net(x)

    out = slicewise(predict, vol, axis=axis, slab=slab_size, num_classes=3, patch=(16, 16),
                    overlap=0.25, batch_size=4)  # fmt: skip
    stack = vol.movedim(axis + 1, 1)
    slices, plane = stack.shape[1], tuple(stack.shape[2:])
    window = tuple(min(16, n) for n in plane)  # a slice shorter than the window: one window
    assert {s[1:] for s in seen} == {(2 * slab_size, *window)}  # never a whole slice
    assert all(s[0] <= 4 for s in seen)
    per_slice = sum(s[0] for s in seen) / slices
    assert (
        per_slice
        == len(tile_starts(plane[0], window[0], 12)) * len(tile_starts(plane[1], window[1], 12))
        and per_slice > 1
    )
    with torch.no_grad():
        whole = torch.stack([net(slab(stack, i, slab_size)[None])[0] for i in range(slices)], 1)
    assert torch.allclose(out, whole.movedim(1, axis + 1), atol=1e-5)
    # the slices gathered into one stack, or one at a time: the same
    monkeypatch.setattr("unet_seg.volume_inference.SLICE_CHUNK_VALUES", 1)
    one_by_one = slicewise(net, vol, axis=axis, slab=slab_size, num_classes=3, patch=(16, 16),
                           overlap=0.25, batch_size=4)  # fmt: skip
    assert torch.allclose(one_by_one, out, atol=1e-6)


def test_a_conv_net_tiled_in_the_slice_stays_close_to_the_whole_slice() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1),
                        nn.Softmax(dim=1))  # fmt: skip
    vol = volume((3, 40, 40), channels=1)
    with torch.no_grad():
        whole = net(vol.movedim(1, 0)).movedim(0, 1)  # [2, Z, Y, X]
    tiled = slicewise(net, vol, axis=0, slab=1, num_classes=2, patch=(16, 16), overlap=0.5)
    assert (tiled - whole).abs().mean() < 0.02
    assert (tiled - whole).abs().max() > 1e-6  # the windows did see their own borders


def test_a_2d_volume_module_tiles_slices_as_images_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """`SegModule.volume_probabilities` (validation, predict, evaluate) of a 2-D net tiles a
    slice larger than the 2-D path's tile (`module.SLICE_TILE`, 16 here) with that tile, and
    runs a slice no larger than it whole."""
    from unet_seg import module as module_file
    from unet_seg.module import SegModule

    monkeypatch.setattr(module_file, "SLICE_TILE", 16)

    module = SegModule(
        arch={"name": "unet", "base_channels": 4, "depth": 2, "bilinear": False,
              "in_channels": 1, "num_classes": 2},
        loss={}, optimizer={"_target_": "torch.optim.Adam", "_partial_": True},
        data={"class_names": ["background", "cell"], "in_channels": 1, "mask_values": [0, 1],
              "mean": [0.0], "std": [1.0], "volume": True, "dims": 2, "crop_size": 16},
    ).eval()  # fmt: skip
    sizes = []
    forward = module.forward

    def recorded(x: Tensor) -> Tensor:
        sizes.append(tuple(x.shape[2:]))
        return forward(x)

    module.forward = recorded
    probs = module.volume_probabilities(volume((2, 40, 44), channels=1), overlap=0.0)
    assert probs.shape == (2, 2, 40, 44) and set(sizes) == {(16, 16)}
    sizes.clear()
    monkeypatch.setattr(module_file, "SLICE_TILE", 64)  # a slice inside one tile: whole
    module.volume_probabilities(volume((2, 40, 44), channels=1), overlap=0.0)
    assert set(sizes) == {(40, 44)}


# ---- validation of a whole volume, streamed through the device a chunk of slices at a time ----


def whole_volume_loss(probs: Tensor, masks: Tensor, loss_fn: nn.Module, sigmoid: bool) -> Tensor:
    """What `SegModule._volume_step` computed before it streamed: the whole volume at once."""
    p = probs[None].clamp_min(1e-7)
    logits = (p[:, 1:] / p[:, :1]).log() if sigmoid else p.log()
    return loss_fn(logits, masks[None])


@pytest.mark.parametrize(
    ("loss", "k", "sigmoid"),
    [
        ({}, 3, False),  # CE + Dice, background left out of Dice
        ({"include_background": True, "class_weights": [0.5, 1.0, 2.0]}, 3, False),
        ({"ce_weight": 0.0, "dice_weight": 1.0, "smooth": 0.1}, 4, False),  # Dice alone
        ({"class_weights": [1.0, 3.0]}, 2, True),  # one logit: BCE and Dice of [1 - p, p]
    ],
)
def test_streamed_volume_loss_equals_the_whole_volume_loss(
    loss: dict, k: int, sigmoid: bool
) -> None:
    """`streamed_volume_loss` with a chunk of one slice (and of a few) is the loss of the whole
    volume on the device at once, its labels the whole volume's argmax, ignored voxels
    included: Dice's per-class sums pool over chunks and the loss is finished once."""
    from unet_seg.data.masks import IGNORE_INDEX
    from unet_seg.losses import build_loss
    from unet_seg.module import streamed_volume_loss

    torch.manual_seed(0)
    shape = (7, 5, 6)
    probs = torch.softmax(3 * torch.randn(k, *shape), dim=0)
    probs[:, 2, 1, 1] = 0.0  # exact zeros: clamped as before
    probs[0, 2, 1, 1] = 1.0
    masks = torch.randint(0, k, shape)
    masks[3, :2] = IGNORE_INDEX
    loss_fn = build_loss({"deep_supervision_weights": "equal", **loss}, num_heads=2)
    expected = whole_volume_loss(probs, masks, loss_fn.loss, sigmoid)
    p = probs[None].clamp_min(1e-7)
    whole_labels = (p[0, 1] > p[0, 0]).long() if sigmoid else p[0].argmax(0)
    for chunk_bytes in (1, 4 * k * 5 * 6 * 3):  # one slice; three slices (7 = 3 + 3 + 1)
        seen: list[tuple[Tensor, Tensor]] = []
        got = streamed_volume_loss(probs, masks, loss_fn, "cpu",
                                   lambda lab, t, seen=seen: seen.append((lab, t)),
                                   sigmoid=sigmoid, chunk_bytes=chunk_bytes)  # fmt: skip
        assert float(got) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
        assert len(seen) == (7 if chunk_bytes == 1 else 3)
        assert torch.equal(torch.cat([lab for lab, _ in seen]), whole_labels)
        assert torch.equal(torch.cat([t for _, t in seen]), masks)
    # bands of a few slices (as `volume_probability_bands` yields them): the same loss
    bands = [(0, probs[:, :2]), (2, probs[:, 2:3]), (3, probs[:, 3:])]
    got = streamed_volume_loss(iter(bands), masks, loss_fn, "cpu", sigmoid=sigmoid,
                               chunk_bytes=4 * k * 5 * 6 * 2)  # fmt: skip
    assert float(got) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)


def test_volume_validation_keeps_the_volume_off_the_device_and_scores_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`_volume_step` moves chunks of slices, never the whole volume, to the device; its
    loss, pooled scores and volume Dice are those of the whole-volume computation. Volume
    batches outside training stay on the CPU (`transfer_batch_to_device`)."""
    from types import SimpleNamespace

    from unet_seg.metrics import SegmentationScores
    from unet_seg.module import SegModule, streamed_volume_loss

    module = SegModule(
        arch={"name": "unet", "base_channels": 4, "depth": 2, "bilinear": False,
              "in_channels": 1, "num_classes": 3},
        loss={"deep_supervision_weights": "equal"},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True},
        data={"class_names": ["bg", "a", "b"], "in_channels": 1, "mask_values": [0, 1, 2],
              "mean": [0.0], "std": [1.0], "volume": True, "dims": 2, "crop_size": 8},
    )  # fmt: skip
    torch.manual_seed(1)
    shape = (6, 8, 8)
    probs = torch.softmax(torch.randn(3, *shape), dim=0)
    masks = torch.randint(0, 3, shape)
    module.volume_probabilities = None  # the whole volume's probabilities are never asked for
    module.volume_probability_bands = lambda v, **_: iter([(0, probs[:, :2]), (2, probs[:, 2:])])
    calls: list[int] = []
    real = streamed_volume_loss

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - a pass-through
        calls.append(1)
        return real(*args, **kwargs, chunk_bytes=1)

    monkeypatch.setattr("unet_seg.module.streamed_volume_loss", spy)
    loss = module._volume_step({"image": torch.zeros(1, 1, *shape), "mask": masks[None]}, "val")
    assert calls
    expected = whole_volume_loss(probs, masks, module.loss_fn, False)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    reference = SegmentationScores(["bg", "a", "b"])
    reference.update(probs.argmax(0), masks)
    for key, value in reference.compute().items():
        assert float(module.val_scores.compute()[key]) == pytest.approx(float(value))
    check = type(module.val_volume_dice)(3)
    check.update(probs.argmax(0), masks)
    assert float(module.val_volume_dice.compute()) == pytest.approx(float(check.compute()))
    # outside training a volume batch is not moved: the trainer is only asked what it does
    batch = {"image": torch.zeros(1, 1, *shape), "mask": masks[None]}
    module._trainer = SimpleNamespace(training=False)
    assert module.transfer_batch_to_device(batch, torch.device("meta"), 0) is batch


def test_bands_stream_the_window_and_volume_labels_need_no_whole_probabilities(
    tmp_path: Path,
) -> None:
    """`blended_bands` yields consecutive z ranges that together are `sliding_window`'s
    result (tta flips included), each band no longer than a patch and a stride;
    `SegModule.volume_labels` is the argmax of `volume_probabilities`."""
    from tests.test_predict import volume_checkpoint
    from unet_seg.module import SegModule
    from unet_seg.volume_inference import blended_bands

    net = conv_net(2, 3)
    vol = volume((23, 12, 10))
    for tta in ("none", "flips"):
        whole = sliding_window(net, vol, (8, 8, 8), 3, overlap=0.5, tta=tta)
        tops, parts = [], []
        for top, band in blended_bands(net, vol, (8, 8, 8), 3, overlap=0.5, tta=tta):
            tops.append(top)
            parts.append(band)
            assert band.shape[1] <= 8 + 4
        assert tops[0] == 0 and len(tops) > 2
        assert torch.allclose(torch.cat(parts, dim=1), whole, atol=1e-6)

    ckpt = volume_checkpoint(tmp_path / "v.ckpt", {"name": "unet3d", "base_channels": 4,
                             "depth": 2}, in_channels=2, mask_values=(0, 1, 2), dims=3,
                             patch=[8, 8, 8])  # fmt: skip
    module = SegModule.from_checkpoint(ckpt).eval()
    with torch.no_grad():
        probs = module.volume_probabilities(vol)
        labels = module.volume_labels(vol)
    assert labels.dtype.name == "uint8" and labels.shape == (23, 12, 10)
    assert (torch.from_numpy(labels).long() == probs.argmax(0)).float().mean() > 0.999
