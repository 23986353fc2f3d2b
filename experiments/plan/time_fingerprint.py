"""Part 3: time the one-pass fingerprint of a folder, cold and cached, and watch its memory.

    python experiments/plan/time_fingerprint.py outputs/plan_data/thousand

Prints the wall time of a cold pass (no cache), of a second call (read from the cache),
and the process's resident memory sampled every 0.2 s during the cold pass.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

from unet_seg.data.fingerprint import fingerprint


def resident_mib() -> float:
    """The process's resident memory now, in MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    root = Path(sys.argv[1])
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(resident_mib())
            time.sleep(0.2)

    with tempfile.TemporaryDirectory() as cache:
        watcher = threading.Thread(target=sample)
        watcher.start()
        start = time.perf_counter()
        fp = fingerprint(root, cache_dir=cache, progress=False)
        cold = time.perf_counter() - start
        done.set()
        watcher.join()
        start = time.perf_counter()
        fingerprint(root, cache_dir=cache, progress=False)
        cached = time.perf_counter() - start
    n = len(fp["images"])
    tenth = samples[len(samples) // 10] if samples else float("nan")
    sys.stdout.write(
        f"{n} pairs: cold pass {cold:.1f} s ({1e3 * cold / n:.1f} ms a pair), "
        f"cached {cached:.2f} s; resident memory {samples[0]:.0f} MiB at the start, "
        f"{tenth:.0f} MiB at 10%, "
        f"{max(samples):.0f} MiB at most, {samples[-1]:.0f} MiB at the end\n"
    )


if __name__ == "__main__":
    main()
