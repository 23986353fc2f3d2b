"""`python -m unet_seg.check_data`: what it reports about good and bad folders."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_train, write_folder
from tests.forked import Forker
from unet_seg.check_data import check_data


def data_cfg(root: Path, output: Path, *extra: str):
    cfg = compose_train(["data=folder", f"data.root={root}", "data.in_channels=1",
                         "data.crop_size=32", *extra])  # fmt: skip
    return OmegaConf.create({"data": OmegaConf.to_container(cfg.data, resolve=True),
                             "output": str(output)})  # fmt: skip


def test_a_clean_folder(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", n=4)
    report = check_data(data_cfg(root, tmp_path / "r.json"))
    assert report["pairs"] == 4 and report["problems"] == []
    assert report["image_sizes"] == {"48x40": 4} and report["image_channels"] == {1: 4}
    assert report["suggested_mask_values"] == [0, 255]
    masks = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((root / "masks").iterdir())]
    fg = float(np.mean([m > 0 for m in masks]))
    assert report["class_pixel_share"]["foreground"] == pytest.approx(fg)
    w = report["suggested_class_weights"]
    assert w[1] / w[0] == pytest.approx((1 - fg) / fg)
    assert json.loads((tmp_path / "r.json").read_text())["pairs"] == 4


def test_a_messy_folder_names_every_problem(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", n=5)
    (root / "masks" / "img01.png").unlink()  # image without mask
    cv2.imwrite(str(root / "masks" / "orphan.png"), np.zeros((40, 48), np.uint8))
    (root / "images" / "readme.txt").write_text("notes")
    noisy = np.zeros((40, 48), np.uint8)
    noisy[5:21, 7:30] = 255
    (root / "masks" / "img02.png").unlink()
    cv2.imwrite(str(root / "masks" / "img02.jpg"), noisy, [cv2.IMWRITE_JPEG_QUALITY, 50])
    cv2.imwrite(str(root / "masks" / "img03.png"), np.zeros((10, 10), np.uint8))
    report = check_data(data_cfg(root, tmp_path / "r.json"))
    assert report["images_without_mask"] == ["img01.png"]
    assert report["masks_without_image"] == ["orphan.png"]
    assert report["ignored_files"] == ["readme.txt"]
    assert report["masks_jpeg_like"] == ["img02.jpg"]
    text = "\n".join(report["problems"])
    assert "img01.png: no mask" in text
    assert "img02.jpg: mask values" in text and "JPEG" in text
    assert "img03.png: mask is 10x10" in text
    assert report["suggested_mask_values"] is None or len(report["suggested_mask_values"]) > 2


def test_cli_exit_status(tmp_path: Path, forker: Forker) -> None:
    root = write_folder(tmp_path / "d", n=3)
    args = ["-m", "unet_seg.check_data", "data=folder", f"data.root={root}",
            "data.in_channels=1", "data.crop_size=32", f"output={tmp_path / 'r.json'}"]  # fmt: skip
    ok = forker.run(args, cwd=tmp_path, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "3 image/mask pairs" in ok.stdout + ok.stderr
    (root / "images" / "img00.png").write_bytes(b"broken")
    bad = forker.run(args, cwd=tmp_path, timeout=300)
    assert bad.returncode == 1 and "img00.png: cannot be read" in bad.stdout + bad.stderr


def test_a_refused_plan_and_missing_masks_are_one_clean_line(
    tmp_path: Path, forker: Forker
) -> None:
    """As train does: exit 1 with the message naming the file and the fix, no traceback,
    and no output directory left behind."""
    noisy = write_folder(tmp_path / "noisy", n=3)  # 40 values, each in pieces: no plan
    blocks = (np.arange(10)[:, None] * 12 + np.arange(12)[None, :]) % 40  # 4x4 px blocks
    for path in sorted((noisy / "masks").iterdir()):
        cv2.imwrite(str(path), np.kron(blocks, np.ones((4, 4))).astype(np.uint8))
    missing = write_folder(tmp_path / "missing", n=3)
    (missing / "masks" / "img01.png").unlink()
    cases = {noisy: "40 distinct values, too many for classes", missing: "have no mask in"}
    procs = {root: forker.popen(  # both at once
        ["-m", "unet_seg.check_data", f"data.root={root}", "paths.output_dir=out"],
        cwd=tmp_path, merge=True,
    ) for root in cases}  # fmt: skip
    for root, message in cases.items():
        output = procs[root].communicate(timeout=300)[0]
        assert procs[root].returncode == 1, output[-2000:]
        assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output
        assert message in output and str(root) in output
        assert not any(p.is_file() for p in (tmp_path / "out" / "check_data").rglob("*"))


def carvana_like(root: Path, one_bit: bool = False, n: int = 6) -> Path:
    """Carvana's layout: `images/<car>.jpg` (RGB JPEG), `masks/<car>_mask.gif` (palette GIF
    of indices 0/1, or a 1-bit GIF)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        car = np.zeros((40, 48), np.uint8)
        car[10 + i : 30, 8 : 36 - i] = 1
        rgb = np.stack([car * 180 + 30, car * 60 + 40, 200 - car * 100], axis=2)
        rgb = (rgb + rng.integers(0, 20, rgb.shape)).astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"car{i}_{i:02d}.jpg", quality=90)
        mask = Image.fromarray(car * 255).convert("1") if one_bit else Image.fromarray(car, "P")
        if not one_bit:
            mask.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        mask.save(root / "masks" / f"car{i}_{i:02d}_mask.gif")
    return root


