"""Volumes read, normalised, predicted and written a band of z slices at a time
(`volumes.VolumeFile`, `volumes.write_volume_bands`, `volume_dataset.CaseFiles`,
`SegModule.volume_label_bands`, `predict stream=`): the same values as the whole path."""

from __future__ import annotations

import dataclasses
import gzip
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from tests.test_predict import config, volume_checkpoint, write_nifti
from unet_seg.data.contract import DataContract
from unet_seg.data.volume_cases import VolumeCase
from unet_seg.data.volume_dataset import Bands, CaseFiles, load_case, statistics_rows
from unet_seg.data.volumes import VolumeFile, read_volume, write_volume, write_volume_bands
from unet_seg.predict import predict

AFFINE = np.array([[0.7, 0, 0, 5], [0, 0.8, 0, -3], [0, 0, 2.0, 7], [0, 0, 0, 1]])


def _nifti(path: Path, data: np.ndarray, slope: float | None = None) -> Path:
    image = nib.Nifti1Image(data, AFFINE)
    if slope is not None:
        image.header.set_slope_inter(slope, 1.0)
    nib.save(image, str(path))
    return path


def _files(folder: Path) -> dict[str, tuple[Path, bool]]:
    """Volume files of every layout `VolumeFile` meets: `{name: (path, read in bands)}`."""
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(12, 20, 30)).astype(np.float32)  # NIfTI's (x, y, z)
    u8 = rng.integers(0, 255, (30, 20, 12)).astype(np.uint8)  # TIFF's (z, y, x)
    made = {
        "nii": (_nifti(folder / "a.nii", normal), True),
        "nii.gz": (_nifti(folder / "b.nii.gz", normal), True),
        "4-D channels": (_nifti(folder / "c.nii.gz", rng.normal(size=(12, 20, 30, 2))), True),
        "5-D vector": (_nifti(folder / "d.nii", rng.normal(size=(12, 20, 30, 1, 3))), True),
        "scaled int16": (
            _nifti(folder / "s.nii.gz", rng.integers(-99, 99, (12, 20, 30)).astype(np.int16), 2.0),
            True,
        ),
        "2-D NIfTI": (_nifti(folder / "flat.nii", normal[:, :, 0]), False),
        "zlib TIFF": (folder / "z.tif", True),
        "RGB TIFF": (folder / "rgb.tif", True),
        "one page": (folder / "one.tif", True),
        "ImageJ hyperstack": (folder / "h.tif", False),
    }
    tifffile.imwrite(folder / "z.tif", u8, compression="zlib")
    tifffile.imwrite(folder / "rgb.tif", rng.integers(0, 255, (30, 20, 12, 3), np.uint8),
                     photometric="rgb")  # fmt: skip
    tifffile.imwrite(folder / "one.tif", u8[0])
    tifffile.imwrite(folder / "h.tif", rng.integers(0, 255, (30, 2, 20, 12), np.uint8),
                     imagej=True, metadata={"axes": "ZCYX"})  # fmt: skip
    meta = read_volume(folder / "b.nii.gz")[1]
    imagej = folder / "imagej.tif"
    write_volume(imagej, u8, dataclasses.replace(meta, shape=u8.shape, format="tiff", nifti=None))
    made["ImageJ stack"] = (imagej, True)
    return made


def test_volume_file_reads_bands_as_read_volume_reads_the_whole(tmp_path: Path) -> None:
    for name, (path, banded) in _files(tmp_path).items():
        whole, meta = read_volume(path)
        with VolumeFile(path) as f:
            assert f.streamed is banded, name
            assert f.shape == whole.shape and f.meta == meta and f.dtype == whole.dtype, name
            bands = [f.read(z, z + 7) for z in range(0, f.shape[0], 7)]
        assert np.array_equal(np.concatenate(bands), whole, equal_nan=True), name


