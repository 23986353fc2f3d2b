"""Reading folders, mapping masks, splitting, augmenting: and the errors users meet."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import write_folder
from unet_seg.data.contract import check_class_config
from unet_seg.data.datamodule import SegDataModule
from unet_seg.data.dataset import SegDataset, find_pairs, pad_collate, read_image
from unet_seg.data.masks import IGNORE_INDEX, MaskEncoding
from unet_seg.data.readers import read_array
from unet_seg.data.splits import load_splits, make_folds, make_splits, save_splits
from unet_seg.data.transforms import build_train_transform, denormalize, normalize

AUGMENT = {"hflip": 0.5, "vflip": 0.5, "rotate90": 0.5,
           "affine": {"p": 0.5, "scale": [0.9, 1.1], "rotate": [-15, 15], "translate": 0.05},
           "brightness_contrast": {"p": 0.5}}  # fmt: skip


# ---------------------------------------------------------------- masks


def test_mask_encoding_round_trip() -> None:
    enc = MaskEncoding([0, 255])
    mask = np.array([[0, 255], [255, 0]], np.uint8)
    indices = enc.encode(mask)
    assert indices.tolist() == [[0, 1], [1, 0]]
    assert (enc.decode(indices) == mask).all()
    assert MaskEncoding([0, 1000]).decode(np.array([1])).dtype == np.uint16


def test_unknown_mask_value_names_the_file() -> None:
    enc = MaskEncoding([0, 255])
    with pytest.raises(ValueError, match=r"m\.png.*\[128\].*mask_values"):
        enc.encode(np.array([[0, 128, 255]], np.uint8), "m.png")


def test_a_negative_ignore_value_of_label_values_is_unlabelled() -> None:
    """`data.ignore_value=-1` with label values (what the volume plan advised for label volumes
    holding -1) was refused by the encoding, and -1 in the labels refused by the reader: now
    -1 is unlabelled (PAD_LABEL, then -1 in the targets); another negative value is named."""
    from unet_seg.data.masks import PAD_LABEL, _whole_numbers

    enc = MaskEncoding([0, 1, 2], ignore_value=-1)
    labels = np.array([[-1, 0, 1], [2, -1, 0]], np.int16)
    for stored in (labels, labels.astype(np.float32), labels.astype(np.int32)):
        indices = enc.encode(_whole_numbers(stored, "l.nii.gz"), "l.nii.gz")
        assert indices.tolist() == [[PAD_LABEL, 0, 1], [2, PAD_LABEL, 0]]
    assert enc.indices_of(labels, "l.tif").tolist() == [[PAD_LABEL, 0, 1], [2, PAD_LABEL, 0]]
    assert enc.encode(np.array([[0, 2]], np.uint16)).tolist() == [[0, 2]]  # unsigned as before
    with pytest.raises(ValueError, match=r"l\.nii\.gz: mask values \[-2, 7\] are not in "
                       r"data\.mask_values=\[0, 1, 2\].*data\.ignore_value"):  # fmt: skip
        enc.encode(np.array([[-2, -1, 7]], np.int32), "l.nii.gz")
    with pytest.raises(ValueError, match=r"mask values \[-1\] are not in.*ignore_value"):
        MaskEncoding([0, 1, 2]).encode(_whole_numbers(labels, "l.nii.gz"), "l.nii.gz")
    with pytest.raises(ValueError, match="is also the value of class"):
        MaskEncoding([0, 1], ignore_value=1)
    with pytest.raises(ValueError, match=r"data.ignore_value=-1: with data.mask_format=palette"):
        MaskEncoding([0, 1], "palette", ignore_value=-1)  # palette indices are never negative


def test_mask_values_must_be_distinct() -> None:
    with pytest.raises(ValueError, match="distinct"):
        MaskEncoding([0, 0])


def test_class_config_must_agree() -> None:
    check_class_config(1, 2, ["bg", "fg"])
    check_class_config(3, 3, ["bg", "a", "b"])
    with pytest.raises(ValueError, match="num_classes=3 needs 3 mask classes"):
        check_class_config(3, 2, ["bg", "fg"])
    with pytest.raises(ValueError, match="class_names"):
        check_class_config(2, 2, ["bg"])


# ---------------------------------------------------------------- folders and files


def test_find_pairs_with_suffix(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for stem in ("car1", "car2"):
        cv2.imwrite(str(tmp_path / "images" / f"{stem}.jpg"), np.zeros((4, 4, 3), np.uint8))
        cv2.imwrite(str(tmp_path / "masks" / f"{stem}_mask.png"), np.zeros((4, 4), np.uint8))
    pairs = find_pairs(tmp_path, mask_suffix="_mask")
    assert [(i.name, m.name) for i, m in pairs] == [
        ("car1.jpg", "car1_mask.png"),
        ("car2.jpg", "car2_mask.png"),
    ]


def test_missing_mask_is_named(folder: Path) -> None:
    (folder / "masks" / "img03.png").unlink()
    with pytest.raises(FileNotFoundError, match="img03.png"):
        find_pairs(folder)


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_pairs(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        find_pairs(tmp_path)


def test_read_image_channel_rules(tmp_path: Path) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    assert read_image(tmp_path / "g.png", 1).shape == (3, 4, 1)
    assert read_image(tmp_path / "g.png", 3).shape == (3, 4, 3)
    rgb_gray = np.repeat(gray[:, :, None], 3, axis=2)
    cv2.imwrite(str(tmp_path / "eq.png"), rgb_gray)
    assert (read_image(tmp_path / "eq.png", 1)[:, :, 0] == gray).all()
    color = np.zeros((3, 4, 3), np.uint8)
    color[:, :, 2] = 200  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "c.png"), color)
    assert read_image(tmp_path / "c.png", 3)[0, 0].tolist() == [200, 0, 0]  # RGB
    with pytest.raises(
        ValueError, match=r"c\.png: RGB image but data.in_channels=1; set data.in_channels=3"
    ):
        read_image(tmp_path / "c.png", 1)


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png.*cannot be read"):
        read_image(bad, 1)
    with pytest.raises(ValueError, match="broken.png.*cannot be read"):
        read_array(bad)


def test_dataset_sample_and_normalisation(folder: Path) -> None:
    pairs = find_pairs(folder)
    ds = SegDataset(pairs, MaskEncoding([0, 255]), 1, [0.5], [0.25])
    sample = ds[0]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (1, 40, 48)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (40, 48)
    assert set(sample["mask"].unique().tolist()) <= {0, 1}
    raw = cv2.imread(str(pairs[0][0]), cv2.IMREAD_UNCHANGED).astype(np.float32)
    expected = (raw / 255 - 0.5) / 0.25  # normalised once, not twice
    assert torch.allclose(sample["image"][0], torch.from_numpy(expected), atol=1e-6)
    assert torch.allclose(
        denormalize(sample["image"], [0.5], [0.25])[0] * 255, torch.from_numpy(raw), atol=1e-3
    )


def test_mask_of_another_size_is_refused(folder: Path) -> None:
    cv2.imwrite(str(folder / "masks" / "img01.png"), np.zeros((10, 10), np.uint8))
    ds = SegDataset(find_pairs(folder), MaskEncoding([0, 255]), 1, [0.5], [0.25])
    with pytest.raises(ValueError, match=r"img01\.png.*10x10.*48x40"):
        ds[1]


def test_normalize_16_bit() -> None:
    image = np.full((2, 2, 1), 65535, np.uint16)
    assert torch.allclose(normalize(image, [0.0], [1.0]), torch.ones(1, 2, 2))


# ---------------------------------------------------------------- transforms


def test_training_patches_crop_pad_or_refuse(folder: Path) -> None:
    pairs = find_pairs(folder)
    enc = MaskEncoding([0, 255])
    ds = SegDataset(pairs, enc, 1, [0.5], [0.25], crop_size=32)
    sample = ds[(0, 7)]
    assert sample["image"].shape == (1, 32, 32) and sample["mask"].shape == (32, 32)
    assert torch.equal(ds[(0, 7)]["image"], sample["image"])  # the seed fixes the patch
    small = SegDataset(pairs, enc, 1, [0.5], [0.25], crop_size=44)
    with pytest.raises(ValueError, match=r"48x40 is smaller than data.crop_size=44"):
        small[0]
    padded = SegDataset(pairs, enc, 1, [0.5], [0.25], crop_size=44, pad_to_crop=True)[(0, 1)]
    assert padded["mask"].shape == (44, 44)
    assert (padded["mask"] == IGNORE_INDEX).sum() == 44 * 44 - 40 * 44  # 4 padded rows


def test_foreground_centred_patches(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = np.zeros((200, 200), np.uint8)
    mask[150:156, 20:26] = 255  # one small object
    cv2.imwrite(str(root / "images" / "a.png"), mask)
    cv2.imwrite(str(root / "masks" / "a.png"), mask)
    pairs = find_pairs(root)
    always = SegDataset(pairs, MaskEncoding([0, 255]), 1, [0.5], [0.25], crop_size=32,
                        foreground_crop=1.0)  # fmt: skip
    never = SegDataset(pairs, MaskEncoding([0, 255]), 1, [0.5], [0.25], crop_size=32)
    hits_always = sum(bool((always[(0, s)]["mask"] == 1).any()) for s in range(30))
    hits_never = sum(bool((never[(0, s)]["mask"] == 1).any()) for s in range(30))
    assert hits_always == 30 and hits_never < 10


def test_augmentation_moves_image_and_mask_together() -> None:
    t = build_train_transform(AUGMENT | {"brightness_contrast": {"p": 0}})
    rng = np.random.default_rng(1)
    mask = np.kron(rng.random((4, 4)) > 0.5, np.ones((8, 8))).astype(np.uint8)  # 8x8 blocks
    image = (mask * 200)[:, :, None].astype(np.uint8)
    moved = False
    for _ in range(10):
        out = t(image=image, mask=mask)
        agree = (out["image"][:, :, 0] > 100) == (out["mask"] == 1)
        assert agree.mean() > 0.95  # only interpolated block edges may differ
        if not np.array_equal(out["mask"], mask):
            moved = True
    assert moved


def test_each_augmentation_draws_for_itself(tmp_path: Path) -> None:
    """Per-sample seeding gives every transform its own draw: flips and quarter turns
    reach all 8 orientations (the dihedral group D4) at their chance: 3/16 each for the
    four that flips alone make, 1/16 for the four odd quarter turns. Seeding each
    transform with one seed made hflip and vflip fire together: rotations only, and half
    the samples unchanged."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4  # every pixel its own value
    cv2.imwrite(str(tmp_path / "images" / "a.png"), image)
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), np.where(image > 100, 255, 0).astype(np.uint8))
    pairs = find_pairs(tmp_path)
    transform = build_train_transform({"hflip": 0.5, "vflip": 0.5, "rotate90": 0.5})
    ds = SegDataset(pairs, MaskEncoding([0, 255]), 1, [0.0], [1.0], transform=transform)
    plain = SegDataset(pairs, MaskEncoding([0, 255]), 1, [0.0], [1.0])[0]
    orientations = {
        (k, flip): torch.rot90(plain["image"], k, (1, 2)).flip(2) if flip
        else torch.rot90(plain["image"], k, (1, 2))
        for k in range(4) for flip in (False, True)
    }  # fmt: skip
    counts = dict.fromkeys(orientations, 0)
    draws = 800
    for seed in range(draws):
        sample = ds[(0, seed)]
        found = [o for o, x in orientations.items() if torch.equal(sample["image"], x)]
        assert len(found) == 1
        counts[found[0]] += 1
        assert torch.equal(sample["mask"], (sample["image"][0] * 255 > 100).long())
    assert min(counts.values()) >= 0.03 * draws, counts  # 1/16 in expectation
    assert max(counts.values()) <= 0.25 * draws, counts  # 3/16; identity was 1/2


