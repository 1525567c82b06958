"""``zdask compare``: a mosaic against a survey's truth, in numbers a user can read.

The truth is reprojected onto the mosaic's grid; per channel, the truth is mapped onto the
mosaic by a global linear fit (the mosaic's units and sky level are arbitrary), and the
residual is measured away from stars (the PSF of a stack never equals the truth's exactly).

``scores`` holds the figures of the survey kit's scorer, with its definitions, measured on the
truth's grid (``zdask.compare_scores``): the large-scale residual, the seams by panel region,
the extended light kept, the residual and the coverage, in units of the mosaic's own sky noise.
The truth is the simulator's (RGB with an EXTENDED extension and a STARS catalogue) or the
survey kit's (luminance, with truth_stars.fits beside it; no catalogue, so no star positions
or aperture photometry).
"""

from __future__ import annotations

import json
import os

import numpy as np
from astropy.io import fits

from zdask.compare_scores import FWHM_PER_SIGMA, frames_of, read_truth, reproject_onto, score_on_truth
from zdask.io.fitsheader import celestial_cards, wcs_from_header
from zdask.ops.quality import aperture_fluxes, centroid_offsets, large_scale_background, linear_fit, pixel_noise


BACKGROUND_BOX = 64  # px: cells of the large-scale background removed for the small-scale residual


def _read_image(path: str, extension: int | str = 0) -> tuple[np.ndarray, dict]:
    with fits.open(path, memmap=False) as hdul:
        data = np.asarray(hdul[extension].data, dtype=np.float32)
        cards = celestial_cards(hdul[extension].header)
    image = np.moveaxis(data, 0, -1) if data.ndim == 3 else data[..., None]
    return image, cards


def compare(mosaic_path: str, truth_path: str, manifest_path: str | None = None,
            star_threshold: float = 0.5) -> dict:
    """Residual RMS after a linear fit relative to the mosaic's pixel noise, coverage, trails,
    and the survey ``scores`` (``zdask.compare_scores``).

    Pixels where the truth's stars (truth minus its extended light) exceed
    ``star_threshold`` × the mosaic noise are left out of the residual. With the survey's
    manifest, the residual along each satellite trail is measured too (in noise units), and
    the scores include the seams by panel region and the coverage of the frames' footprints.
    """
    mosaic, mcards = _read_image(mosaic_path)
    with fits.open(mosaic_path, memmap=False) as hdul:
        coverage = np.asarray(hdul["COVERAGE"].data, dtype=np.float32)
    with fits.open(truth_path, memmap=False) as hdul:
        catalogue = "STARS" in hdul  # the simulator's truth has one, the survey kit's not
    truth, stars, tcards = read_truth(truth_path)
    shape = mosaic.shape[:2]
    truth_m = reproject_onto(truth, tcards, mcards, shape)
    stars_m = reproject_onto(stars, tcards, mcards, shape)
    scores = score_on_truth(mosaic, coverage, mcards, truth, stars, tcards, manifest_path)
    del truth, stars
    covered = (coverage > 0) & np.isfinite(mosaic).all(axis=-1) & np.isfinite(truth_m).all(axis=-1)
    channels, residuals, skies = [], [], []
    scales = photometric_scales(truth_path, mosaic, mcards) if catalogue else [None] * mosaic.shape[-1]
    for c in range(mosaic.shape[-1]):
        tc = truth_m[..., min(c, truth_m.shape[-1] - 1)]
        sc = stars_m[..., min(c, stars_m.shape[-1] - 1)]
        noise = pixel_noise(mosaic[..., c], covered)
        gain, offset = linear_fit(tc[covered], mosaic[..., c][covered])
        sky = covered & (gain * sc < star_threshold * noise)
        residual = mosaic[..., c] - (gain * tc + offset)
        rms = float(np.sqrt(np.mean(residual[sky] ** 2)))
        # What is left once the large-scale background (gradients, tile offsets) is removed:
        # alignment, stacking, rejection and resampling errors.
        small = residual - large_scale_background(residual, sky, BACKGROUND_BOX)
        small_rms = float(np.sqrt(np.mean(small[sky] ** 2)))
        channels.append({"gain": gain, "offset": offset, "noise": noise, "residual_rms": rms,
                         "residual_rms_over_noise": rms / noise if noise > 0 else float("inf"),
                         "small_scale_rms_over_noise": small_rms / noise if noise > 0 else float("inf"),
                         "sky_fraction": float(sky.mean())})
        residuals.append(small / noise)
        channels[-1]["star_flux_scale"] = scales[c]
        if scales[c] is not None:
            channels[-1].update(extended_kept(mosaic[..., c], sc, tc - sc, covered, scales[c]))
        skies.append(sky)
    result = {
        "mosaic": os.path.basename(mosaic_path),
        "covered_fraction": float(covered.mean()),
        "channels": channels,
        "residual_rms_over_noise": max(ch["residual_rms_over_noise"] for ch in channels),
        "small_scale_rms_over_noise": max(ch["small_scale_rms_over_noise"] for ch in channels),
    }
    if catalogue:
        result["extended_kept"] = min(ch["extended_kept"] for ch in channels)
        result["large_scale_rms_over_noise"] = max(ch["large_scale_rms_over_noise"] for ch in channels)
        result.update(star_positions(truth_path, mosaic, mcards, channels[min(1, len(channels) - 1)]["noise"]))
    report_path = os.path.join(os.path.dirname(os.path.abspath(mosaic_path)), "report.json")
    if os.path.exists(report_path):  # the seam metrics zdask run measured on its tiles
        with open(report_path) as fh:
            run = json.load(fh).get("mosaic", {})
        result["seam"] = {k: run.get(k) for k in ("seam_before", "seam_after", "pair_seam_before", "pair_seam_after")}
    if manifest_path is not None:
        result["trails"] = trail_residuals(manifest_path, mcards, residuals, skies)
        levels = [t["median_residual_over_noise"] for t in result["trails"]
                  if t["median_residual_over_noise"] is not None]
        result["trail_residual_over_noise"] = max(levels) if levels else None
    result["scores"] = scores
    return result


