"""Every config group composes, resolves and builds what it describes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import CONF, compose_train
from unet_seg.build import build_module
from unet_seg.config import to_plain
from unet_seg.run_dir import RunDir, resume_config

GROUPS = [
    "arch",
    "data",
    "loss",
    "optimizer",
    "scheduler",
    "trainer",
    "logger",
    "callbacks",
    "scale",
]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_resolves(group: str, option: str) -> None:
    overrides = [f"{group}={option}", "run_dir=/tmp/unused"]
    if option == "folder":
        overrides.append("data.root=/tmp/somewhere")
    cfg = compose_train(overrides, hydra=True)
    node = to_plain(cfg[group]) if group != "scale" else to_plain(cfg.arch)
    assert node is not None
    assert cfg.hydra.run.dir  # the run directory interpolation resolves too


@pytest.mark.parametrize("option", [p.stem for p in sorted((CONF / "scheduler").glob("*.yaml"))])
@pytest.mark.parametrize("optimizer", [p.stem for p in sorted((CONF / "optimizer").glob("*.yaml"))])
def test_optimizer_and_scheduler_build_and_step(optimizer: str, option: str) -> None:
    cfg = compose_train([f"optimizer={optimizer}", f"scheduler={option}", "arch.base_channels=4"])
    module = build_module(cfg)
    conf = module.configure_optimizers()
    opt = conf["optimizer"]
    assert type(opt).__name__.lower() == optimizer.replace("adamw", "adamw")
    if option == "none":
        assert "lr_scheduler" not in conf
        return
    sched = conf["lr_scheduler"]
    lr0 = opt.param_groups[0]["lr"]
    for _ in range(12):
        opt.step()
        if option == "plateau":
            assert sched["monitor"] == "val/dice"
            sched["scheduler"].step(0.5)  # no improvement: the rate must drop
        else:
            sched["scheduler"].step()
    assert opt.param_groups[0]["lr"] < lr0


def test_logger_and_callbacks_instantiate(tmp_path: Path) -> None:
    cfg = compose_train([f"run_dir={tmp_path}"])
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    loggers = [instantiate(lg) for lg in cfg.logger.values()]
    assert {type(c).__name__ for c in callbacks} >= {"ModelCheckpoint", "ValidationImages"}
    assert loggers[0].log_dir.rstrip("/") == str(tmp_path / "tensorboard")


def test_defaults_are_cpu_sized_and_paper_scale_keeps_arch_widths() -> None:
    assert compose_train().arch.base_channels == 16
    assert compose_train(["scale=paper"]).arch.base_channels == 64
    assert compose_train(["scale=paper", "arch=nested"]).arch.base_channels == 32


def test_hydra_run_dir_follows_resume() -> None:
    fresh = compose_train(hydra=True)
    assert fresh.hydra.run.dir.startswith("outputs/train/")
    assert fresh.hydra.output_subdir == ".hydra"
    resumed = compose_train(["resume=outputs/train/old"], hydra=True)
    assert resumed.hydra.run.dir == "outputs/train/old"
    assert resumed.hydra.output_subdir is None  # the run's original .hydra/ stays as it was


def test_resume_config_applies_key_overrides_and_refuses_groups(tmp_path: Path) -> None:
    cfg = compose_train([f"run_dir={tmp_path}", "arch=nested", "arch.base_channels=4"])
    with pytest.raises(FileNotFoundError, match="not a unet-seg run directory"):
        resume_config(tmp_path)
    RunDir(tmp_path).save_config(cfg)
    resumed = resume_config(tmp_path, [f"resume={tmp_path}", "trainer.max_epochs=7"])
    assert resumed.trainer.max_epochs == 7
    assert resumed.arch.name == "nested"  # from the run, not from the defaults
    with pytest.raises(ValueError, match="groups are fixed"):
        resume_config(tmp_path, ["arch=unet"])


def test_resume_accepts_hydras_plus_spellings_of_a_value(tmp_path: Path) -> None:
    """`++key=value` and `+key=value` are what users type for a key Hydra already has."""
    cfg = compose_train([f"run_dir={tmp_path}", "arch.base_channels=4"])
    RunDir(tmp_path).save_config(cfg)
    assert resume_config(tmp_path, ["++trainer.max_epochs=6"]).trainer.max_epochs == 6
    assert resume_config(tmp_path, ["+trainer.max_epochs=8"]).trainer.max_epochs == 8
    for refused in ("+arch=nested", "~trainer.max_epochs"):
        with pytest.raises(ValueError, match="groups are fixed"):
            resume_config(tmp_path, [refused])


def test_resume_keeps_whether_a_run_trains_to_a_budget(tmp_path: Path) -> None:
    """The schedule of a budgeted run counts steps of its budget, another's counts epochs: a
    resume may change the budget's value, not add or drop it."""
    epochs, budgeted = tmp_path / "epochs", tmp_path / "budget"
    RunDir(epochs).save_config(compose_train([f"run_dir={epochs}"]))
    RunDir(budgeted).save_config(compose_train([f"run_dir={budgeted}", "trainer.budget=10m"]))
    assert resume_config(budgeted, ["trainer.budget=20m"]).trainer.budget == "20m"
    with pytest.raises(ValueError, match="started without trainer.budget"):
        resume_config(epochs, ["trainer.budget=10m"])
    with pytest.raises(ValueError, match="started with trainer.budget"):
        resume_config(budgeted, ["trainer.budget=null"])


