"""The U-Net weight map (loss=weighted_ce_dice): the map itself against a brute-force
computation, the weighted losses, the data pipeline, and counting separated objects."""

from __future__ import annotations

import json
import time
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from tests.conftest import compose_train
from unet_seg.data import dataset as dataset_module
from unet_seg.data.datamodule import SegDataModule
from unet_seg.data.dataset import SegDataset, find_pairs, pad_collate
from unet_seg.data.masks import IGNORE_INDEX, MaskEncoding
from unet_seg.data.transforms import build_train_transform
from unet_seg.data.weight_map import (
    separate_touching,
    touching_border,
    unet_weight_map,
    weights_and_borders,
)
from unet_seg.losses import CEDiceLoss, DeepSupervisionLoss, build_loss, cross_entropy
from unet_seg.scores import adjacent_pairs, object_counts

# ---------------------------------------------------------------- the map


def brute_force_weight_map(instances: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """Eq. 2 pixel by pixel: distances to every pixel of every object, sorted."""
    h, w = instances.shape
    ids = [i for i in np.unique(instances) if i > 0]
    fg = instances > 0
    n_fg = fg.sum()
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            wc = h * w / (2 * n_fg) if fg[y, x] else h * w / (2 * (h * w - n_fg))
            out[y, x] = wc
            if fg[y, x]:
                continue
            dists = sorted(
                min(
                    np.hypot(y - py, x - px)
                    for py, px in zip(*np.nonzero(instances == i), strict=True)
                )
                for i in ids
            )
            out[y, x] += w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
    return out


def three_objects() -> np.ndarray:
    labels = np.zeros((14, 17), np.uint16)
    labels[2:5, 2:6] = 7  # labels need not be consecutive
    labels[3:9, 9:12] = 3
    labels[10:13, 4:8] = 12
    labels[11, 8] = 12
    return labels


@pytest.mark.parametrize("sigma", [3.0, 1.0])  # 1.0: the reach cut-off (6 sigma) bites
def test_weight_map_matches_brute_force(sigma: float) -> None:
    labels = three_objects()
    got = unet_weight_map(labels, w0=10.0, sigma=sigma)
    assert got.dtype == np.float32 and got.shape == labels.shape
    np.testing.assert_allclose(got, brute_force_weight_map(labels, 10.0, sigma), atol=1e-4)


def test_border_between_touching_squares_weighs_about_w0() -> None:
    labels = np.zeros((60, 60), np.uint16)
    labels[20:30, 10:20] = 1
    labels[20:30, 20:30] = 2  # touches square 1 along a whole side
    border = touching_border(labels)
    assert border[20:30, 19:21].all() and border.sum() == 20
    separated = separate_touching(labels)
    assert cv2.connectedComponents((separated > 0).astype(np.uint8), connectivity=8)[0] == 3
    weight, carved = weights_and_borders(labels, {"w0": 10.0, "sigma": 5.0,
                                                  "class_balance": True,
                                                  "separate_touching": True})  # fmt: skip
    assert (carved == border).all()
    n_fg = (separated > 0).sum()
    wc_bg, wc_fg = 3600 / (2 * (3600 - n_fg)), 3600 / (2 * n_fg)
    gap = weight[22:28, 19:21]  # background now, d1 = 1 and d2 = 2
    np.testing.assert_allclose(gap, 10 * np.exp(-9 / 50) + wc_bg, rtol=1e-5)
    assert (gap > 0.8 * 10 + wc_bg).all()
    assert weight[55, 55] == pytest.approx(wc_bg, abs=1e-4)  # far background: w_c only
    assert np.allclose(weight[separated > 0], wc_fg)  # objects: w_c only
    # with a 1-pixel gap in the labels themselves, d1 = d2 = 1
    one_gap = labels.copy()
    one_gap[:, 20] = 0
    plain = unet_weight_map(one_gap, class_balance=False)
    assert plain[25, 20] == pytest.approx(1 + 10 * np.exp(-4 / 50), rel=1e-5)


def test_fewer_than_two_objects_and_no_class_balance() -> None:
    empty = np.zeros((8, 9), np.uint8)
    assert (unet_weight_map(empty) == 1).all()
    one = empty.copy()
    one[2:4, 2:4] = 5
    w = unet_weight_map(one)
    assert np.allclose(w[one > 0], 72 / 8) and np.allclose(w[one == 0], 72 / (2 * 68))
    assert (unet_weight_map(one, class_balance=False) == 1).all()
    with pytest.raises(ValueError, match="sigma > 0"):
        unet_weight_map(one, sigma=0)


def test_fifty_objects_at_512_is_fast() -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros((512, 512), np.uint16)
    for i, (y, x) in enumerate(rng.integers(0, 500, (50, 2)), start=1):
        cv2.circle(labels, (int(x), int(y)), 9, i, -1)
    start = time.perf_counter()
    weight = unet_weight_map(labels)
    assert time.perf_counter() - start < 5  # about 0.05 s on a quiet core
    assert weight.max() > 5


# ---------------------------------------------------------------- losses


def test_uniform_weights_give_the_unweighted_loss() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, generator=g)
    target = torch.randint(0, 3, (2, 5, 6), generator=g)
    target[0, 0] = IGNORE_INDEX
    ones = torch.full((2, 5, 6), 2.5)
    for cw in (None, torch.tensor([0.5, 1.0, 3.0])):
        plain = cross_entropy(logits, target, cw)
        assert cross_entropy(logits, target, cw, pixel_weights=ones).item() == pytest.approx(
            plain.item(), rel=1e-6
        )
    loss = CEDiceLoss()
    assert loss(logits, target, ones).item() == pytest.approx(loss(logits, target).item(), rel=1e-6)


