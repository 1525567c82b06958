"""Robust spread: σ from the median absolute deviation (1.4826·MAD), the one formula every
kernel uses (the stacking kernels' per-pixel MAD of sorted samples excepted, see
:mod:`zdask.ops._stacking_numba`).

The arithmetic is the caller's dtype: float32 values give a float32 σ (``MAD_TO_SIGMA`` is a
Python float, so NumPy keeps float32), float64 values a float64 one. Callers that want float64
cast first.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAD_TO_SIGMA", "mad_sigma", "robust_sigma"]

#: Gaussian consistency factor of the median absolute deviation (1 / Φ⁻¹(3/4))
MAD_TO_SIGMA = 1.4826


def mad_sigma(values, centre, axis=None, *, kappa: float = 1.0, skip_nan: bool = False):
    """``kappa`` × 1.4826 × median(|values − centre|) along ``axis`` (an array, or a NumPy
    scalar for ``axis=None``).

    ``centre`` is the caller's (usually the median it also uses for the clip); ``kappa``
    multiplies the factor before the median (``kappa · 1.4826`` folded first, as in
    ``med − 2.5·1.4826·MAD``); ``skip_nan`` takes ``np.nanmedian`` (NaN left out, ±inf kept).
    No finite filter: NaN in ``values`` gives NaN unless ``skip_nan``.
    """
    median = np.nanmedian if skip_nan else np.median
    return kappa * MAD_TO_SIGMA * median(np.abs(values - centre), axis=axis)


def robust_sigma(values, *, max_samples: int | None = None, empty: float = 0.0, dtype=None) -> float:
    """1.4826 × MAD of the finite values, about their median, as a Python float.

    ``max_samples``: a deterministic strided subsample (every ``size // max_samples``-th value
    of the flattened input, taken before the finite filter) bounds the cost on large planes.
    ``empty`` is returned when no finite value is left; ``dtype`` casts the values first (the
    arithmetic's precision).
    """
    sample = np.asarray(values, dtype=dtype).ravel()
    if max_samples is not None:
        sample = sample[:: max(1, sample.size // max_samples)]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return empty
    return float(mad_sigma(sample, np.median(sample)))
