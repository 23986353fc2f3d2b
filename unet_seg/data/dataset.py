"""Image/mask folders: pairing files and the torch Dataset over the pairs."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from unet_seg.data.checks import shared_stems
from unet_seg.data.layouts import file_ending, layout_hint, pair_channel_files
from unet_seg.data.masks import IGNORE_INDEX, PAD_LABEL, MaskEncoding
from unet_seg.data.readers import (
    DEFAULT_INTENSITY,
    IMAGE_EXTENSIONS,
    is_image_file,
    read_image,
    size_mismatch,
    to_unit_range,
)
from unet_seg.data.transforms import mask_to_tensor, normalize
from unet_seg.data.weight_map import (
    read_instances,
    unet_weight_map,
    weight_map_params,
    weights_and_borders,
)
from unet_seg.instances import instance_target

__all__ = ["IMAGE_EXTENSIONS", "SegDataset", "find_instances", "find_pairs", "list_images",
           "pad_collate", "read_image"]  # fmt: skip


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name: image extensions in any case
    (`.PNG`, `.TIF`), hidden files (macOS `._a.png`) left out (`readers.is_image_file`); in a
    folder a `dataset.json` describes (nnU-Net's `imagesTr/`, `labelsTr/`, `imagesTs/`), those
    of its `file_ending` only."""
    folder = Path(folder)
    ending = file_ending(folder)
    return sorted(
        p
        for p in folder.iterdir()
        if is_image_file(p) and (ending is None or p.name.lower().endswith(ending))
    )


def find_pairs(
    root: str | Path,
    images_dir: str = "images",
    masks_dir: str = "masks",
    mask_suffix: str = "",
    class_folders: Sequence[str] | None = None,
) -> list[tuple[Path, Path]]:
    """Pair `root/images/<stem>.*` with `root/masks/<stem><mask_suffix>.*`.

    With `class_folders` (`data.mask_format=folders`), each image's masks are
    `root/masks/<class>/<stem><mask_suffix>.*`, and its pair holds the
    extension-less `root/masks/<stem><mask_suffix>`. nnU-Net's 2-D layout pairs
    `imagesTr/<case>_0000.png` with `labelsTr/<case>.png` (one channel file per case; several,
    `_0001` and on, are refused with the workaround).
    Raises with the folder or file named when a folder is missing or empty, when an
    image has no mask, or when two images (or two masks) share a stem; every
    problem of the last kinds in one error.
    """
    root = Path(root)
    image_folder, mask_folder = root / images_dir, root / masks_dir
    for folder in (image_folder, mask_folder):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder} does not exist: data.root must hold `{images_dir}/` and `{masks_dir}/` "
                f"folders of images and masks with matching names{layout_hint(root)}"
            )
    images = list_images(image_folder)
    if not images:
        others = sorted(p.name for p in image_folder.iterdir() if p.is_file())
        held = f"; it holds {len(others)} other file(s), e.g. {others[:5]}" if others else ""
        raise FileNotFoundError(
            f"{image_folder} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)}, in any "
            f"case){held}: put the images there, or point data.root (and data.images_dir) at "
            "their folder"
        )
    problems = shared_stems("images", [(p.stem, p) for p in images], image_folder)
    if class_folders:
        if problems:
            raise ValueError("\n".join(problems))
        return _folder_pairs(images, mask_folder, mask_suffix, class_folders)
    masks: list[tuple[str, Path]] = []
    for path in list_images(mask_folder):
        if mask_suffix and not path.stem.endswith(mask_suffix):
            continue
        stem = path.stem[: len(path.stem) - len(mask_suffix)] if mask_suffix else path.stem
        masks.append((stem, path))
    problems += shared_stems("masks", masks, mask_folder)
    mask_of = dict(masks)
    problems += pair_channel_files(images, mask_of, image_folder)  # nnU-Net's 2-D
    unmatched = [p.name for p in images if p.stem not in mask_of]
    if unmatched:
        missing = (
            f"{len(unmatched)} image(s) in {image_folder} have no mask in {mask_folder} "
            f"(expected <stem>{mask_suffix}.<ext>), e.g. {unmatched[:5]}. "
            "Add the masks, remove the images, or set data.mask_suffix (Carvana: _mask)."
        )
        problems.insert(0, missing)
    if problems:
        error = FileNotFoundError if unmatched else ValueError
        raise error(problems[0] if len(problems) == 1 else "\n".join(problems))
    return [(p, mask_of[p.stem]) for p in images]


