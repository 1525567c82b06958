"""Grid mode against classic mode (issue 17): wall time and peak memory on the same survey.

Simulates a survey (or reuses it), then runs `zdask run` on it once per mode as a user would (a
fresh process, a fresh output folder; benchmarks/scale.py's `measure`: the resident memory of
the whole process tree sampled every 0.25 s). Grid mode runs at one or more cell sizes
(--cell-fov-factors). One table ends the run: wall, peak memory, cells, frames x cells touched
(what grid mode's time should follow), the stages, the inter-cell median spread before and after.

    python benchmarks/grid.py                                   # 3x3 panels, 16 frames per panel, 1080x1920
    python benchmarks/grid.py --panels 2x2 --frames-per-panel 8 --frame-size 540x960   # scaled down
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scale import gb, measure, simulate, warm_up  # noqa: E402


def run_mode(survey: str, work: str, mode: str, extra: list[str], tag: str, keep: bool) -> dict:
    out = os.path.join(work, f"zdask-{tag}")
    shutil.rmtree(out, ignore_errors=True)  # fresh: nothing reused
    argv = [sys.executable, "-m", "zdask.cli", "run", os.path.join(survey, "frames"), "--out", out,
            "--mode", mode, *extra]
    print(f"zdask run --mode {mode} {' '.join(extra)} ...", flush=True)
    result = measure(argv, log=out + ".log")
    report = json.load(open(os.path.join(out, "report.json")))
    result["stages"] = {k: round(v, 1) for k, v in report["stages"].items() if k != "total"}
    result["canvas"] = report["mosaic"]["shape"]
    if mode == "grid":
        cells = report["cells"]
        result["cells"] = report["grid"]["cells"]
        result["frames_x_cells"] = sum(c["n_frames"] for c in cells)
        result["median_std"] = report["inter_cell_median_std"]
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return result


def table(results: dict, frames: int) -> list[str]:
    lines = [f"{'run':24s} {'wall s':>7s} {'peak':>9s} {'cells':>6s} {'frames x cells':>15s}  stages (s)"]
    for name, r in results.items():
        lines.append(f"{name:24s} {r['wall']:7.1f} {gb(r['peak_rss']):>9s} {r.get('cells', '-')!s:>6s} "
                     f"{r.get('frames_x_cells', '-')!s:>15s}  {r['stages']}")
    for name, r in results.items():
        if "median_std" in r:
            m = r["median_std"]
            lines.append(f"{name}: inter-cell median std before {[round(v, 2) for v in m['before']]} "
                         f"after {[round(v, 2) for v in m['after']]} ADU")
    lines.append(f"{frames} frames")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.join(os.getcwd(), "grid-bench"), help="surveys and runs")
    parser.add_argument("--panels", default="3x3")
    parser.add_argument("--frames-per-panel", type=int, default=16)
    parser.add_argument("--frame-size", default="1080x1920", help="WIDTHxHEIGHT of a raw frame")
    parser.add_argument("--altaz-panels", default="none", help="'auto', 'none', 'all' or 0,2,...")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cell-fov-factors", default="1,4", help="grid cell sizes to run, comma-separated")
    parser.add_argument("--max-group-size", type=int, default=None)
    parser.add_argument("--budget", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the output folders")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    warm_up(args.work, args)
    tag = f"{args.panels}-{args.frame_size}-s{args.seed}-{args.frames_per_panel}"
    survey = simulate(os.path.join(args.work, f"survey-{tag}"), args, args.frames_per_panel)
    common = ["--budget", args.budget] if args.budget else []
    results = {"classic": run_mode(survey, args.work, "classic", common, "classic", args.keep)}
    for factor in args.cell_fov_factors.split(","):
        results[f"grid x{factor}"] = run_mode(survey, args.work, "grid", common + ["--grid-cell-fov-factor", factor],
                                              f"grid-{factor}", args.keep)
    frames = len(json.load(open(os.path.join(survey, "manifest.json")))["frames"])
    lines = table(results, frames)
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({k: {kk: vv for kk, vv in v.items() if kk != "output"} for k, v in results.items()}, fh, indent=2)


if __name__ == "__main__":
    main()
