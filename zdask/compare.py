"""``zdask compare``: a mosaic against the simulator's truth, in numbers a user can read.

The truth is reprojected onto the mosaic's grid; per channel, the truth is mapped onto the
mosaic by a global linear fit (the mosaic's units and sky level are arbitrary), and the
residual is measured away from stars (the PSF of a stack never equals the truth's exactly).
"""

from __future__ import annotations

import json
import os

import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from zdask.graph.geometry import wcs_from_header
from zdask.ops.quality import centroid_offsets, large_scale_background, linear_fit, pixel_noise

BACKGROUND_BOX = 64  # px: cells of the large-scale background removed for the small-scale residual
from zdask.ops.warp import pixel_map, remap, wcs_pixel_transform


def _read_image(path: str, extension: int | str = 0) -> tuple[np.ndarray, dict]:
    with fits.open(path, memmap=False) as hdul:
        data = np.asarray(hdul[extension].data, dtype=np.float32)
        cards = celestial_cards(hdul[extension].header)
    image = np.moveaxis(data, 0, -1) if data.ndim == 3 else data[..., None]
    return image, cards


def celestial_cards(header: fits.Header) -> dict:
    """The 2-D celestial WCS of a header (a colour image's third axis dropped) as plain cards."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        celestial = WCS(header).celestial
    return {k: v for k, v in celestial.to_header(relax=True).items() if k not in ("WCSAXES",)}


def reproject_onto(image: np.ndarray, src_cards: dict, dst_cards: dict, shape: tuple[int, int]) -> np.ndarray:
    """``image`` (h, w, C) on grid ``src_cards`` resampled onto ``dst_cards`` of ``shape``."""
    transform = wcs_pixel_transform(wcs_from_header(src_cards), wcs_from_header(dst_cards))
    mx, my = pixel_map(transform, (0, shape[0]), (0, shape[1]), step=32)
    return remap(image, mx, my)


def compare(mosaic_path: str, truth_path: str, manifest_path: str | None = None,
            star_threshold: float = 0.5) -> dict:
    """Residual RMS after a linear fit relative to the mosaic's pixel noise, coverage, trails.

    Pixels where the truth's stars (truth minus its EXTENDED extension) exceed
    ``star_threshold`` × the mosaic noise are left out of the residual. With the simulator's
    manifest, the residual along each satellite trail is measured too (in noise units).
    """
    mosaic, mcards = _read_image(mosaic_path)
    with fits.open(mosaic_path, memmap=False) as hdul:
        coverage = np.asarray(hdul["COVERAGE"].data, dtype=np.float32)
    truth, tcards = _read_image(truth_path)
    extended, _ = _read_image(truth_path, "EXTENDED")
    shape = mosaic.shape[:2]
    truth_m = reproject_onto(truth, tcards, mcards, shape)
    stars_m = truth_m - reproject_onto(extended, tcards, mcards, shape)
    covered = (coverage > 0) & np.isfinite(mosaic).all(axis=-1) & np.isfinite(truth_m).all(axis=-1)
    channels, residuals, skies = [], [], []
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
        skies.append(sky)
    result = {
        "mosaic": os.path.basename(mosaic_path),
        "covered_fraction": float(covered.mean()),
        "channels": channels,
        "residual_rms_over_noise": max(ch["residual_rms_over_noise"] for ch in channels),
        "small_scale_rms_over_noise": max(ch["small_scale_rms_over_noise"] for ch in channels),
    }
    result.update(star_positions(truth_path, mosaic, mcards, channels[min(1, len(channels) - 1)]["noise"]))
    if manifest_path is not None:
        result["trails"] = trail_residuals(manifest_path, mcards, residuals, skies)
        levels = [t["median_residual_over_noise"] for t in result["trails"]
                  if t["median_residual_over_noise"] is not None]
        result["trail_residual_over_noise"] = max(levels) if levels else None
    return result


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


def trail_residuals(manifest_path: str, mosaic_cards: dict, residuals: list, skies: list) -> list[dict]:
    """Median small-scale residual (noise units, worst channel) along each simulated trail."""
    with open(manifest_path) as fh:
        manifest = json.load(fh)
    mosaic_wcs = wcs_from_header(mosaic_cards)
    h, w = residuals[0].shape
    out = []
    for frame in manifest["frames"]:
        trail = frame.get("trail")
        if not trail:
            continue
        t = np.linspace(0.0, 1.0, 400)
        fx = trail["x0"] + t * (trail["x1"] - trail["x0"])
        fy = trail["y0"] + t * (trail["y1"] - trail["y0"])
        ra, dec = wcs_from_header(frame["wcs_true"]).all_pix2world(fx, fy, 0)
        mx, my = mosaic_wcs.all_world2pix(ra, dec, 0)
        ix, iy = np.round(mx).astype(int), np.round(my).astype(int)
        inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        ix, iy = ix[inside], iy[inside]
        levels = []
        for residual, sky in zip(residuals, skies):
            keep = sky[iy, ix]
            if keep.sum() >= 10:
                levels.append(float(np.median(residual[iy[keep], ix[keep]])))
        out.append({"file": frame["file"], "samples": int(inside.sum()),
                    "median_residual_over_noise": max(levels) if levels else None})
    return out


def format_report(result: dict) -> str:
    return json.dumps(result, indent=2)