def test_weights_are_applied_and_zero_removes_pixels() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    weights = torch.rand(2, 4, 4, generator=g)
    weights[1] = 0  # image 1 counts for nothing
    ce = -torch.log_softmax(logits.double(), 1).gather(1, target[:, None])[:, 0]
    expected = (weights * ce).sum() / weights.sum()
    got = cross_entropy(logits, target, pixel_weights=weights)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    masked = target.clone()
    masked[1] = IGNORE_INDEX
    ones = (weights > 0).float()
    assert cross_entropy(logits, target, pixel_weights=ones).item() == pytest.approx(
        cross_entropy(logits, masked).item(), rel=1e-6
    )
    # Dice is not weighted: the weights move the CE part only
    loss = CEDiceLoss(ce_weight=0.0, dice_weight=1.0)
    assert loss(logits, target, weights).item() == pytest.approx(loss(logits, target).item())


def test_weighted_binary_cross_entropy() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 1, 5, 5, generator=g)
    target = torch.randint(0, 2, (2, 5, 5), generator=g)
    target[1, :2] = IGNORE_INDEX
    weights = torch.rand(2, 5, 5, generator=g) * 10
    x, y = logits[:, 0].double().numpy(), target.numpy()
    s = 1 / (1 + np.exp(-x))
    valid = y != IGNORE_INDEX
    for cw in (None, torch.tensor([1.0, 4.0])):
        pos = 1.0 if cw is None else 4.0
        bce = -(pos * (y == 1) * np.log(s) + (y == 0) * np.log(1 - s))
        w = weights.double().numpy() * valid
        expected = (w * bce).sum() / w.sum()
        got = cross_entropy(logits, target, cw, pixel_weights=weights)
        assert got.item() == pytest.approx(expected, rel=1e-5)
        uniform = cross_entropy(logits, target, cw, pixel_weights=torch.ones(2, 5, 5))
        assert uniform.item() == pytest.approx(cross_entropy(logits, target, cw).item(), rel=1e-6)


def test_deep_supervision_passes_weights_and_build_loss_ignores_the_map_settings() -> None:
    cfg = {"ce_weight": 1.0, "dice_weight": 0.0, "weight_map": {"w0": 10.0, "sigma": 5.0},
           "deep_supervision_weights": "equal"}  # fmt: skip
    loss = build_loss(cfg, num_heads=2)
    assert isinstance(loss, DeepSupervisionLoss)
    g = torch.Generator().manual_seed(3)
    heads = [torch.randn(1, 2, 4, 4, generator=g) for _ in range(2)]
    target = torch.randint(0, 2, (1, 4, 4), generator=g)
    weights = torch.rand(1, 4, 4, generator=g)
    expected = sum(0.5 * cross_entropy(h, target, pixel_weights=weights) for h in heads)
    assert loss(heads, target, weights).item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss(heads, target).item() != pytest.approx(expected.item(), rel=1e-3)


