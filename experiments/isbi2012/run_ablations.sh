#!/usr/bin/env bash
# Recipe ablations on the held-out fold 4 (slices 24..29), each a change to
# experiment=isbi2012_cv (8 epochs, 384 steps of batch 4, U-Net 16 base channels), scored with
# the last weights at full size. Run from the repository root; results in
# outputs/isbi2012_ablations/<name>/metrics.json, summarised by summarize_ablations.py.
# Each run's wall time and CPU time (user + system, data workers included) go to
# outputs/isbi2012_ablations/times.txt.
set -euo pipefail
out=outputs/isbi2012_ablations
mkdir -p $out
# the arms change the default augmentation set (every flip and turn, warps, brightness);
# today's experiment=isbi2012_cv is the upright arm
base="data.augment.vflip=0.5 data.augment.rotate90=0.5"
declare -A arms=(
  [baseline]="$base"
  [seed1]="$base seed=1"                                 # the baseline again, another seed
  [elastic]="$base data.augment.elastic.p=0.5"
  [ema]="$base callbacks.ema.decay=0.99"
  [sgd_poly]="$base optimizer=sgd scheduler=poly"        # nnU-Net: SGD, Nesterov momentum 0.99, poly decay
  [ce]="$base loss=ce"                                   # cross-entropy alone, no Dice term
  [weightmap]="$base loss=weighted_ce_dice data.instances_dir=$PWD/outputs/isbi2012_cells"  # the U-Net paper's
  [wide32]="$base arch.base_channels=32"                 # twice the width, 4x the FLOPs
  [d4only]="$base data.augment.affine.p=0 data.augment.brightness_contrast.p=0"   # flips, quarter turns
  [upright]=""                                           # no vertical flip, no quarter turn
  [noaug]="data.augment.hflip=0 data.augment.affine.p=0 data.augment.brightness_contrast.p=0"
)
list=${ARMS:-baseline seed1 d4only upright noaug elastic ema sgd_poly ce weightmap wide32}
if [[ " $list " == *" weightmap "* ]] && [ ! -d outputs/isbi2012_cells ]; then
  python experiments/isbi2012/cell_instances.py outputs/isbi2012_cells
fi
for arm in $list; do
  [ -f "$out/$arm/metrics.json" ] && continue
  /usr/bin/time -f "$arm %e %U %S" -a -o $out/times.txt \
    python -m unet_seg.train experiment=isbi2012_cv data.fold=4 ${arms[$arm]} \
    hydra.run.dir=$out/$arm > "$out/$arm.log" 2>&1 || { echo "$arm: FAILED, see $out/$arm.log"; continue; }
done
