"""Partly labelled masks (`data.ignore_value`): unlabelled pixels count in no loss term,
no score and no patch choice, whatever the mask format, and a whole run trains on them."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose_train, write_folder
from unet_seg.data.contract import DataContract
from unet_seg.data.dataset import SegDataset, find_pairs
from unet_seg.data.masks import IGNORE_INDEX, PAD_LABEL, MaskEncoding
from unet_seg.losses import CEDiceLoss, DeepSupervisionLoss
from unet_seg.metrics import SegmentationScores
from unet_seg.scores import ScoreBook

pytestmark = pytest.mark.usefixtures("one_thread")

IGNORE = 128


def labelled_only(logits, target, weights=None):
    """The labelled pixels alone, as a `[1, C, 1, N]` batch (and `[1, 1, N]` target)."""
    valid = target != IGNORE_INDEX  # [B, H, W]
    flat = logits.permute(1, 0, 2, 3)[:, valid]  # [C, N]
    out = (flat[None, :, None, :], target[valid][None, None, :])
    return out if weights is None else (*out, weights[valid][None, None, :])


@pytest.mark.parametrize("channels", [1, 3], ids=["sigmoid", "softmax"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weight_map"])
@pytest.mark.parametrize("class_weights", [None, "given"])
@pytest.mark.parametrize("terms", [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)], ids=["ce", "dice", "both"])
def test_loss_with_ignored_pixels_is_the_loss_of_the_labelled_pixels(
    channels, weighted, class_weights, terms
) -> None:
    gen = torch.Generator().manual_seed(0)
    k = max(channels, 2)
    logits = torch.randn(2, channels, 9, 11, generator=gen)
    target = torch.randint(0, k, (2, 9, 11), generator=gen)
    target[torch.rand(2, 9, 11, generator=gen) < 0.6] = IGNORE_INDEX  # 60% unlabelled
    weights = torch.rand(2, 9, 11, generator=gen) * 5 + 0.5 if weighted else None
    cw = [1.0 + i for i in range(k)] if class_weights else None
    loss = CEDiceLoss(*terms, include_background=True, class_weights=cw)
    extra = () if weights is None else (weights,)
    got = loss(logits, target, *extra)
    want = loss(*labelled_only(logits, target, weights))
    torch.testing.assert_close(got, want)
    # what the ignored pixels predict, or weigh, changes nothing
    noisy = logits + 50 * (target == IGNORE_INDEX).unsqueeze(1) * torch.randn(logits.shape)
    heavy = None if weights is None else weights + 100 * (target == IGNORE_INDEX)
    torch.testing.assert_close(loss(noisy, target, *(() if heavy is None else (heavy,))), got)


def test_deep_supervision_and_a_batch_with_nothing_labelled() -> None:
    logits = [torch.randn(2, 3, 8, 8, requires_grad=True) for _ in range(2)]
    target = torch.full((2, 8, 8), IGNORE_INDEX)
    target[0, 2:4, 2:4] = 1
    loss = DeepSupervisionLoss(CEDiceLoss(), [0.5, 0.5])
    per_head = [CEDiceLoss()(*labelled_only(x, target)) for x in logits]
    torch.testing.assert_close(loss(logits, target), 0.5 * per_head[0] + 0.5 * per_head[1])
    for channels in (1, 3):  # nothing labelled: 0, and finite gradients, not NaN
        x = torch.randn(2, channels, 8, 8, requires_grad=True)
        empty = CEDiceLoss()(x, torch.full((2, 8, 8), IGNORE_INDEX))
        empty.backward()
        assert empty.item() == 0 and torch.isfinite(x.grad).all()


def test_metrics_skip_ignored_pixels() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, (2, 12, 12))
    pred = rng.integers(0, 3, (2, 12, 12))
    ignored = rng.random((2, 12, 12)) < 0.5
    other = pred.copy()
    other[ignored] = (pred[ignored] + 1) % 3  # other predictions on unlabelled pixels only

    def training_scores(p: np.ndarray, t: np.ndarray) -> dict:
        metric = SegmentationScores(["a", "b", "c"])
        metric.update(torch.from_numpy(p), torch.from_numpy(t))
        return {k: float(v) for k, v in metric.compute().items()}

    masked = np.where(ignored, IGNORE_INDEX, truth)
    got = training_scores(pred, masked)
    assert training_scores(other, masked) == got
    want = training_scores(pred[~ignored][None], truth[~ignored][None])
    assert got == pytest.approx(want)
    assert got["pixel_error"] == pytest.approx(np.mean(pred[~ignored] != truth[~ignored]))

    # evaluate's book reads truth as the encoding loads it: uint8, PAD_LABEL unlabelled
    book, other_book = ScoreBook(["a", "b", "c"]), ScoreBook(["a", "b", "c"])
    truth8 = np.where(ignored, PAD_LABEL, truth).astype(np.uint8)
    for i in range(2):
        row = book.add(f"{i}", pred[i], truth8[i])
        other_book.add(f"{i}", other[i], truth8[i])
        assert row["pixel_error"] == pytest.approx(
            np.mean(pred[i][~ignored[i]] != truth[i][~ignored[i]])
        )
    assert book.summary() == pytest.approx(other_book.summary(), nan_ok=True)
    assert book.summary()["pixel_error/pooled"] == pytest.approx(got["pixel_error"])


def partly_labelled(root: Path, n: int = 4, size: tuple[int, int] = (40, 48)) -> Path:
    """`write_folder`'s pairs with all but a band of rows of each mask set to `IGNORE`."""
    write_folder(root, n=n, size=size)
    for path in sorted((root / "masks").iterdir()):
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        mask[: size[0] // 2] = IGNORE
        cv2.imwrite(str(path), mask)
    return root


def test_training_patches_always_hold_a_labelled_pixel(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", n=1, size=(64, 64))
    mask = np.full((64, 64), IGNORE, np.uint8)
    mask[50:53, 5:8] = 0  # nine labelled pixels in a corner
    cv2.imwrite(str(root / "masks" / "img00.png"), mask)
    encoding = MaskEncoding([0, 255], ignore_value=IGNORE)
    for context in (0, 4):
        ds = SegDataset(find_pairs(root), encoding, 1, [0.5], [0.25], crop_size=16,
                        context=context)  # fmt: skip
        for seed in range(200):
            target = ds[(0, seed)]["mask"]
            scored = target[
                context : target.shape[0] - context, context : target.shape[1] - context
            ]
            assert (scored != IGNORE_INDEX).any(), (context, seed)
    cv2.imwrite(str(root / "masks" / "img00.png"), np.full((64, 64), IGNORE, np.uint8))
    with pytest.raises(ValueError, match=r"img00\.png: the mask has no labelled pixel"):
        SegDataset(find_pairs(root), encoding, 1, [0.5], [0.25], crop_size=16)[(0, 0)]


def test_foreground_patches_are_never_centred_on_ignored_pixels(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", n=1, size=(64, 64))
    mask = np.full((64, 64), IGNORE, np.uint8)  # unlabelled: its index (PAD_LABEL) is > 0
    mask[20:44, 20:44] = 0
    mask[31:33, 31:33] = 255  # four foreground pixels, all patches centred on them
    cv2.imwrite(str(root / "masks" / "img00.png"), mask)
    encoding = MaskEncoding([0, 255], ignore_value=IGNORE)
    ds = SegDataset(find_pairs(root), encoding, 1, [0.5], [0.25], crop_size=16,
                    foreground_crop=1.0)  # fmt: skip
    for seed in range(100):
        target = ds[(0, seed)]["mask"]
        assert target[8, 8] == 1, seed  # the patch's centre: a foreground pixel


def test_mask_formats_mark_unlabelled_pixels(tmp_path: Path) -> None:
    values = np.array([[0, 255, IGNORE]], np.uint8)
    assert MaskEncoding([0, 255], ignore_value=IGNORE).encode(values).tolist() == [
        [0, 1, PAD_LABEL]
    ]
    with pytest.raises(ValueError, match=r"\[128\] are not in .*data.ignore_value"):
        MaskEncoding([0, 255]).encode(values)

    colours = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    rgb = np.array([[[0, 0, 0], [0, 255, 0], [9, 9, 9], [255, 0, 0]]], np.uint8)
    enc = MaskEncoding(mask_format="rgb", mask_colors=colours, ignore_value=[9, 9, 9])
    assert enc.indices_of(rgb).tolist() == [[0, 2, PAD_LABEL, 1]]
    with pytest.raises(ValueError, match=r"colours \[\[9, 9, 9\]\] are not in"):
        MaskEncoding(mask_format="rgb", mask_colors=colours).indices_of(rgb)

    labels = np.array([[0, 3, 7, 65535]], np.uint16)
    enc = MaskEncoding(mask_format="instances", ignore_value=65535)
    assert enc.indices_of(labels).tolist() == [[0, 1, 1, PAD_LABEL]]

    masks = tmp_path / "masks"
    for folder, array in (("cell", [[0, 255, 255]]), ("unlabelled", [[255, 255, 0]])):
        (masks / folder).mkdir(parents=True)
        cv2.imwrite(str(masks / folder / "a.png"), np.array(array, np.uint8))
    (masks / "cell" / "b.png").write_bytes((masks / "cell" / "a.png").read_bytes())
    enc = MaskEncoding(mask_format="folders", class_names=["background", "cell"],
                       ignore_value="unlabelled")  # fmt: skip
    assert enc.load(masks / "a").tolist() == [[PAD_LABEL, PAD_LABEL, 1]]
    assert enc.load(masks / "b").tolist() == [[0, 1, 1]]  # no ignore mask: all labelled
    with pytest.raises(FileNotFoundError, match="unlabeled.*does not exist"):
        MaskEncoding(mask_format="folders", class_names=["background", "cell"],
                     ignore_value="unlabeled").load(masks / "a")  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.ignore_value=255"], r"ignore_value=255 is also the value of class 'foreground'"),
        (
            [
                "data.mask_format=rgb",
                "data.mask_colors=[[0,0,0],[255,0,0]]",
                "data.ignore_value=[255,0,0]",
            ],
            r"also the colour of class 'foreground'",
        ),
        (
            [
                "data.mask_format=folders",
                "data.class_names=[background,cell]",
                "data.ignore_value=cell",
            ],
            r"ignore_value='cell' is also a class",
        ),
        (["data.ignore_value=[1,2,3]"], r"mask_format=values it is one pixel value"),
        (["data.mask_format=instances", "data.ignore_value=0"], r"0 is the background"),
    ],
    ids=["value", "colour", "folder", "colour_for_values", "instance_background"],
)
def test_an_ignore_value_that_is_a_class_is_refused_by_name(overrides, message) -> None:
    cfg = compose_train(["data=folder", "data.root=x", *overrides])
    with pytest.raises(ValueError, match=message):
        DataContract.from_config(cfg.data)


def test_the_contract_keeps_the_ignore_value_and_old_checkpoints_load() -> None:
    cfg = compose_train(
        [
            "data=folder",
            "data.root=x",
            "data.mask_format=rgb",
            "data.mask_colors=[[0,0,0],[255,0,0]]",
            "data.ignore_value=[9,9,9]",
        ]
    )
    contract = DataContract.from_config(cfg.data)
    stored = contract.to_dict()
    assert stored["ignore_value"] == [9, 9, 9]
    again = DataContract.from_dict(json.loads(json.dumps(stored)))
    assert again.encoding.indices_of(np.array([[[9, 9, 9]]], np.uint8)).item() == PAD_LABEL
    del stored["ignore_value"]  # a format-2 checkpoint written before the key existed
    assert DataContract.from_dict(stored).ignore_value is None


def test_check_data_reports_the_labelled_share(tmp_path: Path) -> None:
    from tests.test_check_data import data_cfg
    from unet_seg.check_data import check_data

    root = partly_labelled(tmp_path / "d")
    report = check_data(data_cfg(root, tmp_path / "r.json", f"data.ignore_value={IGNORE}"))
    assert report["problems"] == [] and report["labelled_share"] == pytest.approx(0.5)
    assert report["suggested_mask_values"] == [0, 255]  # 128 marks no class
    assert report["least_labelled_mask"]["labelled_share"] == pytest.approx(0.5)
    masks = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((root / "masks").iterdir())]
    labelled = np.concatenate([m[m != IGNORE] for m in masks])
    assert report["class_pixel_share"]["foreground"] == pytest.approx(np.mean(labelled == 255))

    cv2.imwrite(str(root / "masks" / "img01.png"), np.full((40, 48), IGNORE, np.uint8))
    report = check_data(data_cfg(root, tmp_path / "r.json", f"data.ignore_value={IGNORE}"))
    assert report["labelled_share"] == pytest.approx(0.375)
    assert report["least_labelled_mask"] == {"mask": "img01.png", "labelled_share": 0.0}
    assert any("img01.png: no pixel is labelled" in p for p in report["problems"])


