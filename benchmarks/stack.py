"""Benchmark of the stacking engine (a benchmark, not a timed test).

Prints, in one run, each as a figure and as a ratio:

* in memory, N = 30 frames of 1080 × 1920 × 3 float32 (``--mem-frames``):
  a NumPy pass that reads the same bytes (memory-bandwidth reference),
  ``zdask.stack`` kappa-sigma and winsorized (dask threads, all four outputs)
  and the ancestor's in-memory NumPy path (``nanmedian``/``nanstd`` over the
  full stack, run in a child process);
* from a Zarr store on disk, N = 50 (``--frames``; ``--big`` adds N = 200),
  read by ``zdask.graph.zarrstack.open_zarr_stack``: a dask read pass (also
  through ``dask.array.from_zarr`` for comparison), zdask kappa-sigma and
  winsorized (kappa-sigma also from ``from_zarr``), and, in a process of its
  own, the absolute peak resident memory of stacking with both methods while
  streaming the results to a Zarr store, against budget × threads + 300 MB
  (and, for reference, of computing the results into memory);
* ``ccdproc.combine`` (average + sigma_clip 3/3, ``mem_limit`` = budget) on
  one channel of a crop of the same frames written as FITS files, as
  throughput (input MB/s).

The ancestor and ccdproc run once each, and zdask is timed just before and
just after each of them (best of ``--repeat`` both times); the ratios use the
mean of the two, because this machine's speed drifts by tens of percent over
minutes.

Targets (from the issue): kappa-sigma and winsorized ≥ 30× the ancestor's
NumPy path and within 8× of the read pass; ≥ 50× ccdproc on the N = 50 Zarr
stack; peak memory ≤ budget × concurrent tasks + 300 MB, independent of N.

Usage: ``python benchmarks/stack.py [--frames 50] [--big] [--budget 256MiB]``
(``--quick`` for a small smoke run).  Temporary files go to the system temp
directory and are removed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MB = 1e6


def _status(key: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        return None
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB).

    Linux: VmHWM (not ``ru_maxrss``, which a child inherits from its parent across exec).
    """
    v = _status("VmHWM")
    return v if v is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


def reset_peak_rss() -> float:
    """Reset the peak to the current RSS where Linux allows it; returns the current RSS (MB)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    v = _status("VmRSS")
    return v if v is not None else peak_rss_mb()


def make_frames(n: int, h: int, w: int, c: int = 3, seed: int = 0, start: int = 0):
    """Yield ``n`` synthetic calibrated frames: sky + noise + stars, NaN borders, one satellite trail."""
    rng = np.random.default_rng(seed)
    stars_y = rng.integers(0, h, 300)
    stars_x = rng.integers(0, w, 300)
    for i in range(start, start + n):
        r = np.random.default_rng((seed, i))
        f = r.standard_normal((h, w, c), dtype=np.float32)
        f *= 12.0
        f += np.float32(1000.0 + 5.0 * i % 7)
        f[stars_y, stars_x] += 4000.0
        dy, dx = (i * 7) % 23, (i * 13) % 31  # dithered footprint: NaN outside
        f[:dy] = np.nan
        f[:, w - dx:] = np.nan
        if i % 10 == 3:  # a satellite trail in one frame of ten
            rows = (np.arange(w) * 0.3 + i * 11) % h
            f[rows.astype(int), np.arange(w)] += 3000.0
        yield f


def build_memory_stack(n, h, w):
    out = np.empty((n, h, w, 3), dtype=np.float32)
    for i, f in enumerate(make_frames(n, h, w)):
        out[i] = f
    return out


def best_of(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def zdask_run(arr, method, budget, threads, **params):
    import dask

    from zdask.graph.stack import stack

    res = stack(arr, method, budget=budget, **params)
    with dask.config.set(scheduler="threads", num_workers=threads):
        dask.compute(*res)


# --------------------------------------------------------------------------- child processes


def child_ancestor(args):
    """The ancestor's single pass in memory (nanmedian/nanstd over the full stack)."""
    import warnings

    arr = build_memory_stack(args.mem_frames, args.height, args.width)
    w = np.ones(arr.shape[0], dtype=np.float32).reshape(-1, 1, 1, 1)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            med = np.nanmedian(arr, 0)
            sd = np.nanstd(arr, 0)
            keep = (arr >= med - 3.0 * sd) & (arr <= med + 3.0 * sd)
            return np.nansum(w * arr * keep, 0) / np.nansum(w * keep, 0)

    t = best_of(run, 1)
    return {"seconds": t, "mb": arr.nbytes / MB, "peak_rss_mb": peak_rss_mb()}


