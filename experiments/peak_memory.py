"""Run a command and report its wall time and the peak memory of its whole process tree.

Ray workers are grandchildren of the driver (driver -> raylet -> workers), so the peak of
the driver alone under-reports a simulation; this sums RSS over every descendant.

    python experiments/peak_memory.py -- python -m fedconv.simulate
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil


def tree_memory(root: psutil.Process) -> tuple[int, int]:
    """(RSS, PSS) summed over the tree; PSS splits shared pages (torch, mmapped data) fairly."""
    rss = pss = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return rss, pss


def main() -> int:
    argv = sys.argv[1:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print(__doc__)
        return 2
    t0 = time.perf_counter()
    child = subprocess.Popen(argv)
    root = psutil.Process(child.pid)
    peak_rss = peak_pss = 0
    while child.poll() is None:
        try:
            rss, pss = tree_memory(root)
        except psutil.NoSuchProcess:
            break
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.25)
    wall = time.perf_counter() - t0
    print(
        f"[peak_memory] exit {child.returncode}  wall {wall:.1f} s  peak tree PSS {peak_pss / 2**20:.0f} MiB"
        f"  (RSS sum, shared pages counted per process: {peak_rss / 2**20:.0f} MiB)",
        file=sys.stderr,
    )
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
