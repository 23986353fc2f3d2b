"""Instance targets, their watershed decoding, instance scores, and the instance path
through the data, the predictor, predict and evaluate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import CONF, compose_train
from unet_seg.build import build_datamodule, plan_config, target_classes
from unet_seg.check_data import train_command
from unet_seg.config import to_plain
from unet_seg.data.contract import DataContract
from unet_seg.data.readers import read_array
from unet_seg.inference import Predictor
from unet_seg.instances import (
    INSTANCE_CLASSES,
    THRESHOLDS,
    InstanceBook,
    decode_instances,
    instance_scores,
    instance_target,
    overlaps,
    write_objects,
)
from unet_seg.module import SegModule
from unet_seg.scores import object_counts
from unet_seg.visualize import object_colours, outline_objects

# ---------------------------------------------------------------- the target


def touching_squares() -> np.ndarray:
    """Objects 1 (6x6) and 2 (6x4) side by side, 3 (5x5) alone, 4 cut by the image edge."""
    labels = np.zeros((16, 20), np.uint16)
    labels[2:8, 2:8] = 1
    labels[2:8, 8:12] = 2
    labels[10:15, 3:8] = 3
    labels[10:16, 15:20] = 4
    return labels


def test_target_has_a_rim_of_boundary_around_each_object() -> None:
    target = instance_target(touching_squares(), boundary_width=1)
    assert target.dtype == np.uint8
    assert (target[touching_squares() == 0] == 0).all()
    # object 1: its outer ring (rows 2, 7; columns 2, 7 where it meets object 2) is boundary
    assert (target[3:7, 3:7] == 1).all() and (target[2, 2:8] == 2).all()
    assert (target[2:8, 7] == 2).all() and (target[2:8, 8] == 2).all()  # 2-pixel border
    # object 3 (5x5): a 3x3 interior
    assert (target[10:15, 3:8] > 0).sum() == 25 and (target[10:15, 3:8] == 1).sum() == 9
    # object 4 touches the image edge: no boundary along it, only where it meets background
    assert (target[15, 16:20] == 1).all() and (target[10:16, 15] == 2).all()
    wide = instance_target(touching_squares(), boundary_width=2)
    assert (wide[10:15, 3:8] == 1).sum() == 1  # only the centre of the 5x5 is 2 px inside


def test_empty_and_single_object_targets() -> None:
    assert not instance_target(np.zeros((5, 6), np.uint16)).any()
    one = np.zeros((7, 7), np.int32)
    one[1:6, 1:6] = 9
    assert np.bincount(instance_target(one).ravel()).tolist() == [24, 9, 16]


# ---------------------------------------------------------------- decoding


def probabilities_of(target: np.ndarray, sharpness: float = 0.9) -> np.ndarray:
    """`[3, H, W]` probabilities that put `sharpness` on each pixel's class."""
    onehot = np.stack([(target == c) for c in range(3)]).astype(np.float32)
    return onehot * sharpness + (1 - onehot) * (1 - sharpness) / 2


def test_decode_separates_touching_objects_of_a_perfect_prediction() -> None:
    truth = touching_squares()
    found = decode_instances(probabilities_of(instance_target(truth)), min_size=4)
    assert found.dtype == np.int32 and found.max() == 4
    iou, _, n_true, n_pred = overlaps(found, truth)
    assert (n_true, n_pred) == (4, 4) and np.sort(iou)[-4:].min() > 0.6
    assert instance_scores(found, truth)["f1@0.5"] == 1.0
    assert np.array_equal(found, decode_instances(probabilities_of(instance_target(truth)), 4))