# ---------------------------------------------------------------- data pipeline

WEIGHTS = {"w0": 10.0, "sigma": 5.0, "class_balance": True, "separate_touching": True}


def write_instance_folder(root: Path, n: int = 4, size: int = 40) -> Path:
    """images/, masks/ (0/255) and instances/ (uint16): two touching squares and a circle."""
    for d in ("images", "masks", "instances"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        labels = np.zeros((size, size), np.uint16)
        y, x = rng.integers(2, 12, 2)
        labels[y : y + 10, x : x + 8] = 1
        labels[y : y + 10, x + 8 : x + 14] = 2
        cv2.circle(labels, (30, 30), 5, 3, -1)
        image = (np.where(labels > 0, 180, 30) + rng.integers(0, 40, labels.shape)).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"im{i}.png"), image)
        cv2.imwrite(
            str(root / "masks" / f"im{i}.png"), np.where(labels > 0, 255, 0).astype(np.uint8)
        )
        cv2.imwrite(str(root / "instances" / f"im{i}.png"), labels)
    return root


def make_dataset(root: Path, **kwargs) -> SegDataset:
    pairs = find_pairs(root)
    paths = [root / "instances" / p.name for p, _ in pairs]
    return SegDataset(pairs, MaskEncoding([0, 255]), 1, [0.5], [0.25], instance_paths=paths,
                      weight_map=WEIGHTS, **kwargs)  # fmt: skip


def test_sample_carries_the_weight_map_and_separated_mask(tmp_path: Path) -> None:
    root = write_instance_folder(tmp_path / "d")
    ds = make_dataset(root)
    sample = ds[0]
    labels = cv2.imread(str(root / "instances" / "im0.png"), cv2.IMREAD_UNCHANGED)
    weight, border = weights_and_borders(labels, WEIGHTS)
    assert sample["weight"].dtype == torch.float32
    assert torch.equal(sample["weight"], torch.from_numpy(weight))
    assert border.sum() == 20
    expected_mask = (labels > 0) & ~border  # touching squares separated by background
    assert torch.equal(sample["mask"], torch.from_numpy(expected_mask.astype(np.int64)))


def test_weights_stay_aligned_under_crop_flip_rotation_and_affine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_instance_folder(tmp_path / "d", n=2)
    # the "weight map" is the instance label map itself: aligned iff weight > 0 == mask
    monkeypatch.setattr(
        dataset_module,
        "weights_and_borders",
        lambda inst, params: (inst.astype(np.float32), np.zeros(inst.shape, bool)),
    )
    augment = {
        "hflip": 0.5,
        "vflip": 0.5,
        "rotate90": 0.5,
        "affine": {"p": 1.0, "scale": [0.8, 1.2], "rotate": [-30, 30], "translate": 0.1},
    }
    ds = make_dataset(root, transform=build_train_transform(augment), crop_size=32)  # fmt: skip
    changed = 0
    for seed in range(12):
        sample = ds[(seed % 2, seed)]
        mask, weight = sample["mask"], sample["weight"]
        assert weight.shape == mask.shape == (32, 32)
        assert torch.equal(weight > 0, mask == 1), seed
        assert set(torch.unique(weight).tolist()) <= {0.0, 1.0, 2.0, 3.0}  # nearest, not blurred
        assert torch.equal(ds[(seed % 2, seed)]["weight"], weight)  # the seed fixes the sample
        labels = cv2.imread(str(root / "instances" / f"im{seed % 2}.png"), cv2.IMREAD_UNCHANGED)
        changed += int(not any(torch.equal(weight, torch.from_numpy(labels[y : y + 32, x : x + 32]
                       .astype(np.float32))) for y in range(9) for x in range(9)))  # fmt: skip
    assert changed >= 10  # the weights were warped, not only cropped


def test_real_weights_follow_the_mask_under_augmentation(tmp_path: Path) -> None:
    root = write_instance_folder(tmp_path / "d", n=1)
    transform = A.Compose([A.HorizontalFlip(p=1.0), A.Affine(rotate=(20, 20), p=1.0)])
    plain, aug = make_dataset(root), make_dataset(root, transform=transform)
    w_fg = float(plain[0]["weight"][plain[0]["mask"] == 1][0])
    sample = aug[(0, 0)]
    fg = sample["mask"] == 1
    assert torch.allclose(sample["weight"][fg], torch.tensor(w_fg))  # objects keep w_c(fg)
    assert not torch.isclose(sample["weight"][~fg], torch.tensor(w_fg)).any()


