"""zdask run against the astropy `reproject` workflow on the same survey, in one run.

The baseline is what a Python user writes today: debayer each frame, `reproject_interp` it onto
the mosaic's grid and `reproject_and_coadd` with a mean (no rejection, no background
matching). Both are timed as child processes with the peak resident memory of their process
trees, and both mosaics are measured against the simulator's truth with `zdask compare`.

    python benchmarks/pipeline.py                       # simulates a 2x2x16 survey of 540x960 frames
    python benchmarks/pipeline.py --survey demo/survey  # an existing simulated survey
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peak import run_measured  # noqa: E402


def measured(argv: list[str]) -> tuple[float, int]:
    """Wall time and peak resident memory (process tree) of a command; its failure stops the run."""
    status, wall, peak = run_measured(argv, quiet=True)
    if status:
        raise SystemExit(f"{' '.join(argv)} failed with status {status}")
    return wall, peak


def baseline(frames_dir: str, grid_from: str, out: str) -> None:
    """The astropy reproject workflow (run in a child process)."""
    import numpy as np
    from astropy.io import fits
    from reproject import reproject_interp
    from reproject.mosaicking import reproject_and_coadd

    from zdask.io.fitsheader import celestial_cards
    from zdask.io.outputs import write_mosaic
    from zdask.io.scan import scan
    from zdask.ops.debayer import debayer_bilinear

    header = fits.getheader(grid_from)
    cards = celestial_cards(header)
    shape = (header["NAXIS2"], header["NAXIS1"])
    table = scan([frames_dir])
    frames = []
    for f in table.frames:
        with fits.open(f.path) as hdul:
            frames.append((debayer_bilinear(hdul[f.hdu].data, f.bayer), f.wcs()))
    target = fits.Header(cards)
    channels = []
    for c in range(3):
        image, footprint = reproject_and_coadd([(rgb[..., c], wcs) for rgb, wcs in frames], target,
                                               shape_out=shape, reproject_function=reproject_interp,
                                               combine_function="mean")
        channels.append(image)
    image = np.stack(channels, axis=-1).astype(np.float32)
    image[footprint == 0] = np.nan
    write_mosaic(out, image, footprint.astype(np.float32), cards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survey", help="an existing simulated survey (frames/, truth.fits, manifest.json)")
    parser.add_argument("--baseline-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_child:
        baseline(*args.baseline_child)
        return
    work = tempfile.mkdtemp(prefix="zdask-bench-")
    survey = args.survey
    if survey is None:
        survey = os.path.join(work, "survey")
        subprocess.run([sys.executable, "-m", "zdask.cli", "simulate", survey, "--panels", "2x2",
                        "--frames-per-panel", "16", "--frame-size", "540x960", "--altaz-panels", "1",
                        "--seed", "5"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    frames = os.path.join(survey, "frames")
    zout = os.path.join(work, "zdask")
    z_wall, z_peak = measured([sys.executable, "-m", "zdask.cli", "run", frames, "--out", zout, "--altaz-cleanup"])
    b_out = os.path.join(work, "baseline.fits")
    b_wall, b_peak = measured([sys.executable, os.path.abspath(__file__), "--baseline-child", frames,
                               os.path.join(zout, "mosaic.fits"), b_out])
    from zdask.compare import compare

    truth, manifest = os.path.join(survey, "truth.fits"), os.path.join(survey, "manifest.json")
    zq = compare(os.path.join(zout, "mosaic.fits"), truth, manifest)
    bq = compare(b_out, truth, manifest)
    n = len(json.load(open(manifest))["frames"])
    print(f"survey: {n} frames ({survey})")
    print(f"{'':28s}{'zdask':>12s}{'reproject':>12s}{'ratio':>10s}")
    print(f"{'wall time (s)':28s}{z_wall:12.1f}{b_wall:12.1f}{b_wall / z_wall:9.1f}x")
    print(f"{'peak memory (MiB)':28s}{z_peak / 2**20:12.0f}{b_peak / 2**20:12.0f}{b_peak / max(z_peak, 1):9.1f}x")
    for key, label in (("large_scale_rms_over_noise", "large-scale residual (σ)"),
                       ("small_scale_rms_over_noise", "small-scale residual (σ)"),
                       ("trail_residual_over_noise", "trail left (σ)"),
                       ("extended_kept", "extended emission kept"),
                       ("star_offset_px_median", "star offset (px)"),
                       ("covered_fraction", "covered fraction")):
        print(f"{label:28s}{zq[key]:12.3f}{bq[key]:12.3f}")


if __name__ == "__main__":
    main()
