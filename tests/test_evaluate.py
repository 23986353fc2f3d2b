"""`evaluate` over a folder: the scores it returns agree with its JSON, CSV and picture,
and with an independent recomputation from the predictions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF, write_folder
from tests.forked import Forker
from tests.test_inference import make_checkpoint
from unet_seg import load_model
from unet_seg.data.dataset import find_pairs, read_image
from unet_seg.data.readers import read_array
from unet_seg.evaluate import evaluate
from unet_seg.scores import RULES, ScoreBook
from unet_seg.visualize import FALSE_POSITIVE, MISSED, class_colours

pytestmark = pytest.mark.usefixtures("one_thread")


def config(**overrides) -> OmegaConf:
    """`conf/evaluate.yaml` as composed from the command line (without Hydra's own node)."""
    cfg = OmegaConf.load(CONF / "evaluate.yaml")
    cfg.pop("defaults")
    cfg.device = "cpu"
    return OmegaConf.merge(cfg, overrides)


def test_evaluate_a_folder_writes_consistent_json_csv_and_picture(tmp_path: Path) -> None:
    data = write_folder(tmp_path / "data", n=5, size=(40, 56))
    sample = read_image(data / "images" / "img00.png", 1)[:, :, 0]
    ckpt = make_checkpoint(tmp_path / "m.ckpt", calibrate=sample)
    output = tmp_path / "eval" / "scores.json"
    cfg = config(ckpt=str(ckpt), data_root=str(data), output=str(output), tile_size=32,
                 tta="flips", worst=3)  # fmt: skip
    scores = evaluate(cfg)

    assert scores["images"] == 5
    for metric in ("dice", "iou", "precision", "recall", "hd95", "msd"):
        for reduction in ("pooled", "image_mean"):
            for cls in ("background", "class1", "mean_fg"):
                # distances of the scored classes: the background's surface is the others'
                distance = metric in ("hd95", "msd") and cls == "background"
                assert (f"{metric}/{reduction}/{cls}" in scores) != distance
    assert scores["dice"] == scores["dice/pooled/mean_fg"] == scores["dice/pooled/class1"]

    saved = json.loads(output.read_text())
    assert saved["rules"] == list(RULES)
    assert saved["inference"] == {"mode": "tile", "tta": "flips", "level": None,
                                  "tile_size": 32, "overlap": 0.25, "halo": 0}  # fmt: skip
    for key, value in scores.items():
        if value == value:  # not NaN
            assert saved[key] == pytest.approx(value), key

    with (tmp_path / "eval" / "scores_per_image.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [f"img{i:02d}.png" for i in range(5)]
    dice = [float(r["dice/class1"]) for r in rows if r["dice/class1"]]
    assert len(dice) == scores["n/dice/class1"]
    assert np.mean(dice) == pytest.approx(scores["dice/image_mean/class1"])

    picture = cv2.imread(str(tmp_path / "eval" / "scores_worst.png"))
    height = 2 * 40  # 40 x 56 images, enlarged twice to reach 128 pixels on their long side
    assert picture is not None and picture.shape[0] > 3 * height  # three rows of panels
    assert picture.shape[1] >= 4 * 2 * 56  # four panels of the enlarged width
    top = 3 * (22 + height + 4)  # below 3 x (title, panels, gap): the legend
    assert (picture[top - 4 : top] == 255).all()  # the last gap, white
    assert not (picture[top - 5] == 255).all()  # and the last row of panels above it
    band = picture[top:, :, ::-1]
    for colour in (class_colours(2)[1], FALSE_POSITIVE, MISSED):  # class1, then the errors
        assert (band == colour).all(-1).sum() >= 9 * 9, colour

    # the same scores from the predictions, recomputed outside evaluate
    model = load_model(ckpt, device="cpu", tile_size=32, tta="flips")
    book = ScoreBook(["background", "class1"])
    for image_path, mask_path in find_pairs(data):
        labels = model.labels(read_image(image_path, 1))
        book.add(image_path.name, labels, (read_array(mask_path) > 0).astype(np.uint8))
    again = book.summary()
    assert scores["n/hd95/class1"] > 0  # the calibrated net predicts some foreground
    for key in ("dice/pooled/class1", "hd95/image_mean/class1", "recall/pooled/background",
                "hd95/pooled/class1", "precision/image_mean/class1"):  # fmt: skip
        assert scores[key] == pytest.approx(again[key])


def test_evaluate_a_run_split_with_unet_plus_plus_levels(tmp_path: Path) -> None:
    """run_dir= reads the run's config and split; level= prunes UNet++."""
    data = write_folder(tmp_path / "data", n=4)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    sample = read_image(data / "images" / "img00.png", 1)[:, :, 0]
    make_checkpoint(run / "checkpoints" / "best.ckpt", "nested", calibrate=sample, crop_size=32)
    OmegaConf.save({"data": {"root": str(data), "images_dir": "images", "masks_dir": "masks",
                             "mask_suffix": "", "crop_size": 32}}, run / "config.yaml")  # fmt: skip
    (run / "splits.json").write_text(
        json.dumps(
            {"train": ["img00.png"], "val": ["img01.png"], "test": ["img02.png", "img03.png"]}
        )
    )
    dice = {}
    for level in (1, 4):
        scores = evaluate(config(run_dir=str(run), level=level, mode="whole"))
        assert scores["images"] == 2
        dice[level] = scores["dice/image_mean/background"]
    assert (run / "evaluation_test.json").is_file()
    assert (run / "evaluation_test_per_image.csv").is_file()
    assert dice[1] != dice[4]
    resized = evaluate(config(run_dir=str(run), mode="resize", split="val"))  # size: the contract's
    assert resized["images"] == 1


def test_evaluate_counts_separated_objects_when_instances_exist(tmp_path: Path) -> None:
    """With instance labels beside the masks, evaluate also reports how many true objects
    the prediction separates, and the totals are the sums of the per-image counts."""
    from unet_seg.scores import object_counts

    data = write_folder(tmp_path / "data", n=3, size=(40, 56))
    (data / "instances").mkdir()
    for mask_path in sorted((data / "masks").iterdir()):
        mask = read_array(mask_path) > 0
        _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        cv2.imwrite(str(data / "instances" / mask_path.name), labels.astype(np.uint16))
    sample = read_image(data / "images" / "img00.png", 1)[:, :, 0]
    ckpt = make_checkpoint(tmp_path / "m.ckpt", calibrate=sample)
    output = tmp_path / "eval.json"
    scores = evaluate(config(ckpt=str(ckpt), data_root=str(data), output=str(output),
                             instances_dir="instances"))  # fmt: skip

    model = load_model(ckpt, device="cpu")
    expected = dict.fromkeys(("true_objects", "matched", "merged", "touching_pairs"), 0)
    for image_path, _ in find_pairs(data):
        labels = model.labels(read_image(image_path, 1))
        instances = read_array(data / "instances" / image_path.name)
        for key, value in object_counts(labels > 0, instances).items():
            if key in expected:
                expected[key] += value
    assert expected["true_objects"] > 0
    for key, value in expected.items():
        assert scores[f"objects/{key}"] == value, key
    assert json.loads(output.read_text())["objects/true_objects"] == expected["true_objects"]
    with (tmp_path / "eval_per_image.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sum(int(r["objects/matched"]) for r in rows) == scores["objects/matched"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        evaluate(config(ckpt=str(ckpt), data_root=str(data), output=str(output),
                        instances_dir="nowhere"))  # fmt: skip


def test_evaluate_and_predict_take_trains_data_options(tmp_path: Path) -> None:
    """`data=folder data.root=DIR` (with its folder names) works as `data_root=DIR` does."""
    from hydra import compose, initialize_config_dir

    from unet_seg.predict import predict

    data = write_folder(tmp_path / "data", n=3, size=(40, 56))
    (data / "images").rename(data / "pictures")
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    overrides = [f"ckpt={ckpt}", "data=folder", f"data.root={data}", "data.images_dir=pictures",
                 "device=cpu"]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("evaluate", overrides=[*overrides, f"output={tmp_path / 'e.json'}"])
        written = compose("predict", overrides=[*overrides, f"output={tmp_path / 'masks'}"])
    assert evaluate(cfg)["images"] == 3
    assert sorted(p.name for p in predict(written)) == ["img00.png", "img01.png", "img02.png"]


def test_the_worst_picture_of_an_instance_target_draws_each_object(tmp_path: Path) -> None:
    """Two touching true nuclei predicted as one object: the semantic foreground agrees
    everywhere, the object panels do not (two colours against one)."""
    from unet_seg.evaluate import Scored, WorstCases
    from unet_seg.visualize import object_colours

    true = np.zeros((32, 48), np.int32)
    true[8:24, 6:22], true[8:24, 22:40] = 1, 2  # two nuclei side by side
    merged = (true > 0).astype(np.int32)  # one object covering both
    foreground = (true > 0).astype(np.uint8)
    image = np.full((32, 48, 1), 40, np.uint8)
    worst = WorstCases(1, ["background", "foreground"], min_side=0)  # panels at their size
    row = {"image": "a.png", "dice/mean_fg": 1.0}
    views = lambda: [(np.repeat(image, 3, axis=2), foreground, foreground)]  # noqa: E731
    worst.offer(row, Scored("a.png", foreground, foreground, views, objects=(true, merged)))
    assert worst.write(tmp_path / "worst.png")
    picture = cv2.imread(str(tmp_path / "worst.png"))[:, :, ::-1]  # BGR -> RGB
    top, width = 22, 48 + 4  # the title band, then panels of 48 pixels and gaps of 4
    truth, pred = (
        picture[top : top + 32, width : width + 48],
        picture[top : top + 32, 2 * width :][:, :48],
    )
    colours = object_colours(2)
    inside = (16, 12), (16, 30)  # one pixel inside each true nucleus
    assert tuple(truth[inside[0]]) != tuple(truth[inside[1]])  # two objects, two colours
    assert tuple(pred[inside[0]]) == tuple(pred[inside[1]])  # merged: one colour
    assert truth[8, 6:22].tolist() == [colours[1].tolist()] * 16  # outlined in its colour
    assert truth[8, 22:40].tolist() == [colours[2].tolist()] * 18


def test_the_worst_picture_draws_unlabelled_pixels_grey_in_every_rank() -> None:
    """Unlabelled truth (`PAD_LABEL`) was drawn as a class of its own: tinted in the truth
    panel and sky blue ("missed") in the errors (NumPy 2 wrote IGNORE_INDEX = -1 into the
    uint8 truth as 255). Now grey in the errors and untinted in the truth, for an image and
    for a volume's three views."""
    from unet_seg.data.masks import PAD_LABEL
    from unet_seg.evaluate import Scored, WorstCases, orthogonal_slices

    truth = np.zeros((6, 20, 30), np.uint8)
    truth[:, 5:12, 8:16] = 1
    truth[:, :, :4] = PAD_LABEL  # the first four columns unlabelled
    pred = np.zeros_like(truth)
    grey = np.full((6, 20, 30, 3), 90, np.uint8)
    views = {
        "image": lambda: [(grey[0], truth[0], pred[0])],
        "volume": lambda: list(
            zip(
                *(orthogonal_slices(v, (1.0, 1.0, 1.0), (3, 10, 12)) for v in (grey, truth, pred)),
                strict=True,
            )
        ),  # fmt: skip
    }
    for kind, drawn in views.items():
        worst = WorstCases(1, ["background", "class1"], min_side=0)  # panels at their size
        rows = worst._rows(Scored("a", truth, pred, drawn))
        for row, (_, t, _) in zip(rows, drawn(), strict=True):
            width = t.shape[1] + 4  # a panel and its gap
            unlabelled = t == PAD_LABEL
            if not unlabelled.any():  # the sagittal view cuts through a labelled column
                continue
            truth_panel, errors = row[:, width : width + t.shape[1]], row[:, 3 * width :]
            assert (truth_panel[unlabelled] == 90).all(), kind  # untinted: the grey input
            assert (errors[unlabelled] == errors[unlabelled][0]).all(), kind
            r, g, b = (int(v) for v in errors[unlabelled][0])
            assert r == g == b, (kind, (r, g, b))  # grey, not a colour of the legend
            assert (errors[t == 1] == MISSED).all(-1).all(), kind  # the misses still show


def test_evaluate_without_data_says_what_to_type(tmp_path: Path, forker: Forker) -> None:
    """`evaluate ckpt=PATH` without a data root ended in a ValueError traceback."""
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    with pytest.raises(ValueError, match=r"add data_root=DIR .*or give run_dir=RUN"):
        evaluate(config(ckpt=str(ckpt)))
    proc = forker.run(["-m", "unet_seg.evaluate", f"ckpt={ckpt}"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("evaluate needs the images to score: add data_root=DIR")
    assert not any(p.is_file() for p in (tmp_path / "outputs").rglob("*"))  # nothing left


def two_volumes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Two hand-made (truth, prediction) volumes `[2, 4, 5]` of classes 0, 1, 2 whose
    Dice (class 1, class 2) are (1.0, absent from both) and (0.4, 0.0)."""
    truth_a = np.zeros((2, 4, 5), np.uint8)
    truth_a[0, 0, :4] = 1
    truth_b = truth_a.copy()
    truth_b[0, 2, :2] = 2
    pred_b = np.zeros_like(truth_b)
    pred_b[0, 0, 0] = 1  # 1 of 4 voxels of class 1: Dice 2 / 5
    pred_b[0, 3, :2] = 2  # class 2 beside its truth: Dice 0
    return {"a": (truth_a, truth_a.copy()), "b": (truth_b, pred_b)}


def trained_and_evaluated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, background: bool
) -> tuple[float, dict]:
    """`two_volumes` scored both ways, the net replaced by their predictions: the
    `val/volume_dice` of validation steps, and `evaluate`'s scores of the same volumes."""
    import torch

    from tests.test_predict import volume_checkpoint, write_nifti
    from unet_seg import evaluate as evaluate_module
    from unet_seg.module import SegModule

    volumes = two_volumes()
    ckpt = volume_checkpoint(tmp_path / "v.ckpt", mask_values=(0, 1, 2), background=background)

    def onehot(labels: np.ndarray) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.from_numpy(labels).long(), 3).movedim(-1, 0)

    module = SegModule.from_checkpoint(ckpt)
    for truth, pred in volumes.values():
        module.volume_probability_bands = lambda v, p=pred, **_: iter([(0, onehot(p).float())])
        batch = {"image": torch.zeros(1, 1, *truth.shape),
                 "mask": torch.from_numpy(truth).long()[None]}  # fmt: skip
        module.validation_step(batch, 0)
    trained = float(module.val_volume_dice.compute())

    for name, (truth, _) in volumes.items():
        write_nifti(tmp_path / "data" / "images" / f"{name}.nii.gz", truth.astype(np.float32))
        write_nifti(tmp_path / "data" / "masks" / f"{name}.nii.gz", truth, labels=True)
    monkeypatch.setattr(
        evaluate_module,
        "case_labels",
        lambda module, loaded, cfg: volumes[loaded.name][1].astype(np.uint8),
    )
    scores = evaluate(config(ckpt=str(ckpt), data_root=str(tmp_path / "data"),
                             output=str(tmp_path / "eval" / "e.json")))  # fmt: skip
    return trained, scores


def test_volume_dice_is_one_definition_in_training_and_evaluate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`val/volume_dice` was the mean over volumes of each volume's mean (1.0 and 0.2: 0.6),
    `evaluate`'s the mean over classes of each class's mean over volumes (0.7 and 0.0:
    0.35); both are now `module.mean_over_volumes`, nnU-Net's convention."""
    trained, scores = trained_and_evaluated(tmp_path, monkeypatch, background=True)

    assert scores["dice/volume_mean/class1"] == pytest.approx(0.7)
    assert scores["dice/volume_mean/class2"] == pytest.approx(0.0)
    assert scores["dice"] == pytest.approx(0.35) and trained == pytest.approx(0.35)
    from unet_seg.module import mean_over_volumes

    per_class, mean = mean_over_volumes([[1.0, float("nan")], [0.4, 0.0]])
    assert per_class.tolist() == pytest.approx([0.7, 0.0]) and float(mean) == pytest.approx(0.35)
    per_class, mean = mean_over_volumes([[float("nan"), 0.5]])  # a class in no volume: left out
    assert per_class[0].isnan() and float(mean) == 0.5


def test_volume_dice_counts_class_0_without_a_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `data.background=false` class 0 is a real class: `val/volume_dice` and
    `evaluate`'s volume means count it (`mean` over all classes, `scores.mean_key`), as
    the 2-D scores do; both left it out before."""
    trained, scores = trained_and_evaluated(tmp_path, monkeypatch, background=False)

    background = (1.0 + 64 / 71) / 2  # volume b: 32 voxels of class 0 in both, 34 + 37 in all
    assert scores["dice/volume_mean/background"] == pytest.approx(background)
    assert scores["dice/volume_mean/class1"] == pytest.approx(0.7)
    expected = (background + 0.7 + 0.0) / 3
    assert scores["dice/volume_mean/mean"] == pytest.approx(expected)
    assert "dice/volume_mean/mean_fg" not in scores
    assert scores["dice"] == pytest.approx(expected) and trained == pytest.approx(expected)
    with open(tmp_path / "eval" / "e_per_volume.csv") as f:
        assert "dice/background" in next(csv.reader(f))


def test_evaluate_and_predict_default_to_the_overlap_validation_uses() -> None:
    """A volume run's `test/volume_dice` and `evaluate run_dir=` agree by default: volume
    windows overlap by half, as in validation (conf's 0.25 gave Dice 0.45 against the run's
    0.39 on a BraTS-sized case), and 2-D tiles keep load_model's quarter."""
    import inspect

    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF
    from unet_seg.api import load_model
    from unet_seg.inference import volume_options

    for name in ("evaluate", "predict"):
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = compose(config_name=name)
        assert volume_options(cfg)["overlap"] == 0.5, name
        assert cfg.overlap is None  # so the 2-D predictor takes load_model's default
    assert inspect.signature(load_model).parameters["overlap"].default == 0.25