def child_write_zarr(args):
    import zarr

    from zdask.graph.stack import stack_chunks

    shape = (args.n, args.height, args.width, 3)
    chunks = stack_chunks(shape, np.float32, args.budget)
    rows = chunks[1][0]
    z = zarr.create_array(args.path, shape=shape, chunks=(1, rows, args.width, 3), dtype="float32",
                          compressors=None, fill_value=np.nan, overwrite=True)
    t = time.perf_counter()
    for i, f in enumerate(make_frames(args.n, args.height, args.width)):
        z[i] = f
    return {"seconds": time.perf_counter() - t, "mb": args.n * args.height * args.width * 3 * 4 / MB}


def child_zarr_stack(args):
    import dask
    import dask.array as da

    from zdask.graph.zarrstack import open_zarr_stack

    # warm-up: compile/load the kernels on a tiny stack, then note the baseline RSS
    probe = np.random.default_rng(0).normal(size=(args.n, 8, 8, 3)).astype(np.float32)
    for m in ("kappa_sigma", "winsorized"):
        zdask_run(probe, m, args.budget, args.threads)
    arr = open_zarr_stack(args.path, args.budget)
    plain = da.from_zarr(args.path, chunks=arr.chunks)  # zarr's own reader, same blocks
    out = {"n": args.n, "mb": arr.nbytes / MB, "blocks": int(np.prod(arr.numblocks))}
    with dask.config.set(scheduler="threads", num_workers=args.threads):
        out["read_s"] = best_of(lambda: arr.sum(axis=0, dtype=np.float32).compute(), args.repeat)
        out["read_from_zarr_s"] = best_of(lambda: plain.sum(axis=0, dtype=np.float32).compute(), args.repeat)
    for m in ("kappa_sigma", "winsorized"):
        out[m + "_s"] = best_of(lambda m=m: zdask_run(arr, m, args.budget, args.threads), args.repeat)
    out["kappa_sigma_from_zarr_s"] = best_of(lambda: zdask_run(plain, "kappa_sigma", args.budget, args.threads),
                                             args.repeat)
    return out


def child_zarr_methods(args):
    """zdask.stack with both methods from the Zarr stack again (timed after ccdproc, so that
    the ratio uses timings from both sides of the baseline)."""
    from zdask.graph.zarrstack import open_zarr_stack

    probe = np.random.default_rng(0).normal(size=(args.n, 8, 8, 3)).astype(np.float32)
    for m in ("kappa_sigma", "winsorized"):
        zdask_run(probe, m, args.budget, args.threads)
    arr = open_zarr_stack(args.path, args.budget)
    return {m: best_of(lambda m=m: zdask_run(arr, m, args.budget, args.threads), args.repeat)
            for m in ("kappa_sigma", "winsorized")}


def child_zarr_memory(args):
    """Peak memory of a process that stacks the Zarr stack and streams the results to a Zarr
    store (as the pipeline does), and of one that computes them into memory."""
    import dask
    import dask.array as da
    import zarr

    from zdask.graph.stack import stack
    from zdask.graph.zarrstack import open_zarr_stack

    probe = np.random.default_rng(0).normal(size=(args.n, 8, 8, 3)).astype(np.float32)
    for m in ("kappa_sigma", "winsorized"):  # compile / load the kernels
        zdask_run(probe, m, args.budget, args.threads)
    out = {"base_rss_mb": reset_peak_rss()}
    arr = open_zarr_stack(args.path, args.budget)
    dest = args.path + ".results"
    with dask.config.set(scheduler="threads", num_workers=args.threads):
        for m in ("kappa_sigma", "winsorized"):
            res = stack(arr, m, budget=args.budget)
            targets = [zarr.create_array(f"{dest}/{m}/{name}", shape=a.shape, dtype=a.dtype, overwrite=True,
                                         chunks=tuple(c[0] for c in a.chunks))
                       for name, a in zip(res._fields, res)]
            da.store(list(res), targets, lock=False)
        out["streamed_peak_rss_mb"] = peak_rss_mb()
        reset_peak_rss()
        dask.compute(*stack(arr, "winsorized", budget=args.budget))
        out["in_memory_peak_rss_mb"] = peak_rss_mb()
    out["results_mb"] = sum(a.nbytes for a in res) / MB  # the last method's, the same size for every method
    shutil.rmtree(dest, ignore_errors=True)
    return out