def test_elastic_deformation_bends_image_and_mask_alike() -> None:
    """The elastic option moves pixels by a smooth field: straight stripes come out curved,
    with the mask still on the image's stripes and no new mask values."""
    t = build_train_transform({"elastic": {"p": 1.0, "alpha": 60, "sigma": 6}})
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 8::16] = 1
    mask[:, 9::16] = 1
    image = (mask * 200)[:, :, None].astype(np.uint8)
    out = t(image=image, mask=mask)
    assert set(np.unique(out["mask"])) <= {0, 1}
    assert not np.array_equal(out["mask"], mask)
    columns = [np.flatnonzero(row)[:1] for row in out["mask"][4:-4]]  # first stripe per row
    assert len({int(c[0]) for c in columns if len(c)}) > 1, "the stripes stayed straight"
    agree = (out["image"][:, :, 0] > 100) == (out["mask"] == 1)
    assert agree.mean() > 0.9


def test_pad_collate_pads_masks_with_ignore() -> None:
    a = {"image": torch.ones(1, 4, 6), "mask": torch.zeros(4, 6, dtype=torch.long), "name": "a"}
    b = {"image": torch.ones(1, 5, 3), "mask": torch.ones(5, 3, dtype=torch.long), "name": "b"}
    batch = pad_collate([a, b])
    assert batch["image"].shape == (2, 1, 5, 6) and batch["mask"].shape == (2, 5, 6)
    assert (
        batch["mask"][0, 4].eq(IGNORE_INDEX).all()
        and batch["mask"][1, :, 3:].eq(IGNORE_INDEX).all()
    )
    assert batch["name"] == ["a", "b"]