def test_band_writer_writes_what_write_volume_writes_and_nothing_when_interrupted(
    tmp_path: Path,
) -> None:
    meta = read_volume(_nifti(tmp_path / "in.nii.gz", np.zeros((12, 20, 30), np.float32)))[1]
    labels = np.random.default_rng(1).integers(0, 4, meta.shape).astype(np.uint8)
    for ext in (".nii", ".nii.gz", ".tif"):
        write_volume(tmp_path / f"whole{ext}", labels, meta, labels=True)
        bands = (labels[z : z + 7] for z in range(0, len(labels), 7))
        write_volume_bands(tmp_path / f"bands{ext}", bands, meta, np.uint8)
        (a, meta_a), (b, meta_b) = read_volume(tmp_path / f"whole{ext}"), read_volume(
            tmp_path / f"bands{ext}")  # fmt: skip
        assert np.array_equal(a, b) and meta_a == meta_b, ext
        if ext != ".tif":  # the same header and bytes
            opener = gzip.open if ext.endswith(".gz") else open
            with opener(tmp_path / f"whole{ext}", "rb") as f, opener(
                tmp_path / f"bands{ext}", "rb") as g:  # fmt: skip
                assert f.read() == g.read(), ext

    def broken():
        yield labels[:7]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_volume_bands(tmp_path / "cut.nii.gz", broken(), meta, np.uint8)
    with pytest.raises(ValueError, match="7 of 30 slices were given"):
        write_volume_bands(tmp_path / "short.nii", iter([labels[:7]]), meta, np.uint8)
    left = {p.name for p in tmp_path.iterdir()}
    assert not {"cut.nii.gz", "short.nii"} & left and not any(".partial" in n for n in left)


def _contract(intensity: dict, channels: int = 1, **data) -> DataContract:
    return DataContract.from_config({
        "class_names": ["background", "a"], "mask_values": [0, 1], "in_channels": channels,
        "num_classes": 2,
        "mean": [0.3] * channels, "std": [0.2] * channels, "volume": True, "dims": 3,
        "patch": [8, 16, 16], "intensity": intensity, **data,
    })  # fmt: skip


