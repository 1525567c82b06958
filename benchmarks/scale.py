"""Whole-run scale benchmark (issue 14): memory and time of `zdask run` at N and 3.75 N frames.

Simulates a survey and a second one of the same sky (same seed and panels) with 3.75 times the
frames per panel, runs `zdask run ... --altaz-cleanup` on each as a user would (a fresh process,
a fresh output folder), samples the resident memory of its whole process tree (workers
included) every 0.25 s, and reads the per-stage times from report.json. SWarp, the strongest
peer, stacks the same frames binned 2 x 2 to luminance (1/12 of the samples zdask processes;
the peers cannot debayer) in the same run. One table ends the run: walls, peak memory, stages,
the frame-count ratios against linear time, zdask against SWarp, and whether each target of
the issue holds. A phase of the memory table ends where zdask prints a finished progress bar
of that name (the last one, "write and exit", is the final write and the shutdown).

    python benchmarks/scale.py                     # 3x3 panels, 16 vs 60 frames per panel, 1080x1920
    python benchmarks/scale.py --panels 2x2 --frames-per-panel 4 --frame-size 540x960   # scaled down
    python benchmarks/scale.py --max-group-size 1000         # one master tile per panel, however large
    python benchmarks/scale.py --sides small                 # the smaller survey alone

Surveys and binned frames are kept under --work and reused by later runs with the same options.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peak import tree_rss  # noqa: E402

SAMPLE_S = 0.25
MEMORY_TARGET = 2e9          # bytes, peak of the process tree, each survey
SAME_MEMORY = 0.10           # the two peaks within 10 % of each other
LINEAR_SLACK = 1.10          # large wall <= frame ratio x small wall + 10 %
GLYPHS = "━╸╺─"              # what a rich progress bar is drawn with


# --- set-up ----------------------------------------------------------------------------------------

def find_swarp(install: bool) -> str | None:
    """SWarp's executable; installed with apt (Debian package `swarp`) when missing and allowed."""
    found = shutil.which("SWarp") or shutil.which("swarp")
    if found or not install or not shutil.which("apt-get"):
        return found
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        return None
    print("SWarp is missing: installing the Debian package swarp with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "swarp"]):
        if subprocess.run(sudo + step, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
            return None
    return shutil.which("SWarp") or shutil.which("swarp")


def simulate(folder: str, args, frames_per_panel: int) -> str:
    """The survey in ``folder`` (reused when its manifest says it was made with these options)."""
    spec = {"panels": args.panels, "frames_per_panel": frames_per_panel, "frame_size": args.frame_size,
            "altaz_panels": altaz_panels(args), "seed": args.seed}
    stamp = os.path.join(folder, "benchmark-spec.json")
    if os.path.exists(stamp) and json.load(open(stamp)) == spec:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    print(f"simulating {folder} ({frames_per_panel} frames per panel) ...", flush=True)
    subprocess.run([sys.executable, "-m", "zdask.cli", "simulate", folder, "--panels", args.panels,
                    "--frames-per-panel", str(frames_per_panel), "--frame-size", args.frame_size,
                    "--altaz-panels", spec["altaz_panels"], "--seed", str(args.seed)],
                   check=True, stdout=subprocess.DEVNULL)
    with open(stamp, "w") as fh:
        json.dump(spec, fh)
    return folder


def altaz_panels(args) -> str:
    """'auto': every other panel shot alt-az, from the second (four of a 3x3 survey, as in the issue)."""
    if args.altaz_panels != "auto":
        return args.altaz_panels
    rows, cols = (int(v) for v in args.panels.lower().split("x"))
    return ",".join(str(i) for i in range(1, rows * cols, 2)) or "none"  # one panel: none


def bin_to_luminance(survey: str) -> str:
    """``survey/lum/``: each raw Bayer frame as 2 x 2 superpixel sums (G + R + B + G) less four
    pedestals, float32, half the size, its WCS scaled to match: what the peers stack."""
    from astropy.io import fits

    out = os.path.join(survey, "lum")
    frames = sorted(os.listdir(os.path.join(survey, "frames")))
    if os.path.isdir(out) and len(os.listdir(out)) == len(frames):
        return out
    os.makedirs(out, exist_ok=True)
    for name in frames:
        with fits.open(os.path.join(survey, "frames", name)) as hdul:
            raw, header = hdul[0].data, hdul[0].header.copy()
        h, w = (raw.shape[0] // 2) * 2, (raw.shape[1] // 2) * 2
        d = raw[:h, :w].astype(np.float32) - np.float32(header.get("PEDESTAL", 0.0))
        lum = d[0::2, 0::2] + d[0::2, 1::2] + d[1::2, 0::2] + d[1::2, 1::2]
        for key in ("CRPIX1", "CRPIX2"):
            header[key] = (header[key] + 0.5) / 2  # pixel centres: 1-based (x + 0.5) / 2
        for key in ("CD1_1", "CD1_2", "CD2_1", "CD2_2", "CDELT1", "CDELT2"):
            if key in header:
                header[key] = header[key] * 2
        for key in ("BAYERPAT", "XBAYROFF", "YBAYROFF", "BZERO", "BSCALE"):
            header.pop(key, None)
        fits.writeto(os.path.join(out, name), lum, header, overwrite=True)
    return out


def binned_grid_header(survey: str, path: str) -> None:
    """SWarp's output grid (a .head file): the simulator's truth grid binned 2 x 2."""
    from astropy.io import fits

    truth = fits.getheader(os.path.join(survey, "truth.fits"))
    cards = [fits.Card("NAXIS", 2), fits.Card("NAXIS1", truth["NAXIS1"] // 2),
             fits.Card("NAXIS2", truth["NAXIS2"] // 2)]
    for key in ("CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2", "CRVAL1", "CRVAL2", "RADESYS", "EQUINOX"):
        if key in truth:
            cards.append(fits.Card(key, truth[key]))
    cards += [fits.Card(k, (truth[k] + 0.5) / 2) for k in ("CRPIX1", "CRPIX2")]
    cards += [fits.Card(k, truth[k] * 2) for k in ("CD1_1", "CD1_2", "CD2_1", "CD2_2") if k in truth]
    with open(path, "w") as fh:
        fh.write("\n".join(card.image for card in cards) + "\nEND\n")


# --- measuring -------------------------------------------------------------------------------------

def measure(argv: list[str], cwd: str | None = None, log: str | None = None) -> dict:
    """Run ``argv`` to its end: wall time, peak RSS of its process tree, and the same peak per
    phase, a phase ending where the command prints a finished progress bar (zdask's stages)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="120")
    start = time.perf_counter()
    child = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, errors="replace")
    marks: list[tuple[float, str]] = []   # (time, phase that ended)
    lines: list[str] = []

    def read() -> None:
        for line in child.stdout:
            lines.append(line)
            if any(g * 3 in line for g in GLYPHS):
                marks.append((time.perf_counter() - start, line.split(GLYPHS[0])[0].strip() or "?"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc, samples = psutil.Process(child.pid), []
    while child.poll() is None:
        try:
            samples.append((time.perf_counter() - start, tree_rss(proc)))
        except psutil.Error:
            pass
        time.sleep(SAMPLE_S)
    wall = time.perf_counter() - start
    reader.join(timeout=10)
    if log:
        with open(log, "w") as fh:
            fh.writelines(lines)
    if child.returncode:
        tail = "".join(lines[-15:])
        raise SystemExit(f"{' '.join(argv)} failed with status {child.returncode}:\n{tail}")
    phases, t0 = [], 0.0
    for t1, name in marks + [(wall, "write and exit")]:
        peak = max((rss for t, rss in samples if t0 <= t <= t1), default=0)
        phases.append({"phase": name, "seconds": t1 - t0, "peak_rss": peak})
        t0 = t1
    return {"wall": wall, "peak_rss": max((rss for _, rss in samples), default=0), "phases": phases,
            "output": "".join(lines)}


def run_zdask(survey: str, work: str, args) -> dict:
    out = os.path.join(work, f"zdask-{os.path.basename(survey)}")
    shutil.rmtree(out, ignore_errors=True)  # fresh: nothing reused from an earlier run
    argv = [sys.executable, "-m", "zdask.cli", "run", os.path.join(survey, "frames"), "--out", out,
            "--altaz-cleanup"]
    if args.max_group_size:
        argv += ["--max-group-size", str(args.max_group_size)]
    if args.budget:
        argv += ["--budget", args.budget]
    print(f"zdask run on {survey} ...", flush=True)
    result = measure(argv, log=out + ".log")
    report = json.load(open(os.path.join(out, "report.json")))
    result["stages"] = {k: v for k, v in report["stages"].items() if k != "total"}
    result["frames"] = report["frames_used"]
    result["canvas"] = report["mosaic"]["shape"]
    result["groups"] = len(report.get("tiles", []))
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return result


def warm_up(work: str, args) -> None:
    """One untimed run on a tiny survey: compiled-kernel caches (numba) are filled by whichever
    run comes first, and must not be charged to the smaller survey alone."""
    tiny = os.path.join(work, "warm-up")
    if not os.path.exists(os.path.join(tiny, "manifest.json")):
        subprocess.run([sys.executable, "-m", "zdask.cli", "simulate", tiny, "--panels", "1x2",
                        "--frames-per-panel", "4", "--frame-size", "270x480", "--altaz-panels", "1",
                        "--seed", "2"], check=True, stdout=subprocess.DEVNULL)
    print("warm-up run (untimed) ...", flush=True)
    done = subprocess.run([sys.executable, "-m", "zdask.cli", "run", os.path.join(tiny, "frames"), "--out",
                           os.path.join(tiny, "out"), "--altaz-cleanup"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the warm-up run failed with status {done.returncode}:\n{done.stderr[-2000:]}")
    shutil.rmtree(os.path.join(tiny, "out"), ignore_errors=True)


def run_swarp(swarp: str, survey: str, work: str) -> dict:
    lum = bin_to_luminance(survey)
    folder = os.path.join(work, f"swarp-{os.path.basename(survey)}")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    with open(os.path.join(folder, "lum.lis"), "w") as fh:
        fh.write("".join(os.path.join(lum, n) + "\n" for n in sorted(os.listdir(lum))))
    binned_grid_header(survey, os.path.join(folder, "sw.head"))
    print(f"SWarp on {lum} ...", flush=True)
    result = measure([swarp, "@lum.lis", "-IMAGEOUT_NAME", "sw.fits", "-WEIGHTOUT_NAME", "sw.w.fits",
                      "-COMBINE_TYPE", "CLIPPED", "-RESAMPLING_TYPE", "LANCZOS3", "-SUBTRACT_BACK", "Y",
                      "-NTHREADS", "2", "-RESAMPLE_DIR", ".", "-DELETE_TMPFILES", "Y", "-WRITE_XML", "N",
                      "-COMBINE_BUFSIZE", "1024", "-MEM_MAX", "2048"], cwd=folder)
    shutil.rmtree(folder, ignore_errors=True)
    return result


# --- the table -------------------------------------------------------------------------------------

def gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB"


def verdict(ok: bool) -> str:
    return "holds" if ok else "FAILS"


def table(results: dict, args) -> list[str]:
    sides = [s for s in ("small", "large") if s in results]
    z = {s: results[s]["zdask"] for s in sides}
    sw = {s: results[s].get("swarp") for s in sides}
    head = [f"{z[s]['frames']} frames" for s in sides]
    rows = [f"{'':40s}" + "".join(f"{h:>16s}" for h in head) + ("     ratio   target" if len(sides) == 2 else "")]

    def line(label, values, ratio="", target=""):
        rows.append(f"{label:40s}" + "".join(f"{v:>16s}" for v in values) + f"{ratio:>10s}   {target}")

    frame_ratio = z["large"]["frames"] / z["small"]["frames"] if len(sides) == 2 else None
    linear = frame_ratio * LINEAR_SLACK if frame_ratio else None
    two = len(sides) == 2

    def ratio(a, b):
        return f"{b / a:.2f}x" if two and a > 0 else ""

    line("zdask wall", [f"{z[s]['wall']:.1f} s" for s in sides],
         ratio(z["small"]["wall"], z["large"]["wall"]) if two else "",
         f"<= {linear:.2f}x (frames {frame_ratio:.2f}x + 10 %)" if two else "")
    line("zdask peak RSS (process tree)", [gb(z[s]["peak_rss"]) for s in sides],
         ratio(z["small"]["peak_rss"], z["large"]["peak_rss"]) if two else "",
         "each <= 2 GB, within 10 %")
    stages = list(dict.fromkeys(k for s in sides for k in z[s]["stages"]))
    for name in stages:
        values = [z[s]["stages"].get(name, 0.0) for s in sides]
        flag = ""
        if two and values[0] >= 1.0 and values[1] > linear * values[0]:
            flag = "above linear"
        line(f"  stage {name} (s)", [f"{v:.1f}" for v in values],
             ratio(values[0], values[1]) if two and values[0] >= 0.05 else "", flag)
    phase_names = list(dict.fromkeys(p["phase"] for s in sides for p in z[s]["phases"]))
    for name in phase_names:
        peaks = [max((p["peak_rss"] for p in z[s]["phases"] if p["phase"] == name), default=0) for s in sides]
        line(f"  peak RSS in phase {name[:20]}", [gb(v) for v in peaks],
             ratio(peaks[0], peaks[1]) if two else "")
    line("canvas (H x W), master tiles", [f"{z[s]['canvas'][0]}x{z[s]['canvas'][1]}, {z[s]['groups']}"
                                          for s in sides])
    if all(sw.values()):
        line("SWarp wall (2x2-binned luminance)", [f"{sw[s]['wall']:.1f} s" for s in sides],
             ratio(sw["small"]["wall"], sw["large"]["wall"]) if two else "")
        line("SWarp peak RSS", [gb(sw[s]["peak_rss"]) for s in sides],
             ratio(sw["small"]["peak_rss"], sw["large"]["peak_rss"]) if two else "")
        line("zdask wall / SWarp wall", [f"{z[s]['wall'] / sw[s]['wall']:.2f}x" for s in sides], "", "<= 1.00x")
    rows.append("")
    peaks = [z[s]["peak_rss"] for s in sides]
    memory_ok = all(p <= MEMORY_TARGET for p in peaks) and (
        not two or max(peaks) <= (1 + SAME_MEMORY) * min(peaks))
    rows.append("target memory: peak <= 2 GB each" + (" and within 10 % of each other" if two else "")
                + f": {verdict(memory_ok)}")
    if two:
        wall_ratio = z["large"]["wall"] / z["small"]["wall"]
        rows.append(f"target linear time: {wall_ratio:.2f}x <= {linear:.2f}x: {verdict(wall_ratio <= linear)}")
    if all(sw.values()):
        faster = all(z[s]["wall"] <= sw[s]["wall"] for s in sides)
        rows.append(f"target faster than SWarp on its 1/12 of the samples: {verdict(faster)}")
    else:
        rows.append("target faster than SWarp: not measured (SWarp absent or --no-swarp)")
    rows.append("target streamed write of a 20000 x 20000 x 3 canvas: tests/io/test_outputs.py (memory of a "
                "write much larger than its bands)")
    config = (f"{args.panels} panels, frames {args.frame_size}, alt-az panels {altaz_panels(args)}, seed "
              f"{args.seed}, max group size {args.max_group_size or 'default'}, budget {args.budget or 'default'}, "
              f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB")
    return [config, ""] + rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.join(os.getcwd(), "scale-bench"),
                        help="folder for the surveys (kept and reused) and the runs")
    parser.add_argument("--panels", default="3x3", help="panel grid ROWSxCOLS")
    parser.add_argument("--frames-per-panel", type=int, default=16, help="frames per panel of the smaller survey")
    parser.add_argument("--ratio", type=float, default=3.75, help="frames per panel of the larger survey / smaller")
    parser.add_argument("--frame-size", default="1080x1920", help="WIDTHxHEIGHT of a raw frame")
    parser.add_argument("--altaz-panels", default="auto", help="'auto' (every other panel), 'none', 'all' or 0,2,...")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sides", choices=("both", "small", "large"), default="both")
    parser.add_argument("--max-group-size", type=int, default=None, help="zdask run --max-group-size")
    parser.add_argument("--budget", default=None, help="zdask run --budget")
    parser.add_argument("--no-swarp", action="store_true", help="skip the SWarp runs")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install a missing SWarp")
    parser.add_argument("--keep", action="store_true", help="keep zdask's output folders")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    swarp = None if args.no_swarp else find_swarp(install=not args.no_install)
    if not args.no_swarp and swarp is None:
        print("SWarp is not installed and could not be (apt-get install swarp): the peer comparison is skipped",
              flush=True)
    os.makedirs(args.work, exist_ok=True)
    counts = {"small": args.frames_per_panel, "large": int(round(args.frames_per_panel * args.ratio))}
    sides = ["small", "large"] if args.sides == "both" else [args.sides]
    tag = f"{args.panels}-{args.frame_size}-s{args.seed}"
    results: dict = {}
    warm_up(args.work, args)
    for side in sides:
        survey = simulate(os.path.join(args.work, f"survey-{tag}-{counts[side]}"), args, counts[side])
        results[side] = {"zdask": run_zdask(survey, args.work, args)}
        if swarp:
            results[side]["swarp"] = run_swarp(swarp, survey, args.work)
    lines = table(results, args)
    print("\n" + "\n".join(lines))
    if args.json:
        for side in results.values():
            for tool in side.values():
                tool.pop("output", None)
        with open(args.json, "w") as fh:
            json.dump({"config": vars(args), "results": results, "table": lines}, fh, indent=2)


if __name__ == "__main__":
    main()