def test_decode_keeps_seedless_foreground_and_drops_small_objects() -> None:
    target = np.zeros((12, 20), np.uint8)
    target[1:8, 1:8], target[2:7, 2:7] = 2, 1  # an object with an interior
    target[2:5, 12:15] = 2  # boundary only: no seed, still an object
    target[10, 18] = 2  # a 1-pixel speck
    found = decode_instances(probabilities_of(target), min_size=2)
    assert found.max() == 2 and (found[2:5, 12:15] == 2).all() and found[10, 18] == 0
    assert (found[1:8, 1:8] == 1).all()
    assert decode_instances(probabilities_of(target), min_size=10).max() == 1
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        decode_instances(np.zeros((2, 4, 4), np.float32))


# ---------------------------------------------------------------- scores


def expected(ap: list[float], f1: float, sq: float) -> dict[str, float]:
    """Hand-computed scores: AP per threshold, F1@0.5, SQ (PQ = SQ x RQ, RQ = F1)."""
    pq = 0.0 if math.isnan(sq) else sq * f1
    return {"ap": sum(ap) / 10, "f1@0.5": f1, "sq": sq, "rq": f1, "pq": pq,
            **{f"ap@{t:.2f}": a for t, a in zip(THRESHOLDS, ap, strict=True)}}  # fmt: skip


def assert_scores(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value), key


def test_scores_of_a_perfect_match() -> None:
    truth = touching_squares()
    pred = truth.astype(np.int32) * 7  # other numbers, same objects
    assert_scores(instance_scores(pred, truth), expected([1.0] * 10, 1.0, 1.0))


def test_scores_of_a_split() -> None:
    truth = np.zeros((12, 12), np.uint8)
    truth[1:11, 1:11] = 1  # 100 pixels
    pred = np.zeros((12, 12), np.int32)
    pred[1:11, 1:7], pred[1:11, 7:11] = 1, 2  # 60 + 40: the larger piece has IoU 0.6
    # IoU 0.6 > t for t = 0.5, 0.55: TP 1, FP 1, FN 0 -> 1/2; above: TP 0, FP 2, FN 1 -> 0
    want = expected([0.5, 0.5] + [0.0] * 8, f1=2 / 3, sq=0.6)
    assert_scores(instance_scores(pred, truth), want)


def test_scores_of_a_merge() -> None:
    truth = np.zeros((12, 17), np.uint8)
    truth[1:11, 1:11], truth[1:11, 11:16] = 1, 2  # 100 and 50 pixels, touching
    pred = (truth > 0).astype(np.int32)  # one object of 150: IoU 2/3 with the first
    # 2/3 > t up to t = 0.65: TP 1, FP 0, FN 1 -> 1/2; above: TP 0, FP 1, FN 2 -> 0
    want = expected([0.5] * 4 + [0.0] * 6, f1=2 / 3, sq=2 / 3)
    assert_scores(instance_scores(pred, truth), want)


def test_scores_of_a_miss() -> None:
    truth = touching_squares()[:, :9]  # objects 1 and 3 whole, a sliver of 2
    truth = np.where(truth == 2, 0, truth)
    pred = np.where(truth == 3, 0, truth)  # object 3 missed, object 1 exact
    assert_scores(instance_scores(pred, truth), expected([0.5] * 10, 2 / 3, 1.0))


def test_scores_of_empty_truth_empty_prediction_and_both() -> None:
    some = touching_squares()
    none = np.zeros_like(some)
    zero = expected([0.0] * 10, 0.0, float("nan"))
    assert_scores(instance_scores(some, none), zero)  # every object a false positive
    assert_scores(instance_scores(none, some), zero)  # every object missed
    assert_scores(instance_scores(none, none), dict.fromkeys(zero, 1.0))