def extended_kept(mosaic: np.ndarray, stars: np.ndarray, extended: np.ndarray, covered: np.ndarray,
                  scale: float) -> dict:
    """How much of the truth's extended emission the mosaic kept, and its leftover sky.

    ``scale`` is the mosaic's photometric scale against the truth (from star apertures).
    Fits mosaic − scale·stars ≈ k·extended + a + b·x + c·y on covered pixels: k/scale is the
    fraction of the extended object kept (1: all of it; a per-frame background subtraction
    that eats halos gives less); the plane keeps k insensitive to a leftover gradient, which
    is measured separately: the large-scale residual is the RMS of 64 px cell medians of
    mosaic − scale·truth − offset, relative to the pixel noise.
    """
    yy, xx = np.nonzero(covered)
    s = stars[yy, xx].astype(np.float64)
    y = mosaic[yy, xx].astype(np.float64) - scale * s
    e = extended[yy, xx].astype(np.float64)
    h, w = mosaic.shape
    design = np.stack([e, np.ones_like(y), xx / w, yy / h], axis=1)
    # Pixels of stars are left out: a stack's PSF is not the truth's.
    keep = s < 0.5 * np.std(y)
    coef, *_ = np.linalg.lstsq(design[keep], y[keep], rcond=None)
    kept = float(coef[0] / scale) if scale > 0 else float("nan")
    offset = np.median(y - scale * e)
    residual = np.zeros(mosaic.shape)
    residual[yy, xx] = y - scale * e - offset
    noise = pixel_noise(mosaic, covered)
    sky = np.zeros(mosaic.shape, dtype=bool)
    sky[yy[keep], xx[keep]] = True
    cells = large_scale_background(residual, sky, BACKGROUND_BOX)
    large = float(np.sqrt(np.mean(cells[covered] ** 2)) / noise) if noise > 0 else float("inf")
    return {"extended_kept": kept, "large_scale_rms_over_noise": large}


def star_positions(truth_path: str, mosaic: np.ndarray, mosaic_cards: dict, noise: float) -> dict:
    """Median distance (px) between measured star centroids in the mosaic and the catalogue.

    Uses isolated stars (no other catalogued star within 12 px) with a peak well above the
    noise and far below saturation, measured in the green (or only) channel.
    """
    from astropy.table import Table

    stars = Table.read(truth_path, hdu="STARS")
    x, y = wcs_from_header(mosaic_cards).all_world2pix(np.asarray(stars["RA"]), np.asarray(stars["DEC"]), 0)
    flux = np.asarray(stars["FLUX_G"], dtype=np.float64)
    pts = np.stack([x, y], axis=1)
    from scipy.spatial import cKDTree

    nearest, _ = cKDTree(pts).query(pts, k=2)
    order = np.argsort(flux)[::-1]
    isolated = nearest[:, 1] > 12
    # Bright enough for a precise centroid, faint enough to be unsaturated in every frame.
    usable = isolated & (flux > 400 * noise) & (flux < 20000)
    chosen = [k for k in order if usable[k]][:200]
    offsets = centroid_offsets(mosaic[..., min(1, mosaic.shape[-1] - 1)], x[chosen], y[chosen])
    dist = np.hypot(offsets[:, 0], offsets[:, 1])
    dist = dist[np.isfinite(dist)]
    return {"stars_measured": int(dist.size),
            "star_offset_px_median": float(np.median(dist)) if dist.size else None}


