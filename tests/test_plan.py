"""The fingerprint of a folder and the plan made from it (`data=auto`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import compose_train
from tests.forked import Forker
from unet_seg.config import to_plain
from unet_seg.data import fingerprint as fingerprint_module
from unet_seg.data.fingerprint import fingerprint
from unet_seg.data.plan import (
    AUTO,
    MIN_STEPS,
    PLANNED_KEYS,
    PlanError,
    plan,
    plan_data_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(n: int = 4, size: tuple[int, int] = (48, 64), seed: int = 0) -> list[tuple]:
    """`n` (grey uint8 image, instance labels uint16) pairs: a few bright ellipses each."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        labels = np.zeros(size, np.uint16)
        for k in range(1, 4 + i):
            center = (int(rng.integers(6, size[1] - 6)), int(rng.integers(6, size[0] - 6)))
            cv2.ellipse(labels, center, (4, 3), 0, 0, 360, k, -1)
        image = (40 + 150 * (labels > 0) + rng.integers(0, 30, size)).astype(np.uint8)
        out.append((image, labels))
    return out


def write(root: Path, images: list, masks: list, image_ext: str = ".png") -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        path = root / "images" / f"im{i}{image_ext}"
        tifffile.imwrite(path, image) if image_ext == ".tif" else cv2.imwrite(str(path), image)
        if isinstance(mask, Image.Image):
            mask.save(root / "masks" / f"im{i}.png")
        elif mask.dtype != np.uint8:
            tifffile.imwrite(root / "masks" / f"im{i}.tif", mask)
        else:
            cv2.imwrite(str(root / "masks" / f"im{i}.png"), mask)
    return root


