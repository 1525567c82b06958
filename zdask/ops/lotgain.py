"""Gain matching of SDS mega-tiles (one per lot) against a reference mega-tile. Pure NumPy.

Every lot of an SDS run is reduced onto the whole canvas, so the lots overlap almost entirely;
what differs between them is the night's transparency (a gain on the astronomical signal) and
the sky glow (an additive level). The reference is the mega-tile with the largest summed
coverage (:func:`reference_lot`); each other mega-tile gets a per-channel correction
``gain · x + offset`` from the pixels both cover well: coverage above ``min_fraction`` (1 %) of
each one's own peak (:func:`overlap_mask`).

Two ways to get the gain (:data:`GAIN_METHODS`):

``"sources"`` (the default)
    :func:`zdask.ops.photometry.fit_source_gain`, as the classic mode matches its master tiles:
    the gain from compact sources (both images high-passed, the ratio of their flux over the
    pixels where both exceed 5 σ), then the offset that brings the skies together (median of
    ``reference − gain · target``). Transparency scales the signal and not the sky glow, so a
    ratio of medians, which the sky dominates, measures the ratio of sky levels instead (a lot
    shot under a 20 % brighter sky gets a gain 20 % too low on its stars); the source gain does
    not depend on the sky. A channel without enough sources keeps gain 1 and gets the offset.
``"medians"`` (the ancestor's)
    ``gain = median_ref / median`` over the overlap, no offset. Right only when nothing but a
    gain differs: no additive sky glow that changes between lots, and medians well away from
    zero (a background subtracted to zero leaves a ratio of noise).

Either way a gain that would be NaN, inf or <= 0 falls back to 1.0 (offset 0) with ``fitted``
False and a ``reason`` for the log; results are float32.

The inputs are the mega-tiles binned on the canvas (a few MB each, however many frames), so the
full-resolution mega-tiles never need to be in memory together: see :mod:`zdask.graph.sds`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zdask.ops.backend import as_hwc
from zdask.ops.photometry import fit_source_gain

__all__ = ["GAIN_METHODS", "LotGain", "match_gain", "median_gain", "overlap_mask", "reference_lot"]

GAIN_METHODS = ("sources", "medians")


@dataclass(frozen=True)
class LotGain:
    """A mega-tile's correction ``gain · x + offset`` against the reference, per channel.

    Attributes
    ----------
    gain, offset : numpy.ndarray
        ``(C,)`` float32, finite; gain > 0.
    fitted : numpy.ndarray
        ``(C,)`` bool: False where the gain fell back to 1.
    median, median_reference : numpy.ndarray
        ``(C,)`` float64 medians of the target and of the reference over the overlap (NaN
        where it is empty), for the report's spread of the mega-tiles' levels.
    n_pixels : int
        Pixels of the overlap.
    reason : str or None
        Why some channel fell back (None when every channel was fitted).
    """

    gain: np.ndarray
    offset: np.ndarray
    fitted: np.ndarray
    median: np.ndarray
    median_reference: np.ndarray
    n_pixels: int
    reason: str | None


def reference_lot(coverage_sums: Sequence[float]) -> int:
    """Index of the mega-tile with the largest summed coverage (the first of equals).

    Raises ValueError when there is none or none covers anything."""
    sums = np.asarray(coverage_sums, dtype=np.float64)
    if sums.size == 0 or not np.any(np.isfinite(sums) & (sums > 0)):
        raise ValueError("no mega-tile covers any pixel: no reference")
    return int(np.argmax(np.where(np.isfinite(sums), sums, -np.inf)))


def overlap_mask(reference_coverage: np.ndarray, coverage: np.ndarray, reference_peak: float, peak: float,
                 min_fraction: float = 0.01) -> np.ndarray:
    """Pixels both mega-tiles cover with more than ``min_fraction`` of their own peak coverage
    (NaN counts as uncovered; a peak <= 0 covers nothing)."""
    if not 0.0 <= min_fraction < 1.0:
        raise ValueError(f"min_fraction must be in [0, 1); got {min_fraction!r}")
    ref = np.asarray(reference_coverage, dtype=np.float32)
    cov = np.asarray(coverage, dtype=np.float32)
    if ref.shape != cov.shape or ref.ndim != 2:
        raise ValueError(f"coverages must be two (H, W) maps of one shape; got {ref.shape} and {cov.shape}")
    if not (np.isfinite(reference_peak) and reference_peak > 0 and np.isfinite(peak) and peak > 0):
        return np.zeros(ref.shape, dtype=bool)
    return (ref > min_fraction * reference_peak) & (cov > min_fraction * peak)


def _medians(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel median over ``mask`` of the finite values (NaN where none)."""
    out = np.full(image.shape[-1], np.nan)
    for k in range(image.shape[-1]):
        values = image[..., k][mask]
        values = values[np.isfinite(values)]
        if values.size:
            out[k] = float(np.median(values.astype(np.float64)))
    return out


