"""Quality measures of a mosaic against a known truth (pure kernels)."""

from __future__ import annotations

import numpy as np

from zdask.ops.robust import robust_sigma

#: the robust σ of the quality measures: in float64, NaN when no value is finite
_SIGMA = {"dtype": np.float64, "empty": float("nan")}


def pixel_noise(image: np.ndarray, mask: np.ndarray) -> float:
    """White-noise σ from differences of horizontally adjacent pixels that are both in ``mask``.

    Differences cancel everything smoother than a pixel (gradients, halos, seams), so this
    measures noise alone. Resampling correlates neighbours and lowers it somewhat: ratios
    against it are conservative (they overstate residual structure, never hide it).
    """
    both = mask[:, 1:] & mask[:, :-1]
    diff = (image[:, 1:] - image[:, :-1])[both]
    return robust_sigma(diff, **_SIGMA) / np.sqrt(2.0)


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares (gain, offset) of y ≈ gain·x + offset; (1, 0) when x is constant."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    vx = x.var()
    if x.size < 2 or vx <= 0:
        return 1.0, float(np.mean(y - x)) if x.size else 0.0
    gain = float(((x - x.mean()) * (y - y.mean())).mean() / vx)
    return gain, float(y.mean() - gain * x.mean())


def large_scale_background(image: np.ndarray, mask: np.ndarray, box: int = 32) -> np.ndarray:
    """Smooth background of ``image``: medians of ``box``-px cells (``mask`` pixels only),
    interpolated bilinearly back to full size. Cells with too few pixels borrow the median of
    all cells."""
    import cv2

    h, w = image.shape
    ny, nx = -(-h // box), -(-w // box)
    cells = np.full((ny, nx), np.nan, dtype=np.float32)
    for j in range(ny):
        for i in range(nx):
            block = image[j * box:(j + 1) * box, i * box:(i + 1) * box]
            keep = mask[j * box:(j + 1) * box, i * box:(i + 1) * box]
            if keep.sum() >= box * box // 8:
                cells[j, i] = np.median(block[keep])
    fill = np.nanmedian(cells) if np.isfinite(cells).any() else 0.0
    cells = np.where(np.isfinite(cells), cells, fill).astype(np.float32)
    # Cell centres sit at (k + 0.5) * box; resizing with pixel-centre alignment matches that.
    return cv2.resize(cells, (nx * box, ny * box), interpolation=cv2.INTER_LINEAR)[:h, :w]


def centroid_offsets(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, half: int = 4) -> np.ndarray:
    """(dx, dy) of the background-subtracted intensity centroid of ``image`` around each predicted
    position (x, y), in pixels; NaN rows where the box leaves the image or holds a NaN."""
    h, w = image.shape
    out = np.full((len(xs), 2), np.nan)
    for k, (x, y) in enumerate(zip(xs, ys)):
        ix, iy = int(round(x)), int(round(y))
        if ix - half < 0 or iy - half < 0 or ix + half >= w or iy + half >= h:
            continue
        box = image[iy - half:iy + half + 1, ix - half:ix + half + 1].astype(np.float64)
        if not np.isfinite(box).all():
            continue
        edge = np.concatenate([box[0], box[-1], box[1:-1, 0], box[1:-1, -1]])
        flux = np.clip(box - np.median(edge), 0, None)
        total = flux.sum()
        if total <= 0:
            continue
        gy, gx = np.mgrid[-half:half + 1, -half:half + 1]
        out[k] = ((flux * gx).sum() / total + ix - x, (flux * gy).sum() / total + iy - y)
    return out


def aperture_fluxes(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, radius: float = 6.0,
                    annulus: tuple[float, float] = (9.0, 13.0)) -> np.ndarray:
    """Background-subtracted flux in a circular aperture around each (x, y); NaN where the
    annulus leaves the image or holds a NaN. The background is the annulus median."""
    h, w = image.shape
    r_out = int(np.ceil(annulus[1]))
    gy, gx = np.mgrid[-r_out:r_out + 1, -r_out:r_out + 1]
    out = np.full(len(xs), np.nan)
    for k, (x, y) in enumerate(zip(xs, ys)):
        ix, iy = int(round(x)), int(round(y))
        if ix - r_out < 0 or iy - r_out < 0 or ix + r_out >= w or iy + r_out >= h:
            continue
        box = image[iy - r_out:iy + r_out + 1, ix - r_out:ix + r_out + 1].astype(np.float64)
        dist = np.hypot(gx + ix - x, gy + iy - y)
        ring = box[(dist >= annulus[0]) & (dist <= annulus[1])]
        inner = box[dist <= radius]
        if not (np.isfinite(ring).all() and np.isfinite(inner).all()):
            continue
        out[k] = inner.sum() - np.median(ring) * inner.size
    return out


# --- The scores of a survey with a known truth: large-scale residual, seams, extended light kept.
# Same definitions as the survey kit's scorer, so figures read off simulated and rendered
# surveys compare with each other. All on the truth's grid, in the truth's units.

STAR_BLURS_PX = (0.0, 0.75, 1.25, 1.75, 2.5, 3.5)
"""Gaussian σ (truth px) tried for the stars when fitting a mosaic to its truth: absorbs the
stack's PSF and resampling blur (the truth's stars are sharper than any stack's)."""
FIT_SAMPLE = 400_000     # pixels drawn (fixed seed) for the fit: plenty, and bounded in time
BACKGROUND_STARLIGHT = 0.5  # truth units: pixels with less star light than this are background
NOISE_BOX = 15           # px: the box mean removed before measuring the pixel noise
LARGE_SCALE_BOX = 32     # px: blocks whose medians make the large-scale residual
LARGE_SCALE_FILL = 0.3   # blocks with fewer background pixels than this fraction are skipped
SEAM_MIN_PIXELS = 500    # background pixels a panel region needs to have a median
BRIGHT_CORE = 20.0       # σ: star cores brighter than this are left out of the residual RMS
EXTENDED_MIN_FRACTION = 0.01  # share of covered pixels where the extended light must exceed σ


def clipped_least_squares(columns: list, y: np.ndarray, iterations: int = 3, clip: float = 4.0) -> np.ndarray:
    """Coefficients of y ≈ Σ c_i·columns_i + offset (offset last), refitted ``iterations``
    times without the points beyond ``clip`` × the robust σ of the residual."""
    design = np.stack([np.asarray(c, np.float64) for c in columns] + [np.ones(len(y))], axis=1)
    y = np.asarray(y, np.float64)
    keep = np.isfinite(design).all(axis=1) & np.isfinite(y)
    coef = np.zeros(design.shape[1])
    for _ in range(iterations):
        coef, *_ = np.linalg.lstsq(design[keep], y[keep], rcond=None)
        residual = y - design @ coef
        spread = robust_sigma(residual[keep], **_SIGMA)
        keep &= np.abs(residual) < clip * max(spread, 1e-12)
    return coef


def fit_to_truth(image: np.ndarray, stars: np.ndarray, extended: np.ndarray, sample: np.ndarray,
                 blurs: tuple = STAR_BLURS_PX) -> dict:
    """``image`` ≈ star_gain·blur(stars) + extended_gain·extended + offset on the ``sample``
    pixels (a flat index array), with the blur (from ``blurs``) that leaves the smallest
    residual RMS. The star light sets the image's scale: extended light a sky model took out
    shows as extended_gain < star_gain."""
    from scipy import ndimage

    y = image.ravel()[sample].astype(np.float64)
    ext = extended.ravel()[sample].astype(np.float64)
    best = None
    for blur in blurs:
        s = (ndimage.gaussian_filter(stars, blur) if blur > 0 else stars).ravel()[sample].astype(np.float64)
        a, a_e, b = clipped_least_squares([s, ext], y)
        rms = float(np.sqrt(np.mean((y - (a * s + a_e * ext + b)) ** 2)))
        if best is None or rms < best["rms"]:
            best = {"rms": rms, "blur_px": blur, "star_gain": float(a), "extended_gain": float(a_e),
                    "offset": float(b)}
    return best


def highpass_noise(residual: np.ndarray, covered: np.ndarray, background: np.ndarray,
                   box: int = NOISE_BOX) -> float:
    """Per-pixel sky noise σ: robust σ, on ``background`` pixels, of the residual minus its
    ``box``-px mean over covered pixels. Noise correlated by resampling counts (unlike
    differences of neighbours, which it cancels)."""
    from scipy import ndimage

    filled = np.where(covered, residual, 0).astype(np.float32)
    weight = ndimage.uniform_filter(covered.astype(np.float32), box)
    highpass = residual - ndimage.uniform_filter(filled, box) / np.maximum(weight, 1e-3)
    return robust_sigma(highpass[background], **_SIGMA)


def block_median_rms(residual: np.ndarray, mask: np.ndarray, box: int = LARGE_SCALE_BOX,
                     min_fill: float = LARGE_SCALE_FILL) -> float:
    """RMS of the medians of ``box``×``box`` blocks of ``residual`` over ``mask`` pixels (blocks
    with more than ``min_fill`` of their pixels in the mask; partial blocks at the right and
    bottom edges are left out). Noise averages out in a block; gradients, bowls and offsets
    do not."""
    import warnings

    h, w = residual.shape
    hb, wb = h // box, w // box
    blocks = np.where(mask, residual, np.nan)[:hb * box, :wb * box]
    blocks = blocks.reshape(hb, box, wb, box).transpose(0, 2, 1, 3).reshape(hb, wb, box * box)
    enough = np.isfinite(blocks).sum(axis=2) > min_fill * box * box
    if not enough.any():
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks, left out below
        medians = np.nanmedian(blocks[enough], axis=1)
    return float(np.sqrt(np.mean(medians ** 2)))


def panel_seams(residual: np.ndarray, background: np.ndarray, panels: dict, noise: float,
                min_pixels: int = SEAM_MIN_PIXELS) -> dict:
    """Median residual (σ units) of each panel's own region (covered by no other panel) and of
    each overlap of two panels, on background pixels; their spread; and per boundary (two
    panels that overlap) the ``step`` from one panel's own region to the other's and the
    overlap's ``excess`` over the mean of the two. ``panels`` maps a panel to its footprint."""
    keys = sorted(panels)
    own = {}
    regions = []
    for p in keys:
        others = np.zeros(residual.shape, bool)
        for q in keys:
            if q != p:
                others |= panels[q]
        pick = panels[p] & ~others & background
        if pick.sum() > min_pixels:
            own[p] = float(np.median(residual[pick])) / noise
            regions.append({"region": f"panel {p}", "pixels": int(pick.sum()), "median": own[p]})
    boundaries = []
    for i, p in enumerate(keys):
        for q in keys[i + 1:]:
            pick = panels[p] & panels[q] & background
            if pick.sum() <= min_pixels:
                continue
            level = float(np.median(residual[pick])) / noise
            regions.append({"region": f"overlap {p}-{q}", "pixels": int(pick.sum()), "median": level})
            if p in own and q in own:
                boundaries.append({"panels": [p, q], "step": own[q] - own[p],
                                   "excess": level - 0.5 * (own[p] + own[q])})
    levels = [r["median"] for r in regions]
    # max_excess is the kit's seam_max_step_rel (an overlap against its two panels); max_step
    # is zdask's own: one panel's level against its neighbour's
    return {"std": float(np.std(levels)) if len(levels) > 1 else float("nan"),
            "max_excess": max((abs(b["excess"]) for b in boundaries), default=float("nan")),
            "max_step": max((abs(b["step"]) for b in boundaries), default=float("nan")),
            "regions": regions, "boundaries": boundaries}


def polygon_mask(shape: tuple[int, int], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean mask of the pixels the polygon with vertices (xs, ys) covers (0-based pixel
    coordinates, 1/16 px precision): OpenCV's fill, which also takes the pixels its right
    and bottom edges pass through, as the survey kit's footprints do."""
    import cv2

    mask = np.zeros(shape, np.uint8)
    vertices = np.round(np.stack([xs, ys], axis=1) * 16).astype(np.int32)
    cv2.fillPoly(mask, [vertices], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def survey_scores(image: np.ndarray, stars: np.ndarray, extended: np.ndarray, covered: np.ndarray,
                  trails: np.ndarray, panels: dict | None = None) -> dict:
    """The scores of ``image`` against its truth (``stars`` + ``extended``), all 2-D on one grid.

    ``covered``: pixels the image covers; ``trails``: pixels near satellite trails, left out;
    ``panels``: each panel's footprint (None: no seams). The image is fitted as
    a·(blur(stars) + extended) + b with a and the blur from the stars (``fit_to_truth``); the
    residual image − a·(blur(stars) + extended) − b keeps any extended light a sky model took
    out or added. Figures in units of σ, the image's own per-pixel sky noise
    (``highpass_noise`` on background pixels, where the stars' light is below
    ``BACKGROUND_STARLIGHT`` truth units):

    - ``large_scale``: RMS of 32-px block medians of the residual (gradients, bowls, halo loss);
    - ``seams``: ``panel_seams`` (spread of the panels' and overlaps' median residuals, and the
      step across each boundary);
    - ``extended_kept``: the fitted extended light over the star light's scale (1 = all kept,
      0 = removed, negative = the sky model took out more than the object); None, with
      ``extended_note``, when the truth's extended light stays below σ almost everywhere;
    - ``residual``: RMS of the residual without bright star cores (≈1: noise alone).
    """
    from scipy import ndimage

    usable = np.flatnonzero(covered & ~trails)
    if usable.size < 100:
        raise ValueError(f"only {usable.size} covered pixels to fit the truth on")
    sample = np.random.default_rng(0).choice(usable, min(usable.size, FIT_SAMPLE), replace=False)
    fit = fit_to_truth(image, stars, extended, sample)
    a, b = fit["star_gain"], fit["offset"]
    blurred = ndimage.gaussian_filter(stars, fit["blur_px"]) if fit["blur_px"] > 0 else stars
    residual = np.where(covered, image - (a * (blurred + extended) + b), np.nan).astype(np.float32)
    background = covered & (blurred < BACKGROUND_STARLIGHT) & ~trails
    noise = highpass_noise(residual, covered, background)
    faint = covered & (a * blurred < BRIGHT_CORE * noise) & ~trails
    lit = float(np.mean(np.abs(a * extended[covered]) > noise))
    scores = {
        "noise": noise, "fit": fit,
        "large_scale": block_median_rms(residual, background) / noise,
        "residual": float(np.sqrt(np.mean(residual[faint] ** 2))) / noise,
        "extended_kept": fit["extended_gain"] / a if a and lit >= EXTENDED_MIN_FRACTION else None,
        "extended_lit_fraction": lit,
    }
    if scores["extended_kept"] is None:
        scores["extended_note"] = (f"the truth's extended light exceeds σ on {lit:.1%} of the covered "
                                   f"pixels (at least {EXTENDED_MIN_FRACTION:.0%} needed)")
    if panels:
        scores["seams"] = panel_seams(residual, background, panels, noise)
    return scores
