"""Reproducible train/val/test splits, stored as `splits.json` in the run directory."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet_seg.files import atomic_write_text

STAGES = ("train", "val", "test")


def make_splits(
    names: Sequence[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    group_regex: str | None = None,
) -> dict[str, list[str]]:
    """Shuffle `names` with `seed` and cut them into train/val/test.

    The same names and seed always give the same split, whatever order the
    names came in. Any non-zero fraction gets at least one image. With
    `group_regex`, whole groups (see `group_of`: a patient, a car) are dealt,
    so no group straddles two splits.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"need 0 <= val_fraction, test_fraction and val + test < 1, got "
            f"val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        groups.setdefault(group_of(name, group_regex), []).append(name)
    n = len(names)
    n_val = max(1, round(n * val_fraction)) if val_fraction else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction else 0
    keys = sorted(groups)
    keys = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    splits: dict[str, list[str]] = {"val": [], "test": [], "train": []}
    for key in keys:
        stage = "val" if len(splits["val"]) < n_val else "test"
        stage = stage if stage == "val" or len(splits["test"]) < n_test else "train"
        splits[stage] += groups[key]
    if not splits["train"]:
        raise ValueError(
            f"{n} image(s) in {len(groups)} group(s) cannot fill a split with val_fraction="
            f"{val_fraction} and test_fraction={test_fraction}: add images or lower the fractions"
        )
    return {stage: sorted(items) for stage, items in splits.items()}


def cut_split(names: Sequence[str], split: Mapping[str, Any]) -> dict[str, list[str]]:
    """The train/val/test split a data config (`val_fraction`, `test_fraction`, or
    `num_folds` and `fold`; `split_seed`, `group_regex`, `fold_order`) cuts `names` into: the
    one rule the data module, the data checks and the plan follow. Raises ValueError when
    the names cannot fill it."""
    if split.get("num_folds"):
        return make_folds(names, split["num_folds"], split.get("fold", 0),
                          split.get("split_seed", 0), split.get("group_regex"),
                          split.get("fold_order", "shuffled"),
                          split.get("test_fraction") or 0.0)  # fmt: skip
    return make_splits(names, split.get("val_fraction") or 0.0, split.get("test_fraction") or 0.0,
                       split.get("split_seed", 0), split.get("group_regex"))  # fmt: skip


def planned_split(names: Sequence[str], data: Mapping[str, Any]) -> dict[str, list[str]] | None:
    """The split the data module will use, as the plans see it: an explicit
    `data.split_file`'s, else the one `cut_split` cuts; None when it cannot be read or cut
    (refused with the folder's other problems)."""
    if data.get("split_file"):
        try:
            return load_splits(data["split_file"])
        except (OSError, ValueError):  # refused by the data module, naming the file
            return None
    seed = data.get("split_seed")  # the count depends on it only through data.group_regex
    split = {**data, "split_seed": seed if isinstance(seed, int) else 0}
    try:
        return cut_split(names, split)
    except ValueError:
        return None


def train_count(names: Sequence[str], data: Mapping[str, Any]) -> int:
    """Training images (or cases) of `planned_split` (all of `names` without one): what the
    plans size their epochs by."""
    split = planned_split(names, data)
    return max(1, len(split["train"] if split else names))


def split_problems(names: Sequence[str], split: Mapping[str, Any], root: str | Path) -> list[str]:
    """The problem (naming the folder `root`) that cutting `names` into the split of a data
    config would meet, as the data module cuts them; none with a `split_file` (checked when
    it is read)."""
    if split.get("split_file"):
        return []
    try:
        cut_split(names, split)
    except ValueError as err:
        return [f"{root}: {err}"]
    return []


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders `2.png` before `10.png`."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def group_of(name: str, group_regex: str | None) -> str:
    """The group an image belongs to: the regex's first capture group (or whole match).

    Without a regex, every image is its own group. An image the regex does not
    match is an error naming it.
    """
    if not group_regex:
        return name
    match = re.search(group_regex, name)
    if not match:
        raise ValueError(
            f"{name}: data.group_regex={group_regex!r} does not match this file name; "
            "fix the pattern so that every image belongs to a group"
        )
    return match.group(1) if match.groups() else match.group(0)


def make_folds(
    names: Sequence[str],
    num_folds: int,
    fold: int,
    seed: int,
    group_regex: str | None = None,
    order: str = "shuffled",
    test_fraction: float = 0.0,
) -> dict[str, list[str]]:
    """K-fold cross-validation: fold `fold` of `num_folds` is validation, the rest train.

    Images of one group (see `group_of`) always land in the same fold, so
    correlated images never straddle train and validation. `order="shuffled"`
    deals the groups to folds after a seeded shuffle; `"contiguous"` cuts the
    naturally sorted groups into consecutive blocks (neighbouring slices of a
    stack stay together). With `test_fraction`, a seeded share of the groups is
    first set aside as a test split common to every fold (to score the folds'
    ensemble); otherwise the test split is empty and the held-out fold is the test.
    """
    if num_folds < 2 or not 0 <= fold < num_folds:
        raise ValueError(f"need num_folds >= 2 and 0 <= fold < num_folds, got {fold}/{num_folds}")
    test: list[str] = []
    if test_fraction:
        held = make_splits(names, 0.0, test_fraction, seed, group_regex)
        test, names = held["test"], held["train"]
    groups: dict[str, list[str]] = {}
    for name in sorted(names, key=natural_key):
        groups.setdefault(group_of(name, group_regex), []).append(name)
    if len(groups) < num_folds:
        raise ValueError(
            f"{len(groups)} group(s) cannot fill {num_folds} folds: lower data.num_folds "
            "or loosen data.group_regex"
        )
    keys = sorted(groups, key=natural_key)
    if order == "shuffled":
        keys = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    elif order != "contiguous":
        raise ValueError(f"data.fold_order={order!r}: choose 'shuffled' or 'contiguous'")
    # cut into num_folds nearly equal blocks of groups (by image count for contiguous order)
    bounds = np.linspace(0, len(keys), num_folds + 1).round().astype(int)
    held_out = set(keys[bounds[fold] : bounds[fold + 1]])
    val = [n for k in keys if k in held_out for n in groups[k]]
    train = [n for k in keys if k not in held_out for n in groups[k]]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def save_splits(splits: dict[str, list[str]], path: str | Path) -> None:
    """Write the split atomically as JSON."""
    atomic_write_text(path, json.dumps({k: splits[k] for k in STAGES}, indent=1) + "\n")


def load_splits(path: str | Path) -> dict[str, list[str]]:
    """Read a split written by `save_splits`."""
    data = json.loads(Path(path).read_text())
    missing = [k for k in STAGES if k not in data]
    if missing:
        raise ValueError(f"{path}: split file lacks {missing}; expected keys {list(STAGES)}")
    return {k: list(data[k]) for k in STAGES}