def test_unknown_architecture_lists_choices() -> None:
    cfg = compose_train(["arch.name=segformer"])
    names = (
        r"\['attention_unet', 'nested', 'nested3d', 'res_unet', 'unet', 'unet3d', "
        r"'unet_encoder', 'unet_valid', 'unetpp_encoder'\]"
    )
    with pytest.raises(ValueError, match=r"segformer.*" + names):
        build_module(cfg)


def test_module_hparams_are_plain_data() -> None:
    module = build_module(compose_train(["arch.base_channels=4"]))
    plain = (dict, list, str, int, float, bool, type(None))

    def check(x):
        assert isinstance(x, plain), type(x)
        if isinstance(x, dict):
            for v in x.values():
                check(v)
        elif isinstance(x, list):
            for v in x:
                check(v)

    check(dict(module.hparams))
    assert module(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_unknown_group_option_lists_the_choices() -> None:
    from hydra.errors import MissingConfigException

    choices = (
        r"Available options in 'arch':\s+attention_unet\s+nested\s+nested3d\s+res_unet\s+unet"
        r"\s+unet3d\s+unet_encoder\s+unet_valid\s+unetpp_encoder"
    )
    with pytest.raises(MissingConfigException, match=choices):
        compose_train(["arch=segformer"])


def test_only_allowed_targets_are_built(tmp_path: Path) -> None:
    from unet_seg.config import check_targets

    cfg = compose_train([f"run_dir={tmp_path}"])
    check_targets(cfg)  # every shipped config passes
    cfg.optimizer._target_ = "os.system"
    with pytest.raises(ValueError, match=r"optimizer._target_='os.system' is not allowed"):
        check_targets(cfg)
    from unet_seg.train import train

    with pytest.raises(ValueError, match="not allowed"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()  # refused before anything was built


def test_ddp_on_the_cpu_turns_sync_batchnorm_off_and_says_so(caplog) -> None:
    from unet_seg.build import cpu_safe

    cfg = compose_train(["trainer=ddp", "trainer.accelerator=cpu"])
    assert cfg.trainer.sync_batchnorm
    with caplog.at_level("WARNING"):
        safe = cpu_safe(cfg.trainer)
    assert safe.sync_batchnorm is False and cfg.trainer.sync_batchnorm  # a copy
    assert "sync_batchnorm=true needs GPUs" in caplog.text
    assert cpu_safe(compose_train().trainer) == compose_train().trainer  # nothing to change


def test_resuming_past_the_schedule_says_so(tmp_path: Path, caplog) -> None:
    cfg = compose_train([f"run_dir={tmp_path}", "trainer.max_epochs=5"])
    RunDir(tmp_path).save_config(cfg)
    with caplog.at_level("WARNING"):
        resume_config(tmp_path, ["trainer.max_epochs=5"])
    assert "schedule" not in caplog.text
    with caplog.at_level("WARNING"):
        resume_config(tmp_path, ["trainer.max_epochs=9"])
    assert "past the end of this run's learning-rate schedule (CosineAnnealingLR, 5" in caplog.text


@pytest.mark.parametrize("value", [True, False, None, 3, 0.33, "_mask", [0, 255],
                                   ["background", "object"],
                                   {"mode": "fixed", "vmin": 0.0, "vmax": 1.5}])  # fmt: skip
def test_a_value_typed_as_cli_value_writes_it_reads_back(value) -> None:
    """`cli_value` (check_data's train command, fine-tuning's fixes): pasted into a shell and
    read by Hydra, the text is the value again."""
    import shlex

    from omegaconf import DictConfig, ListConfig

    from unet_seg.config import cli_value

    (typed,) = shlex.split(f"data.mask_suffix={cli_value(value)}")
    got = compose_train([typed]).data.mask_suffix
    assert (to_plain(got) if isinstance(got, DictConfig | ListConfig) else got) == value
