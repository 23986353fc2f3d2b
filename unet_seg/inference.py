"""Inference shared by `predict`, `evaluate` and `load_model`: the whole image at once,
resize to the training size and back, or sliding-window tiles at native resolution
with Gaussian blending; optional test-time augmentation (TTA) over flips and rotations.

Tiling streams the image in bands of tile rows: only the rows still covered by
an unfinished tile row are held as probabilities, so the memory beside the
image and its label map is a few tiles' activations plus `K x (tile + stride) x W`
floats, whatever the image height.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from unet_seg.data.readers import fit_channels, to_unit_range
from unet_seg.data.transforms import normalize
from unet_seg.instances import components
from unet_seg.module import SegModule
from unet_seg.postprocess import PostProcess
from unet_seg.volume_inference import blended_bands, gaussian_weights_nd

log = logging.getLogger(__name__)

MODES = ("whole", "resize", "tile")
"""`whole`: one pass at native size; `resize`: to `size` and back; `tile`: sliding window."""

TTA_TRANSFORMS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    # identity, horizontal flip, vertical flip (= rot180 + hflip), both (= rot180)
    "flips": ((0, False), (0, True), (2, True), (2, False)),
    # the dihedral group D4: 4 rotations x (no flip, horizontal flip)
    "d4": tuple((k, flip) for k in range(4) for flip in (False, True)),
}
"""Each transform is (quarter turns, then horizontal flip); both sets are groups, so the
averaged prediction is exactly invariant to the transforms of the set."""


VOLUME_TTA = ("none", "flips")
"""TTA for volumes: every mirror image of the window's axes; quarter turns (d4) are 2-D."""

OPTIONS_FOR_IMAGES_ONLY: dict[str, tuple[tuple[object, ...], str]] = {
    "mode": (
        ("tile",),
        "volumes are predicted by a sliding window (mode=tile, the default), "
        "a 3-D net's over the volume and a 2-D net's over each slice; whole and resize "
        "are for 2-D images",
    ),
    "tile_size": (
        (),
        "the window is the training patch recorded in the checkpoint "
        "(data.patch for a 3-D net, data.crop_size for slices); leave tile_size "
        "out",
    ),
    "size": ((None,), "it is resize mode's input, for 2-D images; leave it out"),
    "palette": (
        ("auto", False),
        "label volumes hold the dataset's label values in the "
        "input's format (NIfTI, TIFF, ...), never a palette",
    ),
    "overlays": (
        ("auto", False),
        "overlays are PNGs of 2-D images; evaluate draws the worst volumes (<output>_worst.png)",
    ),
    "instances_dir": ((None,), "object scores are for 2-D images"),
    "halo": (
        (0, None),
        "volume windows overlap by `overlap` and are blended; a halo is for 2-D tiles",
    ),
}
"""The predict/evaluate options that apply to 2-D images only: `{option: (values that ask
for nothing, why not for volumes)}`; the default of `conf/<task>.yaml` asks for nothing too.
Every other option applies to every rank: `device`, `threads`, `overlap`, `tta` (volumes:
`VOLUME_TTA`), `batch_size`, `level` (the pruned UNet++ head, `nested` or `nested3d`),
`postprocess.*` (on volumes in 3-D: objects 26-connected, sizes in voxels),
`probabilities`, and the inputs and outputs. `stream` (predict) is for volumes only."""


def _task_defaults(task: str) -> dict:
    """The options of `conf/<task>.yaml` as written there (what is not asked for)."""
    from omegaconf import OmegaConf

    from unet_seg.config import CONF_DIR

    path = Path(CONF_DIR) / f"{task}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}


