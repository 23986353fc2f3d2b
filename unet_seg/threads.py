"""How many CPU threads torch computes with: `threads: auto` takes the cores this process
may use that other processes leave free.

torch's default (one thread per core) stalls on a shared machine: each parallel operation
waits for its slowest thread, and a thread on a core another process keeps busy is the
slowest (a 2-core machine with one busy process ran the default training at 0.39 it/s on
2 threads, 1.35 it/s on 1; docs/performance.md). So `auto` counts the cores in the CPU
affinity, caps them at the cgroup CPU quota, and leaves out the cores other processes are
using right now.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

BUSY_SHARE = 0.25
"""A core counts as taken when other processes keep it busier than this (a parallel step
waits for the thread that shares it)."""


def cgroup_cpu_quota(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """CPUs the cgroup may use (`cpu.max` of cgroup v2, `cpu.cfs_quota_us` of v1), or None
    when unlimited or unreadable."""
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def _cpu_times(stat: str) -> dict[int, tuple[int, int]]:
    """`{cpu: (idle jiffies, total jiffies)}` from the text of /proc/stat."""
    times = {}
    for line in stat.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            values = [int(v) for v in fields[:8]]
            times[int(name[3:])] = (values[3] + values[4], sum(values))  # idle + iowait
    return times


def busy_between(before: str, after: str, cpus: set[int]) -> float:
    """Cores of `cpus` busy between two readings of /proc/stat (the sum of their busy
    shares: two cores each half busy count as one)."""
    start, end = _cpu_times(before), _cpu_times(after)
    busy = 0.0
    for cpu in cpus & start.keys() & end.keys():
        idle, total = end[cpu][0] - start[cpu][0], end[cpu][1] - start[cpu][1]
        if total > 0:
            busy += 1 - idle / total
    return busy


def busy_cores(cpus: set[int], seconds: float = 0.2, stat: str = "/proc/stat") -> float | None:
    """How many of `cpus` other processes keep busy, measured over `seconds` (this process
    sleeps meanwhile), or None where /proc/stat cannot be read."""
    try:
        before = Path(stat).read_text()
        time.sleep(seconds)
        return busy_between(before, Path(stat).read_text(), cpus)
    except (OSError, ValueError):
        return None


def choose_threads(allowed: int, quota: float | None, busy: float | None) -> int:
    """Threads for `allowed` cores in the affinity, a cgroup `quota` (CPUs, or None) and
    `busy` cores used by other processes (or None, not measured).

    The quota caps the threads (whole CPUs, at least one); busy cores are taken off the
    affinity (a core counts when others use more than `BUSY_SHARE` of it), since the
    other processes compete for those cores, not for this process's quota.
    """
    limit = allowed if quota is None else min(allowed, max(1, math.floor(quota)))
    free = allowed if busy is None else allowed - max(0, math.ceil(busy - BUSY_SHARE))
    return max(1, min(limit, free))


def resolve_threads(setting: int | str | None, key: str = "trainer.threads") -> tuple[int, str]:
    """`(threads, why)` for a `threads` setting: a positive number as given, `auto` as
    `choose_threads` measures (an `OMP_NUM_THREADS` in the environment wins over it), or
    None for torch's default."""
    if setting is None:
        return torch.get_num_threads(), "torch's default"
    if str(setting) != "auto":
        try:
            threads = int(setting)
        except ValueError:
            threads = 0
        if threads < 1 or str(threads) != str(setting).strip():
            raise ValueError(f"{key}={setting!r}: give a number of threads (1, 2, ...) or auto")
        return threads, f"{key}={threads}"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), f"OMP_NUM_THREADS={env}"
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    allowed = len(cpus) or os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    busy = busy_cores(cpus) if cpus else None
    threads = choose_threads(allowed, quota, busy)
    busy_text = "not measured" if busy is None else f"{busy:.1f} busy with other processes"
    quota_text = "no CPU quota" if quota is None else f"a CPU quota of {quota:g}"
    return threads, f"{key}=auto: {allowed} core(s) allowed, {quota_text}, {busy_text}"


def set_threads(setting: int | str | None, key: str = "trainer.threads") -> int:
    """Set torch's intra-op threads from a `threads` setting (see `resolve_threads`), say
    why in the log, and return the number."""
    threads, why = resolve_threads(setting, key)
    torch.set_num_threads(threads)
    log.info("%d CPU thread(s) (%s)", threads, why)
    return threads
