"""Run a command and print its wall time and the peak resident memory of its whole process tree.

A zdask run spawns worker processes; ``/usr/bin/time`` reports only the first process, so this
samples the sum of RSS over the tree every 0.1 s.

    python benchmarks/peak.py -- zdask run demo/survey/frames --out demo/mosaic
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    if not argv:
        print(__doc__)
        return 2
    start = time.perf_counter()
    child = subprocess.Popen(argv)
    proc = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, tree_rss(proc))
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - start
    print(f"wall {wall:.1f} s, peak resident memory of the process tree {peak / 2**20:.0f} MiB, "
          f"exit {child.returncode}", file=sys.stderr)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