def check_options(cfg: Mapping, task: str, volume: bool) -> None:
    """Refuse, before anything is read or written, every predict/evaluate option that does
    not apply to the checkpoint's rank (`volume`: trained on volumes), and values no rank
    takes, naming each (`OPTIONS_FOR_IMAGES_ONLY`); all problems at once.

    Args:
        cfg: the task's config (an absent key is its default).
        task: `predict` or `evaluate`, to name in the message and to read its defaults.
    """
    problems = []
    overlap = cfg.get("overlap")
    if overlap is not None and not 0 <= float(overlap) < 1:
        problems.append(f"overlap={overlap}: must be in [0, 1) (0: windows side by side)")
    batch = cfg.get("batch_size")
    if batch is not None and int(batch) < 1:
        problems.append(f"batch_size={batch}: must be >= 1")
    tta = str(cfg.get("tta") or "none")
    allowed = VOLUME_TTA if volume else tuple(TTA_TRANSFORMS)
    if tta not in allowed:
        why = "; quarter turns (d4) are for 2-D images" if volume and tta == "d4" else ""
        problems.append(f"tta={tta}: choose one of {', '.join(allowed)}{why}")
    stream = cfg.get("stream", "auto")
    if stream not in ("auto", True, False):
        problems.append(f"stream={stream}: choose auto, true or false")
    elif stream is True and not volume:
        problems.append("stream=true applies to volumes (read and written in bands of slices); "
                        "2-D images are read whole: leave it out")  # fmt: skip
    if volume:
        defaults = _task_defaults(task)
        for key, (accepted, why) in OPTIONS_FOR_IMAGES_ONLY.items():
            asks_nothing = (*accepted, defaults[key]) if key in defaults else accepted
            if key not in cfg or cfg.get(key) in asks_nothing:
                continue
            problems.append(f"{key}={cfg.get(key)} does not apply to volumes: {why}")
    if len(problems) == 1:
        raise ValueError(f"{task}: {problems[0]}")
    if problems:
        from unet_seg.problems import ProblemList

        what = "volume checkpoint" if volume else "checkpoint"
        raise ProblemList(f"{task}: {len(problems)} options do not fit this {what}", problems)


def resolve_device(device: str) -> torch.device:
    """`auto` -> the GPU when there is one, else the CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_for_inference(
    ckpt: str | Path, device: str = "auto", level: int | None = None
) -> SegModule:
    """A `SegModule` in eval mode on `device`, optionally UNet++-pruned to `level`."""
    module = SegModule.from_checkpoint(ckpt).to(resolve_device(device))
    if level is not None:
        try:
            module.net.check_level(level)
        except ValueError as err:
            raise ValueError(f"{ckpt}: {err}") from None
        module.inference_level = int(level)
    return module


def check_image(image: np.ndarray, in_channels: int, name: str = "image") -> np.ndarray:
    """Validate an image array and give it the net's channel count, by the rules of
    `unet_seg.data.readers.read_image` for files.

    Args:
        image: `[H, W]` or `[H, W, C]` uint8/uint16, or float in [0, 1]; RGB(A) order.
        in_channels: channels the net expects; grayscale is repeated to 3, an RGB
            image with equal channels becomes grayscale, opaque RGBA drops alpha.
        name: what to call the image in errors.
    Returns:
        `[H, W, in_channels]` (float64 becomes float32).
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array, got {type(image).__name__}")
    fix = "convert the image: the model was trained on that many channels"
    return fit_channels(image, in_channels, name, fix)


def gaussian_weights(height: int, width: int, sigma_scale: float = 0.125) -> Tensor:
    """Blending weights `[height, width]`: a Gaussian (sigma = side / 8) peaking at 1 in the
    centre, floored at 1e-4 so that every pixel keeps some weight (`gaussian_weights_nd`)."""
    return gaussian_weights_nd((height, width), sigma_scale)


