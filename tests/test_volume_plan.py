"""The volume fingerprint and plan: intensity, dims, patch and batch chosen with reasons."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unet_seg.data import volume_plan
from unet_seg.data.plan import AUTO, PlanError
from unet_seg.data.synthetic3d import ensure_synthetic3d
from unet_seg.data.volume_cases import find_volume_cases
from unet_seg.data.volume_plan import (
    CPU_VOXELS,
    VOLUME_KEYS,
    choose_dims,
    choose_intensity,
    choose_patch,
    describe_case,
    fingerprint_volumes,
    plan_volume_data,
    volume_summary,
)
from unet_seg.data.volumes import VolumeMeta, read_volume, write_volume

SPLIT = {"val_fraction": 0.0, "test_fraction": 0.0, "split_seed": 0}


def _meta(shape: tuple[int, ...], spacing: tuple[float, ...], origin=(0.0, 0.0, 0.0)):
    z, y, x = spacing
    affine = ((x, 0, 0, origin[0]), (0, y, 0, origin[1]), (0, 0, z, origin[2]), (0, 0, 0, 1))
    return VolumeMeta(shape=tuple(shape[:3]), spacing=tuple(spacing), affine=affine,
                      format="nifti")  # fmt: skip


def _case(root: Path, name: str, image: np.ndarray, labels: np.ndarray, spacing=(1.0, 1.0, 1.0),
          mask_spacing=None, mask_origin=(0.0, 0.0, 0.0)) -> None:  # fmt: skip
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    write_volume(root / "images" / f"{name}.nii.gz", image, _meta(image.shape, spacing))
    meta = _meta(labels.shape, mask_spacing or spacing, mask_origin)
    write_volume(root / "masks" / f"{name}.nii.gz", labels, meta, labels=True)


def _labels(shape: tuple[int, int, int]) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    z, y, x = (n // 4 for n in shape)
    labels[z : 3 * z, y : 3 * y, x : 3 * x] = 1  # a block in the middle
    return labels


def _auto(**given) -> dict:
    return {**{k: AUTO for k in VOLUME_KEYS}, **SPLIT, **given}


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ct")
    return ensure_synthetic3d(root / "s3d", num_volumes=3, shape=(16, 24, 24),
                              spacing=(2.0, 0.8, 0.8))  # fmt: skip


def test_ct_volumes_are_clipped_to_the_foreground_percentiles(ct_root) -> None:
    fp = fingerprint_volumes(ct_root)
    intensity, mean, std, why = choose_intensity(fp)
    pooled = []  # fewer than FG_SAMPLES foreground voxels a case: every one is sampled
    for name in ("case_000", "case_001", "case_002"):
        image, _ = read_volume(ct_root / "images" / f"{name}.nii.gz")
        labels, _ = read_volume(ct_root / "masks" / f"{name}.nii.gz")
        pooled.append(image[labels > 0].astype(float))
    pooled = np.concatenate(pooled)
    low, high = np.percentile(pooled, [0.5, 99.5])
    assert intensity == {"mode": "ct", "low": round(low, 4), "high": round(high, 4)}
    clipped = np.clip(pooled, low, high)
    assert mean == [round(clipped.mean(), 4)] and std == [round(clipped.std(), 4)]
    assert "3 of 3 cases hold signed integers" in why and f"{len(pooled)} voxels" in why
    assert f"{low:.4g}..{high:.4g}" in why
    planned, reasons = plan_volume_data(fp, _auto())
    assert planned["intensity"] == intensity and planned["mean"] == mean
    assert planned["mask_values"] == [0, 1, 2]
    assert planned["class_names"] == ["background", "class_1", "class_2"]
    assert planned["num_classes"] == 3 and planned["mask_format"] == "values"
    assert planned["spacing"] == [2.0, 0.8, 0.8] and planned["eval_batch_size"] == 1
    assert planned["foreground_crop"] == 0.33
    # class 2 is rare: an epoch of 2 x 20 steps, 3 training volumes, batch 2
    steps = math.ceil(3 * planned["train_repeats"] / planned["batch_size"])
    assert steps >= 40 and "class 2 is under 1%" in reasons["train_repeats"]
    # CT bounds given: the mean and std follow them
    given, _ = plan_volume_data(fp, _auto(intensity={"mode": "ct", "low": 0, "high": 100}))
    inside = np.clip(pooled, 0, 100)
    assert given["mean"][0] == pytest.approx(inside.mean(), abs=2.0)
    assert given["std"][0] == pytest.approx(inside.std(), abs=2.0)


def test_mri_like_volumes_are_z_scored_with_the_evidence(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        image = rng.uniform(0, 1200, (8, 16, 16)).astype(np.float32)
        _case(tmp_path, name, image, _labels((8, 16, 16)))
    fp = fingerprint_volumes(tmp_path)
    intensity, mean, std, why = choose_intensity(fp)
    assert intensity == {"mode": "zscore"} and mean == [0.0] and std == [1.0]
    assert "not CT" in why and "0 of 2 cases" in why and "float32" in why
    assert "data.intensity={mode:ct,low:L,high:H}" in why
    # signed integers that never reach air are not CT either
    other = tmp_path / "int"
    for name in ("a", "b"):
        _case(other, name, rng.integers(-100, 900, (8, 16, 16)).astype(np.int16),
              _labels((8, 16, 16)))  # fmt: skip
    assert choose_intensity(fingerprint_volumes(other))[0] == {"mode": "zscore"}


def test_dims_follow_anisotropy_and_thickness() -> None:
    dims, axis, why = choose_dims([5.0, 0.7, 0.7], [40, 200, 200])
    assert (dims, axis) == (2, 0) and "anisotropy 7.1 >= 3" in why and "axis 0 (z)" in why
    assert "data.dims=3" in why  # what to type when the choice is wrong
    assert choose_dims([0.7, 0.7, 4.0], [200, 200, 40])[:2] == (2, 2)
    dims, axis, why = choose_dims([1.0, 1.0, 1.2], [64, 64, 64])
    assert (dims, axis) == (3, 2) and "anisotropy 1.2 < 3" in why
    dims, axis, why = choose_dims([1.0, 1.0, 1.0], [8, 64, 64])
    assert (dims, axis) == (2, 0) and "too thin" in why


def test_patch_is_of_equal_extent_within_budget_and_shape() -> None:
    patch, batch, why = choose_patch(3, [2.0, 1.0, 1.0], [200, 400, 400], None, 1)
    assert batch == 2 and np.prod(patch) <= CPU_VOXELS and all(p % 16 == 0 for p in patch)
    extent = np.array(patch) * [2.0, 1.0, 1.0]
    assert patch[1] == patch[2] and patch[0] < patch[1]  # sides ~ 1 / spacing
    assert extent.max() - extent.min() <= 16 * 2.0  # equal physical extent, within a step
    assert f"{CPU_VOXELS} voxels on a CPU" in why
    isotropic, _, _ = choose_patch(3, [1.0, 1.0, 1.0], [200, 200, 200], None, 1)
    assert isotropic == [48, 48, 48]
    gpu, _, why = choose_patch(3, [1.0, 1.0, 1.0], [400, 400, 400], 24.0, 1)
    assert gpu == [128, 128, 128] and "24 GB GPU" in why
    # the median shape caps each side (multiples of 16, 8 below 16)
    small, batch, _ = choose_patch(3, [1.0, 1.0, 1.0], [20, 40, 300], None, 1, num_cases=50)
    assert small[:2] == [16, 32] and small[2] % 16 == 0 and small[2] <= 300
    assert np.prod(small) <= CPU_VOXELS
    crop, batch, why = choose_patch(2, [1.0, 1.0, 1.0], [30, 100, 300], None, 1, slice_axis=0)
    assert (crop, batch) == (96, 28) and "100x300" in why  # the slice's shorter side
    assert choose_patch(2, [1.0, 1.0, 1.0], [30, 400, 600], None, 1)[0] == 256  # CPU cap


def test_a_mask_of_another_geometry_is_a_listed_problem_naming_the_file(tmp_path) -> None:
    image = np.zeros((8, 16, 16), np.int16)
    _case(tmp_path, "good", image, _labels((8, 16, 16)))
    _case(tmp_path, "short", image, _labels((8, 16, 12)))
    _case(tmp_path, "coarse", image, _labels((8, 16, 16)), mask_spacing=(3.0, 1.0, 1.0))
    _case(tmp_path, "moved", image, _labels((8, 16, 16)), mask_origin=(5.0, 0.0, 0.0))
    (tmp_path / "images" / "broken.nii.gz").write_bytes(b"not a volume")
    write_volume(tmp_path / "masks" / "broken.nii.gz", _labels((8, 16, 16)),
                 _meta((8, 16, 16), (1.0, 1.0, 1.0)), labels=True)  # fmt: skip
    fp = fingerprint_volumes(tmp_path)
    problems = "\n".join(fp["problems"])
    assert len(fp["problems"]) == 4
    assert str(tmp_path / "masks" / "short.nii.gz") in problems and "[8, 16, 12]" in problems
    assert str(tmp_path / "masks" / "coarse.nii.gz") in problems and "spacing" in problems
    assert str(tmp_path / "masks" / "moved.nii.gz") in problems and "origin (RAS, mm)" in problems
    assert str(tmp_path / "images" / "broken.nii.gz") in problems
    with pytest.raises(PlanError) as err:
        plan_volume_data(fp, _auto())
    assert "4 problem(s)" in str(err.value) and "short.nii.gz" in str(err.value)


def test_given_dims_win_and_the_patch_follows(tmp_path) -> None:
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):  # isotropic 16x32x32: the plan takes 3-D
        _case(tmp_path, name, rng.normal(100, 20, (16, 32, 32)).astype(np.float32),
              _labels((16, 32, 32)))  # fmt: skip
    fp = fingerprint_volumes(tmp_path)
    planned, why = plan_volume_data(fp, _auto())
    assert planned["dims"] == 3 and planned["patch"] == [16, 32, 32]
    assert planned["crop_size"] is None and planned["slab"] == 1 and planned["in_channels"] == 1
    assert planned["class_names"] == ["background", "foreground"]
    assert "3-D patches" in why["dims"]
    flat, why = plan_volume_data(fp, _auto(dims=2))
    assert flat["dims"] == 2 and "dims" not in why and flat["patch"] is None
    assert flat["crop_size"] == 32 and flat["batch_size"] == 32 and flat["slab"] == 1
    slabs, _ = plan_volume_data(fp, _auto(dims=2.5))
    assert slabs["slab"] == 3 and slabs["in_channels"] == 3 and slabs["crop_size"] == 32
    wide, _ = plan_volume_data(fp, _auto(dims=2.5, slab=5))
    assert wide["in_channels"] == 5
    # anisotropic volumes: 2-D planned, 3-D given gets a 3-D patch
    coarse = tmp_path / "coarse"
    for name in ("a", "b"):
        _case(coarse, name, rng.normal(100, 20, (16, 32, 32)).astype(np.float32),
              _labels((16, 32, 32)), spacing=(4.0, 1.0, 1.0))  # fmt: skip
    fp = fingerprint_volumes(coarse)
    planned, why = plan_volume_data(fp, _auto())
    assert (planned["dims"], planned["slice_axis"]) == (2, 0) and planned["crop_size"] == 32
    assert "anisotropy 4.0" in why["dims"]
    forced, _ = plan_volume_data(fp, _auto(dims=3))
    assert forced["patch"] == [16, 32, 32] and forced["crop_size"] is None
    with pytest.raises(PlanError) as err:  # every given key that cannot be is named at once
        plan_volume_data(fp, _auto(dims=4, slab=2, spacing=[1, 1], patch=[16, 32]))
    text = str(err.value)
    assert "4 problem(s)" in text and "data.dims=4" in text and "data.slab=2" in text
    assert "data.spacing=[1, 1]" in text and "data.patch=[16, 32]: a 3-D patch is [d, h, w]" in text
    summary = volume_summary(fp, {k: {"value": planned[k], "why": why[k]} for k in why})
    assert "2 volume cases" in summary and "median 4 x 1 x 1 mm" in summary
    assert "anisotropy  4.00" in summary and "not CT" in summary
    assert "dims        2: " in summary and "coarsest axis 0" in summary
    record = {"plan": {k: {"value": planned[k], "why": why[k]} for k in why}}  # plan.json's
    assert "dims        2: " in volume_summary(fp, record)
    # a planned data config (check_data's): the rule's reason, a dims off the rule marked
    assert "dims        2: spacing" in volume_summary(fp, planned)
    assert "dims        3 (given: the plan's rule takes 2: " in volume_summary(fp, forced)


def test_foreground_samples_are_capped_and_seeded(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(2)
    _case(tmp_path, "a", rng.normal(0, 1, (8, 16, 16)).astype(np.float32), _labels((8, 16, 16)))
    monkeypatch.setattr(volume_plan, "FG_SAMPLES", 50)
    (case,) = find_volume_cases(tmp_path)
    one = describe_case(case, seed=0, keep_samples=True)
    assert one["fg_voxels"] == 4 * 8 * 8 and one["fg_samples"].shape == (50, 1)
    assert np.array_equal(one["fg_samples"], describe_case(case, 0, True)["fg_samples"])
    assert not np.array_equal(one["fg_samples"], describe_case(case, 1, True)["fg_samples"])
    assert one["labels"] == {"0": 8 * 16 * 16 - 256, "1": 256} and one["channels"] == 1


def test_a_spacing_the_files_do_not_give_is_named_with_its_override(tmp_path) -> None:
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for name in ("a", "b"):  # TIFF stacks without spacing tags: 1 mm assumed
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", np.ones((8, 16, 16), np.uint8))
        tifffile.imwrite(tmp_path / "masks" / f"{name}.tif", _labels((8, 16, 16)))
    fp = fingerprint_volumes(tmp_path)
    assert fp["cases"][0]["spacing_assumed"] == [True, True, True]
    planned, why = plan_volume_data(fp, _auto())
    assert planned["spacing"] == [1.0, 1.0, 1.0]
    assert "2 case(s) give no spacing" in why["spacing"]
    assert "set data.spacing=[z,y,x]" in why["spacing"]
    assert "1 mm assumed" in volume_summary(fp)


def test_ct_values_in_several_channels_are_z_scored(tmp_path) -> None:
    """The CT mode clips every channel alike: several channels are z-scored, and say why."""
    rng = np.random.default_rng(3)
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    meta = _meta((8, 16, 16), (1.0, 1.0, 1.0))
    for case in ("p1", "p2"):  # nnU-Net's layout: one file per channel
        for channel in range(2):
            image = rng.integers(-1024, 200, (8, 16, 16)).astype(np.int16)
            write_volume(tmp_path / "images" / f"{case}_000{channel}.nii.gz", image, meta)
        write_volume(tmp_path / "masks" / f"{case}.nii.gz", _labels((8, 16, 16)), meta, True)
    fp = fingerprint_volumes(tmp_path)
    assert fp["channels"] == 2 and not fp["problems"]
    intensity, mean, std, why = choose_intensity(fp)
    assert intensity == {"mode": "zscore"} and mean == [0.0, 0.0] and std == [1.0, 1.0]
    assert "2 of 2 cases hold signed integers" in why and "but 2 channels" in why


def test_train_count_reads_the_split_files_training_cases(tmp_path: Path) -> None:
    """With data.split_file the plan sizes an epoch by the file's training cases."""
    import json as _json

    from unet_seg.data.splits import train_count

    split = tmp_path / "split.json"
    _json.dump({"train": ["a"], "val": ["b", "c"], "test": []}, split.open("w"))
    names = ["a", "b", "c"]
    assert train_count(names, {"split_file": str(split)}) == 1
    assert train_count(names, {"split_file": str(tmp_path / "missing.json")}) == 3