def test_the_plan_never_makes_the_ignore_value_a_class(tmp_path: Path) -> None:
    from unet_seg.data.plan import plan_data_config

    root = partly_labelled(tmp_path / "d")
    data = OmegaConf.to_container(
        compose_train(["data=auto", f"data.root={root}", f"data.ignore_value={IGNORE}"]).data
    )
    planned, _ = plan_data_config(data)
    assert planned["mask_values"] == [0, 255] and planned["num_classes"] == 2


def test_training_refuses_a_mask_with_nothing_labelled_before_it_starts(tmp_path: Path) -> None:
    from unet_seg.train import train

    root = partly_labelled(tmp_path / "d", n=6)
    for name in ("img00.png", "img01.png", "img02.png", "img03.png", "img04.png", "img05.png"):
        cv2.imwrite(str(root / "masks" / name), np.full((40, 48), IGNORE, np.uint8))
    cfg = compose_train(["data=folder", f"data.root={root}", "data.in_channels=1",
                         "data.crop_size=32", f"data.ignore_value={IGNORE}", "data.num_workers=0",
                         f"run_dir={tmp_path / 'run'}", "logger=none"])  # fmt: skip
    with pytest.raises(ValueError, match=r"img0\d\.png: no pixel is labelled"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_the_weight_map_sees_no_object_in_unlabelled_pixels(tmp_path: Path) -> None:
    from unet_seg.data.weight_map import weights_and_borders

    labels = np.zeros((24, 24), np.uint16)
    labels[4:12, 4:12], labels[4:12, 12:20] = 1, 2  # two touching objects
    labels[12:20, 4:12] = 65535  # unlabelled, right below object 1
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((24, 24), np.uint8))
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), labels)
    params = {"w0": 10.0, "sigma": 5.0, "class_balance": True, "separate_touching": True}
    encoding = MaskEncoding(mask_format="instances", ignore_value=65535)
    pairs = find_pairs(tmp_path)
    ds = SegDataset(pairs, encoding, 1, [0.5], [0.25], instance_paths=[pairs[0][1]],
                    weight_map=params)  # fmt: skip
    sample = ds[0]
    objects = np.where(labels == 65535, 0, labels)
    weight, border = weights_and_borders(objects, params)
    np.testing.assert_allclose(sample["weight"].numpy(), weight)
    want = np.where(labels == 65535, IGNORE_INDEX, (objects > 0) & ~border)
    assert np.array_equal(sample["mask"].numpy(), want)  # only the 1|2 border separated
    assert (sample["mask"][11, 4:10] == 1).all()  # object 1 keeps its edge on the unlabelled


