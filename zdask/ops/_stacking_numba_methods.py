"""numba CPU kernel of kappa-sigma clipping (see ``_stacking_numba`` for the layout).

Each ``*_block`` function (here and in ``_stacking_numba_winsor`` /
``_stacking_numba_fit``) reduces a block ``(N, M)`` float32 to ``img (M,)``
float32 and ``kept/rlo/rhi (M,)`` int32.  ``sc``/``of`` (float32) and ``wt``
(float64) are the per-frame coefficients expanded to one tile ``(N, T)``.
The floating-point operations mirror ``stacking_reference`` operation for
operation, so both give the same rejection masks (tests assert it).

Kappa-sigma statistics are the ancestor's exactly: float32 sums in frame
order (``u``), divided through float64 like ``np.nanmean``/``np.nanstd``;
the median comes from the sorted copy (``s``), where the survivors of every
iteration are a contiguous range.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from zdask.ops._stacking_numba import (
    JIT,
    load_sorted_tile,
    sorted_median,
    weighted_mean_between,
)

_FMAX = np.float32(np.finfo(np.float32).max)


@njit(**JIT)
def _survivor_sum(u, tw, lo, hi, k, acc):
    """Count and float32 sum (frame order) of the samples with ``lo <= x <= hi``."""
    n_frames = u.shape[0]
    for p in range(tw):
        acc[p] = 0.0
        k[p] = 0
    for n in range(n_frames):
        un = u[n]
        for p in range(tw):
            v = un[p]
            m = (v >= lo[p]) & (v <= hi[p])
            acc[p] += v if m else np.float32(0.0)
            k[p] += 1 if m else 0


@njit(inline="always", **JIT)
def _add_square_between(t, v, lo, hi, c):
    """``t + (v − c)²`` if ``lo <= v <= hi``, else ``t`` (float32)."""
    d = v - c
    return t + (d * d if (v >= lo) & (v <= hi) else np.float32(0.0))


@njit(**JIT)
def _survivor_mean_std(u, tw, lo, hi, k, acc, mean, sd):
    """Mean and population std (ddof 0) of ``lo <= x <= hi`` from their count ``k`` and sum ``acc``.

    Same operations as ``np.nanmean``/``np.nanstd`` on float32 (sequential
    float32 sums along the frame axis, division through float64); ``acc`` is
    reused for the sum of squared deviations.
    """
    n_frames = u.shape[0]
    for p in range(tw):
        mean[p] = np.float32(np.float64(acc[p]) / k[p]) if k[p] > 0 else np.float32(0.0)
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
        sd[p] = np.sqrt(np.float32(np.float64(acc[p]) / k[p])) if k[p] > 0 else np.float32(0.0)


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
def kappa_sigma_block(src, rs, n_frames, m_total, sc, of, wt, unweighted, kl, kh, iterations, ci, cj, use_net, T, img, kept, rlo, rhi):
    u = np.empty((n_frames, T), np.float32)
    s = np.empty((n_frames, T), np.float32)
    cnt = np.empty(T, np.int32)
    a = np.empty(T, np.int32)
    b = np.empty(T, np.int32)
    k = np.empty(T, np.int32)
    nlo = np.empty(T, np.int32)
    nhi = np.empty(T, np.int32)
    act = np.empty(T, np.bool_)
    keep_lo = np.empty(T, np.float32)
    keep_hi = np.empty(T, np.float32)
    lo = np.empty(T, np.float32)
    hi = np.empty(T, np.float32)
    med0 = np.empty(T, np.float32)
    med = np.empty(T, np.float32)
    mean = np.empty(T, np.float32)
    sd = np.empty(T, np.float32)
    acc = np.empty(T, np.float32)
    img_t = np.empty(T, np.float32)
    kept_t = np.empty(T, np.int32)
    for t0 in range(0, m_total, T):
        tw = min(T, m_total - t0)
        load_sorted_tile(src, rs, t0, tw, sc, of, u, s, cnt, acc, use_net, ci, cj)
        any_act = False
        for p in range(tw):
            keep_lo[p] = -_FMAX
            keep_hi[p] = _FMAX
            a[p] = 0
            b[p] = cnt[p]
            k[p] = cnt[p]
            act[p] = cnt[p] >= 3
            any_act |= act[p]
        sorted_median(s, a, b, tw, med0)
        for it in range(iterations):
            if not any_act:
                break
            if it == 0:  # the load summed the finite samples (``acc``) already
                for p in range(tw):  # (a loop: numba's slice assignment costs seconds of compile)
                    med[p] = med0[p]
            else:
                _survivor_sum(u, tw, keep_lo, keep_hi, k, acc)
                sorted_median(s, a, b, tw, med)
            _survivor_mean_std(u, tw, keep_lo, keep_hi, k, acc, mean, sd)
            for p in range(tw):
                lo[p] = med[p] - kl * sd[p]
                hi[p] = med[p] + kh * sd[p]
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
                    a[p] += nlo[p]
                    b[p] -= nhi[p]
                    keep_lo[p] = max(keep_lo[p], lo[p])
                    keep_hi[p] = min(keep_hi[p], hi[p])
                    act[p] = b[p] - a[p] >= 3
                else:
                    act[p] = False
                any_act |= act[p]
        # The samples rejected low are exactly those below the final kept range (each pass
        # only raises keep_lo past the samples it rejects), and likewise above.
        weighted_mean_between(u, tw, wt, unweighted, keep_lo, keep_hi, img_t, kept_t, nlo)
        for p in range(tw):
            q = t0 + p
            img[q] = med0[p] if (kept_t[p] == 0 and cnt[p] > 0) else img_t[p]
            kept[q] = kept_t[p]
            rlo[q] = nlo[p]
            rhi[q] = cnt[p] - kept_t[p] - nlo[p]
