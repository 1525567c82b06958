"""numba CPU kernel of kappa-sigma clipping (see ``_stacking_numba`` for the layout).

Each ``*_block`` function (here and in ``_stacking_numba_winsor`` /
``_stacking_numba_fit``) reduces a block ``(N, M)`` float32 to ``img (M,)``
float32 and ``kept/rlo/rhi (M,)`` int32.  ``sc``/``of`` (float32) and ``wt``
(float64) are the per-frame coefficients expanded to one tile ``(N, T)``.
The floating-point operations mirror ``stacking_reference`` operation for
operation, so both give the same rejection masks (tests assert it).

Kappa-sigma statistics are float64 sums in frame order (``u``): the mean,
then the squared deviations about it.  float32 statistics would not do: at
N = 3 the Student bound ``K`` sits within 1e-5 of the farthest any sample
can be from the mean (sqrt(2) stds), closer than float32 resolves a mean of
500 ± 3.  The kernel needs no sorted copy.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from zdask.ops._stacking_common import THREE_SAMPLE_MEDIAN
from zdask.ops._stacking_numba import (
    JIT,
    load_frames,
    weighted_mean_between,
)

@njit(**JIT)
def _survivor_sum(u, tw, lo, hi, k, acc):
    """Count and float64 sum (frame order) of the samples with ``lo <= x <= hi``."""
    n_frames = u.shape[0]
    for p in range(tw):
        acc[p] = 0.0
        k[p] = 0
    for n in range(n_frames):
        un = u[n]
        for p in range(tw):
            v = un[p]
            m = (v >= lo[p]) & (v <= hi[p])
            acc[p] += np.float64(v) if m else 0.0
            k[p] += 1 if m else 0


@njit(inline="always", **JIT)
def _add_square_between(t, v, lo, hi, c):
    """``t + (v − c)²`` (float64) if ``lo <= v <= hi``, else ``t``."""
    d = np.float64(v) - c
    return t + (d * d if (v >= lo) & (v <= hi) else 0.0)


@njit(**JIT)
def _survivor_mean_std(u, tw, lo, hi, k, acc, mean, sd):
    """Mean and population std (ddof 0, float64) of ``lo <= x <= hi`` from their count ``k`` and
    sum ``acc``: two passes, the squared deviations about the mean summed in frame order."""
    n_frames = u.shape[0]
    for p in range(tw):
        mean[p] = acc[p] / k[p] if k[p] > 0 else 0.0
        acc[p] = 0.0
    n4 = n_frames - n_frames % 4
    for n in range(0, n4, 4):  # four rows per load/store of ``acc``, still summed one by one
        u0, u1, u2, u3 = u[n], u[n + 1], u[n + 2], u[n + 3]
        for p in range(tw):
            a = lo[p]
            b = hi[p]
            c = mean[p]
            t = _add_square_between(acc[p], u0[p], a, b, c)
            t = _add_square_between(t, u1[p], a, b, c)
            t = _add_square_between(t, u2[p], a, b, c)
            acc[p] = _add_square_between(t, u3[p], a, b, c)
    for n in range(n4, n_frames):
        un = u[n]
        for p in range(tw):
            acc[p] = _add_square_between(acc[p], un[p], lo[p], hi[p], mean[p])
    for p in range(tw):
        sd[p] = np.sqrt(acc[p] / k[p]) if k[p] > 0 else 0.0


@njit(**JIT)
def _count_outside(u, tw, keep_lo, keep_hi, lo, hi, nlo, nhi):
    """Among samples in ``[keep_lo, keep_hi]``: how many ``< lo`` and ``> hi``."""
    n_frames = u.shape[0]
    for p in range(tw):
        nlo[p] = 0
        nhi[p] = 0
    for n in range(n_frames):
        un = u[n]
        for p in range(tw):
            v = un[p]
            m = (v >= keep_lo[p]) & (v <= keep_hi[p])
            nlo[p] += 1 if (m & (v < lo[p])) else 0
            nhi[p] += 1 if (m & (v > hi[p])) else 0


@njit(**JIT)
def _column_median(u, p):
    """Median of the finite samples of pixel ``p`` (float32, like NumPy); NaN if none."""
    n_frames = u.shape[0]
    col = np.empty(n_frames, np.float32)
    k = 0
    for n in range(n_frames):
        v = u[n, p]
        if v == v:
            col[k] = v
            k += 1
    if k == 0:
        return np.float32(np.nan)
    c = np.sort(col[:k])
    h = k // 2
    return c[h] if k % 2 == 1 else (c[h - 1] + c[h]) * np.float32(0.5)


@njit(**JIT)
def _median_of_three(u, p):
    """Median of the three finite samples of pixel ``p`` (one of them, exactly), as float64."""
    a = b = c = np.float32(0)
    k = 0
    for n in range(u.shape[0]):
        v = u[n, p]
        if v == v:
            if k == 0:
                a = v
            elif k == 1:
                b = v
            else:
                c = v
            k += 1
    return np.float64(max(min(a, b), min(max(a, b), c)))


@njit(**JIT)
def kappa_sigma_block(src, rs, n_frames, m_total, sc, of, wt, unweighted, k_lo, k_hi, iterations, T,
                      img, kept, rlo, rhi):
    """Kappa-sigma about the mean, bounds ``mean ± K[k]·std`` from the Student tables ``k_lo``/``k_hi``
    (indexed by the survivor count ``k``; see ``_stacking_common.student_kappa_table``).  Needs no
    sort: the survivors of every pass are the samples inside the kept range."""
    u = np.empty((n_frames, T), np.float32)
    cnt = np.empty(T, np.int32)
    k = np.empty(T, np.int32)
    nlo = np.empty(T, np.int32)
    nhi = np.empty(T, np.int32)
    act = np.empty(T, np.bool_)
    keep_lo = np.empty(T, np.float64)
    keep_hi = np.empty(T, np.float64)
    lo = np.empty(T, np.float64)
    hi = np.empty(T, np.float64)
    mean = np.empty(T, np.float64)
    sd = np.empty(T, np.float64)
    acc = np.empty(T, np.float64)
    img_t = np.empty(T, np.float32)
    kept_t = np.empty(T, np.int32)
    for t0 in range(0, m_total, T):
        tw = min(T, m_total - t0)
        load_frames(src, rs, t0, tw, sc, of, u, cnt, acc)
        any_act = False
        for p in range(tw):
            keep_lo[p] = -np.inf
            keep_hi[p] = np.inf
            k[p] = cnt[p]
            act[p] = cnt[p] > THREE_SAMPLE_MEDIAN
            any_act |= act[p]
            if cnt[p] == THREE_SAMPLE_MEDIAN:  # keep only the median sample (see ``stacking``)
                keep_lo[p] = keep_hi[p] = _median_of_three(u, p)
        for it in range(iterations):
            if not any_act:
                break
            if it > 0:  # the load counted and summed the finite samples (``cnt``, ``acc``) already
                _survivor_sum(u, tw, keep_lo, keep_hi, k, acc)
            _survivor_mean_std(u, tw, keep_lo, keep_hi, k, acc, mean, sd)
            for p in range(tw):
                lo[p] = mean[p] - k_lo[k[p]] * sd[p]
                hi[p] = mean[p] + k_hi[k[p]] * sd[p]
            if it == iterations - 1:
                # Last pass: clip the kept range of every active pixel to [lo, hi]; where
                # nothing falls outside, it keeps the same samples.  The final mean counts
                # what lies outside, so this iteration needs no counting pass of its own.
                for p in range(tw):
                    keep_lo[p] = max(keep_lo[p], lo[p]) if act[p] else keep_lo[p]
                    keep_hi[p] = min(keep_hi[p], hi[p]) if act[p] else keep_hi[p]
                break
            _count_outside(u, tw, keep_lo, keep_hi, lo, hi, nlo, nhi)
            any_act = False
            for p in range(tw):
                if act[p] and nlo[p] + nhi[p] > 0:
                    keep_lo[p] = max(keep_lo[p], lo[p])
                    keep_hi[p] = min(keep_hi[p], hi[p])
                    act[p] = k[p] - nlo[p] - nhi[p] >= 3
                else:
                    act[p] = False
                any_act |= act[p]
        # The samples rejected low are exactly those below the final kept range (each pass
        # only raises keep_lo past the samples it rejects), and likewise above.
        weighted_mean_between(u, tw, wt, unweighted, keep_lo, keep_hi, img_t, kept_t, nlo)
        for p in range(tw):
            q = t0 + p
            # every sample rejected (possible only with a tiny kappa): the median
            img[q] = _column_median(u, p) if (kept_t[p] == 0 and cnt[p] > 0) else img_t[p]
            kept[q] = kept_t[p]
            rlo[q] = nlo[p]
            rhi[q] = cnt[p] - kept_t[p] - nlo[p]