class Predictor:
    """A trained net as a function from images to class probabilities, labels or masks.

    Args:
        module: a `SegModule` in eval mode (see `load_for_inference`).
        mode: `whole`, `resize` or `tile` (see `MODES`).
        tile_size: tile side in pixels (`tile` mode); an image no larger is one pass. For a
            valid-convolution net, the output side of a tile: its input is larger by the
            net's context on each side.
        overlap: fraction of a tile shared with its neighbour, in [0, 1).
        tta: `none`, `flips` (4 passes) or `d4` (8 passes), averaged over probabilities.
        batch_size: tiles (or same-size images) per forward pass.
        size: `resize` mode's net input, `[height, width]` or one side for a square.
        postprocess: applied to the label maps, or None. For a net trained on an instance
            target, `min_size` (if > 0) is the smallest object its decoding keeps instead
            of the checkpoint's, and the other steps do not apply.
        progress: show a progress bar over the tile rows of each tiled image.
        halo: `tile` mode: each tile's input is the tile plus `halo` pixels of the image
            around it, mirrored at the image border, and its output the tile (the U-Net
            paper's overlap-tile, as the valid-convolution net always runs); tiles start on
            the net's pooling grid. With a halo of the net's receptive field (a bioimage.io
            package's `halo`) the result no longer depends on the tiling, and equals what
            a tool tiling that package computes; every image is tiled then, however small.
            0: tiles see only themselves, the net's zero padding at their border.
    """

    def __init__(
        self,
        module: SegModule,
        mode: str = "tile",
        tile_size: int = 512,
        overlap: float = 0.25,
        tta: str = "none",
        batch_size: int = 4,
        size: int | Sequence[int] | None = None,
        postprocess: PostProcess | None = None,
        progress: bool = False,
        halo: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: choose one of {', '.join(MODES)}")
        if tta not in TTA_TRANSFORMS:
            raise ValueError(f"tta={tta!r}: choose one of {', '.join(TTA_TRANSFORMS)}")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap={overlap}: must be in [0, 1)")
        if tile_size < 1 or batch_size < 1:
            raise ValueError(f"tile_size={tile_size}, batch_size={batch_size}: must be >= 1")
        if halo < 0 or (halo and mode != "tile"):
            raise ValueError(f"halo={halo}: a number of pixels >= 0, for mode=tile only")
        contract = module.contract
        size = size or (contract.crop_size if mode == "resize" else None)
        if mode == "resize" and not size:
            raise ValueError(
                "mode=resize needs size=N (the training crop size): this checkpoint records "
                "no data.crop_size (it was trained on whole images)"
            )
        self.module = module
        self.mode, self.tta, self.overlap = mode, tta, float(overlap)
        self.tile_size, self.batch_size = int(tile_size), int(batch_size)
        if size is not None and not isinstance(size, int):
            size = [int(s) for s in size]
        self.size = None if size is None else (size, size) if isinstance(size, int) else size
        self.postprocess = postprocess or PostProcess()
        self.progress = progress
        self.halo = 0 if module.net.margin else int(halo)  # a valid net brings its own
        self.contract = contract
        if contract.instance_target and (
            self.postprocess.fill_holes or self.postprocess.keep_largest
        ):
            raise ValueError(
                "postprocess.fill_holes and keep_largest act on classes; this checkpoint "
                "predicts objects (data.target=instances): use postprocess.min_size alone"
            )
        self.in_channels = contract.in_channels
        self.class_names = contract.class_names
        self.encoding = contract.encoding

    @property
    def device(self) -> torch.device:
        return self.module.device

    @property
    def num_classes(self) -> int:
        return self.contract.num_classes

    # ---- public API -------------------------------------------------------------------

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Image `[H, W(, C)]` -> mask in the dataset's encoding, post-processed: `[H, W]`
        mask values (e.g. 0/255) or palette indices; `[H, W, 3]` RGB colours for `rgb` masks;
        class indices for `folders` and `instances` masks; for a net trained on an instance
        target, its objects (`instances`)."""
        if self.contract.instance_target:
            return self.instances(image)
        return self.encoding.decode(self.labels(image))

    def instances(self, image: np.ndarray) -> np.ndarray:
        """Image `[H, W(, C)]` -> object labels int32 `[H, W]` (0 = background, 1..N): for a
        net trained on an instance target, its probabilities decoded by a seeded watershed
        (after tiles are blended, so objects across tile borders stay whole); else the
        8-connected components of the post-processed foreground."""
        return self.run_instances([image])[0][0]

    def run_instances(
        self, images: Sequence[np.ndarray], probabilities: bool = False
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """`run`, with each image's objects (see `instances`).

        Returns:
            One `(objects [H, W] int32, labels [H, W] uint8, probabilities or None)` per image.
        """
        decode = self.contract.instance_target
        results = self.run(images, probabilities=probabilities or decode)
        min_size = self.postprocess.min_size or None
        return [
            (self.module.instances(p, min_size) if decode else components(labels), labels,
             p if probabilities else None)
            for labels, p in results
        ]  # fmt: skip

    def labels(self, image: np.ndarray) -> np.ndarray:
        """Image `[H, W(, C)]` -> class indices `[H, W]` uint8, post-processed."""
        return self.run([image])[0][0]

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Image `[H, W(, C)]` -> class probabilities `[K, H, W]` float32 (K >= 2)."""
        return self.run([image], probabilities=True)[0][1]

    @torch.inference_mode()
    def run(
        self, images: Sequence[np.ndarray], probabilities: bool = False
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Predict several images, batching those that take one pass at the same size.

        Returns:
            One `(labels [H, W] uint8, probabilities [K, H, W] float32 or None)` per image.
        """
        images = [self._prepare(im, f"image {i}") for i, im in enumerate(images)]
        results: list = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            if self.takes_one_pass(image.shape):
                groups.setdefault(self._net_input_shape(image), []).append(i)
            else:
                results[i] = self._tiled(image, probabilities)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = torch.stack([self._net_input(images[i]) for i in chunk])
                probs = self._tta_probabilities(batch.to(self.device))  # [b, K, h, w]
                for i, p in zip(chunk, probs, strict=True):
                    p = self._restore(p, images[i].shape[:2])  # [K, H, W]
                    labels = p.argmax(0).to(torch.uint8).cpu().numpy()
                    results[i] = (labels, p.cpu().numpy() if probabilities else None)
        if self.postprocess.active and not self.contract.instance_target:
            results = [(self.postprocess(lab), p) for lab, p in results]
        return results

    # ---- one pass: whole image or resized ---------------------------------------------

    def _prepare(self, image: np.ndarray, name: str) -> np.ndarray:
        """Checked `[H, W, C]` in the training intensity scale (`data.intensity`, on the whole
        image: percentiles are the image's, not a tile's); uint8 stays uint8 in `range` mode."""
        image = check_image(image, self.contract.in_channels, name)
        return to_unit_range(image, **self.contract.intensity)

    def takes_one_pass(self, shape: Sequence[int]) -> bool:
        """Whether an image of `shape` (`[H, W, ...]`) is one forward pass, not tiles."""
        h, w = shape[:2]
        return self.mode != "tile" or (not self.halo and h <= self.tile_size >= w)

    def _net_input_shape(self, image: np.ndarray) -> tuple[int, ...]:
        return tuple(self.size) if self.mode == "resize" else image.shape[:2]

    def _net_input(self, image: np.ndarray) -> Tensor:
        """`[H, W, C]` -> normalised `[C, h, w]` (resized in `resize` mode)."""
        x = normalize(image, self.contract.mean, self.contract.std)  # [C, H, W]
        if self.mode == "resize" and tuple(x.shape[1:]) != tuple(self.size):
            x = F.interpolate(x[None], size=self.size, mode="bilinear", antialias=True)[0]
        return x

    def _restore(self, probs: Tensor, shape: tuple[int, int]) -> Tensor:
        """Probabilities `[K, h, w]` -> `[K, H, W]` (resized back in `resize` mode)."""
        if tuple(probs.shape[1:]) == tuple(shape):
            return probs
        return F.interpolate(probs[None], size=shape, mode="bilinear")[0]

    # ---- TTA --------------------------------------------------------------------------

    def _tta_probabilities(self, x: Tensor, with_context: bool = False) -> Tensor:
        """Batch `[B, C, h, w]` -> class probabilities `[B, K, h, w]`, averaged over the TTA
        transforms (each undone on the probabilities before averaging).

        `with_context`: `x` carries `net.margin` pixels of context on each side (a
        valid-convolution net's overlap tile), and the probabilities cover its centre only.
        """
        transforms = TTA_TRANSFORMS[self.tta]
        net = self.module.net.forward_with_context if with_context else self.module
        if with_context and self.halo:  # a padding net: run the whole input, keep its centre
            h = self.halo
            level = getattr(self.module, "inference_level", None)
            net = lambda y: self.module.net.forward_traceable(y, level)[..., h:-h, h:-h]  # noqa: E731
        total = None
        for turns, flip in transforms:
            y = torch.rot90(x, turns, dims=(2, 3))
            y = y.flip(3) if flip else y
            p = self.module.probabilities(net(y))
            p = p.flip(3) if flip else p
            p = torch.rot90(p, -turns, dims=(2, 3))
            total = p if total is None else total + p
        return total / len(transforms)

    # ---- tiling -----------------------------------------------------------------------

    def _tiled(
        self, image: np.ndarray, probabilities: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        height, width = image.shape[:2]
        labels = np.empty((height, width), dtype=np.uint8)
        probs = np.empty((self.num_classes, height, width), np.float32) if probabilities else None
        for top, band in self.bands(image):  # band: [K, rows, W]
            rows = band.shape[1]
            labels[top : top + rows] = band.argmax(0).to(torch.uint8).cpu().numpy()
            if probs is not None:
                probs[:, top : top + rows] = band.cpu().numpy()
        return labels, probs

    def bands(self, image: np.ndarray) -> Iterator[tuple[int, Tensor]]:
        """Blend overlapping tiles of a checked `[H, W, C]` image, top to bottom.

        For a valid-convolution net (`net.margin` > 0) this is the U-Net paper's
        overlap-tile strategy: each tile's input is the tile plus `context` pixels of the
        image around it, mirrored where it leaves the image, so tiles join without seams.

        Yields:
            `(first row, probabilities [K, rows, W])` for consecutive row ranges that no
            later tile touches, so that only one band is held at a time.
        """
        height, width = image.shape[:2]
        th, tw = min(self.tile_size, height), min(self.tile_size, width)
        c = self.module.net.margin or self.halo
        contract = self.contract
        yield from blended_bands(
            lambda x: self._tta_probabilities(x, bool(c)),
            np.moveaxis(image, -1, 0),  # [C, H, W], a view: tiles are normalised one by one
            (th, tw), self.num_classes, overlap=self.overlap, batch_size=self.batch_size,
            device=self.device, progress=self.progress, context=c,
            align=self.module.net.pad_multiple if c else 1,
            prepare=lambda region: normalize(np.moveaxis(region, 0, -1), contract.mean,
                                             contract.std),
            accumulate_on=self.device,
        )  # fmt: skip


# volumes: the case functions `predict` and `evaluate` share


def checkpoint_is_volume(ckpt: str | Path) -> bool:
    """Whether a checkpoint's data contract is for volumes (read without building the net).
    False for a file that is no checkpoint: loading it for 2-D images says what is wrong."""
    try:
        stored = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        return bool(stored["hyper_parameters"]["data"].get("volume"))
    except Exception:  # noqa: BLE001 - the 2-D path names a missing or broken file
        return False


def volume_options(cfg: Mapping) -> dict:
    """`SegModule.volume_probabilities` keyword arguments from a predict/evaluate config
    (checked by `check_options`; an absent or null key is the default: overlap 0.5, as
    validation, batch 2; `overlap=0` is windows side by side)."""
    overlap, batch = cfg.get("overlap"), cfg.get("batch_size")
    return {"tta": str(cfg.get("tta") or "none"),
            "overlap": 0.5 if overlap is None else float(overlap),
            "batch_size": 2 if batch is None else int(batch)}  # fmt: skip


def case_probabilities(module: SegModule, loaded, cfg: Mapping) -> np.ndarray:
    """Class probabilities `[K, Z, Y, X]` of a `LoadedCase` on its file's own grid (a case
    resampled to the training spacing is predicted there and its probabilities resampled
    back)."""
    from unet_seg.data.volume_dataset import resample_image

    with torch.no_grad():
        probs = module.volume_probabilities(torch.from_numpy(loaded.image), **volume_options(cfg))
    return resample_image(probs.numpy(), loaded.meta.shape)


def case_labels(module: SegModule, loaded, cfg: Mapping, probs: np.ndarray | None = None):
    """Class indices uint8 `[Z, Y, X]` of a `LoadedCase` on its file's own grid,
    post-processed (`PostProcess` in 3-D): from `probs` when given; decided band by band
    (`SegModule.volume_labels`) when the case is predicted on its own grid; else through its
    whole probabilities, resampled back to it."""
    if probs is None and tuple(loaded.image.shape[1:]) != tuple(loaded.meta.shape):
        probs = case_probabilities(module, loaded, cfg)
    if probs is not None:
        labels = probs.argmax(0).astype(np.uint8)
    else:
        with torch.no_grad():
            labels = module.volume_labels(torch.from_numpy(loaded.image), **volume_options(cfg))
    return PostProcess(**dict(cfg.get("postprocess") or {}))(labels)


def log_resampling(module: SegModule, loaded) -> None:
    """Say when a case is predicted at the training spacing, not its own."""
    if tuple(loaded.image.shape[1:]) != tuple(loaded.meta.shape):
        log.info(
            "%s: spacing %s mm, resampled to the training spacing %s mm (%s -> %s voxels) and "
            "predicted back on its own grid", loaded.name,
            [round(s, 3) for s in loaded.meta.spacing],
            [round(s, 3) for s in module.contract.spacing],
            list(loaded.meta.shape), list(loaded.image.shape[1:]),
        )  # fmt: skip


def describe_volume_inference(module: SegModule) -> str:
    """How the net sees a volume, for the log and the evaluation's JSON."""
    c = module.contract
    level = f", UNet++ pruned to level {module.inference_level}" if module.inference_level else ""
    if c.dims == 3:
        return f"3-D sliding window of {c.patch}{level}"
    what = f"2.5-D slabs of {c.slab}" if c.dims == 2.5 else "2-D slices"
    window = f", windows of {c.crop_size} px" if c.crop_size else ""
    return f"{what} along {'zyx'[c.slice_axis]}{window}{level}"


def load_volume_module(ckpt: str | Path, cfg: Mapping) -> SegModule:
    """A volume checkpoint's `SegModule` in eval mode on `cfg.device` (`auto`: a GPU if there
    is one), UNet++-pruned to `cfg.level` when given (as for images)."""
    level = cfg.get("level")
    return load_for_inference(ckpt, str(cfg.get("device", "auto")),
                              None if level is None else int(level)).eval()  # fmt: skip