# ---------------------------------------------------------------- splits


def test_splits_reproducible_disjoint_complete() -> None:
    names = [f"{i}.png" for i in range(20)]
    s = make_splits(names, 0.2, 0.1, seed=3)
    assert make_splits(list(reversed(names)), 0.2, 0.1, seed=3) == s
    assert make_splits(names, 0.2, 0.1, seed=4) != s
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (14, 4, 2)
    assert sorted(s["train"] + s["val"] + s["test"]) == sorted(names)


def test_splits_edge_cases(tmp_path: Path) -> None:
    s = make_splits(["a", "b", "c"], 0.1, 0.0, seed=0)
    assert len(s["val"]) == 1 and s["test"] == []
    with pytest.raises(ValueError, match="add images"):
        make_splits(["a", "b"], 0.4, 0.4, seed=0)
    save_splits(s, tmp_path / "splits.json")
    assert load_splits(tmp_path / "splits.json") == s


def test_datamodule_writes_and_reuses_its_split(folder: Path, tmp_path: Path) -> None:
    splits = tmp_path / "run" / "splits.json"
    kwargs = dict(
        root=str(folder), in_channels=1, num_classes=2, mask_values=[0, 255],
        class_names=["bg", "fg"], crop_size=32, batch_size=2, splits_path=str(splits),
    )  # fmt: skip
    dm = SegDataModule(**kwargs, split_seed=0)
    dm.setup("fit")
    assert splits.is_file()
    first = load_splits(splits)
    dm2 = SegDataModule(**kwargs, split_seed=99)  # another seed, but the run's split is kept
    dm2.setup("fit")
    assert dm2.splits == first
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 32, 32)
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[2:] == (40, 48)  # whole images, no augmentation


