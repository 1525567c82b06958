"""Matching sky surfaces between overlapping images, keeping what they agree on.

Frames inside a master tile, and master tiles inside a mosaic, each carry their own sky:
light-pollution gradients and offsets that move with the frame, while nebulae and halos stay
on the sky. Each image's surface is fitted to ``image − mean of the others`` where they
overlap, over a few passes: emission that every image shows cancels in the difference and is
kept; what differs between images is removed. A surface common to all images cannot be told
from the sky and is left alone (the mean correction over images is zero).

Images are cut-outs on one common (usually binned) grid: ``(image (h, w, C), weight (h, w),
origin (y0, x0))``. Pure NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zdask.ops.background import Surface, fit_surface, n_terms


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
    items: list[CutOut], grid_shape: tuple[int, int], *, order: int, extent, passes: int = 5,
    exclude: np.ndarray | None = None, min_overlap: int = 20, step: int = 1,
) -> list[np.ndarray]:
    """Per-image surface coefficients ``(C, n_terms)`` (subtract them to match the images).

    ``extent`` = (y_min, y_max, x_min, x_max) of the common grid in the coordinates the
    surfaces will be evaluated in; ``exclude`` (grid shape, True = leave out) masks stars.
    Images overlapping others on fewer than ``min_overlap`` pixels get no correction. Each
    pass fits every image once (Jacobi); images that overlap almost entirely agree after 2-3
    passes, chains of partial overlaps need more. ``step`` subsamples the fits.
    """
    channels = items[0].image.shape[-1] if items else 0
    coeffs = [np.zeros((channels, n_terms(order))) for _ in items]
    if len(items) < 2:
        return coeffs
    surfaces = [np.zeros_like(it.image) for it in items]
    for _ in range(passes):
        corrected = [it.image - s for it, s in zip(items, surfaces)]
        total, wsum = accumulate(items, corrected, grid_shape, channels)
        for k, item in enumerate(items):
            ys, xs = item.window()
            w_self = np.where(np.isfinite(corrected[k]).all(axis=-1), item.weight, 0.0)
            w_other = wsum[ys, xs] - w_self
            other_total = total[ys, xs] - np.nan_to_num(corrected[k]) * w_self[..., None]
            usable = (w_other > 1e-6) & (w_self > 0)
            if usable.sum() < min_overlap:
                continue
            others = other_total / np.where(usable, w_other, 1.0)[..., None]
            diff = np.where(usable[..., None], item.image - others, np.nan)
            mask = None if exclude is None else exclude[ys, xs]
            fit = fit_surface(diff, order=order, mask=mask, extent=extent, step=step, offset=item.origin)
            coeffs[k] = fit.coeffs
            surfaces[k] = Surface(fit.coeffs, order, fit.extent, fit.n_used).evaluate(
                item.image.shape[:2], offset=item.origin)
    # The images' common surface is undetermined: keep the overall level where it was.
    fitted = [c for c in coeffs if np.any(c)]
    if fitted:
        mean = np.mean(fitted, axis=0)
        coeffs = [c - mean if np.any(c) else c for c in coeffs]
    return coeffs


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