def instance_folder(root: Path) -> Path:
    """`partly_labelled` as 16-bit instance labels, 65535 where unlabelled."""
    write_folder(root, n=6)
    for path in sorted((root / "masks").iterdir()):
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        labels = np.where(mask > 0, 1, 0).astype(np.uint16)
        labels[:20] = 65535
        cv2.imwrite(str(path), labels)
    return root


ARMS = {
    "unet": [f"data.ignore_value={IGNORE}", "data.foreground_crop=0.5"],
    "nested_weight_map": ["arch=nested", "loss=weighted_ce_dice", "data.mask_format=instances",
                          "data.mask_values=[0,1]", "data.class_names=[background,object]",
                          "data.ignore_value=65535"],
    "unet_valid_sigmoid": ["arch=unet_valid", "arch.depth=2", "data.crop_size=24",
                           "data.num_classes=1", f"data.ignore_value={IGNORE}"],
}  # fmt: skip


@pytest.mark.parametrize("arm", list(ARMS))
def test_train_and_evaluate_on_partly_labelled_masks(tmp_path: Path, arm: str) -> None:
    from tests.test_evaluate import config
    from unet_seg.evaluate import evaluate
    from unet_seg.train import train

    if arm.startswith("nested"):
        root = instance_folder(tmp_path / "d")
    else:
        root = partly_labelled(tmp_path / "d", n=6)
    run = tmp_path / "run"
    cfg = compose_train([
        "data=folder", f"data.root={root}", "data.in_channels=1", "data.crop_size=32",
        "data.num_workers=0", "data.batch_size=2", "arch.base_channels=4",
        "trainer.max_epochs=1", f"run_dir={run}", "logger=none",
        "callbacks.validation_images.num_samples=1", *ARMS[arm],
    ])  # fmt: skip
    metrics = train(cfg)
    assert metrics["global_step"] > 0 and 0 <= metrics["val/pixel_error"] <= 1
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["data"]["ignore_value"] == cfg.data.ignore_value
    scores = evaluate(config(run_dir=str(run), split="val", mode="tile", tile_size=32,
                             tta="flips", output=str(tmp_path / "e.json")))  # fmt: skip
    assert 0 <= scores["pixel_error/pooled"] <= 1


