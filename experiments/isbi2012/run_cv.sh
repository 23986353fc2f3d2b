#!/usr/bin/env bash
# 5-fold cross-validation of experiment=isbi2012_cv, one run per fold, with each run's wall
# and CPU time (user + system, data workers included) appended to $out/times.txt.
# Two lanes on a 2-core machine, one torch thread each:
#   OMP_NUM_THREADS=1 FOLDS="0 1 2" bash experiments/isbi2012/run_cv.sh &
#   OMP_NUM_THREADS=1 FOLDS="3 4" bash experiments/isbi2012/run_cv.sh
#   python experiments/isbi2012/summarize.py outputs/isbi2012_cv_upright
# Extra overrides go in $EXTRA (e.g. EXTRA="trainer.budget=10m"); $OUT names the folder.
set -euo pipefail
out=${OUT:-outputs/isbi2012_cv_upright}
mkdir -p "$out"
for fold in ${FOLDS:-0 1 2 3 4}; do
  [ -f "$out/fold_$fold/metrics.json" ] && continue
  /usr/bin/time -f "fold_$fold %e %U %S" -a -o "$out/times.txt" \
    python -m unet_seg.train experiment=isbi2012_cv data.fold="$fold" ${EXTRA:-} \
    hydra.run.dir="$out/fold_$fold" > "$out/fold_$fold.log" 2>&1 \
    || echo "fold $fold: FAILED, see $out/fold_$fold.log"
done
