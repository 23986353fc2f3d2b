"""Image/mask folders: pairing files and the torch Dataset over the pairs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from unet_seg.data.masks import IGNORE_INDEX, PAD_LABEL, MaskEncoding
from unet_seg.data.readers import IMAGE_EXTENSIONS, read_image, to_unit_range
from unet_seg.data.transforms import mask_to_tensor, normalize

__all__ = ["IMAGE_EXTENSIONS", "SegDataset", "find_pairs", "list_images", "pad_collate",
           "read_image"]  # fmt: skip


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


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
    extension-less `root/masks/<stem><mask_suffix>`.
    Raises with the folder or file named when a folder is missing or empty, or
    when an image has no mask.
    """
    root = Path(root)
    image_folder, mask_folder = root / images_dir, root / masks_dir
    for folder in (image_folder, mask_folder):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder} does not exist: data.root must hold `{images_dir}/` and `{masks_dir}/` "
                "folders of images and masks with matching names"
            )
    images = list_images(image_folder)
    if not images:
        raise FileNotFoundError(
            f"{image_folder} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    if class_folders:
        return _folder_pairs(images, mask_folder, mask_suffix, class_folders)
    masks: dict[str, Path] = {}
    for path in list_images(mask_folder):
        if mask_suffix and not path.stem.endswith(mask_suffix):
            continue
        stem = path.stem[: len(path.stem) - len(mask_suffix)] if mask_suffix else path.stem
        masks[stem] = path
    unmatched = [p.name for p in images if p.stem not in masks]
    if unmatched:
        raise FileNotFoundError(
            f"{len(unmatched)} image(s) in {image_folder} have no mask in {mask_folder} "
            f"(expected <stem>{mask_suffix}.<ext>), e.g. {unmatched[:5]}. "
            "Add the masks, remove the images, or set data.mask_suffix (Carvana: _mask)."
        )
    return [(p, masks[p.stem]) for p in images]


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
        cache: keep decoded images and masks in memory (per DataLoader worker).
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
    ) -> None:
        self.pairs = list(pairs)
        self.encoding = encoding
        self.in_channels = in_channels
        self.mean, self.std = mean, std
        self.transform = transform
        self.crop_size = crop_size
        self.foreground_crop = foreground_crop
        self.pad_to_crop = pad_to_crop
        self.intensity = intensity or {"mode": "range"}
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The image `[H, W, C]` (uint8, or float32 in [0, 1]) and class indices `[H, W]`."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image_path, mask_path = self.pairs[index]
        image = to_unit_range(read_image(image_path, self.in_channels), **self.intensity)
        indices = self.encoding.load(mask_path)
        if image.shape[:2] != indices.shape:
            raise ValueError(
                f"{mask_path}: mask is {indices.shape[1]}x{indices.shape[0]} but its image "
                f"{image_path} is {image.shape[1]}x{image.shape[0]} (width x height); "
                "masks must match their image's size"
            )
        if self._cache is not None:
            self._cache[index] = (image, indices)
        return image, indices

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Sample `key`: an index, or `(index, seed)` to fix the sample's randomness."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, indices = self.load(index)
        if self.crop_size or self.transform is not None:
            # albumentations draws from generators of its own, seeded from the OS unless
            # set: seed them per sample (SeededShuffleSampler), else from torch's RNG.
            if seed is None:
                seed = int(torch.randint(2**31 - 1, ()).item())
            rng = np.random.default_rng(seed)
            if self.crop_size:
                image, indices = self._crop(image, indices, rng, self.pairs[index][0])
            if self.transform is not None:
                self.transform.set_random_seed(int(rng.integers(2**31 - 1)))
                out = self.transform(image=image, mask=indices)
                image, indices = out["image"], out["mask"]
        return {
            "image": normalize(image, self.mean, self.std),
            "mask": mask_to_tensor(indices),
            "name": self.pairs[index][0].name,
        }

    def _crop(
        self, image: np.ndarray, indices: np.ndarray, rng: np.random.Generator, path: Path
    ) -> tuple[np.ndarray, np.ndarray]:
        """A `crop_size` patch: centred on a foreground pixel with `foreground_crop`
        probability (when the image has any), else uniformly placed."""
        size = self.crop_size
        h, w = indices.shape
        if h < size or w < size:
            if not self.pad_to_crop:
                raise ValueError(
                    f"{path}: {w}x{h} is smaller than data.crop_size={size}; lower "
                    f"data.crop_size or set data.pad_to_crop=true"
                )
            ph, pw = max(0, size - h), max(0, size - w)
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
            indices = np.pad(indices, ((0, ph), (0, pw)), constant_values=PAD_LABEL)
            h, w = indices.shape
        y = int(rng.integers(0, h - size + 1))
        x = int(rng.integers(0, w - size + 1))
        if self.foreground_crop and rng.random() < self.foreground_crop:
            foreground = np.flatnonzero((indices > 0) & (indices != PAD_LABEL))
            if foreground.size:
                cy, cx = divmod(int(foreground[rng.integers(foreground.size)]), w)
                y = min(max(cy - size // 2, 0), h - size)
                x = min(max(cx - size // 2, 0), w - size)
        return image[y : y + size, x : x + size], indices[y : y + size, x : x + size]


def pad_collate(batch: list[dict]) -> dict:
    """Stack samples, padding smaller ones to the batch's largest size (mask: IGNORE_INDEX)."""
    names = [s["name"] for s in batch]
    if len({tuple(s["image"].shape) for s in batch}) == 1:
        images = torch.stack([s["image"] for s in batch])  # [B, C, H, W]
        masks = torch.stack([s["mask"] for s in batch])  # [B, H, W]
        return {"image": images, "mask": masks, "name": names}
    height = max(s["image"].shape[1] for s in batch)
    width = max(s["image"].shape[2] for s in batch)
    channels = batch[0]["image"].shape[0]
    images = torch.zeros(len(batch), channels, height, width)
    masks = torch.full((len(batch), height, width), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(batch):
        _, h, w = s["image"].shape
        images[i, :, :h, :w] = s["image"]
        masks[i, :h, :w] = s["mask"]
    return {"image": images, "mask": masks, "name": names}
