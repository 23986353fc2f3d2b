#!/usr/bin/env bash
# Recipe ablations on the held-out fold 4 (slices 24..29), each a change to
# experiment=isbi2012_cv (8 epochs, 384 steps of batch 4, U-Net 16 base channels), scored with
# the last weights at full size. Run from the repository root; results in
# outputs/isbi2012_ablations/<name>/metrics.json, summarised by summarize_ablations.py.
set -euo pipefail
out=outputs/isbi2012_ablations
mkdir -p $out
declare -A arms=(
  [baseline]=""
  [elastic]="data.augment.elastic.p=0.5"
  [ema]="callbacks.ema.decay=0.99"
  [sgd_poly]="optimizer=sgd scheduler=poly"   # nnU-Net: SGD, Nesterov momentum 0.99, poly decay
)
for arm in ${ARMS:-elastic ema baseline sgd_poly}; do
  [ -f "$out/$arm/metrics.json" ] && continue
  start=$(date +%s)
  python -m unet_seg.train experiment=isbi2012_cv data.fold=4 ${arms[$arm]} \
    hydra.run.dir=$out/$arm > "$out/$arm.log" 2>&1 || { echo "$arm: FAILED, see $out/$arm.log"; continue; }
  echo "$arm $(( $(date +%s) - start ))" >> $out/wall_seconds.txt
done
