"""SDS against classic (issue 16): wall time and peak memory of `zdask run` in each mode, side by
side, on one pointing of N and 5 N frames (the same sky, same seed).

Each run is a fresh `zdask run` process into a fresh output folder; the resident memory of its
whole process tree (workers included) is sampled every 0.25 s (benchmarks/scale.py's measure).
One untimed warm-up run first fills the compiled-kernel caches.

    python benchmarks/sds.py                                   # 1x1 panel, 24 and 120 frames of 1080x1920
    python benchmarks/sds.py --frames 8 --frame-size 540x960   # scaled down

Surveys are kept under --work and reused by later runs with the same options.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scale import gb, measure, simulate, warm_up  # noqa: E402

MEMORY_TARGET = 2e9   # bytes, peak of the process tree (issue 16: under 2 GB for 144 full-size frames)
SAME_MEMORY = 0.10    # SDS's two peaks within 10 % of each other


def run_mode(survey: str, mode: str, work: str, args) -> dict:
    out = os.path.join(work, f"{mode}-{os.path.basename(survey)}")
    shutil.rmtree(out, ignore_errors=True)  # fresh: nothing reused
    argv = [sys.executable, "-m", "zdask.cli", "run", os.path.join(survey, "frames"), "--out", out, "--mode", mode]
    if args.budget:
        argv += ["--budget", args.budget]
    print(f"zdask run --mode {mode} on {survey} ...", flush=True)
    result = measure(argv, log=out + ".log")
    report = json.load(open(os.path.join(out, "report.json")))
    result.update(mode=report["mode"], frames=report["frames_used"], canvas=report["mosaic"]["shape"],
                  lots=len(report.get("lots", [])), tiles=len(report.get("tiles", [])),
                  stages={k: v for k, v in report["stages"].items() if k != "total"})
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return result


def table(results: dict[tuple[str, str], dict], sizes: list[str]) -> list[str]:
    cols = [(size, mode) for size in sizes for mode in ("classic", "sds")]
    head = "".join(f"{results[c]['frames']:>6d} fr {c[1]:>7s}" for c in cols)
    rows = [f"{'':28s}{head}"]

    def line(label, values):
        rows.append(f"{label:28s}" + "".join(f"{v:>18s}" for v in values))

    line("wall", [f"{results[c]['wall']:.1f} s" for c in cols])
    line("peak RSS (process tree)", [gb(results[c]["peak_rss"]) for c in cols])
    line("canvas (H x W)", [f"{results[c]['canvas'][0]}x{results[c]['canvas'][1]}" for c in cols])
    line("lots / master tiles", [str(results[c]["lots"] or results[c]["tiles"]) for c in cols])
    line("mode in the report", [results[c]["mode"] for c in cols])
    for name in dict.fromkeys(k for c in cols for k in results[c]["stages"]):
        line(f"  stage {name} (s)", [f"{results[c]['stages'][name]:.1f}" if name in results[c]["stages"] else "-"
                                     for c in cols])
    rows.append("")
    if len(sizes) == 2:
        small, large = (results[(s, "sds")] for s in sizes)
        peaks = [small["peak_rss"], large["peak_rss"]]
        ok = max(peaks) <= MEMORY_TARGET and max(peaks) <= (1 + SAME_MEMORY) * min(peaks)
        rows.append(f"sds peak memory: {gb(peaks[0])} at {small['frames']} frames, {gb(peaks[1])} at "
                    f"{large['frames']} ({peaks[1] / peaks[0]:.2f}x); target <= 2 GB each and within 10 %: "
                    f"{'holds' if ok else 'FAILS'}")
        rows.append(f"sds wall: {large['wall'] / small['wall']:.2f}x for {large['frames'] / small['frames']:.1f}x "
                    f"the frames; classic {results[(sizes[1], 'classic')]['wall'] / results[(sizes[0], 'classic')]['wall']:.2f}x")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.join(os.getcwd(), "sds-bench"),
                        help="folder for the surveys (kept and reused) and the runs")
    parser.add_argument("--frames", type=int, default=24, help="frames of the smaller survey (one pointing)")
    parser.add_argument("--ratio", type=int, default=5, help="frames of the larger survey / smaller")
    parser.add_argument("--frame-size", default="1080x1920", help="WIDTHxHEIGHT of a raw frame")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--budget", default=None, help="zdask run --budget")
    parser.add_argument("--keep", action="store_true", help="keep the output folders")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    # (scale.simulate's options: one panel, equatorial)
    args.panels, args.altaz_panels = "1x1", "none"
    os.makedirs(args.work, exist_ok=True)
    warm_up(args.work, args)
    sizes = {"small": args.frames, "large": args.frames * args.ratio}
    results = {}
    for size, n in sizes.items():
        survey = simulate(os.path.join(args.work, f"survey-{n}"), args, n)
        for mode in ("classic", "sds"):
            results[(size, mode)] = run_mode(survey, mode, args.work, args)
    config = (f"one pointing, frames {args.frame_size}, seed {args.seed}, budget {args.budget or 'default'}, "
              f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB")
    rows = [config, ""] + table(results, list(sizes))
    print("\n".join(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({f"{s}-{m}": {k: v for k, v in r.items() if k != "output"} for (s, m), r in results.items()},
                      fh, indent=2)


if __name__ == "__main__":
    main()
