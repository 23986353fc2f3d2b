"""Reliability: killed runs resume to the same weights, stops are graceful, bad files are
named, disk trouble is reported, results repeat, and checkpoints never run code."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.conftest import compose_train, write_folder
from tests.forked import Forker
from unet_seg import callbacks
from unet_seg.callbacks import AtomicCheckpointIO
from unet_seg.data.checks import check_pairs
from unet_seg.data.dataset import SegDataset, find_pairs, pad_collate
from unet_seg.data.masks import MaskEncoding
from unet_seg.module import SegModule
from unet_seg.train import build_module, check_output_dir, train

TINY = [
    "data.synthetic.num_images=12", "data.synthetic.size=64", "data.crop_size=48",
    "data.batch_size=4", "arch.base_channels=4", "trainer.log_every_n_steps=1",
    "callbacks.validation_images.num_samples=1", "trainer.deterministic=true",
]  # fmt: skip
STEPS_PER_EPOCH = 3  # 12 images: 9 train, 2 val, 1 test; batches of 4


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# ------------------------------------------------------------------ repeatability


def test_same_seed_same_results_on_cpu(tmp_path: Path) -> None:
    data = f"data.root={tmp_path / 'data'}"
    runs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        cfg = compose_train([*TINY, data, f"run_dir={tmp_path / name}", "trainer.max_epochs=2",
                             f"seed={seed}", "data.split_seed=0"])  # fmt: skip
        runs.append(train(cfg))
    assert runs[0] == {**runs[1], "checkpoint": runs[0]["checkpoint"]}
    a, b, c = (tmp_path / n / "checkpoints" / "last.ckpt" for n in "abc")
    assert_same_weights(a, b)
    with pytest.raises(AssertionError):
        assert_same_weights(a, c)  # another seed trains differently


# ------------------------------------------------------------------ killed runs

# Runs `python -m unet_seg.train` in-process after arranging its own death:
#   step N  -> SIGKILL itself when training reaches global step N
#   write N -> SIGKILL itself halfway through writing its N-th checkpoint file
#   term N  -> SIGTERM itself at global step N (a graceful stop); int N -> the same, Ctrl+C
HARNESS = """
import os, signal, sys
import torch
mode, at = sys.argv[1], int(sys.argv[2])
sys.argv = [sys.argv[0], *sys.argv[3:]]
from unet_seg.module import SegModule
if mode in ("step", "term", "int"):
    sig = {"step": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}[mode]
    original = SegModule.training_step
    def training_step(self, batch, batch_idx):
        if self.global_step == at:
            os.kill(os.getpid(), sig)
        return original(self, batch, batch_idx)
    SegModule.training_step = training_step