def tiles_of_one_image(
    root: Path,
    side: int = 512,
    tile: int = 256,
    objects: int = 180,
    radius: tuple = (7, 12),
    seed: int = 0,
) -> Path:
    """One large 16-bit image of `objects` discs (every fifth with a lobe: not convex; later
    ones overlap earlier ones), its instance labels numbered in random order, cut into
    `tile` x `tile` tiles as a user with one annotated image would: ids are not renumbered
    (gaps, ids up to `objects`), objects are cut at the tile borders."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((side, side), np.uint16)
    for k in rng.permutation(np.arange(1, objects + 1)):
        r = int(rng.integers(*radius))
        cy, cx = (int(v) for v in rng.integers(r, side - r, 2))
        cv2.circle(labels, (cx, cy), r, int(k), -1)
        if k % 5 == 0:
            cv2.circle(labels, (cx + r, cy + r // 2), r // 2 + 2, int(k), -1)
    image = (1000 + 400 * (labels > 0) + rng.normal(0, 30, labels.shape)).astype(np.uint16)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for y in range(0, side, tile):
        for x in range(0, side, tile):
            name = f"tile_{y:04d}_{x:04d}.png"
            cv2.imwrite(str(root / "images" / name), image[y : y + tile, x : x + tile])
            cv2.imwrite(str(root / "masks" / name), labels[y : y + tile, x : x + tile])
    return root


def auto_data(root: Path, *overrides: str) -> dict:
    return to_plain(compose_train(["data=auto", f"data.root={root}", *overrides]).data)


def test_8_bit_and_16_bit_at_1_percent_plan_the_same_net_input(tmp_path: Path) -> None:
    """The plan maps the dataset's percentile range to 0..1, then standardises: a 16-bit copy
    using 1% of its range is the same input to the net as the 8-bit original."""
    pairs = blobs()
    binary = [np.where(m > 0, 255, 0).astype(np.uint8) for _, m in pairs]
    eight = write(tmp_path / "8", [im for im, _ in pairs], binary)
    sixteen = [np.round(im * (655 / 255)).astype(np.uint16) for im, _ in pairs]
    wide = write(tmp_path / "16", sixteen, binary, image_ext=".tif")
    a, why = plan(fingerprint(eight, progress=False), auto_data(eight))
    b, _ = plan(fingerprint(wide, progress=False), auto_data(wide))
    assert set(why) == set(PLANNED_KEYS)
    for key in ("in_channels", "mask_values", "class_names", "num_classes", "crop_size"):
        assert a[key] == b[key]
    assert a["in_channels"] == 1 and a["mask_values"] == [0, 255] and a["num_classes"] == 2
    assert a["intensity"]["mode"] == b["intensity"]["mode"] == "fixed"
    np.testing.assert_allclose(a["mean"], b["mean"], atol=2e-3)
    np.testing.assert_allclose(a["std"], b["std"], atol=2e-3)
    from unet_seg.data.readers import to_unit_range

    x8 = to_unit_range(pairs[0][0][:, :, None], **a["intensity"])
    x16 = to_unit_range(sixteen[0][:, :, None], **b["intensity"])
    assert np.abs(x8 - x16).max() < 0.005  # quantisation of the 16-bit copy only


@pytest.mark.parametrize(
    "kind,expect",
    [
        ("indices", {"mask_format": "values", "mask_values": [0, 1, 2, 3], "num_classes": 4}),
        ("instances", {"mask_format": "instances", "mask_values": [0, 1], "num_classes": 2}),
        ("rgb", {"mask_format": "rgb", "mask_colors": [[0, 0, 0], [0, 255, 0], [255, 0, 0]],
                 "num_classes": 3}),
        ("palette", {"mask_format": "palette", "mask_values": [0, 1, 2], "num_classes": 3}),
        ("folders", {"mask_format": "folders", "class_names": ["background", "a", "b"],
                     "num_classes": 3}),
    ],
)  # fmt: skip
def test_the_plan_reads_the_mask_encoding(tmp_path: Path, kind: str, expect: dict) -> None:
    pairs = blobs(n=4)
    images = [im for im, _ in pairs]
    if kind == "indices":  # classes 0..3 by object number, the same set in every mask
        masks = [np.minimum(m, 3).astype(np.uint8) for _, m in pairs]
        for m in masks:
            m[:2, :4] = [0, 1, 2, 3]
    elif kind == "instances":
        masks = [m for _, m in pairs]
    elif kind == "rgb":
        colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
        masks = [colours[np.minimum(m, 2)][:, :, ::-1].copy() for _, m in pairs]  # BGR files
    elif kind == "palette":
        masks = []
        for _, m in pairs:
            p = Image.fromarray(np.minimum(m, 2).astype(np.uint8), mode="P")
            p.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0] + [0] * 759)
            masks.append(p)
    else:
        masks = [np.zeros(1)] * 0
    if kind == "folders":
        root = tmp_path / "d"
        (root / "images").mkdir(parents=True)
        for i, (image, m) in enumerate(pairs):
            cv2.imwrite(str(root / "images" / f"im{i}.png"), image)
            for c, name in ((1, "a"), (2, "b")):
                (root / "masks" / name).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / "masks" / name / f"im{i}.png"),
                            ((m % 2 + 1 == c) & (m > 0)).astype(np.uint8) * 255)  # fmt: skip
    else:
        root = write(tmp_path / "d", images, masks)
    planned, _ = plan(fingerprint(root, progress=False), auto_data(root))
    for key, value in expect.items():
        assert planned[key] == value, key
    assert len(planned["class_names"]) == planned["num_classes"]


def test_a_given_key_wins_and_the_plan_follows_it(tmp_path: Path) -> None:
    pairs = blobs()
    masks = [np.where(m > 0, 255, 0).astype(np.uint8) for _, m in pairs]
    root = write(tmp_path / "d", [im for im, _ in pairs], masks)
    data = auto_data(root, "data.in_channels=3", "data.crop_size=32",
                     "data.intensity={mode: range}")  # fmt: skip
    planned, why = plan(fingerprint(root, progress=False), data)
    assert planned["in_channels"] == 3 and planned["crop_size"] == 32
    assert planned["intensity"] == {"mode": "range"}
    assert not {"in_channels", "crop_size", "intensity"} & set(why)
    assert len(planned["mean"]) == 3  # per given channel
    assert planned["batch_size"] > 4  # smaller patches, more of them
    _, record = plan_data_config(data)
    assert record["given"]["crop_size"] == 32 and "crop_size" not in record["plan"]


def test_jpeg_masks_and_unreadable_files_are_refused_together(tmp_path: Path) -> None:
    pairs = blobs(n=3)
    root = write(tmp_path / "d", [im for im, _ in pairs],
                 [np.where(m > 0, 255, 0).astype(np.uint8) for _, m in pairs])  # fmt: skip
    (root / "masks" / "im0.png").unlink()
    cv2.imwrite(str(root / "masks" / "im0.jpg"), np.where(pairs[0][1] > 0, 255, 0).astype(np.uint8))
    with pytest.raises(PlanError, match=r"JPEG files, e.g. \['im0.jpg'\].*PNG"):
        plan(fingerprint(root, progress=False), auto_data(root))
    (root / "images" / "im1.png").write_bytes(b"not an image")
    (root / "images" / "im2.png").write_bytes(b"not one either")
    with pytest.raises(PlanError, match=r"(?s)3 problem\(s\).*im1.png.*im2.png.*im0.jpg"):
        plan(fingerprint(root, progress=False), auto_data(root))


def test_the_fingerprint_is_cached_until_a_file_changes(tmp_path: Path, monkeypatch) -> None:
    pairs = blobs(n=2)
    root = write(tmp_path / "d", [im for im, _ in pairs],
                 [np.where(m > 0, 255, 0).astype(np.uint8) for _, m in pairs])  # fmt: skip
    first = fingerprint(root, cache_dir=tmp_path / "cache", progress=False)
    calls = []
    original = fingerprint_module.describe_image
    monkeypatch.setattr(fingerprint_module, "describe_image",
                        lambda p: calls.append(p) or original(p))  # fmt: skip
    assert fingerprint(root, cache_dir=tmp_path / "cache", progress=False) == first
    assert calls == []  # nothing read again
    cv2.imwrite(str(root / "images" / "im1.png"), pairs[1][0] // 2)
    again = fingerprint(root, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 2 and again["images"][1]["max"] != first["images"][1]["max"]


@pytest.mark.slow
def test_data_auto_trains_with_one_command(tmp_path: Path) -> None:
    """Grey instance labels in uint16 TIFF, nothing typed but the folder: the run plans,
    keeps fingerprint.json and plan.json, and its checkpoint carries the planned contract."""
    from unet_seg.module import SegModule
    from unet_seg.train import train

    pairs = blobs(n=6)
    root = write(tmp_path / "d", [im for im, _ in pairs], [m for _, m in pairs])
    run = tmp_path / "run"
    cfg = compose_train(["data=auto", f"data.root={root}", f"run_dir={run}",
                         "arch.base_channels=4", "trainer.budget=8s", "data.num_workers=0",
                         "data.val_fraction=0.34", "data.test_fraction=0.0"])  # fmt: skip
    metrics = train(cfg)  # 8 s (was 12 s): the first plan needs 6 timed steps; 4 s had too few
    assert metrics["epochs"] >= 1
    recorded = json.loads((run / "plan.json").read_text())
    epochs = recorded["epochs"]  # the plan states its budget and the steps it expected
    assert epochs["value"] == "budget 8s" and epochs["expected_steps"] > 0
    assert epochs["steps"] == metrics["global_step"] and epochs["epochs"] == metrics["epochs"]
    assert recorded["plan"]["mask_format"]["value"] == "instances"
    assert json.loads((run / "fingerprint.json").read_text())["masks"][0]["instance_like"]
    saved = OmegaConf.load(run / "config.yaml").data
    assert all(saved[key] != AUTO for key in PLANNED_KEYS)
    contract = SegModule.from_checkpoint(run / "checkpoints" / "last.ckpt").contract
    assert contract.mask_format == "instances" and contract.crop_size == 48
    assert contract.intensity["mode"] == "fixed"


def test_few_objects_per_tile_are_still_instances_and_class_masks_are_not(tmp_path) -> None:
    """Tiles numbering 1..2 or 1..3 objects (the sets vary) are instance labels; class masks
    holding the same classes in every image are not, even when each class is one region."""
    pairs = blobs(n=4)
    few = [np.where(m > 2, 0, m).astype(np.uint16) for _, m in pairs]  # objects 1..2 each
    few[3][few[3] == 2] = 0
    for i, m in enumerate(few[:3]):
        cv2.circle(m, (50 + i, 40), 3, 3, -1)  # a third object in some tiles
    root = write(tmp_path / "few", [im for im, _ in pairs], few)
    planned, _ = plan(fingerprint(root, progress=False), auto_data(root))
    assert planned["mask_format"] == "instances"
    same = []
    for _, m in pairs:
        classes = np.zeros(m.shape, np.uint8)
        classes[5:15, 5:15], classes[30:40, 40:50] = 1, 2  # one region per class, every image
        same.append(classes)
    root = write(tmp_path / "same", [im for im, _ in pairs], same)
    planned, _ = plan(fingerprint(root, progress=False), auto_data(root))
    assert planned["mask_format"] == "values" and planned["mask_values"] == [0, 1, 2]


def test_a_rare_class_doubles_the_steps_an_epoch(tmp_path: Path) -> None:
    """A foreground class under 1% of the mask pixels is learned late: the plan draws twice
    the patches per epoch (and says why); without one it keeps the usual count."""
    rng = np.random.default_rng(0)
    images, common, with_rare = [], [], []
    for _ in range(10):
        mask = np.zeros((64, 64), np.uint8)
        mask[8:40, 8:40] = 1  # 25% of the pixels
        images.append(rng.integers(0, 255, (64, 64), dtype=np.uint8))
        common.append(mask.copy())
        mask[50:52, 50:52] = 2  # 4 of 4096 pixels
        with_rare.append(mask)
    plain = auto_data(write(tmp_path / "common", images, common), "data.batch_size=4")
    rare = auto_data(write(tmp_path / "rare", images, with_rare), "data.batch_size=4")
    plain_plan, plain_why = plan(fingerprint(tmp_path / "common"), plain)
    rare_plan, rare_why = plan(fingerprint(tmp_path / "rare"), rare)
    assert rare_plan["num_classes"] == 3 and plain_plan["num_classes"] == 2
    train_images = 7  # of 10, with 20% validation and 10% test
    assert plain_plan["train_repeats"] == math.ceil(MIN_STEPS * 4 / train_images)
    assert rare_plan["train_repeats"] == math.ceil(2 * MIN_STEPS * 4 / train_images)
    assert "under 1% of pixels" in rare_why["train_repeats"]
    assert "under 1%" not in plain_why["train_repeats"]
    assert rare_plan["rare_classes"] == [2] and "median frequency" in rare_why["rare_classes"]
    assert plain_plan["rare_classes"] == [] and "binary" in plain_why["rare_classes"]
    assert "class 2 is under 1% of pixels" in rare_why["train_repeats"]  # no names: indices
    named = auto_data(tmp_path / "rare", "data.batch_size=4",
                      "data.class_names=[background,cell,speck]")  # fmt: skip
    named_plan, named_why = plan(fingerprint(tmp_path / "rare"), named)
    assert named_plan["rare_classes"] == [2]  # the names change what the log says, only
    assert "class speck (2) is under 1% of the pixels" in named_why["rare_classes"]
    assert "speck (2) is under 1% of pixels" in named_why["foreground_crop"]
    # enough images for 40 steps an epoch anyway: the rare class changes nothing there, and
    # the reason does not claim it did
    many = write(tmp_path / "many", images * 6, with_rare * 6)
    many_plan, many_why = plan(fingerprint(many), auto_data(many, "data.batch_size=1"))
    assert many_plan["rare_classes"] == [2] and many_plan["train_repeats"] == 1
    assert "under 1%" not in many_why["train_repeats"]


def test_rare_classes_are_said_by_name() -> None:
    from unet_seg.data.plan import rare_subject

    names = ["sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car",
             "pedestrian", "bicyclist"]  # fmt: skip
    assert rare_subject([9, 10], names) == "classes pedestrian (9) and bicyclist (10) are"
    assert rare_subject([2, 7, 9], names) == "classes pole (2), fence (7) and pedestrian (9) are"
    assert rare_subject([3], ["background", "class_1", "class_2", "class_3"]) == "class 3 is"
    assert rare_subject([1, 2], ["background", "class1", "class2"]) == "classes 1 and 2 are"
    assert rare_subject([3], "auto") == "class 3 is" and rare_subject([], names) == ""


def test_rare_classes_weigh_the_cross_entropy_by_median_frequency(tmp_path: Path) -> None:
    """loss.class_weights=rare (the default): median frequency weights when the plan found a
    rare class, none for a folder without one, and a list given is kept."""
    from unet_seg.build import build_datamodule, build_module, plan_config
    from unet_seg.data.checks import median_frequency_weights

    rng = np.random.default_rng(0)
    images, masks, balanced = [], [], []
    for _ in range(10):
        mask = np.zeros((64, 64), np.uint8)
        mask[8:40, 8:40] = 1
        balanced.append(mask.copy())
        mask[30:50, 30:50] = 2
        mask[50:52, 50:52] = 3  # 4 of 4096 pixels
        images.append(rng.integers(0, 255, (64, 64), dtype=np.uint8))
        masks.append(mask)

    def weights(root: Path, *overrides: str):
        cfg, _ = plan_config(compose_train(["data=auto", f"data.root={root}",
                                            f"run_dir={root}_run", *overrides]))  # fmt: skip
        datamodule = build_datamodule(cfg, root.parent / f"{root.name}_run")
        loss = build_module(cfg, datamodule).loss_fn
        return loss.class_weights, datamodule

    got, datamodule = weights(write(tmp_path / "rare", images, masks))
    assert datamodule.rare_classes == [3]
    expected = median_frequency_weights(datamodule.class_frequencies())
    assert got.tolist() == pytest.approx(expected) and got[3] > 10 * got[1]
    three = [np.where(m == 3, 2, m) for m in masks]  # the rare class merged into class 2
    assert weights(write(tmp_path / "common", images, three))[0] is None
    given = weights(tmp_path / "rare", "loss.class_weights=[1,2,3,4]")[0]
    assert given.tolist() == [1, 2, 3, 4]


def test_tiles_cut_from_one_image_are_instance_labels(tmp_path: Path) -> None:
    """16-bit tiles of one large annotated image, ids not renumbered after cutting (about 45
    objects a tile, ids up to 180, objects cut at the borders): instance labels, by
    connectivity, and the reason says what the plan saw."""
    root = tiles_of_one_image(tmp_path / "tiles")
    fp = fingerprint(root, progress=False)
    assert all(m["max_value"] > 2 * (m["n_values"] - 1) for m in fp["masks"])  # gaps
    assert all(m["connected_ids"] < m["checked_ids"] for m in fp["masks"][:1])  # a few split
    planned, why = plan(fp, auto_data(root))
    assert planned["mask_format"] == "instances" and planned["num_classes"] == 2
    assert "connected region" in why["mask_format"] and "180 distinct ids" in why["mask_format"]
    from unet_seg.check_data import guesses  # what to type if the guess is wrong

    _, record = plan_data_config(auto_data(root))
    assert "(one foreground class): in 4 of 4 masks" in record["plan"]["mask_format"]["why"]
    assert "data.mask_format=values" in guesses(record)
    # fewer objects than classes could be (24 ids, 4 tiles): each id lies in about one tile,
    # where a class would recur from mask to mask
    few = tiles_of_one_image(tmp_path / "few", side=256, tile=128, objects=24, radius=(8, 14))
    planned, why = plan(fingerprint(few, progress=False), auto_data(few))
    assert planned["mask_format"] == "instances" and "masks on average" in why["mask_format"]
    # class-index masks whose classes lie in many pieces stay classes, however they vary
    rng = np.random.default_rng(1)
    classes = []
    for m in [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(root.glob("masks/*"))]:
        classes.append(np.where(m > 0, 1 + m % 3, 0).astype(np.uint8))
    images = [rng.integers(0, 255, c.shape, dtype=np.uint8) for c in classes]
    root = write(tmp_path / "classes", images, classes)
    planned, why = plan(fingerprint(root, progress=False), auto_data(root))
    assert planned["mask_format"] == "values" and planned["mask_values"] == [0, 1, 2, 3]
    assert "not instance labels" in why["mask_format"]


@pytest.mark.slow
def test_tiles_of_one_image_train_with_data_auto_and_nothing_else(
    tmp_path: Path, forker: Forker
) -> None:
    """The issue's case, end to end: `python -m unet_seg.train data=auto data.root=DIR` with
    no data key typed (only a tiny net and a short run) trains on the tiles."""
    root = tiles_of_one_image(tmp_path / "tiles", side=256, tile=64, objects=160,
                              radius=(4, 7))  # fmt: skip
    proc = forker.run(
        ["-m", "unet_seg.train", "data=auto", f"data.root={root}",
         "arch.base_channels=4", "arch.depth=2", "trainer.max_epochs=1",
         "+trainer.limit_train_batches=2", "logger=none", "paths.output_dir=out"],
        cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "out" / "train").iterdir()
    recorded = json.loads((run / "plan.json").read_text())
    assert recorded["plan"]["mask_format"]["value"] == "instances"
    assert "16 of 16 masks" in recorded["plan"]["mask_format"]["why"]  # the evidence, counted
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 2


def test_grey_and_colour_images_mixed_plan_three_channels(tmp_path: Path) -> None:
    """A folder mixing grey and RGB images: 3 channels (grey repeated), and the statistics of
    the images as the net sees them, grey ones counted in every channel."""
    from tests.conftest import write_folder
    from unet_seg.data.readers import read_image

    root = write_folder(tmp_path / "mix", n=3, channels=1)
    colour = write_folder(tmp_path / "rgb", n=3, channels=3, seed=1)
    for kind in ("images", "masks"):
        for path in (colour / kind).iterdir():
            path.rename(root / kind / f"c{path.name}")
    planned, why = plan(fingerprint(root, progress=False), auto_data(root))
    assert planned["in_channels"] == 3 and len(planned["mean"]) == len(planned["std"]) == 3
    assert all(f in why["in_channels"] for f in ("3 grey", "3 RGB", "grey is repeated"))
    lo, hi = planned["intensity"]["vmin"], planned["intensity"]["vmax"]
    seen = [(read_image(p, 3).astype(float) - lo) / (hi - lo) for p in root.glob("images/*")]
    want = np.mean([im.reshape(-1, 3).mean(0) for im in seen], axis=0)
    np.testing.assert_allclose(planned["mean"], want, atol=1e-3)


@pytest.mark.parametrize(("n", "overrides", "train"), [
    (4, [], 2),  # 20% and 10% of 4 round to 1 and 0, but a fraction given gets one image
    (10, ["data.num_folds=5"], 7),  # 1 test image, then fold 0 of 9 holds 2
    (10, ["data.split_file=SPLIT"], 3),  # the split file's 3, not 70% of 10 (CamVid's case)
])  # fmt: skip
def test_the_steps_an_epoch_count_the_training_images_of_the_split(
    tmp_path: Path, n: int, overrides: list[str], train: int
) -> None:
    """The plan sizes an epoch from the images the data module will train on: the split's,
    not the fractions' share of the folder (4 images at 20% + 10% held out train on 2)."""
    images, masks = zip(*blobs(n), strict=True)
    root = write(tmp_path / "d", list(images), list(masks))
    names = sorted(p.name for p in (root / "images").iterdir())
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": names[:3], "val": names[3:6], "test": names[6:]}))
    overrides = [o.replace("SPLIT", str(split)) for o in overrides]
    data = auto_data(root, "data.batch_size=4", *overrides)
    planned, why = plan(fingerprint(tmp_path / "d"), data)
    assert planned["train_repeats"] == math.ceil(MIN_STEPS * 4 / train)
    assert why["train_repeats"].startswith(f"about {train} training images")