@pytest.mark.parametrize(
    "intensity",
    [{"mode": "zscore"}, {"mode": "percentile", "low": 2.0, "high": 98.0},
     {"mode": "ct", "low": -50.0, "high": 120.0}, {"mode": "fixed", "vmin": -20.0, "vmax": 90.0},
     {"mode": "range"}, {"mode": "range", "floats": True}],
)  # fmt: skip
def test_statistics_gathered_in_bands_normalise_as_the_whole_volume(
    tmp_path: Path, intensity: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two channel files (nnU-Net's layout), NaN voxels: `CaseFiles` in bands of 3 slices
    gives `load_case`'s image (read whole, its statistics in one band), and both the 2-D
    rule (`to_unit_range`) or the plain formula applied to each whole channel."""
    import unet_seg.data.readers as readers
    import unet_seg.data.volume_dataset as vd

    rng = np.random.default_rng(2)
    shape = (17, 20, 22)
    if intensity.pop("floats", False):  # in [0, 1] (a case's files share one type)
        first, second = (rng.random(shape).astype(np.float32) for _ in range(2))
        second[4, 5, 6] = np.nan
    elif intensity["mode"] == "range":
        first, second = (rng.integers(0, 65535, shape).astype(np.uint16) for _ in range(2))
    else:
        first = rng.normal(40, 30, shape).astype(np.float32)
        first[4, 5, 6] = np.nan
        second = rng.integers(-100, 200, shape).astype(np.int16)
    paths = (write_nifti(tmp_path / "c_0000.nii.gz", first),
             write_nifti(tmp_path / "c_0001.nii", second))  # fmt: skip
    case = VolumeCase("c", paths)
    contract = _contract(intensity, channels=2)
    monkeypatch.setattr(readers, "PERCENTILE_SAMPLES", 100)  # every 74th value: offsets matter
    whole = load_case(case, contract, resample=False).image
    monkeypatch.setattr(vd, "STATISTICS_BAND_VALUES", 3 * 20 * 22)  # bands of 3 slices
    with CaseFiles(case, contract) as files:
        assert statistics_rows(files.shape) == 3 and files.shape == (2, *shape)
        banded = np.concatenate([files.normalised(z, z + 5) for z in range(0, shape[0], 5)], 1)
    assert np.isfinite(banded).all()
    np.testing.assert_allclose(banded, whole, rtol=1e-6, atol=1e-6)
    for channel, raw in zip(banded, (first, second), strict=True):
        x = raw.astype(np.float32)
        bad = ~np.isfinite(x)
        mode = intensity["mode"]
        if mode == "zscore":
            expected = (x - np.nanmean(x, dtype=np.float64)) / np.nanstd(x, dtype=np.float64)
        else:
            if mode == "ct":
                scaled = np.clip(x, intensity["low"], intensity["high"])
            else:
                args = {k: v for k, v in intensity.items() if k != "mode"}
                scaled = readers.to_unit_range(raw[..., None], mode, **args)[..., 0]
                scaled = scaled / 255.0 if scaled.dtype == np.uint8 else scaled
            expected = (scaled - 0.3) / 0.2
        expected = np.where(bad, 0.0, expected)
        np.testing.assert_allclose(channel, expected, rtol=1e-5, atol=1e-5)


def test_what_bands_cannot_normalise_is_refused_by_name(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "f.nii.gz", np.full((4, 6, 6), 3.0, np.float32))
    with CaseFiles(VolumeCase("f", (path,)), _contract({"mode": "range"})) as files:
        with pytest.raises(ValueError, match=r"f.nii.gz: float image values span 3..3, outside"):
            files.gather_statistics()
    nonzero = _contract({"mode": "zscore", "nonzero": True})
    with CaseFiles(VolumeCase("f", (path,)), nonzero) as files:
        with pytest.raises(ValueError, match="non-zero region needs the whole volume"):
            files.gather_statistics()
    other = write_nifti(tmp_path / "g.nii.gz", np.zeros((4, 6, 7), np.float32))
    with pytest.raises(ValueError, match="g.nii.gz"):
        CaseFiles(VolumeCase("f", (path, other)), _contract({"mode": "zscore"}, channels=2))


def test_bands_read_forward_and_again_when_asked_back() -> None:
    volume = np.arange(2 * 10 * 3 * 4, dtype=np.float32).reshape(2, 10, 3, 4)
    reads = []

    def read(z0: int, z1: int) -> np.ndarray:
        reads.append((z0, z1))
        return volume[:, z0:z1]

    bands = Bands(read, volume.shape)
    for index in [(slice(None), slice(0, 4)), (slice(None), slice(2, 6), slice(1, 3)),
                  (slice(None), slice(5, 10), slice(None), slice(0, 2)),
                  (slice(None), slice(1, 3))]:  # fmt: skip
        assert np.array_equal(bands[index], volume[index])
    assert reads == [(0, 4), (4, 6), (6, 10), (1, 3)]  # each slice once, then back: again


def _mixing(self, x: torch.Tensor) -> torch.Tensor:
    """A window function that depends on every channel and on neighbouring voxels, so a
    misplaced band, slab or normalisation shows."""
    pool = torch.nn.functional.avg_pool3d if x.ndim == 5 else torch.nn.functional.avg_pool2d
    mixed = x.sum(1, keepdim=True) + 2 * pool(x[:, -1:], 3, 1, 1)
    return torch.softmax(torch.cat([mixed, -mixed, 0.3 * x[:, :1]], dim=1) * 3, dim=1)


@pytest.mark.parametrize(
    ("arch", "data", "channels"),
    [({"name": "unet3d", "base_channels": 4, "depth": 2}, {"dims": 3, "patch": [6, 16, 16]}, 2),
     (None, {}, 1),  # 2-D slices, windows of 16
     (None, {"dims": 2.5, "slab": 3}, 3)],  # a 2.5-D slab of 3 slices of one channel
)  # fmt: skip
def test_streamed_prediction_writes_what_the_whole_prediction_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    arch: dict | None, data: dict, channels: int,
) -> None:  # fmt: skip
    import unet_seg.data.volume_dataset as vd
    from unet_seg.data.volumes import VolumeFile as Reader
    from unet_seg.module import SegModule

    monkeypatch.setattr(SegModule, "_window_probabilities", _mixing)
    import unet_seg.volume_inference as vi

    monkeypatch.setattr(vd, "STATISTICS_BAND_VALUES", 4 * 40 * 36)  # statistics: 4 slices a band
    monkeypatch.setattr(vi, "SLICE_CHUNK_VALUES", 6 * 40 * 36)  # 2-D nets: chunks of 6 / 2 slices
    ckpt = volume_checkpoint(tmp_path / "v.ckpt", arch, in_channels=channels,
                             mask_values=(0, 3, 7), **data)  # fmt: skip
    rng = np.random.default_rng(3)
    files = 2 if channels == 2 else 1
    for c in range(files):
        write_nifti(tmp_path / "in" / f"case_{c:04d}.nii.gz",
                    rng.normal(50, 10, (23, 40, 36)).astype(np.float32))  # fmt: skip
    largest = []
    read = Reader.read
    monkeypatch.setattr(Reader, "read", lambda self, z0, z1: largest.append(
        min(z1, self.shape[0]) - z0) or read(self, z0, z1))  # fmt: skip
    written = {}
    for stream in (True, False):
        for tta in ("none", "flips"):
            largest.clear()
            out = tmp_path / f"out_{stream}_{tta}"
            with caplog.at_level(logging.INFO, logger="unet_seg.predict"):
                (path,) = predict(config(ckpt=ckpt, input=tmp_path / "in", device="cpu",
                                         tta=tta, output=out, stream=stream))  # fmt: skip
            written[stream, tta] = read_volume(path)
            if stream:
                assert max(largest) < 23  # never the whole volume at once
    assert "read, predicted and written in bands of slices (stream=true)" in caplog.text
    # the reference: validation's whole-volume probabilities (`slicewise` over every slice,
    # or the stitched `sliding_window`), decided at once
    from unet_seg.data.volume_cases import find_volume_cases
    from unet_seg.inference import load_for_inference

    module = load_for_inference(ckpt, "cpu").eval()
    (case,) = find_volume_cases(tmp_path, "in", masks_dir=None)
    image = torch.from_numpy(load_case(case, module.contract).image)
    for tta in ("none", "flips"):
        with torch.no_grad():
            probs = module.volume_probabilities(image, tta=tta, overlap=0.5, batch_size=4)
        expected = np.asarray([0, 3, 7])[probs.argmax(0).numpy()]
        (a, meta_a), (b, meta_b) = written[True, tta], written[False, tta]
        assert meta_a == meta_b and np.array_equal(a, b), tta
        assert np.array_equal(a, expected), tta
        assert set(np.unique(a)) == {0, 3, 7}  # every class somewhere: a real comparison


def test_stream_auto_reads_in_bands_when_the_whole_would_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import unet_seg.data.plan as plan

    ckpt = volume_checkpoint(tmp_path / "v.ckpt")
    write_nifti(tmp_path / "in" / "a.nii.gz", np.zeros((5, 20, 24), np.float32))
    monkeypatch.setattr(plan, "available_memory", lambda: 20_000)  # bytes
    with caplog.at_level(logging.INFO, logger="unet_seg.predict"):
        predict(config(ckpt=ckpt, input=tmp_path / "in", output=tmp_path / "o", device="cpu"))
    assert "in bands of slices (whole it would take 0.00 GiB, more than 25% of the" in caplog.text
    caplog.clear()
    for available in (2**30, None):  # room enough; unknown (no /proc/meminfo): whole
        monkeypatch.setattr(plan, "available_memory", lambda available=available: available)
        with caplog.at_level(logging.INFO, logger="unet_seg.predict"):
            predict(config(ckpt=ckpt, input=tmp_path / "in", output=tmp_path / "o2",
                           device="cpu"))  # fmt: skip
        assert "in bands" not in caplog.text


def test_stream_true_is_refused_by_name_where_the_whole_volume_is_needed(tmp_path: Path) -> None:
    ckpt = volume_checkpoint(tmp_path / "v.ckpt")
    write_nifti(tmp_path / "in" / "a.nii.gz", np.zeros((5, 20, 24), np.float32))
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=r"stream=true: probabilities=true writes the whole"):
        predict(config(ckpt=ckpt, input=tmp_path / "in", output=out, stream=True,
                       probabilities=True))  # fmt: skip
    with pytest.raises(ValueError, match=r"stream=true: postprocess\.\* acts on the whole"):
        predict(config(ckpt=ckpt, input=tmp_path / "in", output=out, stream=True,
                       **{"postprocess.keep_largest": True}))  # fmt: skip
    assert not out.exists()
    from unet_seg.inference import check_options

    with pytest.raises(ValueError, match="stream=true applies to volumes"):
        check_options(config(ckpt=ckpt, stream=True), "predict", False)
    with pytest.raises(ValueError, match="stream=sometimes: choose auto, true or false"):
        check_options(config(ckpt=ckpt, stream="sometimes"), "predict", True)


def test_peak_memory_is_the_process_own_not_its_parents() -> None:
    """A child started by `subprocess` inherits its parent's `ru_maxrss` (Linux keeps the
    high-water mark of the forked image across exec): `peak_memory` reports VmHWM, the
    child's own, so a parent holding 0.25 GiB does not show in the child's figure (which
    imports only `unet_seg.memory`: about 0.05 GiB)."""
    import re
    import subprocess
    import sys

    if not Path("/proc/self/status").exists():
        pytest.skip("VmHWM is Linux's /proc/self/status")
    held = np.ones(2**26, np.float32)  # 0.25 GiB, every page touched
    code = ("import resource; from unet_seg.memory import peak_memory; print(peak_memory()); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")  # fmt: skip
    del held
    own = float(re.search(r"peak memory \(RSS\) ([0-9.]+) GiB", out[0]).group(1))
    assert float(out[1]) >= 0.25  # ru_maxrss (GiB) counts the parent's: the trap is set
    assert own < 0.15, f"child's peak {own} GiB; ru_maxrss says {out[1]} GiB"


def _ome_zarr(path: Path, data: np.ndarray, axes: str, scale: list[float], unit: str,
              version: str, translation: list[float] | None = None) -> Path:  # fmt: skip
    """An OME-Zarr image written by hand as other tools write it: NGFF 0.4 on Zarr v2, or
    0.5 on Zarr v3 (metadata under `ome`), its one scale at `s0`."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    array = group.create_array("s0", shape=data.shape, dtype=data.dtype,
                               chunks=tuple(min(n, 4) for n in data.shape))  # fmt: skip
    array[:] = data
    kinds = {"c": "channel", "t": "time"}
    transforms = [{"type": "scale", "scale": scale}]
    if translation:
        transforms.append({"type": "translation", "translation": translation})
    multiscales = [
        {
            "version": version,
            "axes": [
                {"name": a, "type": kinds.get(a, "space"), **({} if a in kinds else {"unit": unit})}
                for a in axes
            ],
            "datasets": [{"path": "s0", "coordinateTransformations": transforms}],
        }
    ]
    if version == "0.4":
        group.attrs["multiscales"] = multiscales
    else:
        group.attrs["ome"] = {"version": version, "multiscales": multiscales}
    return path


