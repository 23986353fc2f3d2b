"""`DataContract`: built once from the data config, stored as plain data, every class count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import compose_train
from unet_seg.data.contract import DataContract


@pytest.mark.parametrize(
    "overrides,classes,out_channels",
    [
        ([], 2, 2),
        (["data.num_classes=1"], 2, 1),  # binary with a sigmoid: two classes, one logit
        (["data.num_classes=3", "data.mask_values=[0,1,2]", "data.class_names=[bg,a,b]"], 3, 3),
        (["data.mask_format=rgb", "data.mask_colors=[[0,0,0],[255,0,0]]"], 2, 2),
        (["data.mask_format=instances"], 2, 2),
    ],
)
def test_class_counts_come_from_the_contract(overrides, classes, out_channels) -> None:
    cfg = compose_train(overrides)
    contract = DataContract.from_config(cfg.data)
    assert contract.num_classes == contract.encoding.num_classes == classes
    assert contract.out_channels == out_channels == cfg.arch.num_classes
    assert contract.in_channels == cfg.arch.in_channels


def test_the_contract_round_trips_as_plain_data() -> None:
    cfg = compose_train(["data.intensity.mode=percentile", "data.crop_size=96"])
    contract = DataContract.from_config(cfg.data)
    stored = json.loads(json.dumps(contract.to_dict()))  # nothing but JSON types
    again = DataContract.from_dict(stored)
    assert again == contract
    assert again.crop_size == 96 and again.intensity["mode"] == "percentile"
    assert again.encoding.mask_values == [0, 255]


def test_background_is_kept_defaults_for_old_checkpoints_and_refuses_other_values() -> None:
    cfg = compose_train(["data.background=false"])
    contract = DataContract.from_config(cfg.data)
    assert contract.background is False and contract.scored_classes == contract.class_names
    stored = contract.to_dict()
    assert DataContract.from_dict(stored) == contract
    stored.pop("background")  # a checkpoint written before the key existed
    old = DataContract.from_dict(stored)
    assert old.background is True and old.scored_classes == contract.class_names[1:]
    with pytest.raises(ValueError, match="data.background='maybe': true .* or false"):
        DataContract.from_config(compose_train(["data.background=maybe"]).data)


def test_contradictions_are_refused_with_the_keys_to_fix() -> None:
    cfg = compose_train(["data.num_classes=3"])
    with pytest.raises(ValueError, match="num_classes=3 needs 3 mask classes"):
        DataContract.from_config(cfg.data)


def test_read_pair_refuses_a_mask_of_another_size(folder: Path) -> None:
    contract = DataContract.from_config(compose_train(["data.in_channels=1"]).data)
    image, truth = contract.read_pair(folder / "images/img00.png", folder / "masks/img00.png")
    assert image.shape == (40, 48, 1) and set(np.unique(truth)) <= {0, 1}
    import cv2

    cv2.imwrite(str(folder / "masks/img01.png"), np.zeros((20, 20), np.uint8))
    with pytest.raises(ValueError, match="img01.png: mask is 20x20 but its image"):
        contract.read_pair(folder / "images/img01.png", folder / "masks/img01.png")


def test_volume_fields_that_contradict_the_samples_are_refused():
    base = dict(class_names=["a", "b"], in_channels=3, num_classes=2, mask_values=[0, 1])
    volume = DataContract.from_config({**base, "volume": True, "dims": 2.5, "slab": 3})
    assert (volume.dims, volume.slab) == (2.5, 3)
    assert DataContract.from_dict(volume.to_dict()) == volume
    with pytest.raises(ValueError, match=r"data.slab=3 stacks slices .* data.dims=3"):
        DataContract.from_config({**base, "volume": True, "dims": 3, "slab": 3})
    with pytest.raises(ValueError, match=r"odd number"):
        DataContract.from_config({**base, "volume": True, "dims": 2.5, "slab": 4})
    with pytest.raises(ValueError, match=r"data.dims=3: for volumes only"):
        DataContract.from_config({**base, "dims": 3})
    assert not DataContract.from_config({**base, "dims": 2}).volume  # the default, as typed
