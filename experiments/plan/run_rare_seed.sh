#!/usr/bin/env bash
# Part 2, a second seed of the two closest ways (seed=7 changes the weights, the patches and
# the augmentation; the split stays: data.split_seed is pinned to the first run's 42).
set -euo pipefail
root=outputs/plan_data/multiclass
for way in plan no_oversampling; do
  extra=""; [ "$way" = no_oversampling ] && extra="data.foreground_crop=0"
  rm -rf "outputs/plan/rare_${way}_seed7"
  python -m unet_seg.train data=auto data.root=$root $extra seed=7 data.split_seed=42 \
    hydra.run.dir=outputs/plan/rare_${way}_seed7 > "outputs/plan/rare_${way}_seed7.log" 2>&1 \
    || echo "$way: FAILED, see outputs/plan/rare_${way}_seed7.log"
done
python experiments/plan/summarize.py --rare rare_plan_seed7 rare_no_oversampling_seed7
