"""Shared helpers of the stacking kernels (validation, layout, constants).

Pure NumPy/CuPy helpers: no dask, zarr or astropy here.

Layout convention used by every kernel
--------------------------------------
A stack ``(N, P...)`` is viewed as ``(N, M)`` with ``M`` the number of
pixel-channel samples of one frame (channel LAST, so sample ``m`` belongs to
channel ``m % C``).  ``C`` is ``stack.shape[-1]`` for 4-D stacks
``(N, H, W, C)`` and 1 otherwise.  Per-frame coefficients (weights, scale,
offset) are normalised to ``(N, C)`` arrays.

Samples that are not finite after normalisation (NaN "no sample", and also
+-inf) are treated as missing.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np

#: largest finite float32, used as "open" clipping bounds
FLT_MAX = float(np.finfo(np.float32).max)

#: a pixel needs at least this many (surviving) samples for any rejection;
#: with fewer samples the mean of all of them is returned, nothing rejected.
MIN_SAMPLES_FOR_REJECTION = 3

#: kappa_sigma keeps only the median of a pixel with exactly this many samples: with one
#: outlier among three, the other two are the only estimate of the spread, and no test on them
#: can reject even a 100σ trail (the Student quantile with one degree of freedom at κ = 3 is
#: 236); the median of three removes any single outlier, as Siril and DeepSkyStacker advise
#: for such small stacks, at the cost of 16 % more noise on those pixels alone.
THREE_SAMPLE_MEDIAN = 3

#: Gaussian consistency factor of the mean absolute deviation (sqrt(pi/2)); the kernels' σ is
#: ``zdask.ops.robust.MAD_TO_SIGMA``·MAD, this where the MAD of a pixel's samples is 0
MEANABS_TO_SIGMA = math.sqrt(math.pi / 2.0)

#: winsorized sigma clipping: most splits solved before giving up on a self-consistent one
WINSOR_MAX_ITER = 10


@functools.lru_cache(maxsize=64)
def student_kappa_table(n_max: int, kappa: float) -> np.ndarray:
    """Kappa-sigma bounds ``K[n]`` (float64, ``n = 0 … n_max``) in units of the population std.

    A sample ``x`` of ``n`` finite samples is rejected when its externally studentized residual
    ``t = (x − m') / (s'·sqrt(1 + 1/(n−1)))`` — ``m'``, ``s'`` the mean and sample std (ddof 1)
    of the OTHER ``n − 1`` samples — exceeds ``q``, the quantile of Student's t with ``n − 2``
    degrees of freedom at the Gaussian tail probability of ``kappa``: ``P(T > q) = P(Z > kappa)``.
    For Gaussian samples ``t`` follows exactly that t distribution, so a clean sample is rejected
    with the Gaussian probability ``1 − Φ(kappa)`` per side at every ``n >= 3`` (0.135 % at 3).
    ``t`` grows with ``|x − mean|``, so the test is the interval
    ``|x − mean| <= K[n]·std`` (mean and population std of all ``n``), with
    ``K[n] = q·sqrt((n − 1) / (n − 2 + q²))``: below ``sqrt(n − 1)`` (the farthest any sample can
    sit), ``kappa`` as ``n → ∞``.  Entries for ``n < 3`` (never used: no rejection) are 0.
    """
    from scipy import stats  # noqa: PLC0415  (host-side table, computed once per (n_max, kappa))

    table = np.zeros(n_max + 1, dtype=np.float64)
    if n_max >= 3:
        n = np.arange(3, n_max + 1, dtype=np.float64)
        q = stats.t.isf(stats.norm.sf(kappa), n - 2.0)  # isf: exact far in the tails
        with np.errstate(divide="ignore"):
            table[3:] = np.sqrt((n - 1.0) / (1.0 + (n - 2.0) / (q * q)))  # = q·sqrt((n−1)/(n−2+q²))
    table.setflags(write=False)
    return table


def parse_kappa(kappa, name: str = "kappa") -> tuple[float, float]:
    """``kappa`` as ``(low, high)``; a scalar gives a symmetric pair."""
    if np.ndim(kappa) == 0:
        lo = hi = float(kappa)
    else:
        vals = [float(v) for v in np.asarray(kappa, dtype=float).ravel()]
        if len(vals) != 2:
            raise ValueError(f"{name} must be a number or a (low, high) pair, got {kappa!r}")
        lo, hi = vals
    for v in (lo, hi):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} values must be finite and >= 0, got {kappa!r}")
    return lo, hi


def parse_iterations(iterations, name: str = "iterations") -> int:
    if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {iterations!r}")
    return int(iterations)


def stack_geometry(shape: tuple[int, ...]) -> tuple[int, int, tuple[int, ...]]:
    """``(N, C, out_shape)`` of a stack shape ``(N, P...)`` (channel last when 4-D)."""
    if len(shape) < 2:
        raise ValueError(f"a stack must have shape (N, ...) with at least 2 axes, got {shape}")
    n = int(shape[0])
    if n < 1:
        raise ValueError("a stack needs at least one frame")
    c = int(shape[-1]) if len(shape) == 4 else 1
    return n, c, tuple(int(s) for s in shape[1:])


def per_frame(coef, n: int, c: int, name: str, dtype, xp=np, default=None):
    """Validate a per-frame coefficient ``(N,)`` or ``(N, C)`` → ``(N, C)`` array.

    ``None`` gives ``default`` (a scalar) broadcast, or ``None`` if ``default``
    is ``None``.  Coefficients are small: they are always validated on the host.
    """
    if coef is None:
        if default is None:
            return None
        return xp.full((n, c), default, dtype=dtype)
    host = coef.get() if hasattr(coef, "get") and not isinstance(coef, np.ndarray) else coef
    a = np.asarray(host, dtype=np.float64)
    if a.ndim == 1 and a.shape[0] == n:
        a = np.repeat(a[:, None], c, axis=1)
    elif a.ndim == 2 and a.shape[0] == n and a.shape[1] in (1, c):
        if a.shape[1] != c:
            a = np.repeat(a, c, axis=1)
    else:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, {c}), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite")
    if name == "weights" and np.any(a < 0):
        raise ValueError("weights must be >= 0")
    return xp.asarray(a.astype(dtype))


def winsor_consistency(lo: float, hi: float) -> float:
    """1 / std of a standard normal clipped to ``[-lo, hi]`` (1.134 for 1.5/1.5).

    Makes the standard deviation of winsorized Gaussian data an unbiased
    estimate of sigma (Huber's correction).
    """

    def phi(z):
        return math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)

    def cdf(z):
        return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))

    a, b = -lo, hi
    p_lo, p_hi = cdf(a), 1.0 - cdf(b)
    mean = a * p_lo + (phi(a) - phi(b)) + b * p_hi
    second = a * a * p_lo + ((cdf(b) - b * phi(b)) - (cdf(a) - a * phi(a))) + b * b * p_hi
    var = second - mean * mean
    if not var > 0:
        raise ValueError("winsorization bounds too narrow")
    return 1.0 / math.sqrt(var)


@functools.lru_cache(maxsize=64)
def batcher_network(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Batcher odd-even merge sort comparators ``(i, j)``, ``i < j``, for ``n`` wires.

    Each comparator puts the minimum on wire ``i``: applied in order they
    sort any input (178 comparators for n = 30).
    """
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    ci = np.array([a for a, _ in pairs], dtype=np.int64)
    cj = np.array([b for _, b in pairs], dtype=np.int64)
    ci.setflags(write=False)
    cj.setflags(write=False)
    return ci, cj


#: stacks deeper than this sort each pixel with a per-pixel sort instead of
#: the sorting network (both exact; the network wins for shallow stacks)
NETWORK_MAX_FRAMES = 512


def tile_width(n: int, c: int) -> int:
    """Pixels per tile of the CPU kernels, a multiple of ``16·c``.

    About 40 KB per ``(N, T)`` float32 buffer, so the sorted copy stays in a
    core's L1 cache through the sorting network (measured on N = 30/50/200:
    1.3–1.5× faster than 250 KB tiles); at least 192 pixels, so deep stacks
    keep long vectorised row loops.
    """
    step = 16 * c
    t = max(192, min(4096, 10240 // max(n, 1)))
    return max(step, (t // step) * step)


class StackResult(NamedTuple):
    """Result of a stacking method (NumPy, CuPy or dask arrays alike).

    ``image`` float32 ``(H, W[, C])`` (NaN where no sample exists),
    ``count`` int32 samples kept, ``rejected_low``/``rejected_high`` int32
    samples rejected below/above the bounds.
    """

    image: Any
    count: Any
    rejected_low: Any
    rejected_high: Any


def prepare_coefficients(n: int, c: int, weights, scale, offset, xp=np):
    """``(weights (N,C) float64 or None, scale (N,C) float32, offset (N,C) float32)``."""
    w = per_frame(weights, n, c, "weights", np.float64, xp)
    sc = per_frame(scale, n, c, "scale", np.float32, xp, default=1.0)
    of = per_frame(offset, n, c, "offset", np.float32, xp, default=0.0)
    return w, sc, of