def test_a_brain_in_an_empty_field_is_z_scored_over_its_nonzero_region(tmp_path) -> None:
    """Brains inside a zero field (cropping to the non-zero region keeps under 3/4 of the
    voxels, nnU-Net's rule) are z-scored over that region, with the numbers in the reason;
    volumes that fill their grid are z-scored whole."""
    rng = np.random.default_rng(2)
    for name, pad in (("a", 4), ("b", 5), ("c", 6)):
        brain = rng.normal(300, 40, (8, 10, 10)).astype(np.float32)
        image = np.pad(brain, pad)
        _case(tmp_path / "padded", name, image, _labels(image.shape))
        _case(tmp_path / "full", name, brain, _labels(brain.shape))
    fp = fingerprint_volumes(tmp_path / "padded")
    share = 800 / (18 * 20 * 20)  # the median case, padded by 5
    assert [e["nonzero_share"] for e in fp["cases"]][1] == pytest.approx(share, abs=1e-6)
    intensity, mean, std, why = choose_intensity(fp)
    assert intensity == {"mode": "zscore", "nonzero": True} and mean == [0.0] and std == [1.0]
    assert f"keeps a median {share:.0%} of the voxels (3 of 3 cases under 75%)" in why
    assert "use_mask_for_norm" in why and "data.intensity={mode:zscore}" in why
    planned, reasons = plan_volume_data(fp, _auto())
    assert planned["intensity"] == intensity and "non-zero region" in reasons["intensity"]
    intensity, _, _, why = choose_intensity(fingerprint_volumes(tmp_path / "full"))
    assert intensity == {"mode": "zscore"} and "keeps a median 100%" in why


