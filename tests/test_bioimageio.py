"""bioimage.io packages (`export format=bioimageio`): bioimageio.core's own model test passes
offline for a 1-channel and a 3-channel 2-D model and a 3-D model, and fails on a wrong test
output; the package tiled by bioimageio.core equals unet-seg's `predict` with the package's
halo; the architecture file runs without unet-seg."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

from tests.test_inference import make_checkpoint
from unet_seg.bioimageio import halo_and_sizes, receptive_radius, write_package
from unet_seg.export import export
from unet_seg.inference import Predictor
from unet_seg.module import SegModule

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(importlib.util.find_spec("bioimageio.core") is None,
                       reason="needs pip install '.[bioimageio]' (part of '.[dev]')"),
]  # fmt: skip
ROOT = Path(__file__).parents[1]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No connection may be opened: validation must not reach the internet."""

    def refuse(*args, **kwargs):
        raise OSError("tests/test_bioimageio.py: no network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("BIOIMAGEIO_CACHE_PATH", "/nonexistent-cache")


def about(module: SegModule) -> dict:
    return {"name": "test model", "description": "a tiny test model", "authors": ["Tester"],
            "license": "MIT", "arch": dict(module.hparams.arch)}  # fmt: skip


def model_test_status(package: Path) -> str:
    from bioimageio.core import test_model

    summary = test_model(str(package))
    if summary.status != "passed":  # the failed checks, shown by pytest with the assertion
        return f"{summary.status}: " + "; ".join(
            f"{d.name}: {[e.msg for e in d.errors]}"
            for d in summary.details
            if d.status == "failed"
        )
    return summary.status


def cells(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A picture with structure: bright discs on a noisy dark background, uint8."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = rng.normal(40, 10, shape)
    for _ in range(12):
        cy, cx, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(6, 20)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += 150
    return image.clip(0, 255).astype(np.uint8)


def volume_module(tmp_path: Path) -> SegModule:
    """An untrained two-modality 3-D U-Net, three classes, z-scored volumes at 1 mm."""
    from tests.test_predict import volume_checkpoint

    ckpt = volume_checkpoint(
        tmp_path / "v.ckpt", {"name": "unet3d", "base_channels": 4, "depth": 2},
        in_channels=2, mask_values=(0, 1, 2), dims=3, patch=[24, 32, 32],
        spacing=[1.0, 1.0, 1.0],
    )  # fmt: skip
    return SegModule.from_checkpoint(ckpt).eval()


@pytest.mark.parametrize("kind", ["grey", "rgb", "volume"])
def test_package_passes_bioimageio_cores_model_test_offline(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(0)
    if kind == "volume":
        module = volume_module(tmp_path)
        raw = rng.normal(100, 20, (2, 30, 40, 44)).astype(np.float32)  # two MRI modalities
    else:
        channels = 1 if kind == "grey" else 3
        extra = {} if kind == "grey" else {"intensity": {"mode": "percentile", "low": 1.0,
                                                          "high": 99.0}}  # fmt: skip
        ckpt = make_checkpoint(tmp_path / "m.ckpt", "unet", in_channels=channels, **extra)
        module = SegModule.from_checkpoint(ckpt).eval()
        raw = np.stack([cells((300, 280), rng) for _ in range(channels)])
    package = write_package(module, raw, tmp_path / "model.zip", about(module), onnx=False)
    assert model_test_status(package) == "passed"

    with zipfile.ZipFile(package) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        names = set(z.namelist())
        test_out = np.load(z.open("test_output.npy"))
    assert {"weights.pt", "weights_torchscript.pt", "unet_seg_network.py", "cover.png",
            "README.md", "test_input.npy", "test_output.npy"} <= names  # fmt: skip
    space = [a for a in rdf["outputs"][0]["axes"] if a["type"] == "space"]
    halo, smallest, steps = halo_and_sizes(module.net)
    assert [a["halo"] for a in space] == halo and all(h > 0 for h in halo)
    assert [a["size"]["min"] for a in rdf["inputs"][0]["axes"][2:]] == smallest
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == list(module.contract.class_names)
    assert np.allclose(test_out.sum(1), 1, atol=1e-5)  # probabilities
    assert "github_user" not in json.dumps(rdf["authors"])


def test_a_wrong_test_output_fails_the_model_test(tmp_path: Path) -> None:
    """The same package with 64 pixels' probabilities swapped in its test output (and the
    files' hashes made anew, so that only the values are wrong) fails at reproducing them."""
    from bioimageio.core import test_model
    from bioimageio.spec import save_bioimageio_package

    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    module = SegModule.from_checkpoint(ckpt).eval()
    raw = cells((240, 240), np.random.default_rng(1))[None]
    good = write_package(module, raw, tmp_path / "good.zip", about(module), onnx=False)
    folder = tmp_path / "bad"
    zipfile.ZipFile(good).extractall(folder)
    out = np.load(folder / "test_output.npy")
    out[0, :, :8, :8] = out[0, ::-1, :8, :8]
    np.save(folder / "test_output.npy", out)
    rdf = (folder / "rdf.yaml").read_text()
    (folder / "rdf.yaml").write_text("\n".join(line for line in rdf.splitlines()
                                               if "sha256:" not in line))  # fmt: skip
    bad = save_bioimageio_package(folder / "rdf.yaml", output_path=tmp_path / "bad.zip")
    summary = test_model(str(bad))
    assert summary.status == "valid-format"  # the format holds, the model test does not pass
    failed = {d.name for d in summary.details if d.status == "failed"}
    assert any("Reproduce test outputs" in name for name in failed), failed
    assert model_test_status(good) == "passed"


def test_tiled_by_bioimageio_core_equals_predict_with_the_packages_halo(tmp_path: Path) -> None:
    """On an image several times the test tensor, tiled by the library with the package's
    halo: the probabilities of unet-seg's `predict` with `halo=` the package's, to 1e-4.
    The image's sides are multiples of the net's pooling grid (16): elsewhere the library
    shifts its last tile back inside the image, off the grid (docs/bioimageio.md)."""
    from bioimageio.core import Tensor, load_model_description, predict

    ckpt = make_checkpoint(tmp_path / "m.ckpt", mask_values=(0, 1, 2))
    module = SegModule.from_checkpoint(ckpt).eval()
    rng = np.random.default_rng(2)
    package = write_package(module, cells((260, 240), rng)[None], tmp_path / "m.zip",
                            about(module), onnx=False)  # fmt: skip
    image = cells((640, 592), rng)
    descr = load_model_description(package)
    halo = [a.halo for a in descr.outputs[0].axes if getattr(a, "halo", 0)]
    tensor = Tensor.from_numpy(image[None, None], dims=("batch", "channel", "y", "x"))
    theirs = predict(model=descr, inputs={"input": tensor}, blocksize_parameter=2)
    theirs = theirs.members["output"].data.values[0]  # [K, H, W]
    ours = Predictor(module, mode="tile", tile_size=256, halo=halo[0]).probabilities(image)
    assert theirs.shape == ours.shape == (3, 640, 592)
    assert np.abs(theirs - ours).max() < 1e-4
    plain = Predictor(module, mode="tile", tile_size=256).probabilities(image)
    assert np.abs(theirs - plain).max() > 1e-3  # without the halo, tiles see zero padding


def test_the_architecture_file_needs_no_unet_seg(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "m.ckpt", "nested", in_channels=1)
    module = SegModule.from_checkpoint(ckpt).eval()
    package = write_package(module, cells((200, 200), np.random.default_rng(3))[None],
                            tmp_path / "m.zip", about(module), level=2, onnx=False)  # fmt: skip
    folder = tmp_path / "unzipped"
    zipfile.ZipFile(package).extractall(folder)
    script = """
import sys, importlib.util, yaml, numpy as np, torch
sys.modules["unet_seg"] = None  # importing unet_seg now fails
rdf = yaml.safe_load(open("rdf.yaml"))
w = rdf["weights"]["pytorch_state_dict"]
spec = importlib.util.spec_from_file_location("arch", w["architecture"]["source"])
arch = importlib.util.module_from_spec(spec); spec.loader.exec_module(arch)
net = getattr(arch, w["architecture"]["callable"])(**w["architecture"]["kwargs"]).eval()
net.load_state_dict(torch.load(w["source"], weights_only=True))
x = np.load("test_input.npy").astype(np.float32) / 255
x = (x - 0.5) / 0.25  # the checkpoint's mean and std
with torch.no_grad():
    got = net(torch.from_numpy(x)).numpy()
print(float(np.abs(got - np.load("test_output.npy")).max()))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=folder, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.split()[-1]) < 1e-5


def test_receptive_radius_of_a_unet_is_its_valid_twins_margin() -> None:
    """The numeric receptive field of a padding U-Net of depth 4 is the valid-convolution
    U-Net's margin (92 pixels, the paper's), give or take the pooling phase."""
    module = SegModule.from_checkpoint(make_checkpoint_tmp()).eval()
    radius = receptive_radius(module.net, 2, module.net.pad_multiples)
    assert all(88 <= r <= 96 for r in radius), radius
    # measured on the same net at 2 base channels (what the export does): the same field
    assert halo_and_sizes(module.net, dict(module.hparams.arch)) == halo_and_sizes(module.net)


def make_checkpoint_tmp() -> Path:
    import tempfile

    return make_checkpoint(Path(tempfile.mkdtemp()) / "m.ckpt")


def test_export_command_writes_a_package_or_refuses_in_one_line(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "m.ckpt", mask_values=(0, 255))
    image = tmp_path / "cell.png"
    Image.fromarray(cells((220, 230), np.random.default_rng(4))).save(image)
    cfg = OmegaConf.load(ROOT / "conf" / "export.yaml")
    cfg.pop("defaults")
    cfg = OmegaConf.merge(cfg, {"ckpt": str(ckpt), "format": "bioimageio",
                                "image": str(image), "authors": ["Ada"]})  # fmt: skip
    result = export(cfg)
    assert result["path"] == str(ckpt.with_suffix(".zip")) and Path(result["path"]).is_file()
    with zipfile.ZipFile(result["path"]) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        readme = z.read("README.md").decode()
    assert rdf["authors"] == [{"name": "Ada"}] and rdf["license"] == "MIT"
    assert "10.1007/978-3-319-24574-4_28" in readme and "Validation" in readme

    proc = subprocess.run(
        [sys.executable, "-m", "unet_seg.export", f"ckpt={ckpt}", "format=bioimageio",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "not in a run directory" in proc.stderr and "image=PATH" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------- a trained run: export, predict, fine-tune


@pytest.fixture(scope="module")
def run_package(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny trained run exported as a package with nothing but `ckpt=` and the format
    (its validation image, scores and command come from the run directory):
    `(package, best.ckpt, data root)`."""
    from tests.conftest import compose_train
    from tests.test_finetune import TINY
    from unet_seg.run_dir import RunDir
    from unet_seg.train import train

    root = tmp_path_factory.mktemp("run")
    cfg = compose_train([*TINY, f"data.root={root / 'data'}", f"run_dir={root / 'run'}",
                         "trainer.max_epochs=1"])  # fmt: skip
    train(cfg)
    best = RunDir(root / "run").best
    cfg = OmegaConf.load(ROOT / "conf" / "export.yaml")
    cfg.pop("defaults")
    result = export(OmegaConf.merge(cfg, {"ckpt": str(best), "format": "bioimageio"}))
    return Path(result["path"]), best, root / "data"


def test_a_runs_package_carries_its_scores_and_passes_with_onnx(run_package) -> None:
    package, best, _ = run_package
    with zipfile.ZipFile(package) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        readme = z.read("README.md").decode()
    if importlib.util.find_spec("onnxscript") is not None:  # the export extra: ONNX too
        assert "onnx" in rdf["weights"]
    assert "test/dice" in readme and "python -m unet_seg.train" in readme
    assert model_test_status(package) == "passed"  # every weight format, ONNX included


def test_predict_runs_a_package_on_a_folder(run_package, tmp_path: Path) -> None:
    """`predict ckpt=PACKAGE.zip`: masks in the run's mask values; on an image whose sides
    are multiples of the pooling grid, exactly `predict` of the checkpoint with its halo."""
    from unet_seg.api import load_model
    from unet_seg.predict import predict

    package, best, data = run_package
    folder = tmp_path / "in"
    folder.mkdir()
    first = sorted((data / "images").iterdir())[0]
    base = np.asarray(Image.open(first))
    big = np.tile(base, (3, 3, 1) if base.ndim == 3 else (3, 3))[:176, :208]  # 11 x 13 x 16
    Image.fromarray(big).save(folder / "big.png")
    Image.fromarray(base[:50, :61]).save(folder / "small.png")
    (folder / "notes.txt").write_text("not an image")
    cfg = OmegaConf.load(ROOT / "conf" / "predict.yaml")
    cfg.pop("defaults")
    cfg = OmegaConf.merge(
        cfg,
        {
            "ckpt": str(package),
            "input": str(folder),
            "output": str(tmp_path / "out"),
            "probabilities": True,
        },
    )
    written = predict(cfg)
    assert sorted(p.name for p in written) == ["big.png", "small.png"]
    with zipfile.ZipFile(package) as z:
        halo = [a["halo"] for a in yaml.safe_load(z.read("rdf.yaml"))["outputs"][0]["axes"]
                if a["type"] == "space"]  # fmt: skip
    ours = load_model(best, device="cpu", halo=halo[0]).predict(big)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "big.png")), ours)
    small = np.asarray(Image.open(tmp_path / "out" / "small.png"))
    assert small.shape == (50, 61) and set(np.unique(small)) <= {0, 255}
    assert (tmp_path / "out" / "probabilities" / "big.tif").is_file()

    with pytest.raises(ValueError, match="tta=flips: not for a bioimage.io package"):
        predict(OmegaConf.merge(cfg, {"tta": "flips"}))


