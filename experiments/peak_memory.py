"""Run a command and report its wall time and the peak memory of its whole process tree.

Ray workers are grandchildren of the driver (driver -> raylet -> workers), so the peak of
the driver alone under-reports a simulation; this sums PSS (shared pages split fairly)
and RSS over every descendant, sampled once a second.

    python experiments/peak_memory.py -- python -m fedconv.simulate
"""

from __future__ import annotations

import sys

from fedconv.bench import run_sampled


def main() -> int:
    argv = sys.argv[1:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print(__doc__)
        return 2
    res = run_sampled(argv)
    print(
        f"[peak_memory] exit {res['returncode']}  wall {res['wall_s']:.1f} s  peak tree PSS {res['peak_pss_mib']:.0f} MiB"
        f"  (RSS sum, shared pages counted per process: {res['peak_rss_mib']:.0f} MiB)",
        file=sys.stderr,
    )
    return int(res["returncode"])


if __name__ == "__main__":
    sys.exit(main())
