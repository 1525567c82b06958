"""Matching sky surfaces between overlapping images, keeping what they agree on.

Frames inside a master tile, and master tiles inside a mosaic, each carry their own sky:
light-pollution gradients and offsets that move with the frame, while nebulae and halos stay
on the sky. The surfaces are solved so that every pair of images agrees where they overlap:
emission that both images show cancels in their difference and is kept; what differs between
images is removed. A surface common to all images cannot be told
from the sky and is left alone (the mean correction over images is zero).

Images are cut-outs on one common (usually binned) grid: ``(image (h, w, C), weight (h, w),
origin (y0, x0))``. Pure NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zdask.ops.background import Surface, fit_surface, n_terms, poly_terms


@dataclass(frozen=True)
class CutOut:
    """An image on a common grid: its pixels, its weight (0 = no data), and where it sits."""

    image: np.ndarray        # (h, w, C) float32, NaN where no data
    weight: np.ndarray       # (h, w) float32 >= 0
    origin: tuple[int, int]  # (y0, x0) on the common grid

    def window(self) -> tuple[slice, slice]:
        y0, x0 = self.origin
        return slice(y0, y0 + self.image.shape[0]), slice(x0, x0 + self.image.shape[1])


def accumulate(items: list[CutOut], values: list[np.ndarray], shape: tuple[int, int], channels: int):
    """Weighted sum of ``values`` (one per cut-out, NaN = no data) and the weight sum on the grid."""
    total = np.zeros((*shape, channels))
    wsum = np.zeros(shape)
    for item, value in zip(items, values):
        ys, xs = item.window()
        w = np.where(np.isfinite(value).all(axis=-1), item.weight, 0.0)
        total[ys, xs] += np.nan_to_num(value) * w[..., None]
        wsum[ys, xs] += w
    return total, wsum


def match_surfaces(
    items: list[CutOut], grid_shape: tuple[int, int], *, order: int, extent, passes: int = 4,
    exclude: np.ndarray | None = None, min_overlap: int = 20, step: int = 1,
    max_samples: int = 20000,
) -> list[np.ndarray]:
    """Per-image surface coefficients ``(C, n_terms)`` (subtract them to match the images).

    One least-squares solve over every overlapping pair: on their shared pixels,
    ``S_i − S_j ≈ I_i − I_j``, accumulated as normal equations (a few hundred unknowns
    whatever the pixel count). The images' common surface is undetermined; the minimum-norm
    solution fixes it so that the corrections sum to zero (per connected group of images),
    which keeps the overall level where it was. ``passes`` rounds of 3σ clipping of each
    pair's residuals drop stars, trails and PSF differences; ``exclude`` (grid shape, True =
    leave out) masks known sources up front. ``extent`` = (y_min, y_max, x_min, x_max) of the
    grid in the coordinates the surfaces are evaluated in; pairs sharing fewer than
    ``min_overlap`` pixels are ignored, larger ones subsampled (``step``, ``max_samples``).
    """
    channels = items[0].image.shape[-1] if items else 0
    nt = n_terms(order)
    pairs = []
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            found = _pair_samples(items[i], items[j], exclude, step, max_samples, order, extent)
            if found is not None and len(found[1]) >= min_overlap:
                pairs.append((i, j, *found))
    coeffs = np.zeros((len(items) * nt, channels))
    if not pairs:
        return [coeffs[k * nt:(k + 1) * nt].T.copy() for k in range(len(items))]
    keeps = [np.ones(len(d), dtype=bool) for _, _, _, d in pairs]
    for _ in range(max(1, passes)):
        normal = np.zeros((len(items) * nt, len(items) * nt))
        rhs = np.zeros((len(items) * nt, channels))
        for (i, j, terms, diff), keep in zip(pairs, keeps):
            t, d = terms[keep], diff[keep]
            gram, proj = t.T @ t, t.T @ d
            a, b = slice(i * nt, (i + 1) * nt), slice(j * nt, (j + 1) * nt)
            normal[a, a] += gram
            normal[b, b] += gram
            normal[a, b] -= gram
            normal[b, a] -= gram
            rhs[a] += proj
            rhs[b] -= proj
        coeffs = np.linalg.lstsq(normal, rhs, rcond=None)[0]
        changed = False
        for n, (i, j, terms, diff) in enumerate(pairs):
            residual = diff - terms @ (coeffs[i * nt:(i + 1) * nt] - coeffs[j * nt:(j + 1) * nt])
            centre = np.median(residual[keeps[n]], axis=0)
            sigma = 1.4826 * np.median(np.abs(residual[keeps[n]] - centre), axis=0)
            keep = np.all(np.abs(residual - centre) <= 3.0 * np.maximum(sigma, 1e-12), axis=1)
            if keep.sum() >= min_overlap and not np.array_equal(keep, keeps[n]):
                keeps[n], changed = keep, True
        if not changed:
            break
    return [coeffs[k * nt:(k + 1) * nt].T.copy() for k in range(len(items))]


def _pair_samples(a: CutOut, b: CutOut, exclude, step, max_samples, order, extent):
    """(terms (n, n_terms), a − b (n, C)) on the pixels two cut-outs share, or None."""
    ay, ax = a.origin
    by, bx = b.origin
    y0, x0 = max(ay, by), max(ax, bx)
    y1 = min(ay + a.image.shape[0], by + b.image.shape[0])
    x1 = min(ax + a.image.shape[1], bx + b.image.shape[1])
    if y1 <= y0 or x1 <= x0:
        return None
    va = a.image[y0 - ay:y1 - ay:step, x0 - ax:x1 - ax:step]
    vb = b.image[y0 - by:y1 - by:step, x0 - bx:x1 - bx:step]
    use = (np.isfinite(va).all(axis=-1) & np.isfinite(vb).all(axis=-1)
           & (a.weight[y0 - ay:y1 - ay:step, x0 - ax:x1 - ax:step] > 0)
           & (b.weight[y0 - by:y1 - by:step, x0 - bx:x1 - bx:step] > 0))
    if exclude is not None:
        use &= ~exclude[y0:y1:step, x0:x1:step]
    rows, cols = np.nonzero(use)
    if rows.size > max_samples:  # an even thinning keeps the solve small on big overlaps
        pick = np.linspace(0, rows.size - 1, max_samples).astype(int)
        rows, cols = rows[pick], cols[pick]
    terms = poly_terms(x0 + cols * step, y0 + rows * step, order, extent)
    return terms, (va[rows, cols] - vb[rows, cols]).astype(np.float64)


def fit_common_sky(
    image: np.ndarray, weight: np.ndarray, *, order: int, extent, passes: int = 6,
    source_sigma: float = 2.0,
) -> np.ndarray:
    """Coefficients ``(C, n_terms)`` of the sky surface an assembled mosaic still holds.

    Matching images against one another leaves the surface they all share (light pollution
    on the same side of every frame). It is fitted here on the assembled (binned) mosaic,
    with sources left out asymmetrically: pixels more than ``source_sigma`` robust sigmas
    ABOVE the current surface are masked and stay masked (stars, nebulae and galaxy halos are
    positive; the sky is what lies under them), so extended emission grows out of the fit
    pass after pass instead of being fitted away.
    """
    img = image if image.ndim == 3 else image[..., None]
    valid = (weight > 0) & np.isfinite(img).all(axis=-1)
    # Sources are judged on the channel sum: a galaxy is positive in every channel.
    total = np.where(valid, img.sum(axis=-1), np.nan)
    excluded = ~valid
    coeffs = np.zeros((img.shape[-1], n_terms(order)))
    for _ in range(passes):
        fit = fit_surface(np.where(excluded[..., None], np.nan, img), order=order, extent=extent, step=1)
        coeffs = fit.coeffs
        model = Surface(coeffs, order, fit.extent, fit.n_used).evaluate(img.shape[:2]).sum(axis=-1)
        residual = total - model
        kept = residual[~excluded]
        if kept.size < 10 * n_terms(order):
            break
        centre = np.median(kept)
        sigma = 1.4826 * np.median(np.abs(kept - centre))
        grown = excluded | (valid & (residual > centre + source_sigma * sigma))
        if grown.sum() == excluded.sum():
            break
        excluded = grown
    return coeffs
