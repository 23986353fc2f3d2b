"""How many CPU threads torch computes with: `threads: auto` takes the cores this process
may use that other processes leave free, shared among the run's processes on the node.

torch's default (one thread per core) stalls on a shared machine: each parallel operation
waits for its slowest thread, and a thread on a core another process keeps busy is the
slowest (a 2-core machine with one busy process ran the default training at 0.39 it/s on
2 threads, 1.35 it/s on 1; docs/performance.md). So `auto` counts the cores in the CPU
affinity, caps them at the cgroup CPU quota, leaves out the cores other processes are
using, and divides what is left among the ranks of a DDP run on this node.

A training run decides again at the start of each epoch (`ThreadCount`), from the load
other processes put on the machine since the last decision (this run's own processes left
out), and logs a change. A run that must repeat bit for bit (`trainer.deterministic`)
does not look at the load: its count follows from the cores alone, is saved in every
checkpoint, and a resume computes with the same count.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

log = logging.getLogger(__name__)

BUSY_SHARE = 0.25
"""A core counts as taken when other processes keep it busier than this (a parallel step
waits for the thread that shares it)."""

SAMPLE_SECONDS = 0.2
"""How long the load is sampled before a run starts (this process sleeps meanwhile)."""


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


def busy_cores(cpus: set[int], seconds: float = SAMPLE_SECONDS) -> float | None:
    """How many of `cpus` other processes keep busy, measured over `seconds` (this process
    sleeps meanwhile; this run's own processes are left out), or None where /proc cannot
    be read."""
    meter = LoadMeter(cpus)
    if meter.read() is None:
        return None
    time.sleep(seconds)
    return meter.busy()


def allowed_cpus() -> set[int]:
    """The cores in this process's CPU affinity (empty where that cannot be read)."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()


def run_roots() -> set[int]:
    """The processes whose trees make up this run on this node: this one, and the parent
    of a rank another process launched (Lightning's launcher starts ranks 1.. from rank 0;
    torchrun starts every rank from its agent), so that ranks do not count each other's
    work as load."""
    roots = {os.getpid()}
    launched = os.environ.get("LOCAL_RANK", "0") != "0" or "TORCHELASTIC_RUN_ID" in os.environ
    return roots | {os.getppid()} if launched else roots


def tree_cpu_seconds(roots: Iterable[int], proc: str | Path = "/proc") -> float | None:
    """CPU seconds used by the processes `roots` and all their descendants (threads, data
    loader workers, launched ranks), the children they already reaped included; None where
    /proc cannot be read."""
    proc = Path(proc)
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    try:
        entries = [p for p in proc.iterdir() if p.name.isdigit()]
    except OSError:
        return None
    for entry in entries:
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        used[pid] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    tree, frontier = set(), {pid for pid in roots if pid in used}
    while frontier:
        tree |= frontier
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - tree
    return sum(used[pid] for pid in tree) / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """Cores of `cpus` that other processes kept busy between two readings: the busy time
    of /proc/stat less the CPU time of this run's own processes (`run_roots` and their
    descendants).

    Args:
        cpus: the cores to watch (the affinity).
        roots: this run's processes on the node; default `run_roots()`.
    """

    def __init__(
        self,
        cpus: set[int],
        roots: set[int] | None = None,
        stat: str | Path = "/proc/stat",
        proc: str | Path = "/proc",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cpus, self.roots = cpus, run_roots() if roots is None else roots
        self.stat, self.proc, self.clock = Path(stat), proc, clock
        self._last: tuple[str, float | None, float] | None = None

    def read(self) -> tuple[str, float | None, float] | None:
        """Take a reading (kept for the next `busy`); None where /proc/stat cannot be read."""
        try:
            self._last = (self.stat.read_text(), tree_cpu_seconds(self.roots, self.proc),
                          self.clock())  # fmt: skip
        except OSError:
            self._last = None
        return self._last

    def busy(self) -> float | None:
        """Cores other processes kept busy since the last reading, which this one replaces;
        None without an earlier reading."""
        before = self._last
        after = self.read()
        if before is None or after is None:
            return None
        busy = busy_between(before[0], after[0], self.cpus)
        seconds = after[2] - before[2]
        if before[1] is not None and after[1] is not None and seconds > 0:
            busy -= (after[1] - before[1]) / seconds  # this run's own work is no load
        return max(0.0, busy)


def choose_threads(allowed: int, quota: float | None, busy: float | None, ranks: int = 1) -> int:
    """Threads for each of `ranks` processes of one run sharing `allowed` cores of the
    affinity, a cgroup `quota` (CPUs, or None) and `busy` cores used by other processes (or
    None, not measured).

    The quota caps the threads (whole CPUs, at least one); busy cores are taken off the
    affinity (a core counts when others use more than `BUSY_SHARE` of it), since the
    other processes compete for those cores, not for this process's quota. What is left is
    divided among the ranks, at least one thread each.
    """
    limit = allowed if quota is None else min(allowed, max(1, math.floor(quota)))
    free = allowed if busy is None else allowed - max(0, math.ceil(busy - BUSY_SHARE))
    return max(1, min(limit, free) // max(1, ranks))


def _env_threads() -> int | None:
    """`OMP_NUM_THREADS` when it holds a positive number."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else None


def resolve_threads(
    setting: int | str | None,
    key: str = "trainer.threads",
    ranks: int = 1,
    load: Callable[[set[int]], float | None] | None = busy_cores,
) -> tuple[int, str]:
    """`(threads, why)` for a `threads` setting: a positive number as given, `auto` as
    `choose_threads` decides for `ranks` processes on the node (an `OMP_NUM_THREADS` in the
    environment wins over it), or None for torch's default.

    Args:
        load: how many of the given cores other processes keep busy; None: the load is not
            looked at (a count that repeats on this machine, for `trainer.deterministic`).
    """
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
    env = _env_threads()
    if env is not None:
        return env, f"OMP_NUM_THREADS={env}"
    cpus = allowed_cpus()
    allowed = len(cpus) or os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    busy = load(cpus) if cpus and load is not None else None
    threads = choose_threads(allowed, quota, busy, ranks)
    if load is None:
        busy_text = "the load not looked at (trainer.deterministic)"
    else:
        busy_text = "not measured" if busy is None else f"{busy:.1f} busy with other processes"
    quota_text = "no CPU quota" if quota is None else f"a CPU quota of {quota:g}"
    ranks_text = f", shared by {ranks} processes of this run" if ranks > 1 else ""
    return threads, f"{key}=auto: {allowed} core(s) allowed, {quota_text}, {busy_text}{ranks_text}"


def check_threads(setting: Any, key: str = "trainer.threads") -> None:
    """Refuse a `threads` setting that is neither a positive number, `auto` nor None."""
    if setting is not None and str(setting) != "auto":
        resolve_threads(setting, key)


def set_threads(setting: int | str | None, key: str = "trainer.threads") -> int:
    """Set torch's intra-op threads from a `threads` setting (see `resolve_threads`), say
    why in the log, and return the number."""
    threads, why = resolve_threads(setting, key)
    torch.set_num_threads(threads)
    log.info("%d CPU thread(s) (%s)", threads, why)
    return threads


class ThreadCount(pl.Callback):
    """`trainer.threads` of a training run: decided by `start` before the run, then again at
    each epoch start for `auto` (at most every `interval` seconds), a change logged.

    With `fixed` (`trainer.deterministic`) `auto` does not follow the load: the count comes
    from the cores alone, is kept for the whole run, saved in each checkpoint, and a resume
    takes the saved count (results repeat bit for bit only with the same count).

    Args:
        setting: `auto`, a number, or None (torch's default).
        fixed: keep one count for the run and its resumes.
        load: `(cores) -> cores other processes keep busy since the last call`; default a
            `LoadMeter` over the epoch (tests inject their own).
        interval: seconds between two decisions at the least (an epoch of one step would
            otherwise re-decide after every step).
    """

    def __init__(
        self,
        setting: int | str | None = "auto",
        fixed: bool = False,
        key: str = "trainer.threads",
        load: Callable[[set[int]], float | None] | None = None,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_threads(setting, key)
        self.setting, self.fixed, self.key = setting, fixed, key
        self.adaptive = str(setting) == "auto" and not fixed and _env_threads() is None
        self.interval, self.clock = interval, clock
        self._load = load
        self._meter: LoadMeter | None = None
        self.ranks = 1
        self.threads: int | None = None
        self._decided = -math.inf

    @property
    def state_key(self) -> str:
        return "ThreadCount"

    def state_dict(self) -> dict[str, Any]:
        return {"threads": self.threads, "fixed": self.fixed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("threads")
        if not (self.fixed and str(self.setting) == "auto" and saved):
            return
        if saved != self.threads:
            log.info("%d CPU thread(s), as this run started with (%s=auto, "
                     "trainer.deterministic: saved in its checkpoint; now %s)",
                     saved, self.key, self.threads)  # fmt: skip
        self._apply(int(saved))

    def start(self, ranks: int = 1) -> int:
        """Decide the count for `ranks` processes of this run on the node, before it runs."""
        self.ranks = max(1, int(ranks))
        load = None if self.fixed else (self._load or busy_cores)
        threads, why = resolve_threads(self.setting, self.key, self.ranks, load)
        log.info("%d CPU thread(s) (%s)", threads, why)
        self._apply(threads)
        return threads

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.adaptive and self._load is None:  # the load is measured from here on, over
            self._meter = LoadMeter(allowed_cpus(), clock=self.clock)  # `interval` at least
            self._meter.read()
            self._decided = self.clock()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.adaptive or self.clock() - self._decided < self.interval:
            return
        load = self._load or (lambda cpus: self._meter.busy() if self._meter else None)
        threads, why = resolve_threads(self.setting, self.key, self.ranks, load)
        if threads != self.threads:
            log.info("%d CPU thread(s) from epoch %d, %d before (%s)", threads,
                     trainer.current_epoch, self.threads, why)  # fmt: skip
        self._apply(threads)

    def _apply(self, threads: int) -> None:
        self.threads = threads
        self._decided = self.clock()
        torch.set_num_threads(threads)
