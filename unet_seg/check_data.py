"""Check a dataset before training on it: `python -m unet_seg.check_data data=folder data.root=DIR`.

Reports pairs found and unmatched files, image sizes and channels, mask values
with their pixel counts (naming masks that look JPEG-compressed), class balance,
the labelled share of the mask pixels (partly labelled masks, `data.ignore_value`),
suggested `mask_values` and class weights, and every problem with its file.
Exits with status 1 when the data would not train.
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from unet_seg.build import plan_config
from unet_seg.config import CONF_DIR, cli_value, to_plain
from unet_seg.data.checks import inspect_folder
from unet_seg.data.contract import DataContract
from unet_seg.data.fingerprint import summary
from unet_seg.data.plan import is_volume_config, plan_table
from unet_seg.data.synthetic import ensure_synthetic
from unet_seg.files import write_json
from unet_seg.run_dir import RunDir, hydra_log_file

log = logging.getLogger(__name__)


def check_data(cfg: DictConfig) -> dict:
    """Inspect the dataset of `cfg.data`; log a summary, write JSON; return the report.

    With `data=auto` (the default) the folder's fingerprint and the plan come first,
    with the command line that trains on it.
    """
    data = cfg.data
    if data.get("synthetic"):
        ensure_synthetic(data.root, **to_plain(data.synthetic))
    cfg, plan = plan_config(cfg)
    data = cfg.data
    if is_volume_config(to_plain(data)):
        return check_volumes(cfg, plan)
    if plan is not None:
        given = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
        log.info("%s\n\nplan (python -m unet_seg.train data=auto data.root=%s uses it; "
                 "any key given on the command line wins):\n%s\n\ntrain with:\n  %s%s",
                 summary(plan["fingerprint"]), data.root, plan_table(plan),
                 train_command(to_plain(data), plan, given), guesses(plan))  # fmt: skip
    contract = DataContract.from_config(data)
    report = inspect_folder(
        data.root, contract.encoding, contract.in_channels, data.images_dir, data.masks_dir,
        data.mask_suffix, None if data.get("pad_to_crop") else data.crop_size,
        contract.intensity.get("mode", "range"), to_plain(data),
    )  # fmt: skip
    lines = [f"dataset {report['root']}: {report.get('pairs', 0)} image/mask pairs"]
    for key in ("images_without_mask", "masks_without_image", "ignored_files", "masks_jpeg_like"):
        if report.get(key):
            names = report[key]
            lines.append(f"  {key.replace('_', ' ')}: {len(names)}, e.g. {names[:5]}")
    for key in ("image_sizes", "image_channels", "mask_values", "class_pixel_share",
                "labelled_share", "least_labelled_mask", "suggested_mask_values",
                "suggested_class_weights"):  # fmt: skip
        if key in report:
            label = key.replace("_", " ") + (" (width x height)" if key == "image_sizes" else "")
            lines.append(f"  {label}: {_short(report[key])}")
    if report.get("masks_jpeg_like"):
        lines.append("  WARNING: masks that look JPEG-compressed carry noise values: save as PNG")
    problems = report["problems"]
    lines.append(f"  problems: {len(problems) or 'none'}")
    lines += [f"    {p}" for p in problems[:50]]
    (log.warning if problems else log.info)("\n".join(lines))
    if plan is not None:
        report["plan"] = {k: v for k, v in plan.items() if k != "fingerprint"}
        report["fingerprint"] = plan["fingerprint"]
    output = Path(cfg.output) if cfg.get("output") else _default_output()
    write_json(report, output)
    log.info("wrote %s", output)
    return report


def train_command(data: dict, plan: dict, overrides: Sequence[str] = ()) -> str:
    """The command that trains on this folder with this plan: the planned keys spelled out
    (so that it keeps working if the plan's rules change), and every other `data.*` key of
    `overrides` (the command line given) as it was typed, so that pasted it plans the same."""
    keys = list(dict.fromkeys([*plan["plan"], *plan["given"], "ignore_value"]))  # once each
    args = [f"data.{k}={cli_value(data[k])}" for k in keys if data.get(k) is not None]
    if data.get("target", "semantic") != "semantic":  # the classes planned are the target's
        args.insert(0, f"data.target={data['target']}")
    if "arch" in plan["plan"]:  # the net the plan chose for the windows (build.choose_net)
        args.insert(0, f"arch={plan['plan']['arch']['value']}")
    spelled = {"root", "target", *keys}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith("data.") and key.split(".")[1] not in spelled:
            args.append(shlex.quote(override))
    return " ".join(["python -m unet_seg.train data=auto", f"data.root={data['root']}", *args])


def guesses(plan: dict) -> str:
    """For each heuristic guess of the plan (mask suffix, instance labels, channels): what it
    saw, and the override to type if it is wrong."""
    lines = []
    for key, entry in plan["plan"].items():
        undo = undo_guess(key, entry["value"])
        if undo is not None:
            lines.append(f"  {key}={cli_value(entry['value'])}: {entry['why']}\n"
                         f"    if that is wrong ({undo[1]}): {undo[0]}")  # fmt: skip
    if not lines:
        return ""
    return "\n\nguesses (what each saw; the override if it is wrong):\n" + "\n".join(lines)


def undo_guess(key: str, value: object) -> tuple[str, str] | None:
    """`(override, what it means)` that undoes the plan's guess of `key`; None for a key the
    plan does not guess (it measures or derives it)."""
    if key == "mask_suffix":
        if value:
            return "data.mask_suffix=''", "the masks are named like their images"
        return "data.mask_suffix=SUFFIX", "masks are named <image stem>SUFFIX"
    if key == "mask_format" and value == "instances":
        return "data.mask_format=values", "the mask values are classes, not numbered objects"
    if key == "mask_format" and value == "values":
        return "data.mask_format=instances", "the masks number objects (instance labels)"
    if key == "in_channels" and value in (1, 3):
        return (("data.in_channels=3", "the net should see three colour channels") if value == 1
                else ("data.in_channels=1", "the images are grey"))  # fmt: skip
    return None


def _short(value: object, limit: int = 12) -> str:
    if isinstance(value, dict) and len(value) > limit:
        items = list(value.items())[:limit]
        return f"{dict(items)} ... ({len(value)} in all)"
    if isinstance(value, list) and value and isinstance(value[0], float):
        return str([round(v, 4) for v in value])
    if isinstance(value, dict):
        return str({k: round(v, 4) if isinstance(v, float) else v for k, v in value.items()})
    return str(value)


def check_volumes(cfg: DictConfig, plan: dict | None) -> dict:
    """`check_data` for a folder of volumes: the fingerprint (spacing, anisotropy, sizes,
    intensities, labels), the plan with the 2-D / 2.5-D / 3-D choice and its reason, and every
    case read as training would read it, each problem naming its file."""
    from unet_seg.data.volume_datamodule import VolumeDataModule
    from unet_seg.data.volume_plan import fingerprint_volumes, volume_summary

    data = cfg.data
    if data.get("synthetic3d"):
        from unet_seg.data.synthetic3d import ensure_synthetic3d

        ensure_synthetic3d(data.root, **to_plain(data.synthetic3d))
    fp = plan["fingerprint"] if plan is not None else fingerprint_volumes(
        data.root, data.get("images_dir", "images"), data.get("masks_dir", "masks"),
        data.get("mask_suffix") or "")  # fmt: skip
    lines = [volume_summary(fp, to_plain(data))]
    if plan is not None:
        given = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
        lines += [f"\nplan (python -m unet_seg.train data=auto data.root={data.root} uses it; "
                  f"any key given on the command line wins):\n{plan_table(plan)}",
                  f"\ntrain with:\n  {train_command(to_plain(data), plan, given)}"]  # fmt: skip
    log.info("\n".join(lines))
    datamodule = VolumeDataModule(**to_plain(data), seed=cfg.get("seed", 0))  # writes nothing
    problems = datamodule.check()
    report = {"root": str(data.root), "volumes": len(fp.get("cases", [])), "problems": problems}
    if problems:
        log.warning("problems: %d\n  %s", len(problems), "\n  ".join(problems[:50]))
    else:
        log.info("problems: none: every case reads as training will read it")
    if plan is not None:
        report["plan"] = {k: v for k, v in plan.items() if k != "fingerprint"}
    report["fingerprint"] = fp
    output = Path(cfg.output) if cfg.get("output") else _default_output()
    write_json(report, output)
    log.info("wrote %s", output)
    return report


def _default_output() -> Path:
    return Path(HydraConfig.get().runtime.output_dir) / "check_data.json"


@hydra.main(config_path=CONF_DIR, config_name="check_data", version_base=None)
def main(cfg: DictConfig) -> None:
    output = RunDir(HydraConfig.get().runtime.output_dir)
    fresh = not output.holds_run
    log_file, log_kept = hydra_log_file()  # cut back to this size if refused
    try:
        report = check_data(cfg)
    except (ValueError, FileNotFoundError) as refused:  # a refused plan, missing files
        log.debug("refused", exc_info=True)
        log.error("%s", refused)
        if fresh:
            output.discard(log_file, log_kept)  # Hydra's .hydra/ and this command's log lines
        sys.exit(1)
    if report["problems"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
