"""Inference on volumes: an N-D sliding window with Gaussian blending, and test-time
augmentation (TTA) by flips. 2-D and 2.5-D nets run slice by slice through the same window
(`slicewise`, a thin adapter: windows one slice thick), so a large slice is tiled as a 2-D
image is.

Pure tensor functions: the net is any `predict(x) -> probabilities` callable, so that a
`SegModule`, an ensemble or a test's toy function all fit.

Memory. The stitched output is what grows with the volume, so it is accumulated on the CPU
whatever `device` is; only a batch of patches travels to `device`. The peak beside the
input volume (`C x voxels x 4` bytes, float32) is the output `K x voxels x 4` bytes plus,
for the sliding window, the weight map `voxels x 4` bytes, plus a batch of patches and
their probabilities on `device` (and the net's activations for that batch). For a
300x512x512 CT, K = 2: 315 MB input, 629 MB output, 315 MB weights. `window_memory_bytes`
spells this out for a plan. Measured there (a 1x1 conv as the net, patch 64x128x128, one CPU
thread): peak RSS 1.58 GiB, of which 0.23 GiB is torch itself; 11 s. Validation and test
(`SegModule._volume_step`) keep the volume batch and these probabilities on the CPU too,
and move a chunk of z slices at a time to the device for the loss, the argmax and the
scores (`module.streamed_volume_loss`).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from unet_seg.data.volume_cases import slab as slab_of

log = logging.getLogger(__name__)

TTA_MODES = ("none", "flips")
"""`none`: one pass; `flips`: every combination of flips of the spatial axes, averaged."""

Predict = Callable[[Tensor], Tensor]
"""`x [B, C, *patch] -> probabilities [B, K, *patch]`."""


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of side `tile` covering `[0, length)`, evenly spread, first at 0
    and last at `length - tile`, no two further apart than `stride`."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def gaussian_weights_nd(shape: Sequence[int], sigma_scale: float = 0.125) -> Tensor:
    """Blending weights of `shape`: a product of Gaussians (sigma = `sigma_scale` x side on
    each axis) peaking at 1 in the centre, floored at 1e-4 so that every voxel keeps some
    weight. Exactly symmetric under flipping any axis.

    Returns:
        float32 tensor of `shape`.
    """
    weights = None
    for n in shape:
        coord = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        axis = torch.exp(-0.5 * (coord / (sigma_scale * n)) ** 2)
        weights = axis if weights is None else weights[..., None] * axis  # [..., n]
    if weights is None:
        raise ValueError("gaussian_weights_nd: shape is empty; give one side per axis")
    return (weights / weights.max()).clamp(min=1e-4).float()


def window_memory_bytes(
    shape: Sequence[int],
    patch: Sequence[int],
    num_classes: int,
    batch_size: int = 1,
    in_channels: int = 1,
) -> dict[str, int]:
    """Bytes `sliding_window` holds for a volume of spatial `shape`, float32 throughout.

    Returns:
        `input` (the normalised volume, `C x voxels`), `output` (`K x voxels`) and
        `weights` (`voxels`) on the CPU, `cpu` (their sum), and `device_batch` (a batch of
        patches and their probabilities on the device, without the net's activations).
    """
    voxels, patch_voxels = math.prod(shape), math.prod(patch)
    sizes = {
        "input": 4 * in_channels * voxels,
        "output": 4 * num_classes * voxels,
        "weights": 4 * voxels,
    }
    sizes["cpu"] = sum(sizes.values())
    sizes["device_batch"] = 4 * batch_size * (in_channels + num_classes) * patch_voxels
    return sizes


def _check(
    volume: Tensor, spatial: int, tta: str, batch_size: int, name: str, problems: list[str]
) -> None:
    """Refuse arguments that cannot work, every problem at once (`problems`: found so far)."""
    if volume.ndim != spatial + 1:
        problems.append(
            f"volume has shape {tuple(volume.shape)}: expected [C, {spatial} spatial axes]"
        )
    if tta not in TTA_MODES:
        problems.append(f"tta={tta!r}: choose one of {', '.join(TTA_MODES)}")
    if batch_size < 1:
        problems.append(f"batch_size={batch_size}: must be >= 1")
    if problems:
        raise ValueError(f"{name}: " + "; ".join(problems))


def _flip_sets(axes: Sequence[int], tta: str) -> list[tuple[int, ...]]:
    """The tensor dims to flip for each TTA pass: `()` alone, or every subset of `axes`."""
    if tta == "none":
        return [()]
    return [dims for r in range(len(axes) + 1) for dims in itertools.combinations(axes, r)]


def _predict_checked(
    predict: Predict, x: Tensor, num_classes: int, patch: Sequence[int] | None = None
) -> Tensor:
    """`predict(x)` as float32, refused unless it is `[B, K, *patch]` (default: `x`'s)."""
    p = predict(x)
    expected = (x.shape[0], num_classes, *(x.shape[2:] if patch is None else patch))
    if tuple(p.shape) != expected:
        raise ValueError(
            f"predict returned shape {tuple(p.shape)} for an input {tuple(x.shape)}; expected "
            f"probabilities {expected} (num_classes={num_classes}: for a sigmoid net give "
            "num_classes=1)"
        )
    return p.float()


def _windows(
    shape: Sequence[int],
    patch: Sequence[int],
    overlap: float,
    tta: str,
    flip_axes: Sequence[int] | None = None,
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every `(window start per axis, flipped axes)` pass of `sliding_window`.

    Without flips the starts are `tile_starts` on each axis (0 where the volume is shorter
    than the patch, padded after its end). The pass that flips an axis places its windows
    as the unflipped pass would on the flipped volume: mirrored, `length - patch - start`
    (negative where the volume is shorter than the patch: padded before its start). The set
    of passes is thus mirror-symmetric, and the blended result exactly invariant to flips.
    `flip_axes`: the spatial axes TTA flips (None: every one).
    """
    starts = [
        tile_starts(n, p, max(1, round(p * (1 - overlap))))
        for n, p in zip(shape, patch, strict=True)
    ]
    passes = []
    axes_flipped = range(len(shape)) if flip_axes is None else flip_axes
    for flips in _flip_sets(axes_flipped, tta):
        axes = [
            [n - p - s for s in ss] if i in flips else ss
            for i, (n, p, ss) in enumerate(zip(shape, patch, starts, strict=True))
        ]
        passes += [(start, tuple(flips)) for start in itertools.product(*axes)]
    return passes


def _regions(
    start: Sequence[int], patch: Sequence[int], shape: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The part of a window inside the volume: `(volume slices, patch slices)`."""
    inside = [(max(s, 0), min(s + p, n)) for s, p, n in zip(start, patch, shape, strict=True)]
    volume_part = tuple(slice(a, b) for a, b in inside)
    patch_part = tuple(slice(a - s, b - s) for (a, b), s in zip(inside, start, strict=True))
    return volume_part, patch_part


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def aligned_starts(length: int, tile: int, stride: int, align: int) -> list[int]:
    """Start offsets, multiples of `align`, of tiles of side `tile` covering `[0, length)`
    no further apart than `stride` (but at least `align`); the last tile may overrun `length`.
    """
    step = max(align, stride // align * align)
    if step > tile < length:
        raise ValueError(
            f"tile side {tile} is smaller than the net's pooling grid {align}: tiles would leave "
            f"gaps; use tile_size >= {align}"
        )
    starts = [0]
    while starts[-1] + tile < length:
        starts.append(starts[-1] + step)
    return starts


def _window_input(
    source: np.ndarray | Tensor,
    start: Sequence[int],
    patch: Sequence[int],
    context: int,
    prepare: Callable[[np.ndarray | Tensor], Tensor],
) -> Tensor:
    """One window's net input `[C, *(patch + 2 context)]`: the part of `source` (`[C, *S]`,
    mirrored by `context` beyond the volume when `context`, padded with the normalised 0
    where a window without context leaves it) through `prepare`."""
    if context:  # `source` is mirrored already: its index i is the volume's i - context
        region = tuple(slice(s, s + p + 2 * context) for s, p in zip(start, patch, strict=True))
        return prepare(source[(slice(None), *region)])
    inside, part = _regions(start, patch, source.shape[1:])
    x = prepare(source[(slice(None), *inside)])
    if tuple(x.shape[1:]) == tuple(patch):
        return x
    full = x.new_zeros(x.shape[0], *patch)
    full[(slice(None), *part)] = x
    return full


def _as_tensor(x: np.ndarray | Tensor) -> Tensor:
    return x.float() if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x, np.float32))


@torch.no_grad()
def blended_bands(
    predict: Predict,
    source: np.ndarray | Tensor,
    patch: Sequence[int],
    num_classes: int,
    overlap: float = 0.5,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    tta: str = "none",
    progress: bool = False,
    flip_axes: Sequence[int] | None = None,
    context: int = 0,
    align: int = 1,
    prepare: Callable[[np.ndarray | Tensor], Tensor] | None = None,
    accumulate_on: torch.device | str = "cpu",
) -> Iterator[tuple[int, Tensor]]:
    """The one sliding window of every rank (2-D tiles, 3-D windows, the slices of
    `slicewise`), streamed along the first spatial axis: Gaussian-blended probabilities
    of consecutive ranges that no later window touches, so that only a band of about
    `patch[0] + stride` is held beside the input, whatever the first axis' length.

    Windows of side `patch` start at `tile_starts` on each axis (stride =
    `patch x (1 - overlap)`, rounded). With `context` (a valid-convolution net's, or the
    `halo` of an overlap-tile prediction) each window's input is the window plus `context`
    of the volume around it, mirrored beyond the volume, and starts lie on the net's
    pooling grid (`aligned_starts`, multiples of `align`), so that overlapping windows
    agree exactly; `predict` then returns the window alone. `tta="flips"` (no context) adds
    a pass over every combination of flipped axes (`_windows`).

    Args:
        predict: `x [B, C, *(patch + 2 context)] -> probabilities [B, K, *patch]` on `device`.
        source: the volume `[C, *S]`, normalised, or raw with `prepare`.
        prepare: a window's part of `source` `[C, ...]` -> the net's input (normalised
            float32 Tensor); default: `source` is normalised already.
        accumulate_on: where the band is summed (the CPU for volumes; a 2-D image's tiles
            may stay on the GPU).
    Yields:
        `(first index along the first axis, probabilities [K, rows, *S[1:]] float32)`.
    """
    patch = [int(p) for p in patch]
    shape = tuple(source.shape[1:])
    prepare = prepare or _as_tensor
    if context and tta != "none":
        raise ValueError("blended_bands: context windows take tta inside `predict`")
    if context:
        strides = [max(1, round(p * (1 - overlap))) for p in patch]
        starts = [aligned_starts(n, p, s, align)
                  for n, p, s in zip(shape, patch, strides, strict=True)]  # fmt: skip
        pads = [(0, 0)] + [(context, context + max(0, ss[-1] + p - n))
                           for n, p, ss in zip(shape, patch, starts, strict=True)]  # fmt: skip
        array = source.numpy() if isinstance(source, Tensor) else source
        source = np.pad(array, pads, mode="reflect")  # numpy mirrors as often as needed
        passes = [(start, ()) for start in itertools.product(*starts)]
    else:
        passes = _windows(shape, patch, overlap, tta, flip_axes)
    weights = gaussian_weights_nd(patch).to(accumulate_on)  # [*patch]
    rest = shape[1:]
    rows_of = sorted({start[0] for start, _ in passes})
    by_row = {r: [w for w in passes if w[0][0] == r] for r in rows_of}
    # the band: rows [top, top + filled) of one buffer of a window's depth, reused (a window
    # row starts at `top`, so it never reaches further than patch[0] rows below it)
    depth = min(patch[0], shape[0])
    acc = torch.zeros(num_classes, depth, *rest, device=accumulate_on)
    wsum = torch.zeros(depth, *rest, device=accumulate_on)
    top = filled = 0
    log.debug("blended_bands: %d passes of %s over %s (tta=%s, context %d)", len(passes),
              patch, shape, tta, context)  # fmt: skip
    bar = tqdm(rows_of, desc="windows", unit="row", leave=False, disable=not progress)
    for i, row in enumerate(bar):
        filled = max(filled, min(shape[0], row + patch[0]) - top)
        for batch in _batches(by_row[row], batch_size):
            x = torch.stack([_window_input(source, start, patch, context, prepare)
                             for start, _ in batch]).to(device)  # fmt: skip
            p = torch.empty(len(batch), num_classes, *patch, device=device)
            for flips in sorted({f for _, f in batch}):  # one call per flip set in the batch
                rows = [b for b, (_, f) in enumerate(batch) if f == flips]
                dims = [d + 2 for d in flips]  # spatial axis -> tensor dim of [B, C, *patch]
                y = x[rows].flip(dims) if dims else x[rows]
                y = _predict_checked(predict, y, num_classes, patch)
                p[rows] = y.flip(dims) if dims else y
            p = p.to(accumulate_on)
            for b, (start, _) in enumerate(batch):
                inside, part = _regions(start, patch, shape)
                band = (slice(inside[0].start - top, inside[0].stop - top), *inside[1:])
                w = weights[part]
                acc[(slice(None), *band)] += p[(b, slice(None), *part)] * w
                wsum[band] += w
        done = min(shape[0], max(top, rows_of[i + 1])) if i + 1 < len(rows_of) else shape[0]
        if done > top:
            rows = done - top
            yield top, acc[:, :rows] / wsum[:rows]
            keep = filled - rows  # rows summed already that later windows add to
            for buffer in (acc[None], wsum[None, None]):  # [.., K or 1, depth, ...]
                kept = buffer[:, :, rows:filled]
                buffer[:, :, :keep] = kept if rows >= keep else kept.clone()  # no overlap
                buffer[:, :, keep:filled] = 0
            top, filled = done, keep


@torch.no_grad()
def sliding_window(
    predict: Predict,
    volume: Tensor,
    patch: Sequence[int],
    num_classes: int,
    overlap: float = 0.5,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    tta: str = "none",
    progress: bool = False,
    flip_axes: Sequence[int] | None = None,
) -> Tensor:
    """Class probabilities of a whole volume from a net that sees patches: the bands of
    `blended_bands` put together.

    A volume shorter than the patch on an axis is padded with zeros (the normalised
    volume's 0) and the result cropped back. `tta="flips"` adds, for every combination of
    flipped spatial axes (2^n passes for n axes), a pass over the flipped volume, flipped
    back; the result is exactly invariant to flipping the input (to float rounding). The
    sums are accumulated on the CPU, so the memory that grows with the volume never sits
    on `device`; only a batch of patches goes there (`window_memory_bytes`).

    Args:
        predict: `x [B, C, *patch] -> probabilities [B, K, *patch]`, on `device`.
        volume: normalised `[C, *S]` (S: three spatial axes, or two), on any device.
        patch: window side per spatial axis (e.g. `[64, 128, 128]`).
        num_classes: K, the probabilities' channels (1 for a sigmoid net).
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        batch_size: patches per `predict` call.
        device: where the patches go.
        tta: `none` or `flips`.
        progress: a progress bar over the rows of windows.
        flip_axes: the spatial axes `tta="flips"` flips (None: all; `slicewise` flips the
            two axes of a slice, not the axis along which slices are stacked).
    Returns:
        probabilities `[K, *S]` float32 on the CPU.
    """
    name = "sliding_window"
    patch = [int(p) for p in patch]
    problems = [] if 0 <= overlap < 1 else [f"overlap={overlap}: must be in [0, 1)"]
    if not patch or min(patch) < 1:
        problems.append(f"patch={patch}: give one side >= 1 per spatial axis")
    _check(volume, len(patch), tta, batch_size, name, problems)
    volume = volume.cpu()
    out = torch.empty(num_classes, *volume.shape[1:])  # [K, *S], CPU
    for top, band in blended_bands(predict, volume, patch, num_classes, overlap, batch_size,
                                   device, tta, progress, flip_axes):  # fmt: skip
        out[:, top : top + band.shape[1]] = band
    return out


SLICE_CHUNK_VALUES = 2**25
"""Input values (float32: 128 MiB) of the slices `slicewise` gathers into one stack for
`sliding_window`: at least one slice, at most this many values of slices and slabs."""


@torch.no_grad()
def slicewise(
    predict: Predict,
    volume: Tensor,
    axis: int,
    slab: int,
    num_classes: int,
    patch: Sequence[int] | None = None,
    overlap: float = 0.5,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    tta: str = "none",
    progress: bool = False,
) -> Tensor:
    """Class probabilities of a volume from a 2-D or 2.5-D net, slice by slice: a thin
    adapter over `sliding_window`, so that a slice larger than the training window is
    tiled with it exactly as a 2-D image (Gaussian blending, `overlap`, flips), and memory
    stays bounded by the window, not the slice.

    Slices run along spatial `axis`; the net's input at slice i is
    `volume_cases.slab(v, i, slab)` of the volume `v` with that axis moved first: the `slab`
    neighbouring slices as channels, channel-major (`slab=1`: the slice itself). Slices are
    gathered a few at a time (`SLICE_CHUNK_VALUES`) into a stack `[C * slab, n, H, W]`
    over which `sliding_window` runs windows `[1, *patch]` (one slice thick: each slice is
    predicted once, its windows blended in its plane only). A slice no larger than `patch`
    on an axis is one window on that axis (the window shrinks to the slice: the net takes
    any size, as a 2-D image's one pass). `tta="flips"`: the four flips of the slice's two
    axes, averaged.

    Args:
        predict: `x [B, C * slab, h, w] -> probabilities [B, K, h, w]`, on `device`.
        volume: normalised `[C, Z, Y, X]`, on any device.
        axis: spatial axis of the slices: 0 (z), 1 (y) or 2 (x).
        slab: slices per input, odd (1 for a 2-D net).
        num_classes: K, the probabilities' channels (1 for a sigmoid net).
        patch: the window `[h, w]` in a slice (the training window); None: whole slices.
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        batch_size: windows per `predict` call.
        device: where the windows go.
        tta: `none` or `flips`.
        progress: a progress bar over the chunks of slices.
    Returns:
        probabilities `[K, Z, Y, X]` float32 on the CPU.
    """
    name = "slicewise"
    problems = [] if axis in (0, 1, 2) else [f"axis={axis}: must be 0 (z), 1 (y) or 2 (x)"]
    if slab < 1 or slab % 2 == 0:
        problems.append(f"slab={slab}: must be odd and >= 1 (1 for a 2-D net)")
    if patch is not None and (len(patch) != 2 or min(patch) < 1):
        problems.append(f"patch={list(patch)}: give the window's two sides in a slice, >= 1")
    _check(volume, 3, tta, batch_size, name, problems)
    out = torch.empty(num_classes, *volume.shape[1:])  # [K, Z, Y, X], CPU
    view = out.movedim(axis + 1, 1)  # [K, S, H, W], writes land in `out`
    stack = volume.movedim(axis + 1, 1)  # [C, S, H, W], S along `axis`
    for first, band in slice_bands(predict, stack, slab, num_classes, patch, overlap,
                                   batch_size, device, tta, progress):  # fmt: skip
        view[:, first : first + band.shape[1]] = band
    return out


@torch.no_grad()
def slice_bands(
    predict: Predict,
    stack: Tensor | np.ndarray | object,
    slab: int,
    num_classes: int,
    patch: Sequence[int] | None = None,
    overlap: float = 0.5,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    tta: str = "none",
    progress: bool = False,
) -> Iterator[tuple[int, Tensor]]:
    """`slicewise` a chunk of slices at a time, in order: `(first slice, probabilities
    [K, n, H, W])` of a stack `[C, S, H, W]` of normalised slices (an array, or
    `volume_dataset.Bands` reading it from files: only `stack[:, a:b]` is asked for, each
    chunk's slices and its slab's neighbours, the edge slice repeated as
    `volume_cases.slab_indices` repeats it)."""
    depth, half = stack.shape[1], slab // 2
    plane = tuple(stack.shape[2:])  # (H, W)
    window = (
        plane if patch is None else tuple(min(int(p), n) for p, n in zip(patch, plane, strict=True))
    )

    def predict_slices(x: Tensor) -> Tensor:  # [B, C * slab, 1, h, w] -> [B, K, 1, h, w]
        return predict(x[:, :, 0])[:, :, None]

    per_slice = stack.shape[0] * slab * math.prod(plane)
    chunk = max(1, SLICE_CHUNK_VALUES // max(1, per_slice))
    for first in tqdm(range(0, depth, chunk), desc="slices", unit="chunk", disable=not progress):
        last = min(depth, first + chunk)
        index = np.clip(np.arange(first - half, last + half), 0, depth - 1)
        low = int(index[0])
        part = _as_tensor(stack[:, low : int(index[-1]) + 1])  # [C, n + 2 half, H, W]
        if slab == 1:
            inputs = part
        else:  # [n, C * slab, H, W] -> [C * slab, n, H, W]; no edge left to repeat in `part`
            part = part[:, torch.from_numpy(index - low)]
            inputs = torch.stack([slab_of(part, i, slab) for i in range(half, half + last - first)],
                                 dim=1)  # fmt: skip
        yield first, sliding_window(
            predict_slices, inputs, (1, *window), num_classes, overlap=overlap,
            batch_size=batch_size, device=device, tta=tta, flip_axes=(1, 2),
        )  # fmt: skip
