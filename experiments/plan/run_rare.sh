#!/usr/bin/env bash
# Part 2: rare classes. The same folder, three ways of handling class imbalance; everything
# else planned. Run from the repository root after make_multiclass.py (--n 40).
set -euo pipefail
root=outputs/plan_data/multiclass
declare -A ways=(
  [plan]=""                                                     # the plan: nothing typed
  [no_oversampling]="data.foreground_crop=0"                    # uniform patches, plain CE + Dice
  [median_frequency]="data.foreground_crop=0 loss.class_weights=auto"  # weighted CE + Dice
)
for way in plan no_oversampling median_frequency; do
  rm -rf "outputs/plan/rare_$way"
  python -m unet_seg.train data=auto data.root=$root ${ways[$way]} \
    hydra.run.dir=outputs/plan/rare_$way > "outputs/plan/rare_$way.log" 2>&1 \
    || echo "$way: FAILED, see outputs/plan/rare_$way.log"
done
python experiments/plan/summarize.py --rare rare_plan rare_no_oversampling rare_median_frequency