def test_weights_are_computed_once_per_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_instance_folder(tmp_path / "d")
    calls: list[int] = []
    real = dataset_module.weights_and_borders

    def counting(instances: np.ndarray, params: dict):
        calls.append(1)
        return real(instances, params)

    monkeypatch.setattr(dataset_module, "weights_and_borders", counting)
    ds = make_dataset(root, transform=build_train_transform({"hflip": 0.5}), crop_size=32)
    for epoch in range(3):  # no image cache (data.cache=false): the weights are kept anyway
        for i in range(len(ds)):
            ds[(i, epoch)]
    assert len(calls) == len(ds)
    # through the data module: all computed in setup, none while training
    calls.clear()
    dm = SegDataModule(str(root), 1, 2, ["bg", "fg"], [0, 255], crop_size=32, batch_size=2,
                       val_fraction=0.25, test_fraction=0.0, instances_dir="instances",
                       weight_map=WEIGHTS, splits_path=str(tmp_path / "s.json"))  # fmt: skip
    dm.setup()
    n_train = len(dm.datasets["train"])
    assert len(calls) == n_train
    for _ in range(2):
        for batch in dm.train_dataloader():
            assert batch["weight"].shape == batch["mask"].shape
    assert len(calls) == n_train
    assert "weight" not in next(iter(dm.val_dataloader()))  # validation: masks as they are


def test_missing_or_mismatched_instance_labels_are_named(tmp_path: Path) -> None:
    root = write_instance_folder(tmp_path / "d")
    common = {"root": str(root), "in_channels": 1, "num_classes": 2, "class_names": ["bg", "fg"],
              "mask_values": [0, 255], "crop_size": 32, "test_fraction": 0.0,
              "weight_map": WEIGHTS}  # fmt: skip
    with pytest.raises(ValueError, match="data.instances_dir"):
        SegDataModule(**common)  # nothing says where the instance labels are
    for name in ("im1.png", "im2.png"):  # one image is in validation: one of these trains
        (root / "instances" / name).unlink()
    dm = SegDataModule(**common, instances_dir="instances", val_fraction=0.25)
    with pytest.raises(FileNotFoundError, match=r"no instance labels in .*instances.*im[12]\.png"):
        dm.setup()
    cv2.imwrite(str(root / "instances" / "im2.png"), np.zeros((20, 20), np.uint16))
    ds = make_dataset(root)
    with pytest.raises(ValueError, match=r"instances/im2.png: instance labels are 20x20"):
        ds.load(2)


def test_pad_collate_pads_weights_with_zero() -> None:
    a = {"image": torch.ones(1, 4, 5), "mask": torch.ones(4, 5, dtype=torch.long),
         "weight": torch.full((4, 5), 3.0), "name": "a"}  # fmt: skip
    b = {"image": torch.ones(1, 6, 3), "mask": torch.ones(6, 3, dtype=torch.long),
         "weight": torch.full((6, 3), 2.0), "name": "b"}  # fmt: skip
    batch = pad_collate([a, b])
    assert batch["weight"].shape == (2, 6, 5)
    assert batch["weight"][0, 4:].eq(0).all() and batch["weight"][0, :4].eq(3).all()
    assert batch["weight"][1, :, 3:].eq(0).all()
    assert pad_collate([a, a])["weight"].shape == (2, 4, 5)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_train_one_epoch_with_weighted_ce_dice(tmp_path: Path) -> None:
    from unet_seg.train import train

    run_dir = tmp_path / "run"
    cfg = compose_train([
        "loss=weighted_ce_dice", f"run_dir={run_dir}", f"data.root={tmp_path / 'synthetic'}",
        "data.synthetic.num_images=8", "data.synthetic.size=64", "data.crop_size=48",
        "data.batch_size=4", "arch.base_channels=4", "trainer.max_epochs=1",
        "logger=none", "callbacks.validation_images.num_samples=1",
    ])  # fmt: skip
    metrics = train(cfg)
    assert 0 <= metrics["val/dice"] <= 1
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["global_step"] == metrics["global_step"] > 0
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["loss"]["weight_map"]["w0"] == 10.0