def child_ccdproc(args):
    import warnings

    import ccdproc
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyWarning

    from zdask.graph.stack import budget_bytes

    paths = []
    for i, f in enumerate(make_frames(args.n, args.height, args.width)):
        p = os.path.join(args.path, f"f{i:04d}.fits")
        fits.PrimaryHDU(np.ascontiguousarray(f[: args.crop_rows, :, 0])).writeto(p, overwrite=True)
        paths.append(p)
    mb = args.n * args.crop_rows * args.width * 4 / MB
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        t = time.perf_counter()
        ccdproc.combine(
            paths, method="average", sigma_clip=True, sigma_clip_low_thresh=3, sigma_clip_high_thresh=3,
            sigma_clip_func=np.ma.median, sigma_clip_dev_func=np.ma.std,
            mem_limit=budget_bytes(args.budget), unit="adu", dtype=np.float32,
        )
        dt = time.perf_counter() - t
    return {"seconds": dt, "mb": mb, "peak_rss_mb": peak_rss_mb()}


CHILDREN = {
    "ancestor": child_ancestor,
    "write_zarr": child_write_zarr,
    "zarr_stack": child_zarr_stack,
    "zarr_memory": child_zarr_memory,
    "zarr_methods": child_zarr_methods,
    "ccdproc": child_ccdproc,
}


def spawn(kind, args, **over):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind]
    opts = vars(args).copy()
    opts.update(over)
    for k in ("mem_frames", "height", "width", "budget", "threads", "repeat", "crop_rows"):
        cmd += [f"--{k.replace('_', '-')}", str(opts[k])]
    if over.get("n") is not None:
        cmd += ["--n", str(over["n"])]
    if over.get("path"):
        cmd += ["--path", over["path"]]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"child {kind} failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main


def time_methods(arr, args):
    """Best-of-``repeat`` seconds of zdask.stack over an in-memory stack, per method."""
    return {m: best_of(lambda m=m: zdask_run(arr, m, args.budget, args.threads), args.repeat)
            for m in ("kappa_sigma", "winsorized")}


def bracketed(before: dict, after: dict | None) -> dict:
    """Mean of the timings taken just before and just after a baseline ran.

    This machine's speed drifts by tens of percent over minutes; a ratio against
    a baseline that ran at another moment would carry that drift.
    """
    return {m: (t + after[m]) / 2 for m, t in before.items()} if after else dict(before)


