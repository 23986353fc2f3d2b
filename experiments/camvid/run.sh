#!/usr/bin/env bash
# CamVid side by side (issue 25): unet-seg's plan and the MONAI peer (peer.py) at the same
# wall-clock budget, both scored by score.py on the 233 test images (void ignored).
#
#   experiments/camvid/run.sh                    # on a quiet machine: one after the other,
#                                                # ours 15m, peer 15m, ours 60m, peer 60m
#   experiments/camvid/run.sh sequential 15m     # the same for the budgets given
#   experiments/camvid/run.sh pinned 60m [...]   # ours on core 0 and the peer on core 1 at
#                                                # once, one thread each, no loader workers
#   python experiments/camvid/summarize.py       # the table from OUT/*/score.json
#
# Run from the repository root. Environment: DATA (prepare.py's folder, default
# data/camvid), OUT (default outputs/camvid), PYTHON (default python), OURS_EXTRA (more
# unet-seg overrides for every run of ours, e.g. "data.augment.vflip=0").
# Each run writes OUT/<run>/ (ours: the unet-seg run directory) with test_masks/ (or
# masks/) and score.json; a run whose score.json exists is skipped (delete it to redo).
set -euo pipefail

DATA=${DATA:-data/camvid}
OUT=${OUT:-outputs/camvid}
PYTHON=${PYTHON:-python}
OURS_EXTRA=${OURS_EXTRA:-}
HERE=experiments/camvid
CLASSES="[sky,building,pole,road,pavement,tree,sign,fence,car,pedestrian,bicyclist]"

[[ -f $DATA/split.json ]] || { echo "$DATA/split.json not found: run $HERE/prepare.py first, or set DATA" >&2; exit 1; }
[[ -f $HERE/score.py ]] || { echo "run from the repository root" >&2; exit 1; }

# the test images as one folder (links), for unet_seg.predict's input=
"$PYTHON" - "$DATA" "$OUT/test_images" <<'PY'
import json, os, sys
data, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
for name in json.load(open(os.path.join(data, "split.json")))["test"]:
    link = os.path.join(out, name)
    if not os.path.lexists(link):
        os.symlink(os.path.abspath(os.path.join(data, "images", name)), link)
PY

# ours BUDGET RUN [PIN...]: train with the plan, predict the test images from the checkpoint
# the run's own test evaluation used (metrics.json), score. PIN: a prefix such as
# "taskset -c 0" and the one-thread overrides.
ours() {
    local budget=$1 run=$2; shift 2
    local pin=() overrides=() threads=auto
    if [[ ${1:-} == pinned ]]; then
        pin=(taskset -c "$2" env OMP_NUM_THREADS=1)
        overrides=(trainer.threads=1 data.num_workers=0)
        threads=1
    fi
    local dir=$OUT/$run
    [[ -f $dir/score.json ]] && { echo "skip $run: $dir/score.json exists"; return; }
    echo "== $run: unet-seg data=auto trainer.budget=$budget ($(date -u +%H:%M:%S))"
    # shellcheck disable=SC2086
    "${pin[@]}" "$PYTHON" -m unet_seg.train data=auto data.root="$DATA" data.ignore_value=11 \
        data.split_file="$DATA/split.json" "data.class_names=$CLASSES" \
        trainer.budget="$budget" "${overrides[@]}" $OURS_EXTRA hydra.run.dir="$dir"
    local ckpt
    ckpt=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['checkpoint'])" "$dir/metrics.json")
    "${pin[@]}" "$PYTHON" -m unet_seg.predict ckpt="$ckpt" input="$OUT/test_images" \
        output="$dir/test_masks" threads=$threads hydra.run.dir="$dir/predict"
    "$PYTHON" $HERE/score.py --pred "$dir/test_masks" --data "$DATA" --out "$dir/score.json" \
        --name "unet-seg $budget${pin:+ (1 core)}" --run-dir "$dir" \
        --info budget="$budget" side=ours threads=$threads
}

# peer BUDGET RUN [pinned CORE]: the MONAI peer, trained, predicted and scored by peer.py.
peer() {
    local budget=$1 run=$2; shift 2
    local pin=() threads=()
    if [[ ${1:-} == pinned ]]; then
        pin=(taskset -c "$2" env OMP_NUM_THREADS=1)
        threads=(--threads 1)
    fi
    local dir=$OUT/$run
    [[ -f $dir/score.json ]] && { echo "skip $run: $dir/score.json exists"; return; }
    echo "== $run: MONAI peer --budget $budget ($(date -u +%H:%M:%S))"
    "${pin[@]}" "$PYTHON" $HERE/peer.py --budget "$budget" --data "$DATA" --out "$dir" \
        "${threads[@]}" --name "MONAI peer $budget${pin:+ (1 core)}"
}

mode=${1:-sequential}
[[ $# -gt 0 ]] && shift
case $mode in
    sequential)  # on a quiet machine: nothing else runs, each side has every core in turn
        budgets=("$@"); [[ ${#budgets[@]} -eq 0 ]] && budgets=(15m 60m)
        for budget in "${budgets[@]}"; do
            ours "$budget" "ours_$budget"
            peer "$budget" "peer_$budget"
        done ;;
    pinned)  # side by side at once, one core each: the same CPU for both, all the time
        [[ $# -gt 0 ]] || { echo "pinned needs a budget, e.g. $0 pinned 60m" >&2; exit 1; }
        for budget in "$@"; do
            ours "$budget" "ours_${budget}_1core" pinned 0 &
            ours_pid=$!
            peer "$budget" "peer_${budget}_1core" pinned 1 &
            peer_pid=$!
            wait "$ours_pid"
            wait "$peer_pid"
        done ;;
    *) echo "usage: $0 [sequential|pinned] [BUDGET ...]" >&2; exit 1 ;;
esac
"$PYTHON" $HERE/summarize.py --out "$OUT"
