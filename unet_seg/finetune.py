"""Fine-tuning: a new run whose net starts from the weights of a unet-seg checkpoint.

`python -m unet_seg.train init_from=CKPT ...` is a run like any other (its own run
directory, split, optimizer and schedule); only the net's starting weights come from
CKPT (a `.ckpt`, or a run directory: its `best.ckpt`), read with the same refusals as
every checkpoint (`SegModule.from_checkpoint`: `weights_only`, foreign or edited files),
or from a bioimage.io package that `export format=bioimageio` wrote (its state dict).

- The net must be the checkpoint's architecture with the same widths; `check_source`
  names the `arch.*` overrides when it is not. Tensors are matched by name and shape, so
  everything loads except the head (`SegNet.head_modules`) when the class count differs:
  it keeps its fresh initialisation. With the same count the head is reused.
- The data contract (classes, intensity, normalisation, patch) is the new data's own.
  Input channels must agree with the checkpoint's: refused, with the fix.
- `finetune.freeze_encoder_epochs=N`: the encoder (`SegNet.encoder_modules`) does not
  train in the first N epochs, its batch-norm statistics included (eval mode).
- `finetune.pretrained_lr_scale=s`: loaded tensors train at s x the learning rate of
  reset ones (`SegModule` puts them in two optimizer parameter groups).

What was loaded, reset and frozen is logged as a table and kept in the run directory
(`init.json`); a resumed run reads it back and takes its weights from `last.ckpt`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from unet_seg.config import CONF_DIR, cli_value, to_plain
from unet_seg.models.base import SegNet
from unet_seg.models.encoder_unet import EncoderNet
from unet_seg.module import SegModule
from unet_seg.run_dir import RunDir

log = logging.getLogger(__name__)

FREE_ARCH_KEYS = ("in_channels", "num_classes", "encoder_weights")
"""`arch` keys a fine-tuning run need not share with its checkpoint (the data decides the
first two; in_channels is then checked on its own); `encoder_weights` (arch=unet_encoder)
only starts a net, and the checkpoint's weights replace them."""


def _defaults() -> dict:
    """The `finetune` keys and their defaults, read from conf/train.yaml: written once, there."""
    return to_plain(OmegaConf.load(Path(CONF_DIR) / "train.yaml").finetune)


DEFAULTS = _defaults()
"""The `finetune` keys and their values when not given (a config from before one existed)."""


def settings(cfg: DictConfig) -> dict:
    """The `finetune` keys of a config, with their defaults."""
    given = to_plain(cfg.get("finetune")) or {}
    return {key: given.get(key, default) for key, default in DEFAULTS.items()}


def source_path(init_from: str | Path) -> Path:
    """The checkpoint `init_from` names: a file, or a run directory's `best.ckpt`."""
    path = Path(init_from)
    if not path.is_dir():
        return path
    run = RunDir(path)
    if not run.holds_run or not run.best.is_file():
        raise FileNotFoundError(
            f"init_from={path}: a folder without a unet-seg run's {run.best.relative_to(path)}; "
            "pass a checkpoint file or the directory of a run that saved one"
        )
    return run.best


def read_source(init_from: str | Path) -> SegModule:
    """The module of the checkpoint `init_from` names, refused as `from_checkpoint` refuses;
    a bioimage.io package written by unet-seg gives its net (`bioimageio.read_package_source`)."""
    from unet_seg.bioimageio import is_package, read_package_source

    path = source_path(init_from)
    if is_package(path):
        return read_package_source(path)
    try:
        return SegModule.from_checkpoint(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"init_from={init_from}: {err}") from err
    except ValueError as err:
        raise ValueError(f"init_from={init_from}: {err}") from err


def _describe(arch: dict) -> str:
    kwargs = ", ".join(f"{k}={cli_value(v)}" for k, v in arch.items()
                       if k not in ("name", *FREE_ARCH_KEYS))  # fmt: skip
    return f"arch={arch.get('name')} ({kwargs})"


