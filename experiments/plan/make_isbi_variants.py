"""Four storage variants of the 30 ISBI 2012 slices, for the data-plan invariance check.

The same pixels, stored four ways, so that `data=auto` can be checked to plan (and train)
them alike:

- `isbi_8bit/`: the original PNGs, copied byte for byte (the reference);
- `isbi_16bit_1pct/`: images as 16-bit TIFF using about 1% of the 16-bit range,
  `round(x * 655 / 255)` (values 0..655); masks unchanged;
- `isbi_grey_alpha/`: images as grey + alpha PNG (mode LA, alpha 255 everywhere); masks
  unchanged;
- `isbi_index_masks/`: images unchanged; masks as class indices (0 = membrane, 1 = cell).

Each variant is read back after writing and checked (shape, dtype, value range, and the
pixels against the originals).

    python experiments/plan/make_isbi_variants.py --source ../shared/data/isbi2012 \
        --out outputs/plan_data
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

SIZE = (512, 512)
HIGH_16 = 655  # top of the 16-bit variant: 655 / 65535 is about 1% of the range
VARIANTS = ("isbi_8bit", "isbi_16bit_1pct", "isbi_grey_alpha", "isbi_index_masks")


def read_png(path: Path) -> np.ndarray:
    """The pixels of a PNG, as stored (no mode conversion)."""
    with Image.open(path) as im:
        return np.asarray(im)


def png_mode(path: Path) -> str:
    """The PIL mode of an image file (e.g. "L", "LA")."""
    with Image.open(path) as im:
        return im.mode


def load_source(source: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stem -> (image, mask) of the source slices, checked against the dataset's README."""
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for image_path in sorted((source / "images").glob("*.png"), key=lambda p: int(p.stem)):
        mask_path = source / "masks" / image_path.name
        image, mask = read_png(image_path), read_png(mask_path)
        if image.shape != SIZE or image.dtype != np.uint8:
            raise ValueError(f"{image_path}: expected 8-bit grey {SIZE}, got {image.shape}")
        if mask.shape != SIZE or not set(np.unique(mask).tolist()) <= {0, 255}:
            raise ValueError(f"{mask_path}: expected a 0/255 mask of {SIZE}")
        pairs[image_path.stem] = (image, mask)
    if len(pairs) != 30:
        raise ValueError(f"{source}: expected 30 slices, found {len(pairs)}")
    return pairs


def to_16bit(image: np.ndarray) -> np.ndarray:
    """`round(x * 655 / 255)` as uint16 (no exact halves occur, so rounding is unambiguous)."""
    return np.rint(image.astype(np.float64) * HIGH_16 / 255).astype(np.uint16)


def to_grey_alpha(image: np.ndarray) -> np.ndarray:
    """A (H, W, 2) grey + fully opaque alpha array."""
    return np.stack([image, np.full_like(image, 255)], axis=-1)


