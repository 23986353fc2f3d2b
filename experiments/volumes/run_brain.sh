#!/usr/bin/env bash
# A real MRI pair end to end: train on brain1, score and predict brain2, re-read what was
# written. PYRADIOMICS_DATA is the data/ folder of a pyradiomics checkout (NRRD files; the
# `volumes` extra reads them: pip install -e ".[volumes]"). See README.md.
set -euo pipefail
python experiments/volumes/prepare.py brain --src "${PYRADIOMICS_DATA:?set it to pyradiomics/data}"
out=${OUT:-outputs/volumes/brain}
python -m unet_seg.train data=auto data.root=outputs/data/brain_mri \
    data.split_file=outputs/data/brain_mri/split.json trainer.budget="${BUDGET:-5m}" \
    final_ckpt=last run_dir="$out"
python -m unet_seg.evaluate run_dir="$out" ckpt="$out/checkpoints/last.ckpt" split=test worst=1
python -m unet_seg.predict ckpt="$out/checkpoints/last.ckpt" input=outputs/data/brain_mri/images \
    output="$out/predicted"
python experiments/volumes/check_written.py outputs/data/brain_mri/images "$out/predicted"