def labels_with_unlabelled(root: Path, unlabelled: int, dtype=np.uint16, n: int = 4) -> Path:
    """Instance labels (two touching squares, one apart) with a band of `unlabelled` pixels,
    as 16-bit PNGs or (signed types) TIFFs, beside grey images."""
    import tifffile

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        labels = np.zeros((32, 40), dtype)
        labels[4:14, 4:14], labels[4:14, 14:24], labels[20:28, 28:36] = 1, 2, 3 + i
        labels[24:32, :16] = unlabelled
        cv2.imwrite(str(root / "images" / f"t{i}.png"), (labels > 0).astype(np.uint8) * 200)
        if dtype == np.uint16:
            cv2.imwrite(str(root / "masks" / f"t{i}.png"), labels)
        else:
            tifffile.imwrite(root / "masks" / f"t{i}.tif", labels)
    return root


def test_negative_instance_ids_are_the_ignore_value_or_refused(tmp_path: Path) -> None:
    """-1 in int32 instance labels is never an object and never turns the background into
    one: with data.ignore_value=-1 it is unlabelled; without, it is refused by file and fix."""
    from unet_seg.data.plan import PlanError, plan_data_config
    from unet_seg.data.weight_map import consecutive_labels
    from unet_seg.instances import instance_target

    labels = np.zeros((8, 8), np.int32)
    labels[1:4, 1:4], labels[5:7, 5:7] = 5, -1
    with pytest.raises(ValueError, match="negative values \\[-1\\].*data.ignore_value=-1"):
        consecutive_labels(labels)  # the original made the background object 1 here
    with pytest.raises(ValueError, match="negative"):
        instance_target(labels)
    encoding = MaskEncoding(mask_format="instances", ignore_value=-1)
    indices = encoding.indices_of(labels)
    assert (indices[5:7, 5:7] == PAD_LABEL).all() and indices[0, 0] == 0 and indices[2, 2] == 1
    with pytest.raises(ValueError, match="m.tif: instance labels hold negative values \\[-1\\]"):
        MaskEncoding(mask_format="instances").indices_of(labels, "m.tif")

    root = labels_with_unlabelled(tmp_path / "d", -1, np.int32)
    data = to_plain_data(["data=auto", f"data.root={root}"])
    with pytest.raises(PlanError, match="t0.tif holds negative values \\[-1\\].*ignore_value=-1"):
        plan_data_config(data)
    planned, _ = plan_data_config(to_plain_data(["data=auto", f"data.root={root}",
                                                 "data.ignore_value=-1"]))  # fmt: skip
    assert planned["mask_format"] == "instances" and planned["num_classes"] == 2
    contract = DataContract.from_config(planned)
    mask = contract.encoding.load(root / "masks" / "t0.tif")
    assert (mask[24:, :16] == PAD_LABEL).all() and mask[0, 0] == 0 and mask[5, 5] == 1


