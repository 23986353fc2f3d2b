"""Check a dataset before training on it: `python -m unet_seg.check_data data=folder data.root=DIR`.

Reports pairs found and unmatched files, image sizes and channels, mask values
with their pixel counts (naming masks that look JPEG-compressed), class balance,
the labelled share of the mask pixels (partly labelled masks, `data.ignore_value`),
suggested `mask_values` and class weights, and every problem with its file.
Exits with status 1 when the data would not train.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from unet_seg.build import plan_config
from unet_seg.config import CONF_DIR, to_plain
from unet_seg.data.checks import inspect_folder
from unet_seg.data.contract import DataContract
from unet_seg.data.fingerprint import summary
from unet_seg.data.plan import plan_table
from unet_seg.data.synthetic import ensure_synthetic
from unet_seg.files import write_json

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
    if plan is not None:
        log.info("%s\n\nplan (python -m unet_seg.train data=auto data.root=%s uses it; "
                 "any key given on the command line wins):\n%s\n\ntrain with:\n  %s",
                 summary(plan["fingerprint"]), data.root, plan_table(plan),
                 train_command(to_plain(data), plan))  # fmt: skip
    contract = DataContract.from_config(data)
    report = inspect_folder(
        data.root, contract.encoding, contract.in_channels, data.images_dir, data.masks_dir,
        data.mask_suffix, None if data.get("pad_to_crop") else data.crop_size, to_plain(data),
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
            lines.append(f"  {key.replace('_', ' ')}: {_short(report[key])}")
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


def train_command(data: dict, plan: dict) -> str:
    """The command that trains on this folder with this plan (planned keys spelled out, so
    that it keeps working if the plan's rules change)."""
    keys = [*plan["plan"], *plan["given"], "ignore_value"]
    args = [f"data.{k}={_cli(data[k])}" for k in keys if data.get(k) is not None]
    if data.get("target", "semantic") != "semantic":  # the classes planned are the target's
        args.insert(0, f"data.target={data['target']}")
    return " ".join(["python -m unet_seg.train data=auto", f"data.root={data['root']}", *args])


def _cli(value: object) -> str:
    """A value as Hydra's command line reads it (quoted when it holds spaces or braces)."""
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    text = text.replace('"', "")
    return f"'{text}'" if any(c in text for c in " {}[],:") else text


def _short(value: object, limit: int = 12) -> str:
    if isinstance(value, dict) and len(value) > limit:
        items = list(value.items())[:limit]
        return f"{dict(items)} ... ({len(value)} in all)"
    if isinstance(value, list) and value and isinstance(value[0], float):
        return str([round(v, 4) for v in value])
    if isinstance(value, dict):
        return str({k: round(v, 4) if isinstance(v, float) else v for k, v in value.items()})
    return str(value)


def _default_output() -> Path:
    return Path(HydraConfig.get().runtime.output_dir) / "check_data.json"


@hydra.main(config_path=CONF_DIR, config_name="check_data", version_base=None)
def main(cfg: DictConfig) -> None:
    if check_data(cfg)["problems"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
