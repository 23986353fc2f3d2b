"""One table for many runs: `python -m unet_seg.report SWEEP_OR_RUN_DIR [...]`.

Finds every finished run (`unet_seg.run_dir.find_runs`) under the given
folders, keeps the config values that differ between runs, groups runs that
differ only in `data.fold` or `seed` (cross-validation folds, repeated seeds),
and writes, best first:

- `report.md` and `report.csv`: one row per group, each metric as mean and
  sample standard deviation over its runs, with the run count;
- `runs.csv`: one row per run;
- `learning_curves.png`: train/loss and the chosen metric over steps, from the
  runs' TensorBoard event files;
- `results.png`: the chosen metric per group, mean and spread.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unet_seg.config import to_plain
from unet_seg.quiet import silence_known_noise
from unet_seg.run_dir import RunDir, find_runs

log = logging.getLogger(__name__)

REPLICATE_KEYS = ("data.fold", "seed", "data.split_seed")
"""Keys whose runs are replicates of one setting (averaged together)."""

IGNORED_PREFIXES = ("run_dir", "resume", "paths.", "callbacks.", "logger.", "hydra.",
                    "data.root", "data.synthetic.")  # fmt: skip
LOWER_IS_BETTER = ("loss", "pixel_error", "hd95")


def flatten(node: object, prefix: str = "") -> dict[str, object]:
    """Nested dicts -> `{"a.b.c": value}`; lists are kept as values."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, object] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def load_run(run: RunDir) -> dict:
    config = flatten(to_plain(run.load_config()))
    return {"run": run.path, "config": config, "metrics": run.load_metrics()}


def differing_keys(runs: list[dict]) -> list[str]:
    """Config keys whose values differ between runs (bookkeeping keys left out)."""
    keys = sorted(set().union(*(r["config"] for r in runs)))
    return [
        k for k in keys
        if not k.startswith(IGNORED_PREFIXES)
        and len({json.dumps(r["config"].get(k), sort_keys=True) for r in runs}) > 1
    ]  # fmt: skip


def group_runs(runs: list[dict], metric: str) -> tuple[list[str], list[dict]]:
    """Group replicates; return (setting keys, groups sorted best first by `metric`)."""
    keys = differing_keys(runs)
    setting = [k for k in keys if k not in REPLICATE_KEYS]
    groups: dict[str, dict] = {}
    for r in runs:
        values = {k: r["config"].get(k) for k in setting}
        ident = json.dumps(values, sort_keys=True, default=str)
        groups.setdefault(ident, {"setting": values, "runs": []})["runs"].append(r)
    metric_names = sorted(
        {k for r in runs for k, v in r["metrics"].items() if isinstance(v, int | float)}
        - {"epochs", "global_step"}
    )
    for g in groups.values():
        g["n"] = len(g["runs"])
        g["stats"] = {}
        for m in metric_names:
            vals = np.array([r["metrics"][m] for r in g["runs"] if m in r["metrics"]], float)
            if len(vals):
                spread = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
                g["stats"][m] = (float(vals.mean()), spread)
    lower = any(word in metric for word in LOWER_IS_BETTER)
    missing = float("inf") if lower else float("-inf")

    def score(g: dict) -> float:
        return g["stats"].get(metric, (missing, 0))[0]

    return setting, sorted(groups.values(), key=score, reverse=not lower)


