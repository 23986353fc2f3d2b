"""Shared fixtures: tiny image/mask folders written to tmp_path, composed configs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

CONF = Path(__file__).parents[1] / "conf"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny nets run faster on one thread, and a busy machine does not stall them.

    Modules of small-model tests use it with `pytestmark = pytest.mark.usefixtures(...)`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_folder(
    root: Path, n: int = 6, size: tuple[int, int] = (40, 48), channels: int = 1, seed: int = 0
) -> Path:
    """Write `n` image/mask pairs (0/255 masks of bright squares) under root/images, root/masks."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(n):
        mask = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[y : y + h // 3, x : x + w // 3] = 255
        image = (mask * 0.6 + rng.integers(0, 60, (h, w))).astype(np.uint8)
        if channels == 3:
            image = np.stack([image, image // 2, 255 - image], axis=2)
        cv2.imwrite(str(root / "images" / f"img{i:02d}.png"), image)
        cv2.imwrite(str(root / "masks" / f"img{i:02d}.png"), mask)
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "data")


def compose_train(overrides: list[str] | None = None, hydra: bool = False):
    """`conf/train.yaml` composed with `overrides`, as `python -m unet_seg.train` would.

    With `hydra=True` the result also holds Hydra's own node (`cfg.hydra`).
    """
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="train", overrides=overrides or [], return_hydra_config=hydra)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `property` (hundreds of generated folders) run only when `-m` names them."""
    if "property" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="the big property profile: run with -m property")
    for item in items:
        if "property" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def forker():
    """Runs `python -m unet_seg.<entry point> ...` as forks of one process that imported
    torch, Lightning and the entry points once (tests/forked.py), for tests of the command
    line whose subject is not Python's start-up."""
    from tests.forked import Forker

    server = Forker(
        ["unet_seg.train", "unet_seg.predict", "unet_seg.evaluate", "unet_seg.check_data"]
    )
    yield server
    server.close()