def test_overlaps_match_a_loop_over_objects() -> None:
    rng = np.random.default_rng(0)
    truth = cv2.resize(rng.integers(0, 6, (6, 8)).astype(np.uint8), (40, 30),
                       interpolation=cv2.INTER_NEAREST)  # fmt: skip
    pred = cv2.resize(rng.integers(0, 9, (5, 7)).astype(np.uint8), (40, 30),
                      interpolation=cv2.INTER_NEAREST)  # fmt: skip
    iou, true_index, _, _ = overlaps(pred, truth)
    brute = {}
    for t in np.unique(truth[truth > 0]):
        for p in np.unique(pred[pred > 0]):
            inter = ((truth == t) & (pred == p)).sum()
            if inter:
                brute[(t, p)] = inter / ((truth == t) | (pred == p)).sum()
    assert sorted(iou.tolist()) == pytest.approx(sorted(brute.values()))
    assert len(true_index) == len(brute)


def test_book_reduces_per_image_and_pooled() -> None:
    truth = np.zeros((12, 12), np.uint8)
    truth[1:11, 1:11] = 1
    book = InstanceBook()
    assert book.add(truth.astype(np.int32), truth)["ap"] == 1.0
    assert book.add(np.zeros_like(truth), truth)["ap"] == 0.0
    summary = book.summary()
    assert summary["instances/ap/image_mean"] == 0.5
    # pooled: TP 1, FP 0, FN 1 at every threshold
    assert summary["instances/ap/pooled"] == 0.5
    assert summary["instances/f1@0.5/pooled"] == pytest.approx(2 / 3)
    assert summary["instances/sq/image_mean"] == 1.0  # the empty image has no SQ


def test_object_counts_take_predicted_labels_as_they_are() -> None:
    truth = touching_squares()
    as_labels = object_counts(truth, truth, labelled=True)
    assert as_labels["matched"] == 4 and as_labels["touching_pairs_separated"] == 1
    assert object_counts(truth, truth)["touching_pairs_separated"] == 0  # components merge


# ---------------------------------------------------------------- files and pictures


def test_objects_are_written_as_16_bit_png_and_read_back(tmp_path: Path) -> None:
    objects = touching_squares().astype(np.int32) * 300  # values past 255
    path = write_objects(tmp_path, "a", objects)
    assert path.name == "a.png" and np.array_equal(read_array(path), objects)
    assert read_array(path).dtype == np.uint16


def test_outlines_take_each_objects_colour() -> None:
    objects = touching_squares().astype(np.int32)
    image = np.full((*objects.shape, 3), 50, np.uint8)
    drawn = outline_objects(image, objects)
    colours = object_colours(4)
    assert len({tuple(c) for c in colours[1:]}) == 4
    assert (drawn[2, 4] == colours[1]).all() and (drawn[4, 11] == colours[2]).all()
    assert (drawn[4, 4] == 50).all() and (drawn[0, 0] == 50).all()  # inside, background


# ---------------------------------------------------------------- config and data


def synthetic_overrides(tmp_path: Path) -> list[str]:
    return [f"run_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'synthetic'}",
            "data.synthetic.num_images=8", "data.synthetic.size=64", "data.crop_size=48",
            "data.batch_size=4", "arch.base_channels=4", "logger=none",
            "callbacks.validation_images.num_samples=1", "data.target=instances"]  # fmt: skip


def test_the_target_sets_the_classes_the_net_learns(tmp_path: Path) -> None:
    cfg, _ = plan_config(compose_train(synthetic_overrides(tmp_path)))
    assert cfg.data.num_classes == 3 and cfg.arch.num_classes == 3
    contract = DataContract.from_config(cfg.data)
    assert contract.class_names == list(INSTANCE_CLASSES) and contract.out_channels == 3
    assert contract.instances == {"boundary_width": 1, "min_size": 16, "seed_threshold": 0.7,
                                  "weight_map": True}  # fmt: skip
    assert DataContract.from_dict(contract.to_dict()) == contract
    assert target_classes(compose_train()).data.num_classes == 2  # semantic: untouched
    with pytest.raises(ValueError, match="leave them to the target"):
        DataContract.from_config(compose_train(["data.target=instances"]).data)
    with pytest.raises(ValueError, match="data.target='blobs'"):
        DataContract.from_config(compose_train(["data.target=blobs"]).data)


