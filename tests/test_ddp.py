"""DDP on the CPU (gloo): two processes on one node, one run directory, metrics that match
one process; a time budget the ranks agree on; and two nodes of one process each on
loopback, as a cluster launcher starts them, resumed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.forked import Forked, Forker
from unet_seg.budget import TimeBudget
from unet_seg.evaluate import evaluate

pytestmark = pytest.mark.slow


def test_two_process_ddp_matches_a_one_process_evaluation(tmp_path: Path, forker: Forker) -> None:
    """Shares of a split, even or with one process empty (a 1-image test split), pool to the
    scores one process gets."""
    args = [
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
        "trainer.sync_batchnorm=false",  # PyTorch's SyncBatchNorm needs GPUs
        "data.synthetic.num_images=16", "data.synthetic.size=64", "data.crop_size=48",
        "data.batch_size=2", "data.val_fraction=0.25", "data.test_fraction=0.0625",
        "arch.base_channels=4", "trainer.max_epochs=2", f"data.root={tmp_path / 'data'}",
    ]  # fmt: skip
    # rank 0 is a fork of the server; Lightning starts rank 1 as `python -m unet_seg.train`
    proc = forker.run(["-m", "unet_seg.train", *args], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "train").iterdir()  # one directory, not one per rank
    metrics = json.loads((run_dir / "metrics.json").read_text())
    splits = json.loads((run_dir / "splits.json").read_text())
    # val: shares of 2 + 2; test: one image, so one process has none and still joins the sums
    assert len(splits["val"]) == 4 and len(splits["test"]) == 1
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 * 3  # 11 training images, 2 processes x batch 2: 3 steps

    for split in ("val", "test"):
        cfg = OmegaConf.create({"run_dir": str(run_dir), "ckpt": None, "split": split,
                                "data_root": None, "level": None, "device": "cpu",
                                "output": str(tmp_path / f"{split}.json")})  # fmt: skip
        one = evaluate(cfg)
        assert one["images"] == len(splits[split])
        pairs = {"dice": "dice", "iou": "iou", "dice/pooled/nucleus": "dice/nucleus",
                 "iou/pooled/background": "iou/background"}  # fmt: skip
        for key, logged in pairs.items():
            assert one[key] == pytest.approx(metrics[f"{split}/{logged}"], abs=1e-6), (split, key)
        assert f"{split}/loss" in metrics


# Runs `python -m unet_seg.train` after arranging that each rank, when training ends, writes
# its step, learning rate and world size to $RANKS_OUT/rank<global rank>.json. A script file,
# not `python -c`: Lightning's launcher starts rank 1 by running the same file again.
RANK_REPORT = """
import json, os
from unet_seg.budget import TimeBudget
end = TimeBudget.on_train_end
def on_train_end(self, trainer, pl_module):
    report = {"step": trainer.global_step, "total_steps": self.total_steps,
              "lr": trainer.optimizers[0].param_groups[0]["lr"], "world": trainer.world_size}
    out = os.path.join(os.environ["RANKS_OUT"], f"rank{trainer.global_rank}.json")
    with open(out, "w") as f:
        json.dump(report, f)
    end(self, trainer, pl_module)
TimeBudget.on_train_end = on_train_end
from unet_seg.train import main
main()
"""

BUDGETED = [
    "trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true",
    "trainer.sync_batchnorm=false", "trainer.threads=1",  # two ranks on a few shared cores
    "data.synthetic.num_images=12", "data.synthetic.size=48", "data.crop_size=32",
    "data.batch_size=2", "data.num_workers=0", "arch.base_channels=4", "arch.depth=3",
    "logger=none", "callbacks.validation_images.num_samples=0", "final_eval=false",
]  # fmt: skip


def rank_reports(folder: Path, world: int) -> list[dict]:
    reports = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(world)]
    assert all(r["world"] == world for r in reports)
    return reports


def assert_ranks_agree(reports: list[dict]) -> None:
    """Every rank stopped at the same step, the one the budget planned, at the same rate."""
    steps = {r["step"] for r in reports}
    assert len(steps) == 1 and steps == {r["total_steps"] for r in reports}, reports
    assert len({r["lr"] for r in reports}) == 1, reports


def run_ranks(forker: Forker, script: Path, args: list[str], cwd: Path, env: dict) -> Forked:
    """`python SCRIPT ARGS` as a fork of the server, its stderr merged into its stdout."""
    return forker.popen([script, *args], cwd=cwd, env=env, merge=True)


def finish(procs: list[Forked]) -> None:
    """Wait for every process; a failure or a hang kills the others."""
    try:
        for proc in procs:
            try:
                out, _ = proc.communicate(timeout=300)
            except subprocess.TimeoutExpired:  # ranks that disagree wait for each other
                raise AssertionError("a rank hung: the ranks did not stop together") from None
            assert proc.returncode == 0, out[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_one_run_directory_and_a_resume(
    tmp_path: Path, forker: Forker
) -> None:
    """`trainer.num_nodes=2`, one process a node, in the environment a cluster launcher
    sets (MASTER_ADDR, MASTER_PORT, NODE_RANK, WORLD_SIZE): one run directory on the shared
    disk, written by rank 0 only; a resume with a longer budget continues it. Each rank
    times its own steps (and node 1 starts later, so it counts less time spent): the ranks
    agree on one plan, stop together and end at the same learning rate, both times."""
    script = tmp_path / "train_ranks.py"
    script.write_text(RANK_REPORT)
    run_dir = tmp_path / "shared" / "run"

    def run_nodes(args: list[str], tag: str) -> list[dict]:
        port, procs = free_port(), []
        (tmp_path / tag).mkdir()
        for node in (0, 1):
            cwd = tmp_path / f"node{node}"
            cwd.mkdir(exist_ok=True)
            env = {**os.environ, "RANKS_OUT": str(tmp_path / tag), "OMP_NUM_THREADS": "1",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "NODE_RANK": str(node), "WORLD_SIZE": "2"}  # fmt: skip
            extra = [] if node == 0 else ["hydra.output_subdir=null"]  # .hydra/: node 0's
            procs.append(run_ranks(forker, script, [*args, *extra], cwd, env))
        finish(procs)
        return rank_reports(tmp_path / tag, 2)

    nodes = ["trainer.devices=1", "trainer.num_nodes=2", f"hydra.run.dir={run_dir}"]
    # forks start in well under a second, so budgets of 8 s and 14 s leave the ranks the
    # training time 12 s and 22 s left after a fresh process's imports (91 and 157 steps
    # on a busy 2-core machine)
    first = run_nodes([*BUDGETED, *nodes, "trainer.budget=8s",
                       f"data.root={tmp_path / 'shared' / 'data'}"], "first")  # fmt: skip
    assert_ranks_agree(first)
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == first[0]["step"]
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == first[0]["step"]
    assert not any((tmp_path / f"node{n}" / "outputs").exists() for n in (0, 1))
    assert len(list((run_dir / "checkpoints").glob("*.ckpt"))) == 2  # best and last, once

    resumed = run_nodes([f"resume={run_dir}", "trainer.budget=14s", *nodes], "resumed")
    assert_ranks_agree(resumed)
    assert resumed[0]["step"] > first[0]["step"]  # it continued, with the time added
    assert resumed[0]["step"] > TimeBudget.SKIP_STEPS  # the plan came from timed steps
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == resumed[0]["step"]