def median_gain(reference: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(gain (C,) float32, fitted (C,) bool)``: median_ref / median over ``mask``, per channel;
    1.0 (not fitted) where that is NaN, inf or <= 0."""
    ref, tgt = as_hwc(reference, "reference")[1], as_hwc(target, "target")[1]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        ratio = (_medians(ref, mask) / _medians(tgt, mask)).astype(np.float32) if mask.any() \
            else np.full(ref.shape[-1], np.nan, dtype=np.float32)
    fitted = np.isfinite(ratio) & (ratio > 0)  # (a ratio beyond float32 is inf here, under it 0)
    return np.where(fitted, ratio, np.float32(1.0)).astype(np.float32), fitted


def match_gain(
    reference: np.ndarray, reference_coverage: np.ndarray, reference_peak: float,
    target: np.ndarray, coverage: np.ndarray, peak: float, *, method: str = "sources",
    min_fraction: float = 0.01,
) -> LotGain:
    """The correction that brings ``target`` (H, W, C) onto ``reference`` (H, W, C).

    Parameters
    ----------
    reference, target : numpy.ndarray
        Mega-tiles on one common (binned) grid, NaN where uncovered.
    reference_coverage, coverage : numpy.ndarray
        Their ``(H, W)`` coverages on that grid.
    reference_peak, peak : float
        Each mega-tile's peak coverage (over the whole canvas, not only this window).
    method : str
        ``"sources"`` or ``"medians"`` (see the module docstring).
    min_fraction : float
        Fraction of a peak a pixel's coverage must exceed, in [0, 1).
    """
    if method not in GAIN_METHODS:
        raise ValueError(f"unknown gain method {method!r}; allowed: {', '.join(GAIN_METHODS)}")
    ref, tgt = as_hwc(reference, "reference")[1], as_hwc(target, "target")[1]
    if ref.shape != tgt.shape:
        raise ValueError(f"reference and target must have one shape; got {ref.shape} and {tgt.shape}")
    mask = overlap_mask(reference_coverage, coverage, reference_peak, peak, min_fraction)
    mask &= np.isfinite(ref).all(axis=-1) & np.isfinite(tgt).all(axis=-1)
    channels = ref.shape[-1]
    n_pixels = int(mask.sum())
    med, med_ref = _medians(tgt, mask), _medians(ref, mask)
    offset = np.zeros(channels)
    if n_pixels == 0:
        gain, fitted, reason = np.ones(channels, dtype=np.float32), np.zeros(channels, dtype=bool), \
            "no pixel covered by both mega-tiles"
    elif method == "medians":
        gain, fitted = median_gain(ref, tgt, mask)
        reason = None if fitted.all() else "median ratio not finite and > 0"
    else:
        fit = fit_source_gain(ref, tgt, mask=mask)
        with np.errstate(over="ignore"):
            gain = fit.gain.astype(np.float32)
        fitted = fit.fitted & np.isfinite(gain) & (gain > 0)
        gain = np.where(fitted, gain, np.float32(1.0)).astype(np.float32)
        offset = np.where(np.isfinite(fit.offset), fit.offset, 0.0)
        for k in np.flatnonzero(fit.fitted & ~fitted):  # a gain beyond float32: offset-only, as fit_source_gain's fallback
            offset[k] = float(np.median(ref[..., k][mask].astype(np.float64) - tgt[..., k][mask]))
        reason = None if fitted.all() else (fit.reason or "source gain not finite and > 0")
    return LotGain(gain, offset.astype(np.float32), fitted, med, med_ref, n_pixels, reason)