def test_weight_map_does_not_depend_on_memory_alignment() -> None:
    """OpenCV's distances varied in their last bit with where the array sat in memory, so
    two identical runs trained on different weights; the map is now bit-identical."""
    rng = np.random.default_rng(3)
    instances = np.zeros((96, 96), np.uint16)
    for i in range(1, 25):
        y, x = rng.integers(0, 90, 2)
        instances[y : y + int(rng.integers(4, 12)), x : x + int(rng.integers(4, 12))] = i
    reference = unet_weight_map(instances)
    for offset in range(1, 8):  # the same labels at other addresses
        buffer = np.zeros(instances.size + 8, np.uint16)[offset : offset + instances.size]
        buffer[:] = instances.ravel()
        assert np.array_equal(unet_weight_map(buffer.reshape(instances.shape)), reference)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_weighted_training_is_repeatable(tmp_path: Path) -> None:
    from unet_seg.train import train

    weights = []
    for i in range(2):
        train(compose_train([
            "loss=weighted_ce_dice", f"run_dir={tmp_path / str(i)}",
            f"data.root={tmp_path / 'synthetic'}", "data.synthetic.num_images=8",
            "data.synthetic.size=64", "data.crop_size=48", "data.batch_size=4",
            "arch.base_channels=4", "trainer.max_epochs=2", "logger=none",
        ]))  # fmt: skip
        ckpt = torch.load(tmp_path / str(i) / "checkpoints" / "last.ckpt", weights_only=True)
        weights.append(ckpt["state_dict"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_dataset_without_instance_labels_fails_fast(tmp_path: Path) -> None:
    from unet_seg.train import build_datamodule

    cfg = compose_train(["loss=weighted_ce_dice", "data=folder", f"data.root={tmp_path}"])
    with pytest.raises(ValueError, match="instance labels"):
        build_datamodule(cfg, tmp_path)


# ---------------------------------------------------------------- separated objects


def test_object_counts_on_hand_made_maps() -> None:
    truth = np.zeros((30, 40), np.uint16)
    truth[5:15, 5:15] = 1  # big
    truth[5:15, 15:20] = 2  # smaller, touching 1
    truth[20:26, 30:36] = 3  # alone
    # 1 and 2 predicted as one blob: 1 matched (IoU 100/150), 2 merged into it
    pred = truth > 0
    counts = object_counts(pred, truth)
    assert counts == {"true_objects": 3, "predicted_objects": 2, "matched": 2, "merged": 1,
                      "split": 0, "missed": 0, "false_positives": 0, "touching": 2,
                      "touching_matched": 1, "touching_pairs": 1,
                      "touching_pairs_separated": 0}  # fmt: skip
    # separated by a 1-pixel gap: all three matched; a false blob elsewhere
    gap = pred.copy()
    gap[:, 15] = False
    gap[25:28, 2:5] = True
    counts = object_counts(gap, truth)
    assert counts["matched"] == 3 and counts["touching_matched"] == 2
    assert counts["touching_pairs_separated"] == 1
    assert counts["false_positives"] == 1 and counts["predicted_objects"] == 4
    # two equal touching objects in one blob: neither matched, both merged
    equal = np.zeros((20, 20), np.uint8)
    equal[5:10, 2:8], equal[5:10, 8:14] = 1, 2
    assert object_counts(equal > 0, equal)["merged"] == 2
    # object 3 cut in two halves: split; object 1 missed
    cut = np.zeros_like(pred)
    cut[20:26, 30:32] = cut[20:26, 34:36] = True
    counts = object_counts(cut, truth)
    assert (counts["split"], counts["missed"], counts["matched"]) == (1, 2, 0)
    # 8-connectivity: a diagonal touch still joins; 4-connectivity separates
    diag = np.zeros((6, 6), np.uint8)
    diag[0:3, 0:3], diag[3:6, 3:6] = 1, 2
    assert object_counts(diag > 0, diag)["predicted_objects"] == 1
    assert object_counts(diag > 0, diag, connectivity=4)["matched"] == 2
    four = np.zeros((6, 6), np.uint8)
    four[0:3, 0:3], four[3:6, 3:6], four[0:2, 4:6], four[3:5, 0:2] = 1, 2, 3, 4
    assert adjacent_pairs(four) == [(1, 2), (1, 4)]  # diagonal and vertical; gaps are not
