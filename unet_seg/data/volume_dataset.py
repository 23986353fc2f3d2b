"""Volumes as samples: each case read once, normalised, and cut into training slices (2-D),
slabs (2.5-D) or patches (3-D); validation and test items are whole volumes.

A loaded case is `image` float32 `[C, Z, Y, X]` (normalised, channels first) and `labels`
uint8 `[Z, Y, X]` of class indices (`PAD_LABEL` where a voxel carries no label). Training
items are what the 2-D path gives (`{"image": [C*k, H, W], "mask": [H, W]}`) or their
3-D form (`{"image": [C, D, H, W], "mask": [D, H, W]}`), so the nets, losses and metrics
see one convention. Augmentation of volumes (`augment_window`) is `data.augment`'s flips,
quarter turns and brightness/contrast, drawn from the sample's own seed.

Intensity (`contract.intensity["mode"]`), nnU-Net's rules:
- `ct`: clip to `low..high` (the foreground's 0.5..99.5 percentiles, in Hounsfield
  units), then `(x - mean) / std` with the contract's foreground mean and spread;
- `zscore`: each volume and channel to zero mean and unit spread (MRI, microscopy); with
  `nonzero` (planned when the non-zero region is clearly smaller than the volumes), over
  the non-zero region only, the voxels outside it kept at 0;
- `range`, `percentile`, `fixed`: the 2-D rules (`readers.to_unit_range`) per channel
  over the whole volume, then `(x - mean) / std`.
NaN and infinite voxels count in no statistic and are 0 after normalisation (`scale_volume`).
Every statistic is gathered band by band of z slices (`VolumeStatistics`) and applied by
`normalise_band` to any part, so a volume read a band at a time from its files (`CaseFiles`,
for `predict stream=`) is normalised exactly as one read whole.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from unet_seg.data.contract import DataContract
from unet_seg.data.dataset import window_start
from unet_seg.data.masks import IGNORE_INDEX, PAD_LABEL
from unet_seg.data.readers import between, percentile_bounds, percentile_step, to_unit_range
from unet_seg.data.volume_cases import VolumeCase, slab_indices
from unet_seg.data.volumes import VolumeMeta, geometry_mismatch, read_volume
from unet_seg.problems import ProblemList

log = logging.getLogger(__name__)

MAX_FOREGROUND_SAMPLES = 10_000
"""Voxels per class and case kept as candidate patch centres (nnU-Net keeps 10,000)."""


def volume_channels(contract: DataContract) -> int:
    """Channels of the volumes themselves (`in_channels` counts a 2.5-D slab's slices)."""
    return contract.in_channels // contract.slab


def _per_channel(values: Sequence[float], channels: int, slab_size: int) -> np.ndarray:
    """One value per volume channel from the contract's list (1, C or C x slab values)."""
    v = np.asarray(values, dtype=np.float32)
    if v.size == channels:
        return v
    if v.size == channels * slab_size:
        return v[::slab_size]  # channel-major slabs: each channel's first slice
    if v.size == 1:
        return np.repeat(v, channels)
    raise ValueError(f"{v.size} normalisation values for {channels} channel(s)")


STATISTICS_BAND_VALUES = 2**24
"""Values per channel (float64: 128 MiB) `VolumeStatistics` takes in at once."""


class VolumeStatistics:
    """What the intensity rules (the module docstring) take from a whole volume, gathered
    band by band of z slices, so that a volume read in bands (`volumes.VolumeFile`) is
    normalised exactly as one read whole: per channel the mean and spread (`zscore`, over
    the finite voxels, or the non-zero region), the percentile samples (`percentile`:
    every `readers.percentile_step`-th value of the channel, as `to_unit_range` takes
    them), the finite range (`range` on floats, which must lie in [0, 1]), and the count
    of NaN and infinite voxels.

    Args:
        intensity: `contract.intensity`.
        shape: the volume's `[C, Z, Y, X]`.
        name: the file, for errors.
    """

    def __init__(self, intensity: dict, shape: Sequence[int], name: str | Path | None = None):
        self.intensity, self.name = intensity, name
        self.mode = intensity.get("mode", "range")
        channels = int(shape[0])
        self.plane = math.prod(int(n) for n in shape[2:])
        self.step = percentile_step(math.prod(int(n) for n in shape[1:]))
        self.count = np.zeros(channels, np.int64)
        self.mean = np.zeros(channels)  # float64, combined band by band (Chan et al.)
        self.m2 = np.zeros(channels)
        self.low, self.high = np.full(channels, np.inf), np.full(channels, -np.inf)
        self.samples: list[list[np.ndarray]] = [[] for _ in range(channels)]
        self.bad = 0

    def add(self, band: np.ndarray, z0: int, region: np.ndarray | None = None) -> None:
        """Slices `z0..` of the stored volume, `[C, n, Y, X]`; `region` `[n, Y, X]`: the
        non-zero region there (`zscore` with `nonzero`)."""
        for c, values in enumerate(band):
            finite = np.isfinite(values) if values.dtype.kind == "f" else None
            if finite is not None and finite.all():
                finite = None
            if finite is not None:
                self.bad += int(values.size - finite.sum())
            if self.mode == "zscore":
                keep = region if finite is None or region is None else region & finite
                keep = finite if keep is None else keep
                self._moments(c, values if keep is None else values[keep])
            elif self.mode == "percentile":  # flat index k * step of the channel
                first = -(z0 * self.plane) % self.step
                self.samples[c].append(values.reshape(-1)[first :: self.step])
            elif self.mode == "range" and values.dtype.kind == "f":
                kept = values if finite is None else values[finite]
                if kept.size:
                    self.low[c] = min(self.low[c], float(kept.min()))
                    self.high[c] = max(self.high[c], float(kept.max()))

    def _moments(self, c: int, values: np.ndarray) -> None:
        n = values.size
        if not n:
            return
        mean = float(values.mean(dtype=np.float64))
        m2 = float(np.square(values - mean, dtype=np.float64).sum())
        total = self.count[c] + n
        delta = mean - self.mean[c]
        self.mean[c] += delta * n / total
        self.m2[c] += m2 + delta**2 * self.count[c] * n / total
        self.count[c] = total

    def scaling(self) -> list[tuple[float, float] | tuple[np.ndarray, np.ndarray] | None]:
        """Per channel: `(mean, spread)` for `zscore`, `(low, high)` percentiles for
        `percentile`, else None; a ValueError naming the file for floats outside [0, 1] in
        `range` mode (`to_unit_range`'s rule)."""
        out: list = []
        for c in range(len(self.count)):
            if self.mode == "zscore":
                n = self.count[c]
                out.append((float(self.mean[c]), math.sqrt(self.m2[c] / n)) if n else (0.0, 1.0))
            elif self.mode == "percentile":
                samples = np.concatenate(self.samples[c])[:, None]
                lo, hi = percentile_bounds(samples, self.intensity.get("low", 1.0),
                                           self.intensity.get("high", 99.0))  # fmt: skip
                out.append((lo, hi))
            else:
                if self.low[c] < 0 or self.high[c] > 1:
                    prefix = f"{self.name}: " if self.name else ""
                    raise ValueError(
                        f"{prefix}float image values span {self.low[c]:.3g}..{self.high[c]:.3g}, "
                        "outside [0, 1]: set data.intensity.mode=percentile, or rescale the images"
                    )
                out.append(None)
        return out


def statistics_rows(shape: Sequence[int]) -> int:
    """Slices per band of a `[C, Z, Y, X]` volume that `volume_statistics` reads at once."""
    return max(1, STATISTICS_BAND_VALUES // max(1, math.prod(int(n) for n in shape[2:])))


def volume_statistics(
    read: Callable[[int, int], np.ndarray], shape: Sequence[int], intensity: dict,
    name: str | Path | None = None, region: np.ndarray | None = None, progress: bool = False,
) -> list:  # fmt: skip
    """`VolumeStatistics.scaling()` of a volume `[C, Z, Y, X]` that `read(z0, z1)` gives a
    band of stored slices at a time (an array in memory, or `CaseFiles.stored`); NaN and
    infinite voxels logged with their count."""
    from tqdm import tqdm

    stats = VolumeStatistics(intensity, shape, name)
    rows = statistics_rows(shape)
    for z0 in tqdm(range(0, shape[1], rows), desc=f"{Path(str(name)).name}: statistics",
                   unit="band", leave=False, disable=not progress):  # fmt: skip
        stats.add(read(z0, z0 + rows), z0, None if region is None else region[z0 : z0 + rows])
    if stats.bad:
        log.warning("%s: %d NaN or infinite voxel(s) left out of the intensity statistics and "
                    "set to 0 (the normalised mean)", name or "a volume", stats.bad)  # fmt: skip
    return stats.scaling()


def scale_volume(
    image: np.ndarray, intensity: dict, mean: Sequence[float], std: Sequence[float],
    slab_size: int = 1, name: str | Path | None = None,
) -> np.ndarray:  # fmt: skip
    """Stored intensities `[C, Z, Y, X]` -> the net's input, float32 (the module docstring).

    Every statistic is taken per channel over the whole volume (`VolumeStatistics`); NaN
    and infinite voxels count in none and are 0 in the result (the normalised mean),
    logged with their count. `intensity["nonzero"]` (`zscore` only): each channel's mean
    and spread over the non-zero region (`nonzero_region`), voxels outside it stay 0
    (nnU-Net's ZScoreNormalization with use_mask_for_norm).

    Args:
        image: the volume, channels first, any numeric type.
        intensity: `contract.intensity`; mean, std: the contract's.
        slab_size: `contract.slab` (the mean and std may list a value per slab slice).
        name: the file, for errors and the log.
    """
    nonzero = intensity.get("mode") == "zscore" and intensity.get("nonzero")
    region = nonzero_region(image) if nonzero else None  # [Z, Y, X]
    scaling = volume_statistics(lambda z0, z1: image[:, z0:z1], image.shape, intensity, name,
                                region)  # fmt: skip
    return normalise_band(image, intensity, scaling, mean, std, slab_size, region)


def normalise_band(
    band: np.ndarray, intensity: dict, scaling: list, mean: Sequence[float],
    std: Sequence[float], slab_size: int = 1, region: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """Stored intensities `[C, ...]` (a volume, a band of it, or a window) -> the net's
    input float32, by the whole volume's `VolumeStatistics.scaling()`: the same values
    wherever the part lies. `region`: the non-zero region of the part (`nonzero`)."""
    channels = band.shape[0]
    mode = intensity.get("mode", "range")
    x = band.astype(np.float32, copy=True)
    bad = None if band.dtype.kind != "f" or np.isfinite(x).all() else ~np.isfinite(x)
    if mode == "zscore":
        for c, (mu, sigma) in enumerate(scaling):
            x[c] = (x[c] - np.float32(mu)) / np.float32(max(sigma, 1e-8))
            if region is not None:
                x[c][~region] = 0.0
    else:
        if mode == "ct":
            np.clip(x, np.float32(intensity["low"]), np.float32(intensity["high"]), out=x)
        elif mode == "percentile":
            for c, (lo, hi) in enumerate(scaling):
                x[c] = between(band[c], lo, hi)
        else:
            args = {k: v for k, v in intensity.items() if k not in ("mode", "nonzero")}
            for c in range(channels):  # [..., 1]: one channel, channels last
                scaled = to_unit_range(band[c][..., None], mode, **args)[..., 0]
                x[c] = scaled / 255.0 if scaled.dtype == np.uint8 else scaled
        shape = (-1,) + (1,) * (band.ndim - 1)
        m = _per_channel(mean, channels, slab_size).reshape(shape)
        s = _per_channel(std, channels, slab_size).reshape(shape)
        x = (x - m) / s
    if bad is not None:
        x[bad] = 0.0
    return x


def nonzero_region(image: np.ndarray) -> np.ndarray:
    """The non-zero region `[Z, Y, X]` of a volume `[C, Z, Y, X]`: voxels where some channel
    is finite and not 0, with the zero holes inside it filled (nnU-Net's nonzero mask, whose
    bounding box it crops to); the whole volume when no voxel is non-zero."""
    from scipy import ndimage  # scikit-image's dependency: imported when used

    region = np.zeros(image.shape[1:], bool)
    for channel in image:
        region |= (channel != 0) & np.isfinite(channel)
    if not region.any():
        return np.ones_like(region)
    outside, count = ndimage.label(~region)  # zero voxels, 6-connected pieces
    if count:
        faces = [outside[(slice(None),) * a + (end,)] for a in range(outside.ndim)
                 for end in (0, -1)]  # fmt: skip
        border = np.unique(np.concatenate([f.ravel() for f in faces]))
        region |= ~np.isin(outside, border)  # a piece that does not reach a face: a hole
    return region


@dataclass
class LoadedCase:
    """A case in memory: `image` `[C, Z, Y, X]` float32 normalised, `labels` `[Z, Y, X]`
    uint8 class indices (`PAD_LABEL`: no label) or None, the first image's geometry."""

    name: str
    image: np.ndarray
    labels: np.ndarray | None
    meta: VolumeMeta


def read_case_image(case: VolumeCase) -> tuple[np.ndarray, VolumeMeta]:
    """The stored intensities of a case `[C, Z, Y, X]` (its channel files stacked) and the
    geometry of its first file, every channel file checked against the first one's grid
    (`CaseFiles`)."""
    with CaseFiles(case) as files:
        return files.stored(0, files.shape[1]), files.meta


def read_case_labels(
    path: Path, contract: DataContract, shape: Sequence[int],
    image_meta: VolumeMeta | None = None, image: Path | None = None,
) -> np.ndarray:  # fmt: skip
    """A label volume as uint8 class indices `[Z, Y, X]` by the contract's encoding.

    Args:
        shape: the image's `[Z, Y, X]`.
        image_meta, image: the image's geometry and first file: the labels must lie on its
            grid (`volumes.geometry_mismatch`), else a ValueError naming both files.
    """
    from unet_seg.data.masks import _whole_numbers  # the 2-D masks' rule for numeric types

    array, meta = read_volume(path)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if image_meta is not None and array.ndim == 3:
        problem = geometry_mismatch(path, meta, image or "its image", image_meta, "mask")
        if problem:
            raise ValueError(problem)
    if array.shape != tuple(shape):
        raise ValueError(
            f"{path}: label volume of {list(array.shape)} voxels for an image of "
            f"{list(shape)}: a mask must have its image's grid"
        )
    return contract.encoding.encode(_whole_numbers(array, path), path)


class CaseFiles:
    """A case's channel files open for reading a band of z slices at a time
    (`volumes.VolumeFile`; `read_case_image` and `load_case` read the whole through it).
    Every file must lie on the first one's grid (shape, spacing, origin, orientation:
    `volumes.geometry_mismatch`), and with a `contract` the case must have its channel
    count: ValueErrors naming the files. `normalised(z0, z1)` equals
    `load_case(..., resample=False).image[:, z0:z1]` once `gather_statistics()` has taken
    one pass over the bands. A context manager.
    """

    def __init__(self, case: VolumeCase, contract: DataContract | None = None) -> None:
        from unet_seg.data.volumes import VolumeFile

        self.case, self.contract = case, contract
        self.files: list[VolumeFile] = []
        try:
            problems = []
            for path in case.images:
                self.files.append(VolumeFile(path))
                first, f = self.files[0], self.files[-1]
                problem = geometry_mismatch(path, f.meta, first.path, first.meta, "channel file")
                if problem:
                    problems.append(problem)
            if len(problems) == 1:
                raise ValueError(problems[0])
            if problems:
                raise ProblemList(f"case {case.name}: {len(problems)} channel files off its "
                                  "first channel's grid", problems)  # fmt: skip
            channels = sum(1 if len(f.shape) == 3 else f.shape[3] for f in self.files)
            expected = None if contract is None else volume_channels(contract)
            if expected is not None and channels != expected:
                raise ValueError(
                    f"{case.images[0]}: case {case.name} has {channels} channel(s), the data "
                    f"contract {expected}: give every case the same channels (data.in_channels)"
                )
        except BaseException:
            self.close()
            raise
        self.meta: VolumeMeta = self.files[0].meta
        self.shape = (channels, *self.meta.shape)
        """`[C, Z, Y, X]`."""
        self.dtype = np.result_type(*(f.dtype for f in self.files))
        self.scaling: list | None = None

    @property
    def streamed(self) -> bool:
        """Whether every file is read a band at a time (`VolumeFile.streamed`)."""
        return all(f.streamed for f in self.files)

    def stored(self, z0: int, z1: int) -> np.ndarray:
        """The stored intensities of slices `z0..z1`, `[C, n, Y, X]`, the files' channels
        stacked in order."""
        parts = []
        for f in self.files:
            band = f.read(z0, z1)  # [n, Y, X] or [n, Y, X, C]
            parts.append(band[None] if band.ndim == 3 else np.moveaxis(band, -1, 0))
        return np.concatenate(parts, axis=0)

    def gather_statistics(self, progress: bool = False) -> None:
        """One pass over the bands: the intensity statistics `normalised` scales by."""
        c = self.contract
        if c.intensity.get("mode") == "zscore" and c.intensity.get("nonzero"):
            raise ValueError(
                f"case {self.case.name}: z-score over the non-zero region needs "
                "the whole volume (its holes are filled in 3-D): not read in bands"
            )
        self.scaling = volume_statistics(self.stored, self.shape, c.intensity,
                                         self.case.images[0], progress=progress)  # fmt: skip

    def normalised(self, z0: int, z1: int) -> np.ndarray:
        """Slices `z0..z1` as the net's input, float32 `[C, n, Y, X]`."""
        if self.scaling is None:
            self.gather_statistics()
        c = self.contract
        return normalise_band(self.stored(z0, z1), c.intensity, self.scaling, c.mean, c.std,
                              c.slab)  # fmt: skip

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> CaseFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Bands:
    """A volume `[C, Z, Y, X]` that is read a band of z slices at a time, indexable as an
    array (`bands[:, z0:z1, ...]`) for `blended_bands` and `SegModule.volume_label_bands`:
    `read(z0, z1)` gives slices the band does not hold yet, and slices below a request
    are let go. Requests move forward along z (both callers make them so); one that goes
    back is read again."""

    def __init__(self, read: Callable[[int, int], np.ndarray], shape: Sequence[int]) -> None:
        self.read, self.shape = read, tuple(int(n) for n in shape)
        self.top = 0
        self.held = np.zeros((self.shape[0], 0, *self.shape[2:]), np.float32)

    def __getitem__(self, index: tuple) -> np.ndarray:
        rows = index[1] if len(index) > 1 else slice(None)
        z0, z1, _ = rows.indices(self.shape[1])
        end = self.top + self.held.shape[1]
        if z0 < self.top or z0 > end:  # behind the band, or past its end: start again
            self.top, self.held, end = z0, self.held[:, :0], z0
        if z1 > end:
            self.held = np.concatenate([self.held[:, z0 - self.top :], self.read(end, z1)], axis=1)
            self.top = z0
        return self.held[(index[0], slice(z0 - self.top, z1 - self.top), *index[2:])]


SPACING_TOLERANCE = 0.05
"""A case whose spacing differs from the contract's by more than this share along some axis
is resampled to it (nnU-Net resamples every case to the planned spacing)."""


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float] | None
) -> tuple[int, ...]:
    """The `[Z, Y, X]` a volume of `shape` at `spacing` has at `target` spacing: its own shape
    when `target` is None or within `SPACING_TOLERANCE` on every axis."""
    if not target or all(
        abs(s - t) <= SPACING_TOLERANCE * t for s, t in zip(spacing, target, strict=True)
    ):
        return tuple(int(n) for n in shape)
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))