def to_index_mask(mask: np.ndarray) -> np.ndarray:
    """0/255 -> class indices 0 (membrane) / 1 (cell)."""
    return (mask // 255).astype(np.uint8)


def write_variants(source: Path, out: Path) -> None:
    """Write the four variant folders under `out`."""
    for variant in VARIANTS:
        (out / variant / "images").mkdir(parents=True, exist_ok=True)
        (out / variant / "masks").mkdir(parents=True, exist_ok=True)
    for stem, (image, mask) in load_source(source).items():
        src_image = source / "images" / f"{stem}.png"
        src_mask = source / "masks" / f"{stem}.png"
        shutil.copyfile(src_image, out / "isbi_8bit" / "images" / f"{stem}.png")
        shutil.copyfile(src_mask, out / "isbi_8bit" / "masks" / f"{stem}.png")
        tifffile.imwrite(out / "isbi_16bit_1pct" / "images" / f"{stem}.tif", to_16bit(image))
        shutil.copyfile(src_mask, out / "isbi_16bit_1pct" / "masks" / f"{stem}.png")
        Image.fromarray(to_grey_alpha(image)).save(
            out / "isbi_grey_alpha" / "images" / f"{stem}.png"
        )
        shutil.copyfile(src_mask, out / "isbi_grey_alpha" / "masks" / f"{stem}.png")
        shutil.copyfile(src_image, out / "isbi_index_masks" / "images" / f"{stem}.png")
        Image.fromarray(to_index_mask(mask)).save(
            out / "isbi_index_masks" / "masks" / f"{stem}.png"
        )


def read_variant(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """Stem -> (image, mask, image mode or "tiff") as read back from a variant folder."""
    read: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    for image_path in sorted((folder / "images").iterdir()):
        if image_path.suffix == ".tif":
            image, mode = tifffile.imread(image_path), "tiff"
        else:
            image, mode = read_png(image_path), png_mode(image_path)
        read[image_path.stem] = (image, read_png(folder / "masks" / f"{image_path.stem}.png"), mode)
    return read


def verify_variant(
    folder: Path,
    reference: dict[str, tuple[np.ndarray, np.ndarray]],
    expect: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, str]],
) -> str:
    """Check every pair of `folder` equals `expect(original image, original mask)`.

    `expect` gives the expected (image, mask, image mode). Returns a one-line summary.
    """
    read = read_variant(folder)
    assert sorted(read) == sorted(reference), f"{folder}: stems differ from the source"
    for stem, (image, mask, mode) in read.items():
        want_image, want_mask, want_mode = expect(*reference[stem])
        assert mode == want_mode, f"{folder}/{stem}: mode {mode}, expected {want_mode}"
        assert image.dtype == want_image.dtype, f"{folder}/{stem}: image dtype {image.dtype}"
        assert image.shape == want_image.shape, f"{folder}/{stem}: image shape {image.shape}"
        assert np.array_equal(image, want_image), f"{folder}/{stem}: image pixels differ"
        assert mask.dtype == want_mask.dtype and mask.shape == want_mask.shape
        assert np.array_equal(mask, want_mask), f"{folder}/{stem}: mask pixels differ"
    images = np.stack([v[0] for v in read.values()])
    masks = np.stack([v[1] for v in read.values()])
    mode = next(iter(read.values()))[2]
    grey = images[..., 0] if images.ndim == 4 else images
    alpha = f", alpha {sorted(np.unique(images[..., 1]).tolist())}" if images.ndim == 4 else ""
    return (
        f"{folder.name}: {len(read)} pairs; images {mode} {images.dtype} "
        f"{tuple(images.shape[1:])} grey {grey.min()}..{grey.max()}{alpha}; "
        f"masks {masks.dtype} values {sorted(np.unique(masks).tolist())}"
    )


def verify_all(source: Path, out: Path) -> list[str]:
    """Verify the four variants against the source; one summary line per variant."""
    reference = load_source(source)
    expectations: dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, str]]]
    expectations = {
        "isbi_8bit": lambda x, m: (x, m, "L"),
        "isbi_16bit_1pct": lambda x, m: (to_16bit(x), m, "tiff"),
        "isbi_grey_alpha": lambda x, m: (to_grey_alpha(x), m, "LA"),
        "isbi_index_masks": lambda x, m: (x, to_index_mask(m), "L"),
    }
    lines = [verify_variant(out / name, reference, expect) for name, expect in expectations.items()]
    high = max(int(to_16bit(x).max()) for x, _ in reference.values())
    assert high <= HIGH_16, f"16-bit variant exceeds {HIGH_16}"
    for stem in reference:  # the copies are byte-identical to the source files
        for sub in ("images", "masks"):
            copied = (out / "isbi_8bit" / sub / f"{stem}.png").read_bytes()
            assert copied == (source / sub / f"{stem}.png").read_bytes()
    return lines


def main() -> None:
    """Parse arguments, write the variants, read them back and print one line per variant."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/isbi2012"))
    parser.add_argument("--out", type=Path, default=Path("outputs/plan_data"))
    args = parser.parse_args()
    write_variants(args.source, args.out)
    for line in verify_all(args.source, args.out):
        sys.stdout.write(line + "\n")


if __name__ == "__main__":
    main()
