#!/usr/bin/env bash
# Part 2 again, after the plan learned to double the steps an epoch when a class is rare
# (under 1% of pixels): the plan alone, three seeds (the split pinned to seed 42's).
# Run from the repository root; makes the 40-image set first if it is missing.
set -euo pipefail
root=outputs/plan_data/multiclass
[ -d "$root/images" ] || python experiments/plan/make_multiclass.py --n 40 --out "$root"
runs=()
for seed in 7 3 42; do  # 7 first: the seed whose dots failed at 20 epochs before
  name=rare_planned_seed$seed
  rm -rf "outputs/plan/$name"
  python -m unet_seg.train data=auto data.root=$root seed=$seed data.split_seed=42 \
    hydra.run.dir=outputs/plan/$name > "outputs/plan/$name.log" 2>&1 \
    || echo "seed $seed: FAILED, see outputs/plan/$name.log"
  runs+=("$name")
done
python experiments/plan/summarize.py --rare "${runs[@]}"
