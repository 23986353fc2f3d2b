"""`threads: auto`: the cores this process may use that other processes leave free."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_train
from unet_seg.build import thread_count
from unet_seg.threads import busy_between, cgroup_cpu_quota, choose_threads, resolve_threads


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
