#!/usr/bin/env bash
# The ISBI 2012 stack as volumes: 2-D, 2.5-D (3 and 5 slices) and 3-D, each for
# trainer.budget=15m, one after the other (run it on a quiet machine). See README.md.
set -euo pipefail
python experiments/volumes/prepare.py isbi
out=${OUT:-outputs/volumes/isbi}
budget=${BUDGET:-15m}
run() {  # name, overrides...
  local name=$1; shift
  [ -f "$out/$name/metrics.json" ] && { echo "$name: done"; return; }
  python -m unet_seg.train experiment=isbi_stack trainer.budget="$budget" run_dir="$out/$name" "$@"
}
run 2d
run slab3 data.dims=2.5 data.slab=3
run slab5 data.dims=2.5 data.slab=5
run 3d data.dims=3 arch=unet3d
python experiments/volumes/summarize.py "$out"
