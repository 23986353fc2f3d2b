#!/usr/bin/env bash
# Part 2, seed 7, where the dots class stayed near 0 under the plan: does a longer run, or a
# larger share of foreground patches, bring it back? (split pinned as in run_rare_seed.sh)
set -euo pipefail
root=outputs/plan_data/multiclass
run() {  # name, extra overrides...
  local name=$1; shift
  rm -rf "outputs/plan/$name"
  python -m unet_seg.train data=auto data.root=$root seed=7 data.split_seed=42 "$@" \
    hydra.run.dir=outputs/plan/$name > "outputs/plan/$name.log" 2>&1 \
    || echo "$name: FAILED, see outputs/plan/$name.log"
}
run rare_plan_seed7_fg066 data.foreground_crop=0.66
run rare_plan_seed7_40epochs trainer.max_epochs=40
python experiments/plan/summarize.py --rare rare_plan_seed7_fg066 rare_plan_seed7_40epochs
