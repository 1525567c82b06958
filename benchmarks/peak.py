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


def run_measured(argv: list[str], *, quiet: bool = False) -> tuple[int, float, int]:
    """Run ``argv``; return its exit status, wall time (s) and peak RSS of its process tree (bytes).

    ``quiet`` discards the command's output.
    """
    out = subprocess.DEVNULL if quiet else None
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=out, stderr=out)
    proc, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            peak = max(peak, tree_rss(proc))
        except psutil.Error:
            pass
        time.sleep(0.1)
    return child.returncode, time.perf_counter() - start, peak


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    if not argv:
        print(__doc__)
        return 2
    status, wall, peak = run_measured(argv)
    print(f"wall {wall:.1f} s, peak resident memory of the process tree {peak / 2**20:.0f} MiB, "
          f"exit {status}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