def test_nan_and_infinite_voxels_are_counted_left_out_and_said(tmp_path) -> None:
    """NaN and infinite voxels were counted (NaN only) and then left in: -inf became the
    minimum, and a NaN made whole-number CT volumes fractional (not CT). They count in no
    statistic, and the plan says how many are set to 0."""
    rng = np.random.default_rng(4)
    for name in ("a", "b"):
        image = rng.integers(-1024, 400, (8, 16, 16)).astype(np.float32)  # HU, as floats
        if name == "a":
            image[1, 2, 3], image[2, 2, 2] = np.nan, -np.inf
        _case(tmp_path, name, image, _labels((8, 16, 16)))
    fp = fingerprint_volumes(tmp_path)
    a = fp["cases"][0]
    assert a["nan_voxels"] == 2 and a["integer_valued"] and a["min"][0] >= -1024
    assert all(np.isfinite(a[k]).all() for k in ("min", "max", "mean", "std"))
    intensity, _, _, why = choose_intensity(fp)
    assert intensity["mode"] == "ct"
    assert "2 NaN or infinite voxel(s) in 1 case(s) (e.g. ['a'])" in why and "set to 0" in why


def test_label_volumes_holding_minus_one_plan_it_as_unlabelled(tmp_path) -> None:
    """Label volumes with -1 (unlabelled) and 0, 1, 2 could not be used at all: the plan
    advised data.ignore_value=-1 and the mask encoding refused it. Now the plan takes -1 for
    unlabelled (with its evidence) and 0, 1, 2 for three classes; the contract encodes -1 as
    no label (-1 in the targets). Another negative value is refused with the fix."""
    from tests.conftest import compose_train
    from unet_seg.config import to_plain
    from unet_seg.data.contract import DataContract
    from unet_seg.data.masks import IGNORE_INDEX
    from unet_seg.data.plan import plan_data_config
    from unet_seg.data.volume_dataset import VolumeDataset

    rng = np.random.default_rng(5)
    for name in ("a", "b", "c"):
        labels = _labels((8, 16, 16)).astype(np.int16)
        labels[:, :, 12:] = 2
        labels[0] = -1  # the first slice unlabelled
        _case(tmp_path / "d", name, rng.uniform(0, 100, (8, 16, 16)).astype(np.float32), labels)

    def planned(root: Path, *overrides: str) -> tuple[dict, dict]:
        data = to_plain(compose_train(["data=auto", f"data.root={root}", *overrides]).data)
        return plan_data_config(data)

    data, record = planned(tmp_path / "d")
    assert data["ignore_value"] == -1 and data["mask_values"] == [0, 1, 2]
    assert data["num_classes"] == 3
    assert "768 voxel(s) of 3 label volume(s)" in record["plan"]["ignore_value"]["why"]
    contract = DataContract.from_config(data)
    assert contract.ignore_value == -1
    item = VolumeDataset(find_volume_cases(tmp_path / "d"), contract)[0]
    mask = item["mask"].numpy()
    assert (mask[0] == IGNORE_INDEX).all() and set(np.unique(mask[1:])) == {0, 1, 2}
    # -2 beside -1: one value marks unlabelled voxels; -2 alone: the ignore value it names
    for folder, marks in (("two", (-1, -2)), ("other", (-2,))):
        for name in ("a", "b"):
            labels = _labels((8, 16, 16)).astype(np.int16)
            for z, value in enumerate(marks):
                labels[z] = value
            _case(tmp_path / folder, name, np.ones((8, 16, 16), np.float32), labels)
    with pytest.raises(PlanError, match=r"hold negative values \[-2\]: only one value marks "
                       r"unlabelled voxels \(data.ignore_value=-1\)"):  # fmt: skip
        planned(tmp_path / "two")
    with pytest.raises(PlanError, match=r"hold negative values \[-2\]: if they mark unlabelled "
                       r"voxels set data.ignore_value=-2"):  # fmt: skip
        planned(tmp_path / "other")
    data, _ = planned(tmp_path / "other", "data.ignore_value=-2")
    contract = DataContract.from_config(data)
    assert contract.ignore_value == -2 and contract.mask_values == [0, 1]
    mask = VolumeDataset(find_volume_cases(tmp_path / "other"), contract)[0]["mask"].numpy()
    assert (mask[0] == IGNORE_INDEX).all() and set(np.unique(mask[1:])) == {0, 1}