def test_split_listing_vanished_images_is_refused(folder: Path, tmp_path: Path) -> None:
    splits = tmp_path / "splits.json"
    save_splits({"train": ["gone.png"], "val": [], "test": []}, splits)
    dm = SegDataModule(
        str(folder), 1, 2, ["bg", "fg"], [0, 255], splits_path=str(splits), crop_size=32
    )
    with pytest.raises(FileNotFoundError, match="gone.png"):
        dm.setup("fit")


def test_write_folder_rgb(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "rgb", n=2, channels=3)
    assert read_image(find_pairs(root)[0][0], 3).shape == (40, 48, 3)


# ---------------------------------------------------------------- cross-validation


def test_k_fold_covers_every_image_once_and_keeps_groups_together() -> None:
    names = [f"patient{p}_slice{s}.png" for p in range(7) for s in range(3)]
    folds = [make_folds(names, 5, k, seed=0, group_regex=r"(patient\d+)_") for k in range(5)]
    held_out = [n for f in folds for n in f["val"]]
    assert sorted(held_out) == sorted(names)  # each image is held out exactly once
    for f in folds:
        assert not set(f["train"]) & set(f["val"]) and f["test"] == []
        val_patients = {n.split("_")[0] for n in f["val"]}
        train_patients = {n.split("_")[0] for n in f["train"]}
        assert not val_patients & train_patients  # no patient straddles train and val
    assert make_folds(names, 5, 2, seed=0, group_regex=r"(patient\d+)_") == folds[2]
    assert make_folds(names, 5, 2, seed=1, group_regex=r"(patient\d+)_") != folds[2]