def test_ome_zarr_reads_in_bands_and_writes_back_its_geometry(tmp_path: Path) -> None:
    """OME-Zarr 0.4 (channels first, micrometres) and 0.5 (a time axis of one, millimetres,
    an origin): `[Z, Y, X(, C)]` with spacing in mm, read a band from the chunks; labels
    written as OME-Zarr, whole or in bands, read back the same with the same geometry."""
    rng = np.random.default_rng(0)
    czyx = rng.integers(0, 4000, (2, 9, 10, 12)).astype(np.uint16)
    em = _ome_zarr(tmp_path / "em.ome.zarr", czyx, "czyx", [1, 0.05, 0.004, 0.004],
                   "micrometer", "0.4")  # fmt: skip
    array, meta = read_volume(em)
    assert np.array_equal(array, np.moveaxis(czyx, 0, -1)) and array.shape == (9, 10, 12, 2)
    assert meta.spacing == pytest.approx((5e-5, 4e-6, 4e-6)) and not any(meta.spacing_assumed)
    tzyx = rng.normal(size=(1, 7, 6, 5)).astype(np.float32)
    mri = _ome_zarr(tmp_path / "mri.zarr", tzyx, "tzyx", [1, 2.0, 0.5, 0.5], "millimeter",
                    "0.5", translation=[0, 10, 20, 30])  # fmt: skip
    volume, mri_meta = read_volume(mri)
    assert np.array_equal(volume, tzyx[0]) and mri_meta.spacing == (2.0, 0.5, 0.5)
    assert mri_meta.affine_matrix()[:3, 3].tolist() == [30, 20, 10]  # x, y, z
    for path, whole in ((em, array), (mri, volume)):
        with VolumeFile(path) as f:
            assert f.streamed and f.shape == whole.shape
            assert np.array_equal(f.read(3, 6), whole[3:6])  # chunks of 4 slices: across two
    labels = (array[..., 0] > 2000).astype(np.uint8) * 3
    write_volume(tmp_path / "out.ome.zarr", labels, meta, labels=True)
    bands = (labels[i : i + 4] for i in range(0, 9, 4))
    write_volume_bands(tmp_path / "bands.ome.zarr", bands, meta, np.uint8)
    for name in ("out.ome.zarr", "bands.ome.zarr"):
        back, back_meta = read_volume(tmp_path / name)
        assert np.array_equal(back, labels) and back.dtype == np.uint8, name
        assert back_meta.spacing == pytest.approx(meta.spacing), name
    write_volume(tmp_path / "image.ome.zarr", array, meta)  # channels last, as read
    assert np.array_equal(read_volume(tmp_path / "image.ome.zarr")[0], array)

    def broken() -> object:  # the writer stops half way
        yield labels[:4]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_volume_bands(tmp_path / "half.ome.zarr", broken(), meta, np.uint8)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bands.ome.zarr",
        "em.ome.zarr",
        "image.ome.zarr",
        "mri.zarr",
        "out.ome.zarr",
    ]  # no .partial, no half volume left