@pytest.mark.parametrize("one_bit", [False, True])
def test_the_plan_finds_carvanas_mask_suffix_and_names_gifs(tmp_path: Path, one_bit) -> None:
    """`data=auto` alone on Carvana's layout: the suffix is found (and says what it saw), the
    GIF masks are reported as GIFs, and check_data says what to type if a guess is wrong."""
    from unet_seg.check_data import guesses
    from unet_seg.config import to_plain
    from unet_seg.data.plan import plan_data_config

    root = carvana_like(tmp_path / "cars", one_bit)
    data = to_plain(compose_train(["data=auto", f"data.root={root}"]).data)
    planned, record = plan_data_config(data)
    why = {k: v["why"] for k, v in record["plan"].items()}
    assert planned["mask_suffix"] == "_mask" and planned["in_channels"] == 3
    assert why["mask_suffix"] == "every one of 6 masks is named <image stem>_mask"
    assert planned["mask_format"] == "palette" and len(planned["mask_values"]) == 2
    assert "6 GIF" in why["mask_format"] and "PNG" not in why["mask_format"]
    assert {m["format"] for m in record["fingerprint"]["masks"]} == {"gif"}
    told = guesses(record)
    assert "data.mask_suffix=''" in told and "data.in_channels=1" in told
    assert "<image stem>_mask" in told and "data.mask_format" not in told  # palette: read
    # a stray file beside the masks: the suffix that gives every image a mask still wins
    extra = root / "masks" / "car0_00_mask_v1.gif"
    extra.write_bytes((root / "masks" / "car0_00_mask.gif").read_bytes())
    planned, record = plan_data_config(data)
    assert planned["mask_suffix"] == "_mask" and len(record["fingerprint"]["masks"]) == 6
    assert record["plan"]["mask_suffix"]["why"] == (
        "6 of 7 masks are named <image stem>_mask, one for each of the 6 images"
    )
    extra.unlink()
    # a folder whose masks are named like their images: no suffix, and it says so
    for path in (root / "masks").iterdir():
        path.rename(path.with_name(path.name.replace("_mask", "")))
    planned, record = plan_data_config(data)
    assert planned["mask_suffix"] == ""
    assert record["plan"]["mask_suffix"]["why"] == "every one of 6 masks is named like its image"
    assert "data.mask_suffix=SUFFIX" in guesses(record)
    # names that share no one suffix are paired by stem (and then refused by name)
    (root / "masks" / "car0_00.gif").rename(root / "masks" / "car0_00_m.gif")
    (root / "masks" / "car1_01.gif").rename(root / "masks" / "car1_01_mask.gif")
    with pytest.raises(FileNotFoundError, match="have no mask"):
        plan_data_config(data)


def test_the_printed_train_command_plans_the_same_when_pasted(
    tmp_path: Path, forker: Forker
) -> None:
    """check_data's 'train with' line keeps every data.* key typed (Carvana's
    data.mask_suffix=_mask among them): composed as train would, it plans the same."""
    import shlex

    from unet_seg.config import to_plain
    from unet_seg.data.plan import PLANNED_KEYS, plan_data_config

    root = carvana_like(tmp_path / "cars")
    proc = forker.run(
        ["-m", "unet_seg.check_data", f"data.root={root}",
         "data.mask_suffix=_mask", "data.val_fraction=0.5", "data.group_regex='^(car[0-9])_'",
         f"output={tmp_path / 'r.json'}"],
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "in_channels=3: 3 channel(s): of 6 images, 6 RGB" in output  # a guess, what it saw
    assert "if that is wrong (the images are grey): data.in_channels=1" in output
    line = output.split("train with:\n", 1)[1].splitlines()[0].strip()
    args = shlex.split(line)
    assert args[:4] == ["python", "-m", "unet_seg.train", "data=auto"]
    for typed in ("data.mask_suffix=_mask", "data.val_fraction=0.5",
                  "data.group_regex='^(car[0-9])_'"):  # fmt: skip
        assert args.count(typed) == 1
    pasted = to_plain(compose_train(args[3:]).data)
    planned, _ = plan_data_config(pasted)
    reported = json.loads((tmp_path / "r.json").read_text())["plan"]
    for key in PLANNED_KEYS:
        want = reported["plan"][key]["value"] if key in reported["plan"] else reported["given"][key]
        assert planned[key] == want, key
    assert pasted["val_fraction"] == 0.5 and pasted["group_regex"] == "^(car[0-9])_"
    assert reported["epochs"]["value"] == "at train time"  # check_data has no trainer