def test_a_package_starts_a_fine_tuning_run(run_package, tmp_path: Path) -> None:
    from tests.conftest import compose_train
    from tests.test_finetune import TINY, net_weights
    from unet_seg.build import build_module
    from unet_seg.finetune import init_from_checkpoint, problems
    from unet_seg.run_dir import RunDir

    package, best, data = run_package
    cfg = compose_train([*TINY, f"data.root={data}", f"run_dir={tmp_path / 'run'}",
                         f"init_from={package}"])  # fmt: skip
    assert problems(cfg) == []
    module = build_module(cfg)
    record = init_from_checkpoint(module, cfg, RunDir(cfg.run_dir), resumed=False)
    assert record["reset"] == [] and record["unused"] == []
    given = net_weights(best)
    for name, tensor in module.net.state_dict().items():
        assert torch.equal(tensor, given[name]), name
    wider = compose_train([*TINY, "arch.base_channels=8", f"data.root={data}",
                           f"run_dir={tmp_path / 'run2'}", f"init_from={package}"])  # fmt: skip
    assert any("arch.base_channels=4" in str(p) for p in problems(wider))


def test_a_foreign_package_is_refused_as_a_starting_point(tmp_path: Path) -> None:
    """A zoo package of another framework has no unet-seg layer names: refused with why."""
    from unet_seg.finetune import read_source

    package = tmp_path / "zoo.zip"
    rdf = {"type": "model", "name": "a zoo U-Net", "weights": {"torchscript": {"source": "w.pt"}}}
    with zipfile.ZipFile(package, "w") as z:
        z.writestr("rdf.yaml", yaml.safe_dump(rdf))
    with pytest.raises(ValueError, match="not written by unet-seg.*a zoo U-Net.*without "
                                         "pytorch_state_dict"):  # fmt: skip
        read_source(package)


def test_a_4d_nifti_named_by_image_is_read_channels_first(tmp_path: Path) -> None:
    """`image=` a Decathlon-style 4-D NIfTI (`[X, Y, Z, C]` on disk) gives the test input
    `[C, Z, Y, X]`; a file with other channels is refused naming it."""
    from tests.test_predict import write_nifti
    from unet_seg.bioimageio import PackageError, stored_image

    module = volume_module(tmp_path)
    rng = np.random.default_rng(6)
    volume = rng.normal(size=(30, 40, 44, 2)).astype(np.float32)  # [Z, Y, X, C]
    path = write_nifti(tmp_path / "BRATS_001.nii.gz", volume)
    raw = stored_image(module, tmp_path / "v.ckpt", path)
    assert raw.shape == (2, 30, 40, 44)
    assert np.allclose(raw[1], volume[..., 1])
    one = write_nifti(tmp_path / "one.nii.gz", volume[..., 0])
    with pytest.raises(PackageError, match="one.nii.gz: 1 channel"):
        stored_image(module, tmp_path / "v.ckpt", one)