def find_instances(folder: str | Path, images: Sequence[Path], mask_suffix: str = "") -> list[Path]:
    """The instance label file `folder/<stem>.*` (or `<stem><mask_suffix>.*`) of each image.

    Raises with the folder and the missing names when a file is missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} does not exist: instance labels (0 = background, 1..N = objects, one "
            "file per image, named like the image) are read from data.instances_dir "
            "(loss=weighted_ce_dice) or evaluate's instances_dir="
        )
    files = {p.stem: p for p in list_images(folder)}
    found, missing = [], []
    for image in images:
        path = files.get(image.stem) or files.get(f"{image.stem}{mask_suffix}")
        found.append(path)
        if path is None:
            missing.append(image.name)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) have no instance labels in {folder} (expected "
            f"<stem>.<ext>), e.g. {missing[:5]}: add them, or train without the weight map "
            "(evaluate: without instances_dir=)"
        )
    return found


def instance_files(
    pairs: Sequence[tuple[Path, Path]], mask_format: str, folder: str | Path, mask_suffix: str = ""
) -> list[Path]:
    """The instance label file of each (image, mask) pair: the mask itself when masks are
    instance labels (`mask_format=instances`), else its file in `folder` (`find_instances`)."""
    if mask_format == "instances":
        return [mask for _, mask in pairs]
    return find_instances(folder, [image for image, _ in pairs], mask_suffix)


def _folder_pairs(
    images: list[Path], mask_folder: Path, suffix: str, class_folders: Sequence[str]
) -> list[tuple[Path, Path]]:
    missing = []
    for name in class_folders:
        folder = mask_folder / name
        stems = {p.stem for p in list_images(folder)} if folder.is_dir() else set()
        missing += [f"{name}/{p.stem}{suffix}" for p in images if f"{p.stem}{suffix}" not in stems]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} class mask(s) missing under {mask_folder}, e.g. {missing[:5]}: "
            f"data.mask_format=folders needs masks/<class>/<stem>.png for each class in "
            f"{list(class_folders)} and each image (an all-zero mask where a class is absent)"
        )
    return [(p, mask_folder / f"{p.stem}{suffix}") for p in images]


class SegDataset(Dataset):
    """Image/mask pairs -> `{"image": float32 [C, H, W], "mask": int64 [H, W], "name": str}`.

    Args:
        pairs: (image path, mask path) pairs.
        encoding: how mask files map to class indices.
        in_channels: channels the net expects.
        mean, std: normalisation after scaling to [0, 1].
        transform: albumentations pipeline on the image and index mask, or None.
        crop_size: side of a random training patch (None: whole images).
        foreground_crop: share of patches centred on a random foreground pixel.
        pad_to_crop: pad images smaller than the patch (padding is ignored by the loss).
        intensity: `{"mode": "range" | "percentile", "low", "high"}` (see `readers`).
        cache: keep decoded images and masks in memory, as the files hold them (uint8,
            uint16; float32 only for `percentile` intensity, whose per-image percentiles
            need the whole image): converted to [0, 1] per sample, after the crop. Fill it
            with `fill_cache` before DataLoader workers start, and they share it (fork:
            copy-on-write; spawn: a pickled copy each); else each worker fills its own.
        instance_paths: one instance label file per pair, for `weight_map` and
            `instance_target`.
        weight_map: `loss.weight_map` settings (`unet_seg.data.weight_map`): each
            sample gets the U-Net weight map as `"weight"` (float32 `[H, W]`),
            computed once per image and always kept in memory (`precompute_weights`);
            with `separate_touching` the mask's touching-object borders become background.
            With `instance_target` the map is that of the objects' interiors: its border
            term lies on the boundary (and background) pixels between close objects, and
            nothing is carved.
        context: pixels of input context around each training sample (a valid-convolution
            net's margin, `arch=unet_valid`): the image comes `context` pixels larger on
            each side than the patch the loss scores, mirrored where it leaves the image;
            the mask and weight are padded to match (ignored, weight 0).
        instance_target: the boundary width of an instance target (`data.target:
            instances`): each mask is then the three classes background / interior /
            boundary of the pair's instance labels (`unet_seg.instances`), computed once
            per image and kept in memory; None: the masks' own classes.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        encoding: MaskEncoding,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        transform: A.Compose | None = None,
        crop_size: int | None = None,
        foreground_crop: float = 0.0,
        pad_to_crop: bool = False,
        intensity: dict | None = None,
        cache: bool = False,
        instance_paths: Sequence[Path] | None = None,
        weight_map: dict | None = None,
        context: int = 0,
        instance_target: int | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.context = int(context)
        self.encoding = encoding
        self.in_channels = in_channels
        self.mean, self.std = mean, std
        self.transform = transform
        self.crop_size = crop_size
        self.foreground_crop = foreground_crop
        self.pad_to_crop = pad_to_crop
        self.intensity = intensity or DEFAULT_INTENSITY
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None
        # `range` and `fixed` map each pixel alone: the patch is converted after the crop,
        # the same values as converting the whole image first
        self._pointwise = self.intensity.get("mode", "range") in ("range", "fixed")
        self.weight_map = None if weight_map is None else weight_map_params(weight_map)
        self.instance_paths = None if instance_paths is None else list(instance_paths)
        # image index -> (weight map float32 [H, W], flat indices of touching borders)
        self._weights: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.instance_target = instance_target
        self._targets: dict[int, np.ndarray] = {}  # image index -> instance target [H, W]
        if self.weight_map is not None or instance_target is not None:
            if self.instance_paths is None or len(self.instance_paths) != len(self.pairs):
                raise ValueError(
                    "a weight map or an instance target needs one instance label file per "
                    "image/mask pair"
                )
        if self.weight_map is not None:
            if transform is not None:  # warped like the mask (nearest neighbour), stays aligned
                transform.add_targets({"weight": "mask"})

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The image `[H, W, C]` (uint8, or float32 in [0, 1]) and class indices `[H, W]`."""
        image, indices = self.decoded(index)
        return self._unit_range(image, index), indices

    def decoded(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The image `[H, W, C]` as its file holds it (uint8, uint16, ...; in [0, 1] already
        for `percentile` intensity) and class indices `[H, W]`, from the cache when on."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path, self.in_channels)
        if not self._pointwise:
            image = to_unit_range(image, **self.intensity, name=image_path)
        indices = self.mask(index)
        if self.instance_target is not None:
            mask_path = self.instance_paths[index]
        mismatch = size_mismatch(mask_path, "mask", indices.shape, image_path, image.shape)
        if mismatch:
            raise ValueError(mismatch)
        if self.weight_map is not None:  # separated objects; unlabelled pixels stay so
            border = self._weight_map(index, indices.shape)[1]
            indices.flat[border[indices.flat[border] != PAD_LABEL]] = 0
        if self._cache is not None:
            self._cache[index] = (image, indices)
        return image, indices

    def _unit_range(self, image: np.ndarray, index: int) -> np.ndarray:
        """A decoded image (or patch of one) in [0, 1] as `intensity` says (uint8 stays)."""
        if not self._pointwise:
            return image  # converted when decoded (per-image percentiles)
        return to_unit_range(image, **self.intensity, name=self.pairs[index][0])

    def fill_cache(self, progress: bool | None = None, what: str = "images") -> int:
        """Decode every pair into the cache now, in this process: call it before the
        DataLoader's workers start, so that none of them decodes (fork shares the arrays
        copy-on-write; spawn pickles a copy to each). A progress bar is shown when
        `progress` (None: when decoding takes over 2 s). Returns the bytes cached.

        Raises a ValueError without a cache (`cache=False`)."""
        if self._cache is None:
            raise ValueError("fill_cache: this SegDataset was made with cache=False")
        todo = [i for i in range(len(self)) if i not in self._cache]
        bar = tqdm(total=len(todo), desc=f"decoding {what}", unit="img", delay=2.0,
                   disable=progress is False, leave=False)  # fmt: skip
        with bar:
            for index in todo:
                self.decoded(index)
                bar.update()
        return self.cached_bytes()

    def drop_cache(self) -> None:
        """Stop caching: every sample is read from its file from now on."""
        self._cache = None

    def cached_bytes(self) -> int:
        """Bytes of the images and masks in the cache (0 without one)."""
        return sum(a.nbytes + b.nbytes for a, b in (self._cache or {}).values())

    def mask(self, index: int) -> np.ndarray:
        """Class indices `[H, W]` of pair `index`: its mask decoded, or for an instance
        target the three classes of its instance labels (computed on first use, kept)."""
        if self.instance_target is None:
            return self.encoding.load(self.pairs[index][1])
        if index not in self._targets:
            path = self.instance_paths[index]
            labels = read_instances(path)
            ignored = None
            if self.encoding.mask_format == "instances":  # the contract of an instance target
                ignored = self.encoding.indices_of(labels, path) == PAD_LABEL  # data.ignore_value
            target = instance_target(self.encoding.objects_of(labels), self.instance_target)
            if ignored is not None:
                target[ignored] = PAD_LABEL  # unlabelled: no object, no background
            self._targets[index] = target
        return self._targets[index].copy()

    def _weight_map(self, index: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Image `index`'s weight map and touching-border pixels, computed on first use."""
        if index not in self._weights:
            path = self.instance_paths[index]
            instances = self.encoding.objects_of(read_instances(path))
            mismatch = size_mismatch(path, "instance labels", instances.shape,
                                     self.pairs[index][0], shape)  # fmt: skip
            if mismatch:
                raise ValueError(mismatch)
            if self.instance_target is None:
                weight, border = weights_and_borders(instances, self.weight_map)
            else:  # the boundary class separates: the map is of the interiors, nothing carved
                p = self.weight_map
                interiors = np.where(self.mask(index) == 1, instances, 0)
                weight = unet_weight_map(interiors, p["w0"], p["sigma"], p["class_balance"])
                border = np.zeros(instances.shape, bool)
            self._weights[index] = (weight, np.flatnonzero(border))
        return self._weights[index]

    def precompute_weights(self) -> None:
        """Compute every image's weight map now (before DataLoader workers copy the dataset)."""
        for index in range(len(self)):
            if index not in self._weights:
                self.load(index)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Sample `key`: an index, or `(index, seed)` to fix the sample's randomness."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, indices = self.decoded(index)  # converted to [0, 1] after the crop
        weight = None if self.weight_map is None else self._weights[index][0]
        if self.context:
            image, indices, weight = self._add_context(image, indices, weight)
        if self.crop_size or self.transform is not None:
            # albumentations draws from generators of its own, seeded from the OS unless
            # set: seed them per sample (SeededShuffleSampler), else from torch's RNG.
            # One generator shared by every transform: Compose.set_random_seed would give
            # each transform a generator of the same seed, so transforms of one p would
            # fire together (hflip with vflip: rot180, never a mirror) or not at all.
            if seed is None:
                seed = int(torch.randint(2**31 - 1, ()).item())
            rng = np.random.default_rng(seed)
            size = (self.crop_size or 0) + 2 * self.context
            converted = min(indices.shape) < size  # padded to the patch: its zeros in [0, 1]
            if converted:
                image = self._unit_range(image, index)
            if self.crop_size:
                image, indices, weight = self._crop(
                    image, indices, rng, self.pairs[index][0], weight
                )
            if not converted:
                image = self._unit_range(image, index)  # the patch only: the crop came first
            if self.transform is not None:
                draw = int(rng.integers(2**31 - 1))
                self.transform.set_random_state(np.random.default_rng(draw), random.Random(draw))
                extra = {} if weight is None else {"weight": weight}
                out = self.transform(image=image, mask=indices, **extra)
                image, indices, weight = out["image"], out["mask"], out.get("weight")
        else:
            image = self._unit_range(image, index)
        sample = {
            "image": normalize(image, self.mean, self.std),
            "mask": mask_to_tensor(indices),
            "name": self.pairs[index][0].name,
        }
        if weight is not None:  # a copy: the cached map stays untouched
            sample["weight"] = torch.from_numpy(np.array(weight, dtype=np.float32))
        return sample

    def _add_context(
        self, image: np.ndarray, indices: np.ndarray, weight: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Mirror `context` pixels around the image (the U-Net paper's extrapolation of the
        border); the mask gets ignored pixels there and the weight map zeros."""
        c = self.context
        image = np.pad(image, ((c, c), (c, c), (0, 0)), mode="reflect")
        indices = np.pad(indices, c, constant_values=PAD_LABEL)
        return image, indices, None if weight is None else np.pad(weight, c)

    def _crop(
        self,
        image: np.ndarray,
        indices: np.ndarray,
        rng: np.random.Generator,
        path: Path,
        weight: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """A `crop_size` patch: centred on a foreground pixel with `foreground_crop`
        probability (when the image has any; with several foreground classes present, on
        a pixel of one of them picked uniformly, so that rare classes are seen as often
        as common ones), else uniformly placed. A patch holds at least one labelled pixel:
        a uniform window that has none (partly labelled masks, `data.ignore_value`) is
        centred on a random labelled pixel instead. `weight` (a
        per-pixel loss weight map, or None) is cut with the same window (padding: 0)."""
        size = self.crop_size + 2 * self.context  # the patch and its context
        h, w = indices.shape
        if h < size or w < size:
            if not self.pad_to_crop:
                c = self.context
                raise ValueError(
                    f"{path}: {w - 2 * c}x{h - 2 * c} is smaller than data.crop_size="
                    f"{self.crop_size}; lower data.crop_size or set data.pad_to_crop=true"
                )
            ph, pw = max(0, size - h), max(0, size - w)
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
            indices = np.pad(indices, ((0, ph), (0, pw)), constant_values=PAD_LABEL)
            weight = None if weight is None else np.pad(weight, ((0, ph), (0, pw)))
            h, w = indices.shape
        (y, x), centred = window_start((h, w), (size, size), rng, self.foreground_crop,
                                       lambda: class_points(indices))  # fmt: skip
        c = self.context  # the loss scores the window without its context
        scored = indices[y + c : y + size - c, x + c : x + size - c]
        if not centred and (scored == PAD_LABEL).all():
            labelled = np.flatnonzero(indices != PAD_LABEL)
            if not labelled.size:
                raise ValueError(
                    f"{path}: the mask has no labelled pixel (all data.ignore_value or "
                    "padding): label some pixels or remove the image from the training data"
                )
            centre = np.unravel_index(int(labelled[rng.integers(labelled.size)]), (h, w))
            y, x = centred_start(centre, (size, size), (h, w))
        window = (slice(y, y + size), slice(x, x + size))
        return image[window], indices[window], None if weight is None else weight[window]


def window_start(
    shape: Sequence[int],
    size: Sequence[int],
    rng: np.random.Generator,
    foreground_share: float,
    foreground: Callable[[], dict[int, np.ndarray]],
) -> tuple[list[int], bool]:
    """Where a training window of `size` over an array of `shape` starts, for every rank (a
    2-D crop, a slice, a slab, a 3-D patch): placed uniformly (0 on an axis the window
    covers), or with `foreground_share` probability centred on a foreground pixel of a
    class picked uniformly among those present, so that rare classes are seen as often as
    common ones (nnU-Net's oversampling); `foreground()` gives `{class: flat indices}`,
    asked only then. Returns `(starts, whether centred on the foreground)`."""
    starts = [int(rng.integers(0, max(n - s, 0) + 1)) for s, n in zip(size, shape, strict=True)]
    if foreground_share and rng.random() < foreground_share:
        points = foreground()
        if points:
            classes = sorted(points)
            chosen = points[classes[int(rng.integers(len(classes)))] if len(classes) > 1
                            else classes[0]]  # fmt: skip
            centre = np.unravel_index(int(chosen[int(rng.integers(chosen.size))]), shape)
            return centred_start(centre, size, shape), True
    return starts, False


def centred_start(centre: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> list[int]:
    """The start of a window of `size` centred on `centre`, kept inside `shape`."""
    return [min(max(int(c) - s // 2, 0), max(n - s, 0))
            for c, s, n in zip(centre, size, shape, strict=True)]  # fmt: skip


def class_points(indices: np.ndarray) -> dict[int, np.ndarray]:
    """`{class: flat indices of its pixels}` of the foreground classes in a mask of class
    indices (`PAD_LABEL`, unlabelled, is none)."""
    foreground = np.flatnonzero((indices > 0) & (indices != PAD_LABEL))
    values = indices.flat[foreground]
    return {int(c): foreground[values == c] for c in np.unique(values)}


def pad_collate(batch: list[dict]) -> dict:
    """Stack samples, padding smaller ones to the batch's largest size (mask: IGNORE_INDEX;
    the optional per-pixel loss `weight`: 0)."""
    names = [s["name"] for s in batch]
    weighted = "weight" in batch[0]
    if len({tuple(s["image"].shape) for s in batch}) == 1:
        images = torch.stack([s["image"] for s in batch])  # [B, C, H, W]
        masks = torch.stack([s["mask"] for s in batch])  # [B, H, W]
        out = {"image": images, "mask": masks, "name": names}
        if weighted:
            out["weight"] = torch.stack([s["weight"] for s in batch])  # [B, H, W]
        return out
    height = max(s["image"].shape[1] for s in batch)
    width = max(s["image"].shape[2] for s in batch)
    channels = batch[0]["image"].shape[0]
    images = torch.zeros(len(batch), channels, height, width)
    masks = torch.full((len(batch), height, width), IGNORE_INDEX, dtype=torch.long)
    weights = torch.zeros(len(batch), height, width) if weighted else None
    for i, s in enumerate(batch):
        _, h, w = s["image"].shape
        images[i, :, :h, :w] = s["image"]
        masks[i, :h, :w] = s["mask"]
        if weighted:
            weights[i, :h, :w] = s["weight"]
    out = {"image": images, "mask": masks, "name": names}
    if weighted:
        out["weight"] = weights
    return out