def test_every_split_carries_the_three_classes(tmp_path: Path) -> None:
    cfg, _ = plan_config(compose_train(synthetic_overrides(tmp_path)))
    datamodule = build_datamodule(cfg, tmp_path / "run")
    datamodule.setup()
    for split in ("train", "val", "test"):
        dataset = datamodule.datasets[split]
        name = dataset.pairs[0][0].name
        target = instance_target(read_array(tmp_path / "synthetic" / "instances" / name))
        assert np.array_equal(dataset.mask(0), target)
        assert set(np.unique(dataset[0]["mask"].numpy())) <= {0, 1, 2}
    assert set(datamodule.class_frequencies().nonzero()[0]) == {0, 1, 2}
    # training weighs by the interiors' weight map unless data.instances.weight_map=false
    assert "weight" in datamodule.datasets["train"][0] and "weight" not in dataset[0]
    cfg, _ = plan_config(compose_train([*synthetic_overrides(tmp_path),
                                        "data.instances.weight_map=false"]))  # fmt: skip
    assert build_datamodule(cfg, tmp_path / "run").weight_map is None


def test_a_planned_folder_of_16_bit_instance_labels_takes_the_target(tmp_path: Path) -> None:
    """`data=auto data.target=instances` alone: the plan reads the masks as instance labels,
    the target sets the classes, every split gets the three classes."""
    from unet_seg.data.synthetic import render_sample

    root = tmp_path / "tiles"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(6):
        image, objects = render_sample(np.random.default_rng([5, i]), 64)
        cv2.imwrite(str(root / "images" / f"{i}.png"), image.astype(np.uint16) * 200)
        cv2.imwrite(str(root / "masks" / f"{i}.png"), objects.astype(np.uint16))
    cfg, plan = plan_config(compose_train([
        "data=auto", f"data.root={root}", "data.target=instances", f"run_dir={tmp_path / 'run'}",
        f"paths.output_dir={tmp_path}"]))  # fmt: skip
    assert plan["plan"]["mask_format"]["value"] == "instances"
    assert cfg.data.num_classes == cfg.arch.num_classes == 3
    datamodule = build_datamodule(cfg, tmp_path / "run")
    datamodule.setup()
    assert "data.target=instances" in train_command(to_plain(cfg.data), plan)
    name = datamodule.datasets["val"].pairs[0][0].name
    expected = instance_target(read_array(root / "masks" / name))
    assert np.array_equal(datamodule.datasets["val"].mask(0), expected)


def test_the_target_needs_instance_labels(tmp_path: Path, folder: Path) -> None:
    cfg = target_classes(compose_train(["data=folder", f"data.root={folder}",
                                        "data.target=instances"]))  # fmt: skip
    with pytest.raises(ValueError, match="data.mask_format=instances"):
        build_datamodule(cfg, tmp_path)


def test_the_weight_map_of_a_target_weighs_touching_boundaries_and_carves_nothing(
    tmp_path: Path,
) -> None:
    from unet_seg.data.dataset import SegDataset
    from unet_seg.data.masks import MaskEncoding

    labels = np.zeros((40, 60), np.uint16)
    labels[5:15, 5:15], labels[5:15, 15:25], labels[25:35, 45:55] = 1, 2, 3
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), (labels > 0).astype(np.uint8) * 200)
    cv2.imwrite(str(tmp_path / "a.png"), labels)
    dataset = SegDataset(
        [(tmp_path / "images" / "a.png", tmp_path / "a.png")], MaskEncoding([0, 1]), 1,
        [0.5], [0.25], instance_paths=[tmp_path / "a.png"], instance_target=1,
        weight_map={"w0": 10.0, "sigma": 5.0},
    )  # fmt: skip
    sample = dataset[0]
    assert np.array_equal(sample["mask"].numpy(), instance_target(labels))  # not carved
    weight = sample["weight"].numpy()
    # the boundary between touching objects 1 and 2 against the rim of lone object 3
    assert weight[10, 14] > 5 * weight[25, 50] and weight[10, 15] > 5 * weight[30, 54]


