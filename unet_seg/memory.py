"""What this process has taken from the machine's memory, for the logs of long commands."""

from __future__ import annotations


def peak_memory() -> str:
    """This process's peak resident memory so far, for the log: Linux's VmHWM, the high-water
    mark of this program's own memory (`ru_maxrss` would also count a parent's memory that
    a `subprocess` child shares between its fork and exec); `ru_maxrss` where there is no
    /proc."""
    try:
        with open("/proc/self/status") as status:
            kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return f"peak memory (RSS) {kib / 2**20:.2f} GiB"
