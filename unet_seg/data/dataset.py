"""Image/mask folders: pairing files, reading them, and the torch Dataset over the pairs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from unet_seg.data.masks import IGNORE_INDEX, MaskEncoding
from unet_seg.data.transforms import mask_to_tensor, normalize

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def find_pairs(
    root: str | Path, images_dir: str = "images", masks_dir: str = "masks", mask_suffix: str = ""
) -> list[tuple[Path, Path]]:
    """Pair `root/images/<stem>.*` with `root/masks/<stem><mask_suffix>.*`.

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


def read_image(path: str | Path, in_channels: int) -> np.ndarray:
    """Read an image as `[H, W, in_channels]` uint8/uint16, RGB channel order.

    Grayscale is repeated to fill 3 channels; an RGB image whose channels are
    all equal becomes grayscale; RGBA drops alpha. Anything else that does not
    fit `in_channels` is an error naming the file.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(
            f"{path}: cannot be read as an image (unreadable, truncated or not an image)"
        )
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: pixel type {image.dtype} unsupported; expected 8 or 16 bit")
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels == 4 and in_channels == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif channels == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    channels = image.shape[2]
    if channels == in_channels:
        return image
    if channels == 1 and in_channels == 3:
        return np.repeat(image, 3, axis=2)
    if channels == 3 and in_channels == 1 and _channels_equal(image):
        return image[:, :, :1]
    raise ValueError(
        f"{path}: image has {channels} channel(s) but data.in_channels={in_channels}; "
        f"set data.in_channels={channels} or convert the image"
    )


def read_mask(path: str | Path) -> np.ndarray:
    """Read a single-channel mask `[H, W]` (an RGB file with equal channels is accepted)."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ValueError(
            f"{path}: cannot be read as a mask (unreadable, truncated or not an image)"
        )
    if mask.ndim == 3:
        if mask.shape[2] in (3, 4) and _channels_equal(mask[:, :, :3]):
            mask = mask[:, :, 0]
        else:
            raise ValueError(
                f"{path}: mask has {mask.shape[2]} differing colour channels; masks must be "
                "single-channel class-value images (e.g. 0/255 or 0..K-1)"
            )
    return mask


def _channels_equal(image: np.ndarray) -> bool:
    return bool((image[:, :, :1] == image).all())


class SegDataset(Dataset):
    """Image/mask pairs -> `{"image": float32 [C, H, W], "mask": int64 [H, W], "name": str}`.

    Args:
        pairs: (image path, mask path) pairs.
        encoding: how mask pixel values map to class indices.
        in_channels: channels the net expects.
        mean, std: normalisation after scaling to [0, 1].
        transform: albumentations pipeline on the uint8 image and index mask, or None.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        encoding: MaskEncoding,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        transform: A.Compose | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.encoding = encoding
        self.in_channels = in_channels
        self.mean, self.std = mean, std
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The image `[H, W, C]` and class-index mask `[H, W]` (uint8) as on disk."""
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path, self.in_channels)
        indices = self.encoding.encode(read_mask(mask_path), mask_path)
        if image.shape[:2] != indices.shape:
            raise ValueError(
                f"{mask_path}: mask is {indices.shape[1]}x{indices.shape[0]} but its image "
                f"{image_path} is {image.shape[1]}x{image.shape[0]} (width x height); "
                "masks must match their image's size"
            )
        return image, indices

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Sample `key`: an index, or `(index, seed)` to fix the augmentation's randomness."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, indices = self.load(index)
        if self.transform is not None:
            # albumentations draws from generators of its own, seeded from the OS unless
            # set: seed them per sample (SeededShuffleSampler), else from torch's RNG.
            if seed is None:
                seed = int(torch.randint(2**31 - 1, ()).item())
            self.transform.set_random_seed(seed)
            out = self.transform(image=image, mask=indices)
            image, indices = out["image"], out["mask"]
        return {
            "image": normalize(image, self.mean, self.std),
            "mask": mask_to_tensor(indices),
            "name": self.pairs[index][0].name,
        }


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
