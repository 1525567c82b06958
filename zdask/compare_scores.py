"""The survey scores of ``zdask compare``: large-scale residual, seams by panel region,
extended light kept, residual and coverage, measured on the truth's grid.

They follow the definitions of the survey kit's scorer (skykit's ``metrics.py``), so a
mosaic of simulated data and one of a rendered real sky are judged by the same figures. The
mosaic is resampled (bilinearly) onto the truth's grid, the frames' true footprints and
satellite trails come from the survey's manifest, and ``zdask.ops.quality.survey_scores``
does the arithmetic. Two survey formats are read:

- ``zdask simulate``: truth.fits holds the (3, H, W) sky and an EXTENDED extension (the
  stars are the difference); each manifest frame has ``wcs_true`` (FITS cards), the frame
  size is ``frame_shape``, a trail is given by its ends and FWHM ``width_px``;
- the survey kit: truth.fits holds the luminance (R + 2G + B)/4 and truth_stars.fits beside
  it the stars alone; each frame has ``wcs`` (ctype, crval, crpix, cd), the frame size is in
  ``camera``, a trail by its ends and Gaussian ``sigma_px``. The mosaic's luminance is scored.
"""

from __future__ import annotations

import json
import os

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from zdask.graph.geometry import footprint_outline
from zdask.io.errors import FileError
from zdask.io.fitsheader import celestial_cards, wcs_from_header
from zdask.ops.quality import polygon_mask, survey_scores
from zdask.ops.warp import pixel_map, remap, wcs_pixel_transform

KIT_STARS_FILE = "truth_stars.fits"
TRAIL_MARGIN_PX = 6.0  # beyond 6 σ of a trail's profile: what resampling spreads, plus a margin
TRAIL_GROW_PX = 2      # the zone then grows by this (city-block distance), as the kit's does
FWHM_PER_SIGMA = 2.3548


