"""The net follows the data: 3-D patches with the default 2-D net train its 3-D twin
(`build.choose_net`), recorded in the plan; a net the user named is kept and checked."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_train
from unet_seg import build
from unet_seg.build import plan_config
from unet_seg.data.volumes import VolumeMeta, write_volume
from unet_seg.module import check_net_fits


def iso_folder(root, n=4, shape=(32, 32, 32), channels=2):
    """Two-modality isotropic volumes in nnU-Net's channel naming (case_0000, case_0001)."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    meta = VolumeMeta(tuple(shape), (1.0, 1.0, 1.0), tuple(map(tuple, np.eye(4))), "nifti")
    for i in range(n):
        c = rng.uniform(10, 22, 3)
        labels = (((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) < 36).astype(np.uint8)
        for ch in range(channels):
            image = (100 + 200 * labels + rng.normal(0, 20, shape)).astype(np.float32)
            write_volume(root / "images" / f"case{i}_{ch:04d}.nii.gz", image, meta)
        write_volume(root / "masks" / f"case{i}.nii.gz", labels, meta, labels=True)
    return root


def test_synthetic3d_trains_the_3d_unet_without_arch_typed():
    cfg, _ = plan_config(compose_train(["data=synthetic3d"]))
    assert cfg.arch.name == "unet3d"
    assert cfg.arch.base_channels == 16  # scale=small carried over, not the paper's 32
    assert cfg.arch.in_channels == 1 and cfg.arch.num_classes == 3


def test_nested_default_becomes_nested3d():
    cfg, _ = plan_config(compose_train(["data=synthetic3d", "arch=nested"]))
    assert cfg.arch.name == "nested3d"


def test_auto_plan_of_isotropic_volumes_picks_the_3d_net_and_says_why(tmp_path):
    root = iso_folder(tmp_path / "mri")
    cfg = compose_train(["data=auto", f"data.root={root}", f"paths.output_dir={tmp_path}/out"])
    cfg, record = plan_config(cfg)
    assert cfg.data.dims == 3 and cfg.data.in_channels == 2
    assert cfg.arch.name == "unet3d"
    chosen = record["plan"]["arch"]
    assert chosen["value"] == "unet3d" and "3-D" in chosen["why"]
    from unet_seg.check_data import train_command
    from unet_seg.data.plan import plan_table

    assert "arch=unet3d" in train_command(OmegaConf.to_container(cfg.data), record)
    assert "unet3d" in plan_table(record)


def test_a_named_2d_net_is_kept_and_refused_by_name(monkeypatch):
    monkeypatch.setattr(build, "arch_given", lambda: True)
    cfg, _ = plan_config(compose_train(["data=synthetic3d", "arch=unet"]))
    assert cfg.arch.name == "unet"
    from unet_seg.config import to_plain
    from unet_seg.data.contract import DataContract

    with pytest.raises(ValueError, match="arch=unet is a 2-D net"):
        check_net_fits(to_plain(cfg.arch), DataContract.from_config(cfg.data))