# ---------------------------------------------------------------- prediction


def instance_module(boundary_width: int = 1) -> SegModule:
    cfg, _ = plan_config(compose_train(["data.target=instances", "arch.base_channels=4"]))
    contract = DataContract.from_config(cfg.data)
    module = SegModule(arch=dict(cfg.arch), loss={}, optimizer={"_target_": "torch.optim.SGD",
                       "_partial_": True, "lr": 0.1}, data=contract.to_dict())  # fmt: skip
    return module.eval()


def test_tiles_are_decoded_after_blending(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bar crossing four tiles comes out as one object (decoding per tile would cut it)."""
    truth = np.zeros((40, 100), np.uint16)
    truth[10:20, 5:95] = 1
    truth[22:30, 40:60] = 2
    target = instance_target(truth)
    image = (target * 100).astype(np.uint8)  # 0, 100, 200: the classes as grey levels
    predictor = Predictor(instance_module(), mode="tile", tile_size=32, overlap=0.25)

    def oracle(x: torch.Tensor, with_context: bool = False) -> torch.Tensor:
        grey = x[:, 0] * 0.25 + 0.5  # undo the normalisation
        classes = torch.round(grey * 255 / 100).long().clamp(0, 2)
        return torch.nn.functional.one_hot(classes, 3).permute(0, 3, 1, 2).float()

    monkeypatch.setattr(predictor, "_tta_probabilities", oracle)
    objects = predictor.instances(image)
    assert objects.max() == 2 and (objects[10:20, 5:95] == objects[15, 50]).all()
    assert instance_scores(objects, truth)["ap@0.75"] == 1.0
    assert np.array_equal(predictor.predict(image), objects)


def test_fill_holes_is_refused_for_an_instance_model() -> None:
    from unet_seg.postprocess import PostProcess

    with pytest.raises(ValueError, match="postprocess.min_size alone"):
        Predictor(instance_module(), postprocess=PostProcess(fill_holes=True))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_train_predict_and_evaluate_an_instance_target(tmp_path: Path) -> None:
    from unet_seg.evaluate import evaluate
    from unet_seg.predict import predict
    from unet_seg.train import train

    metrics = train(compose_train([*synthetic_overrides(tmp_path), "trainer.max_epochs=1"]))
    assert "val/dice/boundary" in metrics
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        predict_cfg = compose(config_name="predict", overrides=[
            f"ckpt={ckpt}", f"input={tmp_path / 'synthetic' / 'images'}",
            f"output={tmp_path / 'pred'}", "postprocess.min_size=1"])  # fmt: skip
        evaluate_cfg = compose(config_name="evaluate", overrides=[
            f"run_dir={tmp_path / 'run'}", f"output={tmp_path / 'eval.json'}"])  # fmt: skip
    written = predict(predict_cfg)
    assert len(written) == 8 and all(p.suffix == ".png" for p in written)
    labels = read_array(written[0])
    assert labels.dtype == np.uint16 and labels.shape == (64, 64)
    assert (tmp_path / "pred" / "overlays" / written[0].name).is_file()
    results = evaluate(evaluate_cfg)
    test_names = json.loads((tmp_path / "run" / "splits.json").read_text())["test"]
    true_objects = sum(int(read_array(tmp_path / "synthetic" / "instances" / n).max())
                       for n in test_names)  # fmt: skip
    assert results["objects/true_objects"] == true_objects > len(test_names)
    for key in ("instances/ap/image_mean", "instances/f1@0.5/pooled", "instances/pq/pooled",
                "objects/matched", "dice/pooled/foreground"):  # fmt: skip
        assert key in results
    header = (tmp_path / "eval_per_image.csv").read_text().splitlines()[0]
    assert "instances/ap" in header and "instances/pq" in header and "objects/split" in header