def read_truth(truth_path: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(truth, stars, celestial cards): (h, w, C) float32 arrays in the truth's units, C = 3
    for the simulator's RGB truth, 1 for a luminance truth with its stars in a file beside it."""
    with fits.open(truth_path, memmap=False) as hdul:
        truth = np.asarray(hdul[0].data, dtype=np.float32)
        cards = celestial_cards(hdul[0].header)
        extended = (np.asarray(hdul["EXTENDED"].data, dtype=np.float32)
                    if "EXTENDED" in hdul else None)
    if extended is not None:
        stars = truth - extended
    else:
        stars_path = os.path.join(os.path.dirname(os.path.abspath(truth_path)), KIT_STARS_FILE)
        if not os.path.exists(stars_path):
            raise FileError(truth_path, f"no EXTENDED extension and no {KIT_STARS_FILE} beside it "
                            "(cannot tell the stars from the extended light)")
        stars = np.asarray(fits.getdata(stars_path), dtype=np.float32)
        if stars.shape != truth.shape:
            raise FileError(stars_path, f"shape {stars.shape} differs from the truth's {truth.shape}")
    as_cube = (lambda a: np.moveaxis(a, 0, -1) if a.ndim == 3 else a[..., None])
    return as_cube(truth), as_cube(stars), cards


def frames_of(manifest: dict) -> list[dict]:
    """Per frame: panel, true WCS, (h, w) and trail (ends in frame px, Gaussian σ) or None."""
    out = []
    for frame in manifest["frames"]:
        if "wcs_true" in frame:  # zdask simulate
            wcs, (h, w) = wcs_from_header(frame["wcs_true"]), manifest["frame_shape"]
        else:  # the survey kit
            d = frame["wcs"]
            wcs = WCS(naxis=2)
            wcs.wcs.ctype, wcs.wcs.crval, wcs.wcs.crpix = d["ctype"], d["crval"], d["crpix"]
            wcs.wcs.cd = np.array(d["cd"])
            h, w = manifest["camera"]["height"], manifest["camera"]["width"]
        trail = frame.get("trail")
        if trail:
            sigma = trail["sigma_px"] if "sigma_px" in trail else trail["width_px"] / FWHM_PER_SIGMA
            trail = {"ends": (trail["x0"], trail["y0"], trail["x1"], trail["y1"]), "sigma_px": sigma}
        out.append({"panel": int(frame["panel"]), "wcs": wcs, "shape": (int(h), int(w)), "trail": trail})
    return out


def footprints(frames: list[dict], grid: WCS, shape: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """(pixels inside any frame, {panel: pixels inside any of its frames}) on ``grid``."""
    panels: dict = {}
    for frame in frames:
        # edges sampled every 1/8: a frame's edges are not quite straight on another TAN grid
        x, y = grid.all_world2pix(*footprint_outline(frame["wcs"], frame["shape"], per_side=8), 0)
        mask = polygon_mask(shape, x, y)
        panel = frame["panel"]
        panels[panel] = panels[panel] | mask if panel in panels else mask
    inside = np.zeros(shape, bool)
    for mask in panels.values():
        inside |= mask
    return inside, panels


def trail_zone(frames: list[dict], grid: WCS, shape: tuple[int, int]) -> np.ndarray:
    """Pixels of ``grid`` within 6 σ + ``TRAIL_MARGIN_PX`` of a trail, inside its frame, and
    those ``TRAIL_GROW_PX`` from them."""
    import cv2
    from scipy import ndimage

    zone = np.zeros(shape, bool)
    for frame in frames:
        if not frame["trail"]:
            continue
        x0, y0, x1, y1 = frame["trail"]["ends"]
        half = 6 * frame["trail"]["sigma_px"] + TRAIL_MARGIN_PX
        ra, dec = frame["wcs"].all_pix2world([x0, x1], [y0, y1], 0)
        gx, gy = grid.all_world2pix(ra, dec, 0)
        band = np.zeros(shape, np.uint8)  # candidates: a band around the line on the grid
        cv2.line(band, (int(round(gx[0])), int(round(gy[0]))), (int(round(gx[1])), int(round(gy[1]))),
                 1, int(np.ceil(2 * half)) + 3)
        yy, xx = np.nonzero(band)
        if xx.size == 0:
            continue
        fx, fy = frame["wcs"].all_world2pix(*grid.all_pix2world(xx, yy, 0), 0)
        h, w = frame["shape"]
        length = np.hypot(x1 - x0, y1 - y0)
        distance = np.abs((fx - x0) * (y1 - y0) - (fy - y0) * (x1 - x0)) / max(length, 1e-9)
        near = (distance < half) & (fx >= -0.5) & (fy >= -0.5) & (fx < w - 0.5) & (fy < h - 0.5)
        zone[yy[near], xx[near]] = True
    return ndimage.binary_dilation(zone, iterations=TRAIL_GROW_PX) if zone.any() else zone


def reproject_onto(image: np.ndarray, src_cards: dict, dst_cards: dict, shape: tuple[int, int]) -> np.ndarray:
    """``image`` (h, w[, C]) on grid ``src_cards`` resampled (bilinearly) onto ``dst_cards`` of ``shape``."""
    transform = wcs_pixel_transform(wcs_from_header(src_cards), wcs_from_header(dst_cards))
    mx, my = pixel_map(transform, (0, shape[0]), (0, shape[1]), step=32)
    return remap(image, mx, my)


def score_on_truth(mosaic: np.ndarray, coverage: np.ndarray, mosaic_cards: dict, truth: np.ndarray,
                   stars: np.ndarray, cards: dict, manifest_path: str | None) -> dict:
    """The survey scores of ``mosaic`` (h, w, C) against the truth (:func:`read_truth`: the
    truth, its stars and its grid's cards), per scored plane and worst over planes. Without a
    manifest the seams are not measured and "covered" is where the mosaic has data (not the
    frames' true footprints), so no coverage figure either."""
    shape = truth.shape[:2]
    image = reproject_onto(mosaic, mosaic_cards, cards, shape)
    if image.ndim == 2:
        image = image[..., None]
    observed = reproject_onto(coverage, mosaic_cards, cards, shape)
    if truth.shape[-1] == 1 and image.shape[-1] == 3:  # a luminance truth: score the luminance
        image = (image[..., :1] + 2 * image[..., 1:2] + image[..., 2:]) / 4
    covered = np.isfinite(image).all(axis=-1) & (image != 0).all(axis=-1) & (observed > 0)
    trails = np.zeros(shape, bool)
    panels = None
    result: dict = {}
    if manifest_path is not None:
        with open(manifest_path) as fh:
            frames = frames_of(json.load(fh))
        grid = wcs_from_header(cards)
        inside, panels = footprints(frames, grid, shape)
        covered &= inside
        result["coverage"] = float(covered.sum() / max(inside.sum(), 1))
        trails = trail_zone(frames, grid, shape)
    planes = []
    for c in range(image.shape[-1]):
        t = truth[..., min(c, truth.shape[-1] - 1)]
        s = stars[..., min(c, stars.shape[-1] - 1)]
        planes.append(survey_scores(image[..., c], s, t - s, covered, trails, panels))
    result["planes"] = "luminance" if image.shape[-1] == 1 else "RGB"
    result["per_plane"] = planes
    result["large_scale"] = max(p["large_scale"] for p in planes)
    result["residual"] = max(p["residual"] for p in planes)
    kept = [p["extended_kept"] for p in planes]
    result["extended_kept"] = None if None in kept else min(kept)
    if result["extended_kept"] is None:
        result["extended_note"] = next(p["extended_note"] for p in planes if p["extended_kept"] is None)
    if panels is None:
        result["seams"] = None
        result["seams_note"] = "seams: needs --manifest (the panels' footprints)"
    else:
        # the worst plane's seams, its figures and boundaries together
        result["seams"] = max(planes, key=lambda p: p["seams"]["std"])["seams"]
    return result
