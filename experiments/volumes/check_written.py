"""Re-read what `predict` wrote beside its inputs: the same shape, affine and spacing?

python experiments/volumes/check_written.py INPUT_DIR PREDICTED_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from unet_seg.data.volume_cases import list_volumes, volume_stem
from unet_seg.data.volumes import read_volume


def compare(inputs: Path, predicted: Path) -> str:
    lines = ["| volume | shape in / out | max affine difference | spacing in / out (mm) | labels |",
             "|---|---|---|---|---|"]  # fmt: skip
    written = {volume_stem(p): p for p in list_volumes(predicted)}
    for path in list_volumes(inputs):
        image, meta = read_volume(path)
        labels, out = read_volume(written[volume_stem(path)])
        diff = float(np.abs(meta.affine_matrix() - out.affine_matrix()).max())
        spacing = "x".join(f"{s:.4g}" for s in meta.spacing)
        spacing_out = "x".join(f"{s:.4g}" for s in out.spacing)
        values = sorted(np.unique(labels).tolist())
        shapes = f"{list(image.shape[:3])} / {list(labels.shape)}"
        spacings = f"{spacing} / {spacing_out}"
        lines.append(f"| {path.name} | {shapes} | {diff:.1e} | {spacings} | {values} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(compare(Path(sys.argv[1]), Path(sys.argv[2])) + "\n")
