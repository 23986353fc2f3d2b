#!/usr/bin/env bash
# Training speed of the default run (one epoch, 18 steps) at 1 and 2 torch threads and with
# trainer.threads=auto, on a quiet machine and with a second busy process.
# Usage: bash experiments/threads/run.sh [OUT_DIR]   (from the repository root)
set -euo pipefail
out=${1:-outputs/threads}
mkdir -p "$out"
unset OMP_NUM_THREADS  # trainer.threads decides
one() {  # name, threads
  local log="$out/$1.log"
  local start=$SECONDS
  python -m unet_seg.train trainer.max_epochs=1 final_eval=false "trainer.threads=$2" \
    "paths.output_dir=$out" > "$log" 2>&1
  local wall=$((SECONDS - start))
  printf '%-22s %-62s %9s  wall %3d s  load %s\n' "$1" \
    "$(grep -o 'CPU thread(s) (.*' "$log" | head -1)" \
    "$(grep -o '[0-9.]*it/s' "$log" | tail -1)" "$wall" "$(cut -d' ' -f1 /proc/loadavg)"
}
for t in 1 2 auto; do one "quiet_threads_$t" "$t"; done
python -c "while True: pass" &
busy=$!
trap 'kill $busy' EXIT
sleep 2
for t in 1 2 auto; do one "busy_threads_$t" "$t"; done