def ccdproc_vs_zarr(args, tmp, path, z):
    """ccdproc.combine on the same frames as FITS, then zdask from the Zarr stack again; the
    ratio uses the mean of the zdask timings from before and after ccdproc."""
    cdir = os.path.join(tmp, "fits")
    os.makedirs(cdir)
    c = spawn("ccdproc", args, n=args.frames, path=cdir)
    shutil.rmtree(cdir, ignore_errors=True)
    again = spawn("zarr_methods", args, n=args.frames, path=path)
    thr = c["mb"] / c["seconds"]
    print(f"\n[ccdproc] combine(average, sigma_clip 3/3, mem_limit={args.budget}) on N = {args.frames} FITS "
          f"({args.crop_rows} x {args.width} x 1, {c['mb']:.0f} MB): {c['seconds']:.2f} s  {thr:.1f} MB/s")
    before = {m: z[m + "_s"] for m in ("kappa_sigma", "winsorized")}
    for m, t in bracketed(before, again).items():
        zt = z["mb"] / t
        print(f"  zdask {m:<24s} {zt:8.0f} MB/s from Zarr = {zt / thr:6.0f}x ccdproc (target >= 50x; "
              f"{z['mb'] / before[m]:.0f} MB/s before it, {z['mb'] / again[m]:.0f} MB/s after)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=50, help="frames of the Zarr stack (default 50)")
    ap.add_argument("--big", action="store_true", help="also stack N = 200 frames from Zarr")
    ap.add_argument("--mem-frames", type=int, default=30, help="frames of the in-memory stack (default 30)")
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--budget", default="256MiB", help="memory budget per task (default 256MiB)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--repeat", type=int, default=3, help="timed repeats, best kept (default 3)")
    ap.add_argument("--crop-rows", type=int, default=0,
                    help="rows of the frames given to ccdproc (default 0 = full frames, one channel)")
    ap.add_argument("--no-ancestor", action="store_true", help="skip the ancestor's NumPy baseline")
    ap.add_argument("--no-ccdproc", action="store_true", help="skip the ccdproc baseline")
    ap.add_argument("--quick", action="store_true", help="small smoke run (270 × 480, N = 10/12)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return
    if args.quick:
        args.height, args.width, args.frames, args.mem_frames = 270, 480, 12, 10
    if args.crop_rows <= 0 or args.crop_rows > args.height:
        args.crop_rows = args.height

    from zdask.graph.stack import budget_bytes

    budget_mb = budget_bytes(args.budget) / MB
    print(f"zdask stacking benchmark: {args.height} x {args.width} x 3 float32, budget {args.budget}, "
          f"{args.threads} threads, {os.cpu_count()} cores")

    # ---- in memory ----------------------------------------------------------------------------
    arr = build_memory_stack(args.mem_frames, args.height, args.width)
    mb = arr.nbytes / MB
    for m in ("kappa_sigma", "winsorized"):  # warm-up (compile / load the kernel cache)
        zdask_run(arr[:, :4], m, args.budget, args.threads)
    flat = arr.reshape(arr.shape[0], -1)
    t_read = best_of(lambda: np.add.reduce(flat, axis=0), max(3, args.repeat))
    before = time_methods(arr, args)
    anc = None if args.no_ancestor else spawn("ancestor", args)
    after = time_methods(arr, args) if anc else None
    del arr, flat
    print(f"\n[in memory] N = {args.mem_frames}, {mb:.0f} MB")
    print(f"  read pass (NumPy sum over frames)     {t_read:7.3f} s  {mb / t_read:8.0f} MB/s")
    if anc:
        print(f"  ancestor NumPy nanmedian/nanstd       {anc['seconds']:7.3f} s  {mb / anc['seconds']:8.0f} MB/s"
              f"  (peak RSS {anc['peak_rss_mb']:.0f} MB)")
    for m, t in bracketed(before, after).items():
        line = f"  zdask.stack {m:<24s}  {t:7.3f} s  {mb / t:8.0f} MB/s  read-pass ratio {t / t_read:5.1f}x (target <= 8x)"
        if anc:
            line += (f"  vs ancestor {anc['seconds'] / t:5.1f}x faster (target >= 30x; "
                     f"{before[m]:.3f} s before it, {after[m]:.3f} s after)")
        print(line)

    # ---- Zarr on disk -------------------------------------------------------------------------
    tmp = tempfile.mkdtemp(prefix="zdask-bench-")
    try:
        sizes = [args.frames] + ([200] if args.big else [])
        for n in sizes:
            need = n * args.height * args.width * 12 * 1.1
            if shutil.disk_usage(tmp).free < need + 2e9:
                print(f"\n[zarr] N = {n}: skipped (not enough free disk)")
                continue
            path = os.path.join(tmp, f"stack{n}.zarr")
            w = spawn("write_zarr", args, n=n, path=path)
            z = spawn("zarr_stack", args, n=n, path=path)
            limit = budget_mb * args.threads + 300
            print(f"\n[zarr] N = {n}, {z['mb']:.0f} MB on disk ({z['blocks']} blocks; written in {w['seconds']:.1f} s)")
            print(f"  read pass (open_zarr_stack sum)       {z['read_s']:7.3f} s  {z['mb'] / z['read_s']:8.0f} MB/s")
            print(f"  read pass (dask from_zarr sum)        {z['read_from_zarr_s']:7.3f} s  "
                  f"{z['mb'] / z['read_from_zarr_s']:8.0f} MB/s")
            for m in ("kappa_sigma", "winsorized"):
                t = z[m + "_s"]
                print(f"  zdask.stack {m:<24s}  {t:7.3f} s  {z['mb'] / t:8.0f} MB/s  "
                      f"read-pass ratio {t / z['read_s']:5.1f}x")
            t = z["kappa_sigma_from_zarr_s"]
            print(f"  zdask.stack kappa_sigma, from_zarr    {t:7.3f} s  {z['mb'] / t:8.0f} MB/s  "
                  f"(zarr's reader: open_zarr_stack is {t / z['kappa_sigma_s']:4.2f}x faster)")
            mem = spawn("zarr_memory", args, n=n, path=path)
            peak = mem["streamed_peak_rss_mb"]
            print(f"  peak RSS stacking both methods, results streamed to a Zarr store: {peak:.0f} MB "
                  f"({mem['base_rss_mb']:.0f} MB after imports + JIT); budget x threads + 300 MB = {limit:.0f} MB "
                  f"-> {'OK' if peak <= limit else 'OVER'}")
            print(f"  peak RSS computing the results into memory instead: {mem['in_memory_peak_rss_mb']:.0f} MB "
                  f"(the results themselves are {mem['results_mb']:.0f} MB, whatever N)")
            if n == args.frames and not args.no_ccdproc:
                ccdproc_vs_zarr(args, tmp, path, z)
            shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\npeak RSS of this (driver) process: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