def check_source(source: dict, arch: dict, where: str) -> None:
    """Refuse a run whose `arch` cannot take the weights of a net built from `source` (the
    checkpoint's arch): other input channels, another architecture or other widths."""
    have, want = source.get("in_channels"), arch.get("in_channels")
    if have != want:
        fix = (
            "set data.in_channels=3 (grey images are then read as three equal channels)"
            if have == 3 and want == 1
            else f"give the net {have} input channel(s) (data.in_channels={have}, if the images "
            "can feed them), or train from scratch without init_from"
        )
        raise ValueError(
            f"init_from={where}: its net takes {have} input channel(s), this run's data "
            f"{want} (data.in_channels={want}). The first layer's weights are per input "
            f"channel, so the two must agree: {fix}."
        )
    differ = [k for k in dict.fromkeys([*source, *arch])
              if k not in FREE_ARCH_KEYS and source.get(k) != arch.get(k)]  # fmt: skip
    if differ:
        if source.get("name") != arch.get("name"):
            differ = [k for k in source if k not in FREE_ARCH_KEYS]
        fix = " ".join(f"arch{'' if k == 'name' else '.' + k}={cli_value(source[k])}"
                       for k in differ if k in source)  # fmt: skip
        raise ValueError(
            f"init_from={where}: its net is {_describe(source)}, this run's is "
            f"{_describe(arch)}. Fine-tuning loads every layer, so the architecture and its "
            f"widths must be the checkpoint's: add {fix} to the command."
        )


def problems(cfg: DictConfig) -> list[Exception]:
    """What keeps a config's fine-tuning from starting (checked before anything is written):
    `finetune.*` values, and an `init_from` checkpoint that is refused or does not fit."""
    found: list[Exception] = []
    options = settings(cfg)
    epochs, scale = options["freeze_encoder_epochs"], options["pretrained_lr_scale"]
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        found.append(ValueError(
            f"finetune.freeze_encoder_epochs={epochs!r}: give a whole number of epochs >= 0"
        ))  # fmt: skip
    if not isinstance(scale, int | float) or isinstance(scale, bool) or scale < 0:
        found.append(ValueError(
            f"finetune.pretrained_lr_scale={scale!r}: give a factor >= 0 (0.1: loaded "
            "tensors learn at a tenth of optimizer.lr; 1: all at optimizer.lr)"
        ))  # fmt: skip
    init_from = cfg.get("init_from")
    if not init_from and (cfg.get("arch") or {}).get("encoder_weights") is not None:
        return found  # they apply to the pretrained encoder (`init_encoder`)
    if not init_from:
        changed = [f"finetune.{k}={cli_value(v)}" for k, v in options.items() if v != DEFAULTS[k]]
        if changed:
            found.append(ValueError(
                f"{', '.join(changed)} without init_from: these fine-tune a net started from a "
                "checkpoint or a pretrained encoder; add init_from=CKPT (a .ckpt or a run "
                "directory) or arch.encoder_weights=imagenet|PATH (arch=unet_encoder or "
                "unetpp_encoder), or drop them"
            ))  # fmt: skip
        return found
    try:
        source = read_source(init_from)
        check_source(source.hparams.arch, to_plain(cfg.arch), init_from)
    except (ValueError, FileNotFoundError) as err:
        found.append(err)
    return found


def transfer(source: SegNet, net: SegNet) -> dict[str, list[str]]:
    """Copy into `net` every state-dict tensor of `source` with the same name and shape.

    Returns:
        `{"loaded": names copied, "reset": names of `net` left as initialised, "unused":
        names of `source` not copied}`.
    """
    given = source.state_dict()
    loaded, reset = [], []
    for name, tensor in net.state_dict().items():  # tensors share the net's storage
        if name in given and given[name].shape == tensor.shape:
            tensor.copy_(given[name])
            loaded.append(name)
        else:
            reset.append(name)
    unused = [name for name in given if name not in set(loaded)]
    return {"loaded": loaded, "reset": reset, "unused": unused}


