"""Display stretch for previews: background-neutral asinh to 8 bits."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from zdask.ops.robust import mad_sigma


class AsinhLevels(NamedTuple):
    """Levels of one asinh rendering: per-channel black points, one white point, the softness."""

    black: np.ndarray   # (C,) float32, data units
    white: float        # data units above the black points
    beta: float         # asinh softness (dimensionless)


def asinh_stretch(image: np.ndarray, background_level: float = 0.12) -> np.ndarray:
    """uint8 rendering of a linear ``(H, W)`` or ``(H, W, C)`` image; NaN renders black.

    Each channel's black point sits 2.5 σ below its sky median (so the sky is neutral grey);
    one white point (99.95th percentile of all channels above their black points) keeps the
    colour ratios; the asinh softness is chosen so the sky lands at ``background_level``.
    """
    return apply_asinh(image, asinh_levels(image, background_level))


def asinh_levels(image: np.ndarray, background_level: float = 0.12) -> AsinhLevels:
    """The levels :func:`asinh_stretch` renders ``image`` with (see there)."""
    img = np.asarray(image, dtype=np.float32)
    planes = img[..., None] if img.ndim == 2 else img
    # Levels come from a regular subsample of at most ~500k pixels: a display stretch needs no
    # more, and percentiles of a whole mosaic cost seconds.
    sample = planes.reshape(-1, planes.shape[-1])[:: max(1, planes.shape[0] * planes.shape[1] // 500_000)]
    black = np.full(planes.shape[-1], np.nan, dtype=np.float32)
    for c in range(planes.shape[-1]):
        values = sample[:, c][np.isfinite(sample[:, c])]
        if values.size:
            med = np.median(values)
            black[c] = med - mad_sigma(values, med, kappa=2.5)
    shifted_sample = sample - black
    finite = shifted_sample[np.isfinite(shifted_sample)]
    white = max(float(np.percentile(finite, 99.95)) if finite.size else 1.0, 1e-12)
    x_sample = _unit(shifted_sample, white)
    # The sky sits near x_sky after the shift; pick beta so asinh(beta*x_sky)/asinh(beta) ≈ level.
    sky = np.median(x_sample[x_sample > 0]) if np.any(x_sample > 0) else 0.01
    return AsinhLevels(black, white, _softness_for(max(float(sky), 1e-6), background_level))


def apply_asinh(image: np.ndarray, levels: AsinhLevels) -> np.ndarray:
    """uint8 rendering of ``image`` with given levels; pixel by pixel, so any band of rows
    renders exactly as it does inside the whole image."""
    img = np.asarray(image, dtype=np.float32)
    planes = img[..., None] if img.ndim == 2 else img
    x = _unit(planes - levels.black, levels.white)
    y = np.arcsinh(levels.beta * x) / np.arcsinh(levels.beta)
    out = np.round(y * 255).astype(np.uint8)
    return out[..., 0] if img.ndim == 2 else out


def _unit(shifted: np.ndarray, white: float) -> np.ndarray:
    """Values above the black point: white → 1, clipped to [0, 1], NaN → 0."""
    return np.clip(np.nan_to_num(shifted / white, nan=0.0), 0.0, 1.0)


def _softness_for(x_sky: float, level: float) -> float:
    """Bisection for beta with asinh(beta * x_sky) / asinh(beta) == level (1 if impossible)."""
    if x_sky >= level:
        return 1e-3
    lo, hi = 1e-3, 1e7
    for _ in range(80):
        mid = np.sqrt(lo * hi)
        if np.arcsinh(mid * x_sky) / np.arcsinh(mid) < level:
            lo = mid
        else:
            hi = mid
    return float(np.sqrt(lo * hi))
