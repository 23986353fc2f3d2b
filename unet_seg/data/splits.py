"""Reproducible train/val/test splits, stored as `splits.json` in the run directory."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

STAGES = ("train", "val", "test")


def make_splits(
    names: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Shuffle `names` with `seed` and cut them into train/val/test.

    The same names and seed always give the same split, whatever order the
    names came in. Any non-zero fraction gets at least one item.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"need 0 <= val_fraction, test_fraction and val + test < 1, got "
            f"val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    ordered = sorted(names)
    n = len(ordered)
    n_val = max(1, round(n * val_fraction)) if val_fraction else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction else 0
    if n - n_val - n_test < 1:
        raise ValueError(
            f"{n} image(s) cannot fill a split with val_fraction={val_fraction} and "
            f"test_fraction={test_fraction}: add images or lower the fractions"
        )
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [ordered[i] for i in order]
    return {
        "val": sorted(shuffled[:n_val]),
        "test": sorted(shuffled[n_val : n_val + n_test]),
        "train": sorted(shuffled[n_val + n_test :]),
    }


def save_splits(splits: dict[str, list[str]], path: str | Path) -> None:
    """Write the split atomically as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({k: splits[k] for k in STAGES}, indent=1) + "\n")
    tmp.replace(path)


def load_splits(path: str | Path) -> dict[str, list[str]]:
    """Read a split written by `save_splits`."""
    data = json.loads(Path(path).read_text())
    missing = [k for k in STAGES if k not in data]
    if missing:
        raise ValueError(f"{path}: split file lacks {missing}; expected keys {list(STAGES)}")
    return {k: list(data[k]) for k in STAGES}
