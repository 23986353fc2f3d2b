#!/usr/bin/env bash
# Part 1: the same single command on each ISBI 2012 storage variant; nothing else typed.
# Run from the repository root after make_isbi_variants.py. Prints one line per variant.
set -euo pipefail
variants=${*:-isbi_8bit isbi_16bit_1pct isbi_grey_alpha isbi_index_masks}
for v in $variants; do
  rm -rf "outputs/plan/$v"
  python -m unet_seg.train data=auto data.root=outputs/plan_data/$v hydra.run.dir=outputs/plan/$v \
    > "outputs/plan/$v.log" 2>&1 || { echo "$v: FAILED, see outputs/plan/$v.log"; continue; }
done
python experiments/plan/summarize.py $variants