def to_plain_data(overrides: list[str]) -> dict:
    from unet_seg.config import to_plain

    return to_plain(compose_train(overrides).data)


@pytest.mark.parametrize("unlabelled", [65535, -1])
def test_an_instance_target_keeps_the_ignore_value(tmp_path: Path, unlabelled: int) -> None:
    """data.target=instances: unlabelled pixels are -1 in the training and validation
    targets (no loss term, no score), not background and not an object; the checkpoint's
    contract keeps the ignore value for evaluate."""
    from unet_seg.build import build_datamodule, plan_config
    from unet_seg.data.readers import read_array
    from unet_seg.instances import instance_target

    dtype = np.uint16 if unlabelled > 0 else np.int32
    root = labels_with_unlabelled(tmp_path / "d", unlabelled, dtype)
    cfg, _ = plan_config(compose_train([
        "data=folder", f"data.root={root}", "data.mask_format=instances", "data.in_channels=1",
        "data.target=instances", f"data.ignore_value={unlabelled}", "data.crop_size=32",
        "data.val_fraction=0.25", "data.test_fraction=0"]))  # fmt: skip
    contract = DataContract.from_config(cfg.data)
    assert contract.ignore_value == unlabelled
    assert DataContract.from_dict(contract.to_dict()).ignore_value == unlabelled
    image_path, mask_path = find_pairs(root)[0]  # evaluate reads truth so: unlabelled there
    truth = DataContract.from_dict(contract.to_dict()).read_pair(image_path, mask_path)[1]
    assert (truth[24:, :16] == PAD_LABEL).all() and truth[0, 0] == 0 and truth[5, 5] == 1
    datamodule = build_datamodule(cfg, tmp_path / "run")
    datamodule.setup()
    for split in ("train", "val"):
        dataset = datamodule.datasets[split]
        target = dataset.mask(0)
        assert (target[24:, :16] == PAD_LABEL).all()
        labels = read_array(dataset.pairs[0][1])
        want = instance_target(np.where(labels == unlabelled, 0, labels))
        assert np.array_equal(target[:24], want[:24])  # the objects' classes, as without
    sample = datamodule.datasets["val"][0]["mask"].numpy()
    assert (sample[24:, :16] == IGNORE_INDEX).all() and set(np.unique(sample)) <= {-1, 0, 1, 2}
    scores = SegmentationScores(
        ["background", "interior", "boundary"]
    )  # validation scores skip them: a prediction there is free
    perfect = torch.from_numpy(np.where(sample < 0, 0, sample))[None]
    wrong_there = perfect.clone()
    wrong_there[0, 24:, :16] = 2
    for pred in (perfect, wrong_there):
        scores.reset()
        scores.update(pred, torch.from_numpy(sample)[None])
        assert float(scores.compute()["dice"]) == pytest.approx(1.0)
