"""`threads: auto`: the cores this process may use that other processes leave free."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import compose_train
from unet_seg import threads as threads_module
from unet_seg.build import thread_count
from unet_seg.threads import (
    LoadMeter,
    ThreadCount,
    busy_between,
    cgroup_cpu_quota,
    choose_threads,
    resolve_threads,
)


@pytest.mark.parametrize(
    "allowed,quota,busy,expected",
    [
        (2, None, 0.0, 2),  # a quiet 2-core machine: both
        (2, None, 1.0, 1),  # one core kept busy by another process: the other one only
        (2, None, 2.3, 1),  # everything busy: one thread, never none
        (4, None, 0.2, 4),  # a little background activity takes no core
        (4, None, 0.3, 3),  # a third of a core does (a parallel step would wait for it)
        (4, None, None, 4),  # not measured: the affinity
        (16, 2.5, 0.0, 2),  # a cgroup quota of 2.5 CPUs: 2 threads, not 16
        (16, 0.5, 0.0, 1),  # under one CPU: still one thread
        (64, 2.0, 30.0, 2),  # a busy host does not eat a 2-CPU quota: 34 cores are free
        (4, 2.0, 3.0, 1),  # ... but it does when fewer cores are free than the quota
    ],
)
def test_choose_threads(allowed: int, quota: float | None, busy: float | None, expected: int):
    assert choose_threads(allowed, quota, busy) == expected


@pytest.mark.parametrize(
    "allowed,quota,busy,ranks,expected",
    [
        (2, None, 0.0, 2, 1),  # trainer=ddp on a quiet 2-core machine: one thread each, not 2
        (16, None, 0.0, 4, 4),
        (16, None, 6.0, 4, 2),  # 10 cores free among 4 ranks
        (16, 4.0, 0.0, 4, 1),  # the quota is the node's, shared too
        (4, None, 3.0, 2, 1),  # never none
    ],
)
def test_ranks_on_a_node_share_the_free_cores(allowed, quota, busy, ranks, expected) -> None:
    assert choose_threads(allowed, quota, busy, ranks) == expected


def test_cgroup_quota_v2_v1_and_none(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None  # nothing readable: no quota
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1's unlimited
    assert cgroup_cpu_quota(v1) is None


def stat(*cpus: tuple[int, int]) -> str:
    """/proc/stat text with `(busy, idle)` jiffies per CPU (user and idle columns)."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{i} {b} 0 0 {i_} 0 0 0 0 0 0" for i, (b, i_) in enumerate(cpus)]
    return "\n".join([*lines, "intr 12345", "ctxt 678"])


def test_busy_between_counts_the_cores_of_the_affinity_only() -> None:
    before = stat((100, 100), (100, 100), (100, 100))
    after = stat((200, 100), (150, 150), (300, 100))  # cpu0 busy, cpu1 half, cpu2 busy
    assert busy_between(before, after, {0, 1}) == pytest.approx(1.5)
    assert busy_between(before, after, {1}) == pytest.approx(0.5)
    assert busy_between(before, after, {0, 1, 2, 7}) == pytest.approx(2.5)  # 7: not there


def test_resolve_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_threads(3) == (3, "trainer.threads=3")
    assert resolve_threads("2")[0] == 2
    for bad in ("two", 0, -1, 1.5):
        with pytest.raises(ValueError, match=r"trainer.threads=.*: give a number of threads"):
            resolve_threads(bad)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # set by the user: auto follows it
    assert resolve_threads("auto") == (1, "OMP_NUM_THREADS=1")
    monkeypatch.delenv("OMP_NUM_THREADS")
    threads, why = resolve_threads("auto", "threads")
    assert 1 <= threads <= len(os.sched_getaffinity(0))
    assert why.startswith("threads=auto: ") and "core(s) allowed" in why