elif mode == "write":
    calls, save = [0], torch.save
    def torn_save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            f.write(b"PK\\x03\\x04 half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return save(obj, f, *args, **kwargs)
    torch.save = torn_save
from unet_seg.train import main
main()
"""


def run_harness(
    forker: Forker, mode: str, at: int, *args: str, cwd: Path, threads: int = 1
) -> subprocess.CompletedProcess:
    """Run the harness in a process of its own (a fork of one that imported torch once)
    with `OMP_NUM_THREADS=threads` (what `trainer.threads=auto` takes), whatever the
    environment of the test says."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return forker.run(["-c", HARNESS, mode, str(at), *args], cwd=cwd, env=env, timeout=600)


@pytest.mark.slow
def test_sigkill_at_any_point_resumes_to_the_same_weights(tmp_path: Path, forker: Forker) -> None:
    """Killed anywhere, a run resumes to the weights of a run never killed. A resume from a
    checkpoint finds another thread count in its environment (as `trainer.threads=auto`
    may on a machine that got busier or quieter), and keeps the count the run started with:
    with 2 threads in place of 1 the sums run in another order and the weights differ."""
    common = [*TINY, f"data.root={tmp_path / 'data'}", "final_eval=false", "trainer.max_epochs=3"]
    reference = tmp_path / "reference"
    proc = run_harness(forker, "step", -1, *common, f"hydra.run.dir={reference}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    total = torch.load(reference / "checkpoints/last.ckpt", weights_only=True)["global_step"]
    assert total == 3 * STEPS_PER_EPOCH

    # in epoch 0 before any checkpoint; mid-epoch 1; while writing epoch 1's checkpoints
    for mode, at in (("step", 1), ("step", 4), ("write", 3)):
        run_dir = tmp_path / f"{mode}{at}"
        killed = run_harness(forker, mode, at, *common, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.exists():  # whatever is there is whole: the old file or the new one
            torch.load(last, weights_only=True)
        threads = 2 if last.exists() else 1  # without a checkpoint the run starts over
        resumed = run_harness(
            forker, "step", -1, f"resume={run_dir}", cwd=tmp_path, threads=threads
        )
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        final = torch.load(last, weights_only=True)
        assert final["global_step"] == total
        assert final["callbacks"]["ThreadCount"] == {"threads": 1, "fixed": True}
        assert_same_weights(last, reference / "checkpoints/last.ckpt")
        assert [p.name for p in (run_dir / "checkpoints").iterdir() if p.suffix == ".ckpt"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["term", "int"])
def test_sigterm_or_ctrl_c_saves_and_exits_cleanly_then_resumes(
    tmp_path: Path, mode: str, forker: Forker
) -> None:
    run_dir = tmp_path / "run"
    common = [*TINY, f"data.root={tmp_path / 'data'}", "final_eval=false", "trainer.max_epochs=2"]
    proc = run_harness(forker, mode, 4, *common, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    signum = signal.SIGTERM if mode == "term" else signal.SIGINT
    assert proc.returncode == 128 + signum, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr  # Hydra logs to stdout
    assert f"resume={run_dir}" in output and "Traceback" not in output
    saved = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert saved["global_step"] == 5  # the batch in flight finished, then it stopped
    resumed = run_harness(forker, "step", -1, f"resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert final["global_step"] == 2 * STEPS_PER_EPOCH  # the interrupted epoch was completed


# ------------------------------------------------------------------ disks


def test_unwritable_output_dir_fails_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    module = build_module(compose_train(["arch.base_channels=4"]))
    with pytest.raises(OSError, match=r"cannot write to .*file/run/checkpoints.*paths.output_dir"):
        check_output_dir(blocker / "run", module)


def test_too_little_disk_fails_before_training(tmp_path: Path, monkeypatch) -> None:
    module = build_module(compose_train(["arch.base_channels=4"]))
    monkeypatch.setattr("shutil.disk_usage", lambda _: type("U", (), {"free": 1000})())
    with pytest.raises(OSError, match="MiB free, but checkpoints of this model need"):
        check_output_dir(tmp_path / "run", module)


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path: Path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(callbacks.torch, "save", full_disk)
    with pytest.raises(
        OSError, match=r"could not write checkpoint .*last.ckpt: No space left.*intact"
    ):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left


# ------------------------------------------------------------------ bad files


def bad_folder(root: Path) -> dict[str, str]:
    """A folder of good pairs plus one bad file of each kind; returns name -> expected words."""
    write_folder(root, n=9, size=(40, 48))
    images, masks = root / "images", root / "masks"
    good = (images / "img00.png").read_bytes()
    (images / "img01.png").write_bytes(good[: len(good) // 2])  # truncated
    (images / "img02.png").write_bytes(b"")  # empty
    (images / "img03.png").write_bytes(os.urandom(300))  # random bytes
    cv2.imwrite(str(masks / "img04.png"), np.zeros((20, 20), np.uint8))  # wrong size
    cv2.imwrite(str(masks / "img05.png"), np.full((40, 48), 128, np.uint8))  # unknown value
    (images / "img06.tif").write_bytes(b"")
    (images / "img06.png").unlink()
    cv2.imwrite(str(images / "img06.tif"), np.full((40, 48), np.nan, np.float32))  # NaN TIFF
    (images / "notes.txt").write_text("not an image")  # ignored: not an image extension
    return {
        "img01.png": "cannot be read", "img02.png": "cannot be read",
        "img03.png": "cannot be read", "img04.png": "mask is 20x20",
        "img05.png": "[128] are not in data.mask_values", "img06.tif": "float image holds NaN",
    }  # fmt: skip


def test_every_bad_file_is_refused_with_its_name(tmp_path: Path) -> None:
    expected = bad_folder(tmp_path)
    pairs = find_pairs(tmp_path)
    assert len(pairs) == 9 and all(p.suffix != ".txt" for p, _ in pairs)
    ds = SegDataset(pairs, MaskEncoding([0, 255]), 1, [0.5], [0.25])
    refused = {}
    for i, (image_path, _) in enumerate(pairs):
        try:
            ds[i]
        except ValueError as err:
            refused[image_path.name] = str(err)
    assert refused.keys() == expected.keys()
    for name, words in expected.items():
        message = refused[name]
        assert Path(name).stem in message and words in message, message


def test_header_check_names_bad_pairs_before_training(tmp_path: Path) -> None:
    bad_folder(tmp_path)
    with pytest.raises(ValueError) as err:
        check_pairs(find_pairs(tmp_path), in_channels=1, crop_size=44)
    message = str(err.value)
    for words in ("img02.png: cannot be read", "img03.png: cannot be read", "mask is 20x20",
                  "img00.png: 48x40 is smaller than data.crop_size=44"):  # fmt: skip
        assert words in message


def test_a_worker_error_names_the_file(tmp_path: Path) -> None:
    bad_folder(tmp_path)
    pairs = [p for p in find_pairs(tmp_path) if p[0].name == "img05.png"]
    ds = SegDataset(pairs, MaskEncoding([0, 255]), 1, [0.5], [0.25])
    batches = iter(DataLoader(ds, num_workers=1, collate_fn=pad_collate))
    with pytest.raises(ValueError, match=r"img05\.png: mask values \[128\]"):
        next(batches)
    batches._shutdown_workers()  # left to the garbage collector (a traceback holds it), 5 s


def test_training_on_a_bad_folder_fails_in_setup(tmp_path: Path) -> None:
    bad_folder(tmp_path / "data")
    cfg = compose_train(["data=folder", f"data.root={tmp_path / 'data'}", "data.in_channels=1",
                         "data.crop_size=32", f"run_dir={tmp_path / 'run'}",
                         "arch.base_channels=4"])  # fmt: skip
    with pytest.raises(ValueError, match="problem"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


# ------------------------------------------------------------------ safety


class Payload:
    """Unpickling this runs code: it touches a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_checkpoint_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Payload(marker)}, evil)
    with open(tmp_path / "plain.pkl", "wb") as f:  # proof the payload works when unpickled
        pickle.dump(Payload(tmp_path / "proof"), f)
    with open(tmp_path / "plain.pkl", "rb") as f:
        pickle.load(f)
    assert (tmp_path / "proof").exists()

    with pytest.raises(ValueError, match="not a loadable unet-seg checkpoint"):
        SegModule.from_checkpoint(evil)
    assert not marker.exists()

    # resuming from a poisoned last.ckpt is refused the same way
    run_dir = tmp_path / "run"
    cfg = compose_train([*TINY, f"data.root={tmp_path / 'data'}", f"run_dir={run_dir}"])
    from unet_seg.run_dir import RunDir

    RunDir(run_dir).save_config(cfg)
    (run_dir / "checkpoints").mkdir()
    torch.save({"state_dict": Payload(marker)}, run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(pickle.UnpicklingError):
        train(compose_train([f"resume={run_dir}"]))
    assert not marker.exists()


def test_fuzzed_files_load_or_are_refused_by_name(tmp_path: Path) -> None:
    """Truncations and byte flips of PNG, JPEG, TIFF and BMP files: each loads or raises
    a ValueError naming the file; nothing else escapes."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (24, 20), dtype=np.uint8)
    mask_path = tmp_path / "mask.png"
    cv2.imwrite(str(mask_path), (image > 127).astype(np.uint8) * 255)
    originals = {}
    for ext in (".png", ".jpg", ".tif", ".bmp"):
        ok, encoded = cv2.imencode(ext, image)
        assert ok
        originals[ext] = encoded.tobytes()
    loaded = refused = 0
    for trial in range(80):
        ext = list(originals)[trial % 4]
        data = bytearray(originals[ext])
        if trial % 2:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for pos in rng.integers(0, len(data), 8):
                data[pos] = int(rng.integers(0, 256))
        path = tmp_path / f"fuzz{trial:02d}{ext}"
        path.write_bytes(bytes(data))
        ds = SegDataset([(path, mask_path)], MaskEncoding([0, 255]), 1, [0.5], [0.25])
        try:
            sample = ds[0]
            assert sample["image"].shape[0] == 1
            loaded += 1
        except ValueError as err:
            assert path.name in str(err)
            refused += 1
        try:
            check_pairs([(path, mask_path)], in_channels=1)
        except ValueError as err:
            assert path.name in str(err)
    assert refused > 10  # the fuzzing did break files


def test_atomic_write_keeps_no_temporary_and_honours_the_umask(tmp_path: Path) -> None:
    """Run files (config.yaml, splits.json, metrics.json) are readable as any file the user
    writes (the temporary file's private 0600 would hide them from a shared group)."""
    import os
    import stat

    from unet_seg.files import atomic_write_text

    previous = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "run" / "config.yaml", "a: 1\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        atomic_write_text(path, "a: 2\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(previous)
    assert path.read_text() == "a: 2\n"
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]


def test_a_step_with_non_finite_gradients_is_skipped_not_taken() -> None:
    """One NaN gradient drops every gradient before the optimizer step (no update, the
    moments untouched), as a loss scaler skips an overflowing step; finite ones stay."""
    import torch

    from unet_seg.module import SegModule

    module = SegModule(
        arch={"name": "unet", "base_channels": 4, "depth": 2, "bilinear": False,
              "in_channels": 1, "num_classes": 2},
        loss={"deep_supervision_weights": "equal"},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True},
        data={"class_names": ["bg", "fg"], "in_channels": 1, "mask_values": [0, 255]},
    )  # fmt: skip
    params = list(module.parameters())
    for p in params:
        p.grad = torch.ones_like(p)
    module.on_before_optimizer_step(None)
    assert all(p.grad is not None for p in params)
    params[3].grad[0] = float("nan")
    before = [p.detach().clone() for p in params]
    module.on_before_optimizer_step(None)
    assert all(p.grad is None for p in params) and module._skipped_steps == 1
    torch.optim.Adam(params).step()
    assert all(torch.equal(a, p) for a, p in zip(before, params, strict=True))