def test_predict_an_ome_zarr_volume_streamed_or_whole(tmp_path: Path) -> None:
    """`predict input=x.ome.zarr` (a folder that is one volume) writes `x.ome.zarr` labels
    with the input's spacing; streamed and whole agree on every voxel."""
    ckpt = volume_checkpoint(tmp_path / "v.ckpt", mask_values=(0, 3, 7))
    data = np.random.default_rng(2).normal(size=(6, 20, 24)).astype(np.float32)
    source = _ome_zarr(tmp_path / "in" / "stack.ome.zarr", data, "zyx", [3.0, 1.0, 1.0], "mm",
                       "0.4")  # fmt: skip
    written = {}
    for stream in (True, False):
        (path,) = predict(config(ckpt=ckpt, input=source, device="cpu",
                                 output=tmp_path / f"out_{stream}", stream=stream))  # fmt: skip
        assert path.name == "stack.ome.zarr"
        written[stream] = read_volume(path)
    (a, meta_a), (b, meta_b) = written[True], written[False]
    assert np.array_equal(a, b) and meta_a == meta_b
    assert meta_a.spacing == (3.0, 1.0, 1.0) and set(np.unique(a)) <= {0, 3, 7}


def test_what_is_no_ome_zarr_volume_is_refused_naming_the_folder(tmp_path: Path) -> None:
    """A Zarr group without multiscales, and an image whose axes hold no z (or a time series),
    are refused with the folder's name and what a volume needs, not a traceback."""
    import zarr

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=2)
    yx = _ome_zarr(tmp_path / "slice.ome.zarr", np.zeros((4, 5), np.uint8), "yx", [1, 1], "mm",
                   "0.4")  # fmt: skip
    movie = _ome_zarr(tmp_path / "movie.ome.zarr", np.zeros((3, 2, 4, 5), np.uint8), "tzyx",
                      [1, 1, 1, 1], "mm", "0.4")  # fmt: skip
    with pytest.raises(ValueError, match=r"plain\.zarr: a Zarr group without OME-Zarr multi"):
        read_volume(tmp_path / "plain.zarr")
    for path in (yx, movie):
        with pytest.raises(ValueError, match=rf"{path.name}: axes .* a volume has z, y and x"):
            VolumeFile(path)