def init_from_checkpoint(module: SegModule, cfg: DictConfig, run: RunDir, resumed: bool) -> dict:
    """Start `module` from the weights of `cfg.init_from` and set its fine-tuning options.

    A fresh run loads the weights, logs what it loaded, reset and froze, and writes that
    record to `run/init.json`; a resumed run (`resumed`) reads the record back (its weights
    come from its own last checkpoint). Returns the record.
    """
    options = settings(cfg)
    given = str(Path(cfg.init_from).resolve())
    if resumed:
        record = run.load_init()
        if record["init_from"] != given:
            raise ValueError(
                f"init_from={cfg.init_from}: this run started from {record['init_from']} "
                f"({run.init_path}) and its weights have trained since; a resumed run keeps "
                "where it started. Start a new run to fine-tune from another checkpoint."
            )
        log.info("fine-tuning run resumed: started from %s (%s)", record["checkpoint"],
                 run.init_path)  # fmt: skip
    else:
        source = read_source(cfg.init_from)
        check_source(source.hparams.arch, module.hparams.arch, cfg.init_from)
        record = {
            "init_from": given,
            "checkpoint": str(source_path(cfg.init_from).resolve()),
            "source": {"arch": source.hparams.arch, "class_names": source.contract.class_names},
            **transfer(source.net, module.net),
            **options,
        }
        parts = module.net.parts()
        params = dict(module.net.named_parameters())
        record["frozen"] = [n for n, part in parts.items() if part == "encoder" and n in params
                            and options["freeze_encoder_epochs"] > 0]  # fmt: skip
        run.save_init(record)
        log.info("%s", init_table(record, parts, module.contract.class_names,
                                  module.contract.out_channels))  # fmt: skip
    module.hparams["finetune"] = {
        "init_from": record["checkpoint"], "reset": record["reset"], **options,
    }  # fmt: skip
    return record


def init_encoder(module: SegModule, cfg: DictConfig, run: RunDir, resumed: bool) -> dict | None:
    """A net with `arch.encoder_weights` (imagenet or a file): a fresh run loads them into its
    encoder, logs what loaded and writes that record to `run/encoder_init.json`; a resumed run
    reads the record back (its weights come from its last checkpoint). Without `init_from`,
    `finetune.freeze_encoder_epochs` and `finetune.pretrained_lr_scale` then apply to the
    pretrained encoder (the decoder and head are new: they train at optimizer.lr).

    Returns:
        The record of `weights.load_encoder_weights`, or None (no pretrained encoder).
    """
    net = module.net
    if not isinstance(net, EncoderNet) or net.encoder_weights is None:
        return None
    if resumed:  # the record, when the first start wrote one
        path = run.encoder_init_path
        record = json.loads(path.read_text()) if path.is_file() else None
        log.info("pretrained encoder, resumed run: %s", record["source"] if record else path)
    else:
        record = net.load_encoder_weights()
        run.save_encoder_init(record)
    if not cfg.get("init_from"):  # init_from_checkpoint sets its own (every layer loaded)
        reset = [name for name, part in net.parts().items() if part != "encoder"]
        module.hparams["finetune"] = {"init_from": None, "reset": reset, **settings(cfg)}
    return record


def _logits(n: int) -> str:
    return "1 logit, sigmoid" if n == 1 else f"{n} logits"


def init_table(
    record: dict, parts: dict[str, str], class_names: list[str], logits: int | None = None
) -> str:
    """What a fine-tuning run took from its checkpoint, per part of the net (`logits`: the
    new net's output channels, which decide whether the head loads):

    init_from best.ckpt: arch=unet, classes background, nucleus (2 logits) -> background,
      cell, debris (3 logits)
      part     tensors  loaded  reset  frozen (epochs 1-3)  lr x optimizer.lr
      encoder       60      60      0                   30  0.1
      ...
      reset (trained from scratch): head.weight, head.bias
    """
    loaded, frozen = set(record["loaded"]), set(record["frozen"])
    epochs, scale = record["freeze_encoder_epochs"], record["pretrained_lr_scale"]
    source = record["source"]
    before = f" ({_logits(source['arch']['num_classes'])})" if logits is not None else ""
    after = f" ({_logits(logits)})" if logits is not None else ""
    lines = [
        f"init_from {record['checkpoint']}: arch={source['arch']['name']}, classes "
        f"{', '.join(source['class_names'])}{before} -> {', '.join(class_names)}{after}",
        f"  {'part':<8} {'tensors':>7} {'loaded':>6} {'reset':>5} "
        f"{f'frozen (epochs 1-{epochs})' if epochs else 'frozen':>19}  lr x optimizer.lr",
    ]
    for part in ("encoder", "decoder", "head"):
        names = [n for n, p in parts.items() if p == part]
        count = Counter(n in loaded for n in names)
        rates = sorted({scale if n in loaded else 1.0 for n in names}, reverse=True)
        lines.append(
            f"  {part:<8} {len(names):>7} {count[True]:>6} {count[False]:>5} "
            f"{sum(n in frozen for n in names):>19}  {' / '.join(f'{r:g}' for r in rates)}"
        )
    lines.append(f"  reset (trained from scratch): {', '.join(record['reset']) or 'none'}")
    if record["unused"]:
        lines.append(f"  not used from the checkpoint: {', '.join(record['unused'])}")
    return "\n".join(lines)
