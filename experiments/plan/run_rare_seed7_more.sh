#!/usr/bin/env bash
# Part 2, seed 7, where the dots class stayed near 0 under the plan: does a longer run, or
# patches smaller than the 256x256 images (so that foreground oversampling can act at all),
# bring it back? (split pinned as in run_rare_seed.sh)
set -euo pipefail
root=outputs/plan_data/multiclass
run() {  # name, extra overrides...
  local name=$1; shift
  rm -rf "outputs/plan/$name"
  python -m unet_seg.train data=auto data.root=$root seed=7 data.split_seed=42 "$@" \
    hydra.run.dir=outputs/plan/$name > "outputs/plan/$name.log" 2>&1 \
    || echo "$name: FAILED, see outputs/plan/$name.log"
}
run rare_plan_seed7_crop128 data.crop_size=128
run rare_plan_seed7_40epochs trainer.max_epochs=40
python experiments/plan/summarize.py --rare rare_plan_seed7_crop128 rare_plan_seed7_40epochs