def photometric_scales(truth_path: str, mosaic: np.ndarray, mosaic_cards: dict) -> list[float]:
    """Per channel, the median ratio of mosaic aperture fluxes to catalogue fluxes of isolated,
    unsaturated stars: the mosaic's photometric scale against the truth (flux is conserved
    by resampling and stacking; peak values are not)."""
    from astropy.table import Table
    from scipy.spatial import cKDTree

    stars = Table.read(truth_path, hdu="STARS")
    x, y = wcs_from_header(mosaic_cards).all_world2pix(np.asarray(stars["RA"]), np.asarray(stars["DEC"]), 0)
    pts = np.stack([x, y], axis=1)
    nearest, _ = cKDTree(pts).query(pts, k=2)
    names = ["FLUX_R", "FLUX_G", "FLUX_B"] if mosaic.shape[-1] == 3 else ["FLUX_G"]
    scales = []
    for c, name in enumerate(names):
        flux = np.asarray(stars[name], dtype=np.float64)
        chosen = (nearest[:, 1] > 15) & (flux > 2000) & (flux < 20000)
        measured = aperture_fluxes(mosaic[..., c], x[chosen], y[chosen])
        ratio = measured / flux[chosen]
        ratio = ratio[np.isfinite(ratio)]
        scales.append(float(np.median(ratio)) if ratio.size >= 5 else float("nan"))
    return scales


def trail_residuals(manifest_path: str, mosaic_cards: dict, residuals: list, skies: list) -> list[dict]:
    """Median excess (noise units, worst channel) along each simulated trail over the sky
    beside it.

    Each sample on the trail line is compared with the mean of two samples offset
    perpendicularly by 3 trail widths (at least 8 px) on either side, so smooth structure
    that the trail crosses (a galaxy core, a gradient) cancels and only the trail counts.
    """
    with open(manifest_path) as fh:
        manifest = json.load(fh)
    mosaic_wcs = wcs_from_header(mosaic_cards)
    h, w = residuals[0].shape
    out = []
    for frame, geometry in zip(manifest["frames"], frames_of(manifest)):
        trail = geometry["trail"]
        if not trail:
            continue
        x0, y0, x1, y1 = trail["ends"]
        t = np.linspace(0.0, 1.0, 400)
        ra, dec = geometry["wcs"].all_pix2world(x0 + t * (x1 - x0), y0 + t * (y1 - y0), 0)
        mx, my = mosaic_wcs.all_world2pix(ra, dec, 0)
        direction = np.array([mx[-1] - mx[0], my[-1] - my[0]])
        normal = np.array([-direction[1], direction[0]]) / max(np.hypot(*direction), 1e-9)
        side = max(8.0, 3.0 * FWHM_PER_SIGMA * trail["sigma_px"])
        points = [(mx, my), (mx + side * normal[0], my + side * normal[1]),
                  (mx - side * normal[0], my - side * normal[1])]
        idx = [(np.round(px).astype(int), np.round(py).astype(int)) for px, py in points]
        inside = np.ones(mx.size, dtype=bool)
        for ix, iy in idx:
            inside &= (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        levels = []
        for residual, sky in zip(residuals, skies):
            on, left, right = ([residual[iy[inside], ix[inside]], sky[iy[inside], ix[inside]]] for ix, iy in idx)
            keep = on[1] & left[1] & right[1]
            if keep.sum() >= 10:
                excess = on[0][keep] - 0.5 * (left[0][keep] + right[0][keep])
                levels.append(float(np.median(excess)))
        out.append({"file": frame["file"], "samples": int(inside.sum()),
                    "median_residual_over_noise": max(levels) if levels else None})
    return out


def format_report(result: dict) -> str:
    return json.dumps(result, indent=2)


def format_scores(scores: dict) -> str:
    """The survey scores as a table, σ = the mosaic's own per-pixel sky noise."""
    def figure(value, fmt=".2f"):
        return "-" if value is None else format(value, fmt)

    rows = [("large-scale residual (σ)", figure(scores["large_scale"]),
             "RMS of 32 px block medians of mosaic − fitted truth"),
            ("extended light kept", figure(scores["extended_kept"]),
             scores.get("extended_note", "fitted extended light / star light scale; 1 = all kept")),
            ("residual (σ)", figure(scores["residual"]), "RMS of mosaic − fitted truth, bright star cores left out"),
            ("coverage", figure(scores.get("coverage"), ".3f"),
             "covered part of the frames' footprints" if "coverage" in scores else "needs --manifest")]
    seams = scores["seams"]
    if seams is None:
        rows.append(("seams (σ)", "-", scores["seams_note"]))
    else:
        rows.append(("seams (σ)", figure(seams["std"]), "spread of the median residual of the panels and overlaps"))
        for b in seams["boundaries"]:
            p, q = b["panels"]
            rows.append((f"  panels {p} | {q}", f"{b['step']:+.2f}",
                         f"step {p} → {q}; their overlap off their mean by {b['excess']:+.2f}"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value:>6}  {note}" for name, value, note in rows)
