"""Pruned UNet++ on a pretrained-encoder backbone (`arch=unetpp_encoder`): the parameters and
the forward speed of each pruning level, the encoder run only to stride 2**L.

    python experiments/pruned_unetpp/encoder_levels.py [--encoder resnet34] [--size 512]
        [--repeats 10] [--threads 2] [--device cpu]

Architecture only: random weights, eval mode, one image of `--size` x `--size`, 3 channels,
2 classes, base width 16 (the config's). Level L's output is exactly head L of the full net
(tests/test_unetpp_encoder.py), so what a level scores is a question for a trained run
(`run.py`); this measures what it costs. Speed: the median of `--repeats` timed forward
passes after two warm-up passes, float32. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from unet_seg.models.registry import build_net

log = logging.getLogger("encoder_levels")


def images_per_second(net: torch.nn.Module, x: torch.Tensor, level: int | None, repeats: int):
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            start = time.perf_counter()
            net(x, level=level)
            if x.is_cuda:
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    arch = {"name": "unetpp_encoder", "in_channels": 3, "num_classes": 2,
            "encoder": args.encoder, "base_channels": 16, "deep_supervision": True}  # fmt: skip
    net = build_net(arch).eval().to(args.device)
    x = torch.randn(1, 3, args.size, args.size, device=args.device)
    full_speed = images_per_second(net, x, None, args.repeats)
    full_params = net.parameters_at_level(net.levels[-1])
    encoder = sum(p.numel() for p in net.encoder.parameters())
    lines = [f"unetpp_encoder {args.encoder}, {args.size}x{args.size}, batch 1, float32, "
          f"{args.device}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; "
          f"full net (every head): {full_speed:.2f} images/s\n",
             "| level | encoder to stride | parameters used | of the full net | images/s | "
             "speed-up over the full net |", "|---|---|---|---|---|---|"]  # fmt: skip
    for level in net.levels:
        used = net.parameters_at_level(level)
        speed = images_per_second(net, x, level, args.repeats)
        lines.append(f"| L{level} | {2**level} | {used:,} | {used / full_params:.1%} | "
                     f"{speed:.2f} | {speed / full_speed:.1f}x |")  # fmt: skip
    lines.append(f"\nThe encoder holds {encoder:,} of the {full_params:,} parameters.")
    log.info("%s", "\n".join(lines))


if __name__ == "__main__":
    main()