def test_contiguous_folds_hold_out_neighbouring_slices() -> None:
    names = [f"{i}.png" for i in range(30)]  # natural order: 0, 1, 2, ..., 29
    for k in range(5):
        val = make_folds(names, 5, k, seed=0, order="contiguous")["val"]
        assert sorted(int(n.split(".")[0]) for n in val) == list(range(6 * k, 6 * k + 6))


def test_fold_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"x\.png: data.group_regex"):
        make_folds(["a1.png", "x.png"], 2, 0, 0, group_regex=r"a(\d)")
    with pytest.raises(ValueError, match="cannot fill 5 folds"):
        make_folds(["a.png", "b.png"], 5, 0, 0)
    with pytest.raises(ValueError, match="fold_order"):
        make_folds(["a.png", "b.png"], 2, 0, 0, order="random")


def test_explicit_split_file_is_used_and_recorded(folder: Path, tmp_path: Path) -> None:
    split_file = tmp_path / "mine.json"
    mine = {"train": ["img00.png", "img01.png", "img02.png"], "val": ["img03.png"],
            "test": ["img04.png", "img05.png"]}  # fmt: skip
    save_splits(mine, split_file)
    recorded = tmp_path / "run" / "splits.json"
    dm = SegDataModule(str(folder), 1, 2, ["bg", "fg"], [0, 255], crop_size=32,
                       split_file=str(split_file), splits_path=str(recorded))  # fmt: skip
    dm.setup()
    assert dm.splits == mine and load_splits(recorded) == mine


def test_folds_through_the_datamodule(folder: Path, tmp_path: Path) -> None:
    dm = SegDataModule(str(folder), 1, 2, ["bg", "fg"], [0, 255], crop_size=32, num_folds=3,
                       fold=1, fold_order="contiguous", test_fraction=0.0,
                       splits_path=str(tmp_path / "s.json"))  # fmt: skip
    dm.setup()
    assert dm.splits["val"] == ["img02.png", "img03.png"] and dm.splits["test"] == []


# ---------------------------------------------------------------- imbalance and cache


def test_class_frequencies_and_auto_weights(folder: Path, tmp_path: Path) -> None:
    from tests.conftest import compose_train
    from unet_seg.train import build_datamodule, build_module

    cfg = compose_train(["data=folder", f"data.root={folder}", "data.in_channels=1",
                         "data.crop_size=32", "loss.class_weights=auto",
                         "arch.base_channels=4"])  # fmt: skip
    dm = build_datamodule(cfg, tmp_path)
    freq = dm.class_frequencies()
    masks = [cv2.imread(str(m), cv2.IMREAD_UNCHANGED) > 0 for _, m in dm.datasets["train"].pairs]
    fg = np.mean(np.concatenate([m.ravel() for m in masks]))
    assert freq == pytest.approx([1 - fg, fg])
    module = build_module(cfg, dm)
    weights = module.hparams.loss["class_weights"]
    assert weights == pytest.approx(list(np.median(freq) / freq))
    assert weights[1] > weights[0]  # the rarer foreground weighs more