def street(rng: np.random.Generator, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """A road scene's classes: sky (0) above a horizon, buildings (1) and road (2) below."""
    mask = np.full(size, 1, np.uint8)
    horizon = int(rng.integers(10, 20))
    mask[:horizon] = 0
    mask[int(rng.integers(30, 38)) :] = 2
    return mask


def test_classes_at_fixed_heights_make_the_images_upright(tmp_path: Path) -> None:
    """Sky on top and road below in every mask: the plan leaves out vertical flips and
    quarter turns (`data.upright`), and the data module trains so; cells scattered
    anywhere keep them, and so do too few masks to tell."""
    rng = np.random.default_rng(0)
    grey = [rng.integers(0, 255, (48, 64), dtype=np.uint8) for _ in range(10)]
    streets = [street(rng) for _ in range(10)]
    planned, why = plan(fingerprint(write(tmp_path / "streets", grey, streets)),
                        auto_data(tmp_path / "streets"))  # fmt: skip
    assert planned["upright"] is True
    assert "in the top half of 100%" in why["upright"] and "bottom half" in why["upright"]
    cells = [np.where(lab > 0, 255, 0).astype(np.uint8) for _, lab in blobs(10)]
    images = [im for im, _ in blobs(10)]
    planned, why = plan(fingerprint(write(tmp_path / "cells", images, cells)),
                        auto_data(tmp_path / "cells"))  # fmt: skip
    assert planned["upright"] is False and "flips and quarter turns kept" in why["upright"]
    few = plan(fingerprint(write(tmp_path / "few", grey[:5], streets[:5])),
               auto_data(tmp_path / "few"))[0]  # fmt: skip
    assert few["upright"] is False  # 5 masks: no evidence either way

    from unet_seg.data.datamodule import SegDataModule

    args = {"root": str(tmp_path / "streets"), "class_names": ["sky", "building", "road"],
            "mask_values": [0, 1, 2], "num_classes": 3, "in_channels": 1,
            "augment": {"hflip": 0.5, "vflip": 0.5, "rotate90": 0.5}}  # fmt: skip
    assert SegDataModule(**args, upright=True).augment == {"hflip": 0.5, "vflip": 0.0,
                                                          "rotate90": 0.0}  # fmt: skip
    assert SegDataModule(**args).augment["vflip"] == 0.5


def road_scene(n: int = 6, size: int = 48) -> tuple[list, list]:
    """Road-scene-like masks of 3 classes with no background: class 0 (sky) on top, a
    third; class 1 (road) below, the most; class 2 (car) a block on the road."""
    rng = np.random.default_rng(1)
    images, masks = [], []
    for i in range(n):
        mask = np.ones((size, size), np.uint8)
        mask[: size // 3] = 0
        mask[30:40, 8 + i : 24 + i] = 2
        images.append(rng.integers(0, 255, (size, size), dtype=np.uint8))
        masks.append(mask)
    return images, masks


def test_class_0_is_a_background_only_where_it_covers_the_most_pixels(tmp_path: Path) -> None:
    """A road scene's class 0 (sky, a third of the pixels, road the most) is no background:
    the plan says data.background=false, and made-up names do not call it one; given names
    are kept. Cells-like masks (class 0 the most) and binary masks keep their background."""
    images, masks = road_scene()
    root = write(tmp_path / "street", images, masks)
    planned, why = plan(fingerprint(root, progress=False), auto_data(root))
    assert planned["num_classes"] == 3 and planned["background"] is False
    assert planned["class_names"] == ["class0", "class1", "class2"]
    assert "no background class" in why["background"] and "class0" in why["background"]
    named, why = plan(fingerprint(root), auto_data(root, "data.class_names=[sky,road,car]"))
    assert named["background"] is False and named["class_names"] == ["sky", "road", "car"]
    assert "class 0 (sky) covers 33%" in why["background"] and "road" in why["background"]
    given, _ = plan(fingerprint(root), auto_data(root, "data.background=true"))
    assert given["background"] is True  # a value given wins

    cells = [np.where(m == 1, 0, np.where(m == 0, 1, m)).astype(np.uint8) for m in masks]
    root = write(tmp_path / "cells", images, cells)  # classes 0 and 1 swapped: 0 the most
    planned, why = plan(fingerprint(root), auto_data(root))
    assert planned["background"] is True and "covers the most pixels" in why["background"]
    assert planned["class_names"][0] == "background"
    binary = [(m == 2).astype(np.uint8) for m in masks]
    root = write(tmp_path / "binary", images, binary)
    planned, why = plan(fingerprint(root), auto_data(root))
    assert planned["background"] is True and "two classes" in why["background"]


def test_a_folder_without_background_scores_every_class(tmp_path: Path) -> None:
    """data=auto on road-scene-like masks: the checkpoint's contract says no background,
    the run's mean IoU and Dice count class 0, and evaluate reports `mean` (not `mean_fg`)
    over all three classes."""
    from unet_seg.evaluate import evaluate
    from unet_seg.module import SegModule
    from unet_seg.train import train

    images, masks = road_scene(n=8)
    root = write(tmp_path / "d", images, masks)
    run = tmp_path / "run"
    cfg = compose_train(["data=auto", f"data.root={root}", f"run_dir={run}",
                         "arch.base_channels=4", "trainer.max_epochs=1", "data.num_workers=0",
                         "data.crop_size=32", "data.batch_size=2"])  # fmt: skip
    metrics = train(cfg)
    contract = SegModule.from_checkpoint(run / "checkpoints" / "last.ckpt").contract
    assert contract.background is False and contract.scored_classes == contract.class_names
    names = contract.class_names
    per_class = [metrics[f"test/iou/{n}"] for n in names]
    assert metrics["test/iou"] == pytest.approx(np.mean(per_class), abs=1e-6)
    eval_cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "evaluate.yaml")
    eval_cfg.pop("defaults")
    eval_cfg = OmegaConf.merge(
        eval_cfg,
        {
            "run_dir": str(run),
            "split": "test",
            "device": "cpu",
            "output": str(tmp_path / "e.json"),
            "worst": 1,
        },
    )
    scores = evaluate(eval_cfg)
    assert "dice/pooled/mean_fg" not in scores
    pooled = [scores[f"iou/pooled/{n}"] for n in names]
    assert scores["iou"] == scores["iou/pooled/mean"] == pytest.approx(np.mean(pooled))


@pytest.mark.parametrize("channels", [2, 4])
def test_imagej_channel_tiffs_plan_their_channels_not_an_alpha(
    tmp_path: Path, channels: int
) -> None:
    """ImageJ TIFFs of C fluorescence channels (axes CYX) are C channels of data: planned as
    `C channels` with each channel's own statistics (the second channel was taken for an alpha,
    `grey+alpha (transparent)`, its statistics dropped; 4 for RGBA), and they reach the net
    as C channels."""
    from unet_seg.build import build_datamodule, plan_config

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(6):
        mask = np.zeros((48, 48), np.uint8)
        mask[8 + i : 30 + i, 10:34] = 1
        signal = 1 + mask.astype(np.int64)
        planes = [(200 * (k + 1) * signal + rng.integers(0, 50, mask.shape)).astype(np.uint16)
                  for k in range(channels)]  # fmt: skip
        tifffile.imwrite(tmp_path / "images" / f"f{i}.tif", np.stack(planes), imagej=True,
                         metadata={"axes": "CYX"})  # fmt: skip
        cv2.imwrite(str(tmp_path / "masks" / f"f{i}.png"), mask)
    fp = fingerprint(tmp_path, progress=False)
    assert {e["kind"] for e in fp["images"]} == {f"{channels} channels"}
    assert all(len(e["mean"]) == channels for e in fp["images"])  # every channel described
    planned, why = plan(fp, auto_data(tmp_path))
    assert planned["in_channels"] == channels and f"6 {channels} channels" in why["in_channels"]
    means = planned["mean"]
    assert len(means) == channels and len(set(means)) == channels  # each channel its own
    cfg, _ = plan_config(compose_train(["data=auto", f"data.root={tmp_path}",
                                        f"run_dir={tmp_path}_run"]))  # fmt: skip
    datamodule = build_datamodule(cfg, tmp_path.parent / f"{tmp_path.name}_run")
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert cfg.data.in_channels == channels and batch["image"].shape[1] == channels


def test_label_masks_with_a_negative_ignore_value_plan_and_load(tmp_path: Path) -> None:
    """int16 class masks marking unlabelled pixels -1: with data.ignore_value=-1 they were
    still refused (only instance labels took a negative ignore value); now -1 is unlabelled
    and 0, 1, 2 the classes. Without it, the refusal names the file and the fix."""
    from unet_seg.data.contract import DataContract
    from unet_seg.data.masks import PAD_LABEL

    images, masks = [], []
    for i in range(4):
        mask = np.zeros((32, 32), np.int16)
        mask[4:14, 4:14], mask[18:28, 10 + i : 20 + i], mask[:, 30:] = 1, 2, -1
        images.append((60 * np.maximum(mask, 0) + 20).astype(np.uint8))
        masks.append(mask)
    root = write(tmp_path / "d", images, masks)
    with pytest.raises(PlanError, match=r"im0\.tif holds negative values \[-1\]: if they mark "
                       r"unlabelled pixels set data.ignore_value=-1; otherwise save the labels "
                       r"with 0 = background and 1..N = classes"):  # fmt: skip
        plan_data_config(auto_data(root))
    planned, _ = plan_data_config(auto_data(root, "data.ignore_value=-1"))
    assert planned["mask_format"] == "values" and planned["mask_values"] == [0, 1, 2]
    loaded = DataContract.from_config(planned).encoding.load(root / "masks" / "im0.tif")
    assert (loaded[:, 30:] == PAD_LABEL).all() and loaded[5, 5] == 1 and loaded[20, 12] == 2