def write_tables(setting: list[str], groups: list[dict], runs: list[dict], out: Path,
                 metrics: list[str]) -> None:  # fmt: skip
    """report.md, report.csv (groups) and runs.csv (runs)."""
    header = [*setting, "runs", *metrics]
    rows = []
    for g in groups:
        cells = [_fmt(g["setting"][k]) for k in setting] + [str(g["n"])]
        for m in metrics:
            mean, spread = g["stats"].get(m, (float("nan"), float("nan")))
            cells.append(f"{mean:.4f} ± {spread:.4f}" if g["n"] > 1 else f"{mean:.4f}")
        rows.append(cells)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    (out / "report.md").write_text(
        f"{len(runs)} runs in {len(groups)} settings, best first (mean ± sample std over "
        f"replicates: {', '.join(REPLICATE_KEYS)}).\n\n" + "\n".join(md) + "\n"
    )
    with open(out / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*setting, "runs", *(f"{m} {s}" for m in metrics for s in ("mean", "std"))])
        for g in groups:
            stats = [v for m in metrics for v in g["stats"].get(m, (None, None))]
            w.writerow([_fmt(g["setting"][k]) for k in setting] + [g["n"], *stats])
    keys = differing_keys(runs)
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", *keys, *metrics])
        for r in runs:
            w.writerow([str(r["run"]), *(_fmt(r["config"].get(k)) for k in keys),
                        *(r["metrics"].get(m) for m in metrics)])  # fmt: skip


def _fmt(value: object) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def read_scalars(run: Path, tags: Sequence[str]) -> dict[str, tuple[list[int], list[float]]]:
    """Steps and values of each tag in the run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    silence_known_noise()  # TensorBoard's line per event file
    acc = EventAccumulator(str(RunDir(run).tensorboard), size_guidance={"scalars": 0})
    acc.Reload()
    present = set(acc.Tags().get("scalars", []))
    series = {}
    for tag in tags:
        if tag in present:
            events = acc.Scalars(tag)
            series[tag] = ([e.step for e in events], [e.value for e in events])
    return series


def plot(setting: list[str], groups: list[dict], out: Path, metric: str) -> None:
    """learning_curves.png and results.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def label(g: dict) -> str:
        return ", ".join(f"{k}={_fmt(g['setting'][k])}" for k in setting) or "run"

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate(groups):
        color = colors[i % len(colors)]
        for j, r in enumerate(g["runs"]):
            series = read_scalars(r["run"], ["train/loss", metric])
            for ax, tag in zip(axes, ("train/loss", metric), strict=True):
                if tag in series:
                    ax.plot(*series[tag], color=color, alpha=0.8, lw=1,
                            label=label(g) if j == 0 else None)  # fmt: skip
    for ax, tag in zip(axes, ("train/loss", metric), strict=True):
        ax.set_title(tag)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(groups) + 2), 4.5))
    means = [g["stats"].get(metric, (np.nan, 0))[0] for g in groups]
    spreads = [g["stats"].get(metric, (np.nan, 0))[1] for g in groups]
    ax.bar(range(len(groups)), means, yerr=spreads, capsize=4, color=colors[: len(groups)])
    ax.set_xticks(
        range(len(groups)), [label(g) for g in groups], rotation=30, ha="right", fontsize=7
    )
    ax.set_ylabel(f"{metric} (mean ± std over replicates)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)


def report(folders: Sequence[str | Path], output: str | Path, metric: str = "val/dice") -> dict:
    """Gather the runs below `folders`; write the tables and pictures into `output`.

    Returns `{"runs", "groups", "setting", "best"}`.
    """
    runs = [load_run(r) for r in find_runs(folders)]
    setting, groups = group_runs(runs, metric)
    if not any(metric in g["stats"] for g in groups):
        raise ValueError(f"no run has the metric {metric!r} in its {RunDir.METRICS}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    shown = [m for m in ("val/dice", "val/iou", "val/pixel_error", "test/dice", "test/iou")
             if any(m in g["stats"] for g in groups)]  # fmt: skip
    if metric not in shown:
        shown.insert(0, metric)
    write_tables(setting, groups, runs, out, shown)
    plot(setting, groups, out, metric)
    log.info("%s", (out / "report.md").read_text())
    log.info("wrote %s/{report.md,report.csv,runs.csv,learning_curves.png,results.png}", out)
    return {"runs": runs, "groups": groups, "setting": setting, "best": groups[0]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="sweep or run directories")
    parser.add_argument("--output", default=None, help="default: the first folder, /report")
    parser.add_argument("--metric", default="val/dice", help="ranks the settings (val/dice)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    report(args.folders, args.output or Path(args.folders[0]) / "report", args.metric)


if __name__ == "__main__":
    main()