def test_cache_keeps_decoded_samples(folder: Path) -> None:
    ds = SegDataset(find_pairs(folder), MaskEncoding([0, 255]), 1, [0.5], [0.25], cache=True)
    first = ds.load(0)
    assert ds.load(0)[0] is first[0]  # served from memory
    (folder / "images" / "img00.png").unlink()
    assert ds[0]["image"].shape == (1, 40, 48)  # still there after the file is gone


def test_ratio_splits_keep_groups_together() -> None:
    names = [f"{car:03d}_{angle:02d}.jpg" for car in range(20) for angle in range(1, 17)]
    s = make_splits(names, 0.2, 0.1, seed=0, group_regex=r"^(\d+)_")
    cars = {k: {n.split("_")[0] for n in v} for k, v in s.items()}
    assert not cars["train"] & cars["val"] and not cars["train"] & cars["test"]
    assert not cars["val"] & cars["test"]
    assert (len(cars["val"]), len(cars["test"]), len(cars["train"])) == (4, 2, 14)


def test_sampler_repeats_and_is_a_function_of_seed_and_epoch() -> None:
    from unet_seg.data.sampler import SeededShuffleSampler

    s = SeededShuffleSampler(5, seed=3, repeats=3)
    s.set_epoch(2)
    first = list(s)
    assert len(first) == len(s) == 15
    assert sorted(i for i, _ in first) == sorted(list(range(5)) * 3)
    assert len({seed for _, seed in first}) == 15  # a new patch each time
    again = SeededShuffleSampler(5, seed=3, repeats=3)
    again.set_epoch(2)
    assert list(again) == first
    again.set_epoch(3)
    assert list(again) != first


def test_ddp_shares_cover_the_epoch_and_validation_once() -> None:
    from unet_seg.data.sampler import SeededShuffleSampler, ShardSampler

    whole = SeededShuffleSampler(7, seed=1)
    shares = [SeededShuffleSampler(7, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for s in (whole, *shares):
        s.set_epoch(4)
    dealt = [item for s in shares for item in s]
    assert len(shares[0]) == len(shares[1]) == 4  # equal shares, one item padded
    assert set(dealt) == set(whole)  # same items, same augmentation seeds
    val = [list(ShardSampler(7, r, 2)) for r in (0, 1)]
    assert sorted(val[0] + val[1]) == list(range(7))  # nothing repeated


def test_folds_can_share_a_held_out_test_split() -> None:
    names = [f"{i}.png" for i in range(20)]
    folds = [make_folds(names, 4, k, seed=5, test_fraction=0.2) for k in range(4)]
    tests = {tuple(f["test"]) for f in folds}
    assert len(tests) == 1 and len(folds[0]["test"]) == 4  # one test split for every fold
    test = set(folds[0]["test"])
    held_out = [n for f in folds for n in f["val"]]
    assert sorted(held_out) == sorted(set(names) - test)  # the rest is cross-validated
    assert all(not test & set(f["train"]) for f in folds)


def test_grey_images_into_a_colour_net_are_named(folder: Path, tmp_path: Path, caplog) -> None:
    """data=folder's in_channels is 3: grey images train, but not silently."""
    dm = SegDataModule(str(folder), 3, 2, ["bg", "fg"], [0, 255], crop_size=32,
                       splits_path=str(tmp_path / "splits.json"))  # fmt: skip
    with caplog.at_level("WARNING"):
        assert dm.check() == []
    assert "are grey but data.in_channels=3" in caplog.text
    assert not (tmp_path / "splits.json").exists()  # checking writes nothing
    caplog.clear()
    grey = SegDataModule(str(folder), 1, 2, ["bg", "fg"], [0, 255], crop_size=32)
    with caplog.at_level("WARNING"):
        assert grey.check() == []
    assert "data.in_channels" not in caplog.text
