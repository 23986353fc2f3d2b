#!/usr/bin/env bash
# Every arm of the sparse-label study, one after another, then the summary.
# Run from the repository root after make_sparse.py:
#   OMP_NUM_THREADS=1 EPOCHS=6 bash experiments/sparse_labels/run.sh [full p50 p10 p02]
# Each arm trains fold 0 of conf/experiment/isbi2012_cv.yaml on its masks for EPOCHS epochs
# (the same budget for all), unlabelled pixels marked by data.ignore_value=128.
set -euo pipefail
epochs=${EPOCHS:-6}
arms=${*:-full p50 p10 p02}
mkdir -p outputs/sparse_labels/runs
for arm in $arms; do
  dir=outputs/sparse_labels/runs/$arm
  rm -rf "$dir"
  python -m unet_seg.train experiment=isbi2012_cv data.root=outputs/sparse_labels/data/$arm \
    data.ignore_value=128 data.num_workers=0 trainer.max_epochs="$epochs" \
    hydra.run.dir="$dir" > "$dir.log" 2>&1 || { echo "$arm: FAILED, see $dir.log"; continue; }
  echo "$arm: done"
done
python experiments/sparse_labels/summarize.py outputs/sparse_labels/runs