def test_trainer_threads_is_applied_and_kept_from_the_trainer() -> None:
    before = torch.get_num_threads()
    try:
        trainer, threads = thread_count(compose_train(["trainer.threads=1"]).trainer)
        assert "threads" not in trainer and trainer.max_epochs == 20
        assert threads.start(ranks=2) == 1 and torch.get_num_threads() == 1  # as given
        with pytest.raises(ValueError, match="trainer.threads='many'"):
            thread_count(compose_train(["trainer.threads=many"]).trainer)
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch):
    """A machine of 4 cores without a quota and no OMP_NUM_THREADS; torch's count restored."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_module, "allowed_cpus", lambda: {0, 1, 2, 3})
    monkeypatch.setattr(threads_module, "cgroup_cpu_quota", lambda: None)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class Load:
    """Busy cores of other processes, as a test sets them."""

    def __init__(self, busy: float) -> None:
        self.busy = busy

    def __call__(self, cpus: set[int]) -> float:
        return self.busy


def at_epoch(epoch: int) -> SimpleNamespace:
    return SimpleNamespace(current_epoch=epoch)


def test_auto_is_decided_again_each_epoch_and_a_change_logged(four_cores, caplog) -> None:
    """A run started while another process was busy takes the cores back when it ends."""
    load = Load(busy=3.0)
    threads = ThreadCount("auto", load=load, interval=0)
    assert threads.start() == 1 and torch.get_num_threads() == 1
    load.busy = 0.0  # the other process finished
    with caplog.at_level(logging.INFO, logger="unet_seg.threads"):
        threads.on_train_epoch_start(at_epoch(1), None)
    assert torch.get_num_threads() == threads.threads == 4
    assert "4 CPU thread(s) from epoch 1, 1 before" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="unet_seg.threads"):
        threads.on_train_epoch_start(at_epoch(2), None)  # no change: nothing said
    assert caplog.text == "" and torch.get_num_threads() == 4


def test_a_second_decision_waits_for_the_interval(four_cores) -> None:
    load, now = Load(busy=3.0), [0.0]
    threads = ThreadCount("auto", load=load, interval=10, clock=lambda: now[0])
    threads.start()
    load.busy, now[0] = 0.0, 5.0  # an epoch of 5 s: too soon
    threads.on_train_epoch_start(at_epoch(1), None)
    assert torch.get_num_threads() == 1
    now[0] = 10.0
    threads.on_train_epoch_start(at_epoch(2), None)
    assert torch.get_num_threads() == 4


def test_deterministic_auto_ignores_the_load_and_a_resume_keeps_the_count(
    four_cores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trainer.deterministic: two runs of one seed on one machine compute with the same
    count however busy it is, and a resume with the count the run started with."""
    quiet = ThreadCount("auto", fixed=True, load=Load(0.0), interval=0)
    busy = ThreadCount("auto", fixed=True, load=Load(3.0), interval=0)
    assert quiet.start() == busy.start() == 4
    busy.on_train_epoch_start(at_epoch(1), None)
    assert torch.get_num_threads() == 4 and busy.state_dict() == {"threads": 4, "fixed": True}
    # resumed where fewer cores are allowed, and OMP_NUM_THREADS is set: the saved count wins
    monkeypatch.setattr(threads_module, "allowed_cpus", lambda: {0, 1})
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    resumed = ThreadCount("auto", fixed=True)
    assert resumed.start() == 1
    resumed.load_state_dict(busy.state_dict())
    assert torch.get_num_threads() == resumed.threads == 4
    adaptive = ThreadCount("auto", load=Load(0.0))  # a run that need not repeat: its own
    adaptive.start()
    adaptive.load_state_dict({"threads": 3, "fixed": False})
    assert torch.get_num_threads() == 1  # OMP_NUM_THREADS


def test_trainer_deterministic_fixes_the_count(four_cores) -> None:
    for value, fixed in (("true", True), ("warn", True), ("false", False)):
        cfg = compose_train([f"trainer.deterministic={value}"])
        assert thread_count(cfg.trainer)[1].fixed is fixed, value


def fake_proc(root: Path, cpu: list[tuple[int, int]], procs: dict[int, tuple[int, int]]) -> Path:
    """A /proc with per-CPU `(busy, idle)` jiffies and `{pid: (parent, cpu jiffies)}`."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["cpu  0 0 0 0 0 0 0 0"] + [f"cpu{i} {b} 0 0 {i_} 0 0 0 0" for i, (b, i_) in
                                         enumerate(cpu)]  # fmt: skip
    (root / "stat").write_text("\n".join(lines) + "\n")
    for pid, (parent, used) in procs.items():
        (root / str(pid)).mkdir(exist_ok=True)
        fields = ["S", str(parent)] + ["0"] * 9 + [str(used), "0", "0", "0"] + ["0"] * 5
        (root / str(pid) / "stat").write_text(f"{pid} (python x) " + " ".join(fields) + "\n")
    return root


def test_the_runs_own_processes_are_no_load(tmp_path: Path) -> None:
    """Two DDP ranks (100 launched 101, with a loader worker 102) keep both cores busy: the
    meter of either sees no other load; a stranger (200) on top is counted."""
    hz = os.sysconf("SC_CLK_TCK")
    proc, now = tmp_path / "proc", [0.0]
    fake_proc(proc, [(0, 0), (0, 0)], {100: (1, 0), 101: (100, 0), 102: (101, 0), 200: (1, 0)})
    meters = [LoadMeter({0, 1}, roots={root}, stat=proc / "stat", proc=proc,
                        clock=lambda: now[0]) for root in (100, 101)]  # fmt: skip
    for meter in meters:
        meter.read()
    # 10 s: both cores busy; the ranks used 14 s of CPU, the worker 2 s, the stranger 4 s
    now[0] = 10.0
    used = {100: (1, 7 * hz), 101: (100, 7 * hz), 102: (101, 2 * hz), 200: (1, 4 * hz)}
    fake_proc(proc, [(10 * hz, 0), (10 * hz, 0)], used)
    assert meters[0].busy() == pytest.approx(0.4)  # 100's tree: all three of the run
    rank1 = LoadMeter({0, 1}, roots={100}, stat=proc / "stat", proc=proc, clock=lambda: now[0])
    assert rank1.busy() is None  # no earlier reading
    assert meters[1].busy() == pytest.approx(1.1)  # 101's tree alone: 100 counts as load


def test_a_launched_rank_counts_its_launcher_as_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert threads_module.run_roots() == {os.getpid()}  # rank 0, or no DDP
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's launcher started it from rank 0
    assert threads_module.run_roots() == {os.getpid(), os.getppid()}
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # torchrun: every rank from its agent
    assert threads_module.run_roots() == {os.getpid(), os.getppid()}


def test_ranks_started_on_a_quiet_node_take_their_share(four_cores) -> None:
    """trainer=ddp: each rank sampled a quiet machine and took every core (4 threads on 2
    cores); now each takes the free cores divided by the ranks on the node."""
    assert ThreadCount("auto", load=Load(0.0)).start(ranks=2) == 2
    assert ThreadCount("auto", fixed=True).start(ranks=4) == 1
    assert ThreadCount(3).start(ranks=2) == 3  # a number is per process, as given
