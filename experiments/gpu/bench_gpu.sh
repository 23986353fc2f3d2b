#!/usr/bin/env bash
# One GPU, one command: training images/s, GFLOP/s, fraction of peak and peak memory
# (torch.cuda.max_memory_allocated) of U-Net at the paper's widths (base 64), 512 px, batch 8,
# for 32-true (TF32 matmuls: trainer.matmul_precision=high), 16-mixed and bf16-mixed, each
# with and without channels-last and torch.compile (12 cases; compiling 6 of them dominates
# the time, meant to fit in 10 minutes). Refuses with a message, exit 1, without CUDA.
# Usage: bash experiments/gpu/bench_gpu.sh [OUT_JSON]   (from the repository root)
# peak_tflops: dense tensor-core figures of an H100/H200 SXM data sheet (TF32 495, FP16 and
# BF16 989); give your GPU's for another card.
set -euo pipefail
out=${1:-outputs/benchmark/gpu_precision.json}
exec timeout 600 python -m unet_seg.benchmark device=cuda sections=[precision] size=512 \
    batch=8 base_channels=null precision_sweep.warmup=3 precision_sweep.steps=10 \
    precision_sweep.repeats=2 \
    "precision_sweep.peak_tflops={32-true: 495, 16-mixed: 989, bf16-mixed: 989}" \
    output="$out"