def resample_image(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """`[C, Z, Y, X]` float -> `[C, *shape]` by trilinear interpolation (voxel centres aligned)."""
    if tuple(image.shape[1:]) == tuple(shape):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    out = torch.nn.functional.interpolate(x, size=tuple(shape), mode="trilinear",
                                          align_corners=False)  # fmt: skip
    return out[0].numpy()


def resample_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """`[Z, Y, X]` class indices -> `shape` by nearest neighbour: every output voxel takes
    the value of one input voxel, so no label appears that was not there (interpolating
    the values would make class 1 between 0 and 2)."""
    if tuple(labels.shape) == tuple(shape):
        return labels
    index = [np.minimum(((np.arange(m) + 0.5) * n / m).astype(np.int64), n - 1)
             for m, n in zip(shape, labels.shape, strict=True)]  # fmt: skip
    return labels[np.ix_(*index)]


def load_case(case: VolumeCase, contract: DataContract, resample: bool = True) -> LoadedCase:
    """Read, check and normalise one case (`labels` None when it has no mask); with
    `resample`, at the contract's spacing (`resampled_shape`; `meta` stays the file's)."""
    with CaseFiles(case, contract) as files:  # the grid and the channel count checked
        stored, meta = files.stored(0, files.shape[1]), files.meta
    image = scale_volume(stored, contract.intensity, contract.mean, contract.std,
                         contract.slab, case.images[0])  # fmt: skip
    labels = None
    if case.mask is not None:
        labels = read_case_labels(case.mask, contract, stored.shape[1:], meta, case.images[0])
    loaded = LoadedCase(case.name, image, labels, meta)
    return at_spacing(loaded, contract.spacing) if resample else loaded


def at_spacing(loaded: LoadedCase, spacing: Sequence[float] | None) -> LoadedCase:
    """A loaded case resampled to `spacing` (`resampled_shape`); itself when it is there
    already. `meta` stays the file's, to write results back on its own grid."""
    shape = resampled_shape(loaded.meta.shape, loaded.meta.spacing, spacing)
    if shape == tuple(loaded.image.shape[1:]):
        return loaded
    labels = None if loaded.labels is None else resample_labels(loaded.labels, shape)
    return LoadedCase(loaded.name, resample_image(loaded.image, shape), labels, loaded.meta)


def foreground_points(labels: np.ndarray, seed: int = 0) -> dict[int, np.ndarray]:
    """`{class: flat indices of up to MAX_FOREGROUND_SAMPLES of its voxels}` for every
    foreground class present (candidate centres of foreground patches)."""
    rng = np.random.default_rng(seed)
    points = {}
    flat = labels.reshape(-1)
    for c in np.unique(flat):
        if c == 0 or c == PAD_LABEL:
            continue
        where = np.flatnonzero(flat == c)
        if where.size > MAX_FOREGROUND_SAMPLES:
            where = np.sort(rng.choice(where, MAX_FOREGROUND_SAMPLES, replace=False))
        points[int(c)] = where
    return points


def labels_to_tensor(labels: np.ndarray) -> torch.Tensor:
    """uint8 indices (`PAD_LABEL`: no label) -> int64 with `IGNORE_INDEX`."""
    target = torch.from_numpy(np.ascontiguousarray(labels)).long()
    target[target == PAD_LABEL] = IGNORE_INDEX
    return target


class VolumeDataset(Dataset):
    """Training samples cut from volumes, or whole volumes for evaluation.

    Args:
        cases: the cases of this split.
        contract: the data contract (intensity, classes, dims, slab, slice axis).
        train: random slices, slabs or patches (`crop` sized, foreground-weighted,
            augmented); else one item per case, the whole volume.
        crop: the training window: `(d, h, w)` for 3-D, `(h, w)` for 2-D and 2.5-D.
        foreground_crop: share of windows centred on a foreground voxel, the class picked
            uniformly among those the case holds (nnU-Net's oversampling).
        augment: `data.augment`: flips, quarter turns, brightness/contrast (`augment_window`).
        cache: where the cases live (`data.cache`'s words): `true` in memory, `false` as a
            preprocessed copy on disk opened with `np.load(mmap_mode="r")` (nnU-Net's way:
            a window reads only the pages it touches), `auto` in memory when the cases'
            float32 size (estimated from the first) is at most `plan.CACHE_SHARE` of
            `cache_memory`, else on disk; the decision and its reason are logged once.
        cache_dir: the folder of the copies on disk (`false`, or `auto` when it chooses disk).
        cache_memory: bytes of memory available for `auto` (None: MemAvailable).
    Each case is read and normalised once, when first used, and kept in memory or written
    once to `cache_dir/<case>-<key>/` (`image.npy` float32, `labels.npy` uint8, `meta.json`),
    the key hashing the case's files (path, size, time), the contract's preprocessing fields
    and the reading code, so a changed contract or file never reuses a stale copy.
    """

    CACHE_VERSION = 1
    """Bumped when the layout of the copies on disk changes."""
    CACHE_IRRELEVANT = ("class_names", "background", "sigmoid", "crop_size", "instances",
                        "dims", "slice_axis", "patch")  # fmt: skip
    """Contract fields that do not change `load_case`'s output (left out of the key)."""
    CACHE_CODE = ("volume_dataset.py", "volumes.py", "readers.py", "masks.py", "contract.py")
    """Modules of `unet_seg.data` whose code makes a copy (in the key: a changed reader
    or normalisation writes new copies)."""
    _code_key: str | None = None

    def __init__(
        self,
        cases: Sequence[VolumeCase],
        contract: DataContract,
        train: bool = False,
        crop: Sequence[int] | None = None,
        foreground_crop: float = 0.0,
        augment: dict | None = None,
        cache: bool | str = True,
        cache_dir: str | Path | None = None,
        cache_memory: int | None = None,
    ) -> None:
        if train and not crop:
            raise ValueError("a training VolumeDataset needs its window size (crop)")
        if cache not in (True, False, "auto"):
            raise ValueError(f"data.cache={cache!r}: choose true (volumes in memory), false "
                             "(memory-mapped from a copy on disk) or auto")  # fmt: skip
        if cache is not True and cache_dir is None:
            raise ValueError(f"data.cache={cache}: a VolumeDataset needs cache_dir for the "
                             "copies on disk")  # fmt: skip
        self.cache = cache
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_memory = cache_memory
        self._on_disk: dict[int, tuple[Path, VolumeMeta]] = {}  # case -> its copy, geometry
        self.cases = list(cases)
        self.contract = contract
        self.train = train
        self.crop = tuple(int(v) for v in crop) if crop else None
        self.foreground_crop = float(foreground_crop)
        self.augment = dict(augment or {})
        self._loaded: dict[int, LoadedCase] = {}
        self._points: dict[int, dict[int, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def case(self, index: int) -> LoadedCase:
        """Case `index`, read and normalised on first use: in memory, or (on disk) its
        copy memory-mapped anew at each call, so that no mapping and none of its pages stay
        with the dataset (nnU-Net opens its copies per sample too)."""
        if index in self._loaded:
            return self._loaded[index]
        if index not in self._on_disk:
            loaded = None
            if self.cache == "auto":
                loaded = load_case(self.cases[index], self.contract)
                self.cache = self.decide_cache(loaded)
            if self.cache is True:
                self._loaded[index] = loaded or load_case(self.cases[index], self.contract)
                return self._loaded[index]
            self._on_disk[index] = self.store(self.cases[index], self.contract,
                                              self.cache_dir, loaded)  # fmt: skip
        folder, meta = self._on_disk[index]
        labels = folder / "labels.npy"
        return LoadedCase(
            self.cases[index].name, np.load(folder / "image.npy", mmap_mode="r"),
            np.load(labels, mmap_mode="r") if labels.exists() else None, meta,
        )  # fmt: skip

    @property
    def memory_mapped(self) -> bool:
        """Whether the cases are memory-mapped from copies on disk (`cache` false, or
        `auto` decided so)."""
        return self.cache is False

    def decide_cache(self, first: LoadedCase) -> bool:
        """`data.cache: auto` for this dataset alone (`memory_decision`), estimated from its
        first case; logged once with the reason. True: in memory."""
        size = first.image.nbytes + (first.labels.nbytes if first.labels is not None else 0)
        on, why = self.memory_decision(size * len(self), self.cache_memory, self.cache_dir)
        log.info("data.cache=auto: %s (%s; estimated from %s x %d cases)",
                 "in memory" if on else "on disk", why, first.name, len(self))  # fmt: skip
        return on

    @staticmethod
    def memory_decision(
        needed: int, available: int | None = None, cache_dir: str | Path | None = None
    ) -> tuple[bool, str]:
        """`(in memory, why)` for `data.cache: auto` on volumes: in memory when `needed`
        bytes (float32 images, uint8 labels) are at most `plan.CACHE_SHARE` of `available`
        (None: MemAvailable now), else memory-mapped from copies on disk, as 2-D images are
        cached by the same share (`plan.decide_cache`)."""
        from unet_seg.data.plan import CACHE_SHARE, available_memory

        available = available_memory() if available is None else available
        there = f" in {cache_dir}" if cache_dir is not None else ""
        if available is None:
            return False, (f"volumes take {needed / 2**20:.0f} MiB as float32; the memory "
                           "available could not be read: memory-mapped from preprocessed "
                           f"copies{there} (data.cache=true keeps them in memory)")  # fmt: skip
        on = needed <= CACHE_SHARE * available
        return on, (
            f"volumes {needed / 2**20:.0f} MiB as float32 {'<=' if on else '>'} "
            f"{CACHE_SHARE:.0%} of the {available / 2**30:.1f} GiB available: "
            + ("kept in memory" if on else f"memory-mapped from preprocessed copies{there}")
        )

    @classmethod
    def cache_key(cls, case: VolumeCase, contract: DataContract) -> str:
        """The key of a case's copy on disk: its files (resolved path, size, modification
        time; of an OME-Zarr folder, its files' total size and latest time), the contract's
        fields that shape `load_case`'s output, and the reading code."""
        import hashlib
        import json

        if cls._code_key is None:
            code = hashlib.sha256()
            for name in cls.CACHE_CODE:
                code.update((Path(__file__).parent / name).read_bytes())
            cls._code_key = code.hexdigest()
        files = []
        for path in (*case.images, *([case.mask] if case.mask is not None else [])):
            path = Path(path)  # an OME-Zarr folder: every chunk file counts
            stats = [p.stat() for p in path.rglob("*") if p.is_file()] if path.is_dir() else [
                path.stat()]  # fmt: skip
            files.append([str(path.resolve()), sum(st.st_size for st in stats),
                          max((st.st_mtime_ns for st in stats), default=0)])  # fmt: skip
        fields = {k: v for k, v in contract.to_dict().items() if k not in cls.CACHE_IRRELEVANT}
        text = json.dumps({"version": cls.CACHE_VERSION, "files": files, "contract": fields,
                           "code": cls._code_key}, sort_keys=True, default=str)  # fmt: skip
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    @classmethod
    def store(
        cls, case: VolumeCase, contract: DataContract, cache_dir: str | Path,
        loaded: LoadedCase | None = None,
    ) -> tuple[Path, VolumeMeta]:  # fmt: skip
        """The folder of a case's preprocessed copy (`load_case`'s output) under
        `cache_dir`, and its geometry: reused when its key matches, else written once,
        atomically (a temporary folder renamed into place; a copy another process wrote
        first is kept). `loaded`: the case already read, to write without reading again."""
        import json
        import os
        import shutil
        import tempfile

        cache_dir = Path(cache_dir)
        folder = cache_dir / f"{case.name}-{cls.cache_key(case, contract)}"
        if not (folder / "meta.json").exists():
            loaded = loaded or load_case(case, contract)
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{case.name}-", dir=cache_dir))
            try:
                np.save(tmp / "image.npy", np.ascontiguousarray(loaded.image, np.float32))
                if loaded.labels is not None:
                    np.save(tmp / "labels.npy", np.ascontiguousarray(loaded.labels, np.uint8))
                (tmp / "meta.json").write_text(json.dumps(loaded.meta.to_dict()))
                try:
                    os.replace(tmp, folder)
                except OSError:  # written meanwhile by another process (same key: same data)
                    if not (folder / "meta.json").exists():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            log.debug("%s: preprocessed copy written to %s", case.name, folder)
        meta = VolumeMeta.from_dict(json.loads((folder / "meta.json").read_text()))
        return folder, meta

    def load_all(self) -> None:
        """Read every case now (before DataLoader workers copy the dataset): into memory,
        or into its copy on disk (written once, then reused)."""
        for index in range(len(self)):
            self.case(index)

    def mask(self, index: int) -> np.ndarray:
        """Class indices `[Z, Y, X]` of case `index` (`PAD_LABEL` unlabelled)."""
        return self.case(index).labels

    def _view(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The case with its slice axis first: `[C, S, H, W]` and `[S, H, W]` (3-D: as is)."""
        loaded = self.case(index)
        if loaded.labels is None:
            raise ValueError(f"{self.cases[index].images[0]}: case {loaded.name} has no mask")
        if self.contract.dims == 3:
            return loaded.image, loaded.labels
        axis = self.contract.slice_axis
        return np.moveaxis(loaded.image, axis + 1, 1), np.moveaxis(loaded.labels, axis, 0)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if not self.train:
            loaded = self.case(index)  # a whole volume: read from its copy on disk
            item = {"image": torch.from_numpy(self._owned(loaded.image)), "name": loaded.name}
            if loaded.labels is not None:
                item["mask"] = labels_to_tensor(self._owned(loaded.labels))
            return item
        if seed is None:
            seed = int(torch.randint(2**31 - 1, ()).item())
        rng = np.random.default_rng(seed)
        image, labels = self._view(index)
        size = self.crop if self.contract.dims == 3 else (1, *self.crop)
        starts = self._starts(index, labels, size, rng)
        k = 1 if self.contract.dims == 3 else self.contract.slab
        # the window's own slices (3-D), or the slab around its one slice (2-D, 2.5-D)
        depth = slice(starts[0], starts[0] + size[0])
        slices = depth if k == 1 else slab_indices(labels.shape[0], starts[0], k)
        plane = tuple(slice(a, a + s) for a, s in zip(starts[1:], size[1:], strict=True))
        x = image[(slice(None), slices, *plane)]  # [C, d or k, h, w]
        y = labels[(depth, *plane)]  # [d or 1, h, w]
        pads = [(0, max(0, s - n)) for s, n in zip(size, y.shape, strict=True)]
        if any(p for _, p in pads):  # a volume smaller than the window: image 0, no labels
            x = np.pad(x, [(0, 0), pads[0] if k == 1 else (0, 0), *pads[1:]])
            y = np.pad(y, pads, constant_values=PAD_LABEL)
        if self.contract.dims != 3:  # [C, k, h, w] -> [C*k, h, w], channel-major as slab()
            x, y = x.reshape(-1, *x.shape[-2:]), y[0]
        if self.augment:
            spatial = 3 if self.contract.dims == 3 else 2
            x, y = augment_window(x, y, rng, spatial, self.augment)
        name = self.cases[index].name
        return {"image": torch.from_numpy(self._owned(x)),
                "mask": labels_to_tensor(self._owned(y)), "name": name}  # fmt: skip

    @staticmethod
    def _owned(a: np.ndarray) -> np.ndarray:
        """`a` contiguous and writable: a window of a memory-mapped copy is copied out of
        the mapping (a tensor must not share a read-only mapping's pages)."""
        a = np.ascontiguousarray(a)
        return a if a.flags.writeable and not isinstance(a, np.memmap) else np.array(a)

    def _starts(
        self, index: int, labels: np.ndarray, size: Sequence[int], rng: np.random.Generator
    ) -> list[int]:
        """Where a window of `size` over `[S, H, W]` starts: uniformly placed, or with
        `foreground_crop` probability centred on a foreground voxel of a class picked
        uniformly among those the case holds (nnU-Net)."""

        def points() -> dict[int, np.ndarray]:
            if index not in self._points:
                self._points[index] = foreground_points(labels, seed=index)
            return self._points[index]

        return window_start(labels.shape, size, rng, self.foreground_crop, points)[0]


def augment_window(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, spatial: int, augment: dict
) -> tuple[np.ndarray, np.ndarray]:
    """`data.augment`'s flips, quarter turns and brightness/contrast for windows of volumes:
    `hflip` mirrors x, `vflip` y, `zflip` (3-D; default: `hflip`'s) z; `rotate90` turns the
    y-x plane when it is square; `brightness_contrast` shifts the normalised intensities by up
    to `brightness` and scales them by 1 +- `contrast`. `x` `[C, *S]`, `y` `[*S]`,
    `spatial` = len(S). Affine and elastic warps are for 2-D images only (not applied)."""
    flips = [(-1, augment.get("hflip", 0)), (-2, augment.get("vflip", 0))]
    if spatial == 3:
        flips.append((-3, augment.get("zflip", augment.get("hflip", 0))))
    for axis, p in flips:
        if p and rng.random() < p:
            x, y = np.flip(x, axis), np.flip(y, axis)
    if (
        augment.get("rotate90")
        and x.shape[-1] == x.shape[-2]
        and rng.random() < augment["rotate90"]
    ):
        turns = int(rng.integers(1, 4))
        x, y = np.rot90(x, turns, axes=(-2, -1)), np.rot90(y, turns, axes=(-2, -1))
    bc = augment.get("brightness_contrast") or {}
    if bc.get("p") and rng.random() < bc["p"]:
        contrast = np.float32(1 + rng.uniform(-1, 1) * bc.get("contrast", 0.2))
        x = x * contrast + np.float32(rng.uniform(-1, 1) * bc.get("brightness", 0.2))
    return x.astype(np.float32, copy=False), y
