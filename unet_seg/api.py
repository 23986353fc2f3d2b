"""The Python API: `from unet_seg import load_model`.

    model = load_model("best.ckpt", device="auto", tile_size=512, tta="d4")
    mask = model.predict(image)          # [H, W] in the dataset's mask values (e.g. 0/255)
    labels = model.labels(image)         # [H, W] class indices 0..K-1
    probs = model.probabilities(image)   # [K, H, W] float32
    objects = model.instances(image)     # [H, W] int32 objects: 0 = background, 1..N

`image` is a NumPy `[H, W]` or `[H, W, C]` uint8/uint16 array in RGB order, of any size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from unet_seg.inference import Predictor, load_for_inference
from unet_seg.postprocess import PostProcess


def load_model(
    ckpt: str | Path,
    device: str = "auto",
    mode: str = "tile",
    tile_size: int = 512,
    overlap: float = 0.25,
    tta: str = "none",
    level: int | None = None,
    batch_size: int = 4,
    size: int | Sequence[int] | None = None,
    postprocess: PostProcess | Mapping | None = None,
    halo: int = 0,
) -> Predictor:
    """Load a checkpoint (nothing else needed) as a `Predictor` ready for NumPy images.

    Args:
        ckpt: a `.ckpt` written by `python -m unet_seg.train`.
        device: `auto` (the GPU when there is one), `cpu`, `cuda`, `cuda:1`, ...
        mode: `tile` (sliding window at native resolution), `whole` (one pass at native
            resolution) or `resize` (to `size` and back).
        tile_size, overlap: tile side in pixels and the fraction neighbours share.
        tta: `none`, `flips` (4 passes) or `d4` (8 flips and rotations).
        level: UNet++ pruning level 1..4 (None: the full net).
        batch_size: tiles (or same-size images) per forward pass.
        size: `resize` mode's input size; default: the training crop size the
            checkpoint's data contract records.
        postprocess: a `PostProcess` or its fields as a dict
            (`min_size`, `fill_holes`, `keep_largest`).
        halo: pixels of mirrored context around each tile (`Predictor`).
    """
    module = load_for_inference(ckpt, device, level)
    if isinstance(postprocess, Mapping):
        postprocess = PostProcess(**postprocess)
    return Predictor(
        module, mode, tile_size, overlap, tta, batch_size, size, postprocess, halo=halo
    )


def load_model_from_config(ckpt: str | Path, cfg: Mapping) -> Predictor:
    """`load_model` with the inference keys of an evaluate/predict config (absent: defaults)."""
    keys = ("device", "mode", "tile_size", "overlap", "tta", "level", "batch_size", "size", "halo")
    kwargs = {k: cfg[k] for k in keys if cfg.get(k) is not None}
    if cfg.get("postprocess"):
        kwargs["postprocess"] = dict(cfg["postprocess"])
    return load_model(ckpt, **kwargs)
