"""numba CPU kernels: linear-fit clipping, median, mean and sum (see ``_stacking_numba``)."""

from __future__ import annotations

import numpy as np
from numba import njit

from zdask.ops._stacking_numba import (
    JIT,
    load_sorted_tile,
    load_tile,
    load_tile_index,
    sort_columns_index,
    sort_network_index,
    sorted_mad,
    sorted_mad_tile,
    sorted_median,
    weighted_mean_between,
)

_FMAX = np.float32(np.finfo(np.float32).max)


@njit(**JIT)
def _robust_sigma(s, k, act, tw, mad_k, meanabs_k, zero, med, mad, tmp, sig):
    """For the active pixels: ``mad_k``·MAD about the median ``med`` of the kept samples ``s[:k]``
    (float64), or ``meanabs_k``·mean absolute deviation where the MAD is 0 (same operations as
    ``stacking_reference.robust_sigma``)."""
    sorted_median(s, zero, k, tw, med)
    sorted_mad_tile(s, k, med, tw, mad, tmp, act)
    for p in range(tw):
        sig[p] = mad_k * np.float64(mad[p])
    for p in range(tw):  # (a loop of its own: the MAD = 0 case is rare)
        n = k[p]
        if act[p] and not mad[p] > 0.0:
            sabs = 0.0
            for r in range(n):
                sabs += abs(np.float64(s[r, p]) - np.float64(med[p]))
            sig[p] = meanabs_k * (sabs / n)


@njit(**JIT)
def _window_line_sums(s, k, med, sig, kl, kh, tw, lo, hi, i0, m, sy, sxy):
    """Line fit over the kept samples ``s[:k]`` inside ``lo … hi = med ∓ kl·sig, kh·sig`` only
    (sorted: ranks ``i0 … i0 + m − 1``): ``i0``, ``m``, and Σy, Σ xc·y (xc = rank −
    (i0 + (m−1)/2)), in rank order."""
    n_frames = s.shape[0]
    for p in range(tw):
        i0[p] = 0
        m[p] = 0
        lo[p] = np.float64(med[p]) - kl * sig[p]
        hi[p] = np.float64(med[p]) + kh * sig[p]
        sy[p] = 0.0
        sxy[p] = 0.0
    for n in range(n_frames):
        sn = s[n]
        for p in range(tw):
            y = np.float64(sn[p])
            kept = n < k[p]
            i0[p] += 1 if kept & (y < lo[p]) else 0
            m[p] += 1 if kept & (y >= lo[p]) & (y <= hi[p]) else 0
    for n in range(n_frames):
        sn = s[n]
        for p in range(tw):
            inside = (n >= i0[p]) & (n < i0[p] + m[p])
            y = np.float64(sn[p])
            c = i0[p] + (np.float64(m[p]) - 1.0) * 0.5
            sy[p] += y if inside else 0.0
            sxy[p] += (n - c) * y if inside else 0.0


@njit(**JIT)
def _line_reject_counts(s, k, half, ybar, slope, lo, hi, tw, nlo, nhi):
    """How many kept samples fall below ``lo`` / above ``hi`` (residual thresholds)."""
    n_frames = s.shape[0]
    for p in range(tw):
        nlo[p] = 0
        nhi[p] = 0
    for n in range(n_frames):
        sn = s[n]
        for p in range(tw):
            e = np.float64(sn[p]) - (ybar[p] + slope[p] * (n - half[p]))
            m = n < k[p]
            nlo[p] += 1 if m & (e < lo[p]) else 0
            nhi[p] += 1 if m & (e > hi[p]) else 0


@njit(**JIT)
def linear_fit_block(src, rs, n_frames, m_total, sc, of, wt, unweighted, kl, kh, iterations, mad_k, meanabs_k,
                     ci, cj, use_net, T, img, kept, rlo, rhi):
    """Linear-fit clipping.  The kept samples of a pixel are kept compacted at the top of its
    sorted column (``s[:k]``), so a sample's rank among them is its row index."""
    s = np.empty((n_frames, T), np.float32)
    idx = np.empty((n_frames, T), np.int32)
    u = np.empty((n_frames, T), np.float32) if unweighted else s
    cnt = np.empty(T, np.int32)
    total = np.empty(T, np.float32)
    zero = np.zeros(T, np.int32)
    med0 = np.empty(T, np.float32)
    k = np.empty(T, np.int32)
    half = np.empty(T, np.float64)
    act = np.empty(T, np.bool_)
    sy = np.empty(T, np.float64)
    sxy = np.empty(T, np.float64)
    sig = np.empty(T, np.float64)
    med = np.empty(T, np.float32)
    mad = np.empty(T, np.float32)
    tmp = np.empty(T, np.float32)
    i0 = np.empty(T, np.int32)
    m = np.empty(T, np.int32)
    ybar = np.zeros(T, np.float64)
    slope = np.zeros(T, np.float64)
    lo = np.empty(T, np.float64)
    hi = np.empty(T, np.float64)
    nlo = np.empty(T, np.int32)
    nhi = np.empty(T, np.int32)
    rl = np.empty(T, np.int32)
    rh = np.empty(T, np.int32)
    for t0 in range(0, m_total, T):
        tw = min(T, m_total - t0)
        if unweighted:
            load_sorted_tile(src, rs, t0, tw, sc, of, u, s, cnt, total, use_net, ci, cj)
        else:
            load_tile_index(src, rs, t0, tw, sc, of, s, idx, cnt)
            if use_net:
                sort_network_index(s, idx, tw, ci, cj)
            else:
                sort_columns_index(s, idx, tw, cnt)
        sorted_median(s, zero, cnt, tw, med0)
        any_act = False
        for p in range(tw):
            k[p] = cnt[p]
            act[p] = cnt[p] >= 3
            any_act |= act[p]
            rl[p] = 0
            rh[p] = 0
        # first pass: vectorised over the tile
        if any_act:
            _robust_sigma(s, k, act, tw, mad_k, meanabs_k, zero, med, mad, tmp, sig)
            _window_line_sums(s, k, med, sig, kl, kh, tw, lo, hi, i0, m, sy, sxy)
            for p in range(tw):
                mf = np.float64(m[p])
                half[p] = i0[p] + (mf - 1.0) * 0.5
                ybar[p] = sy[p] / mf if m[p] >= 1 else np.float64(med[p])
                slope[p] = sxy[p] / (mf * (mf * mf - 1.0) / 12.0) if m[p] >= 2 else 0.0
                lo[p] = -kl * sig[p]
                hi[p] = kh * sig[p]
            _line_reject_counts(s, k, half, ybar, slope, lo, hi, tw, nlo, nhi)
            for p in range(tw):
                if act[p] and nlo[p] + nhi[p] > 0:
                    _compact(s, idx, unweighted, k[p], half[p], ybar[p], slope[p], lo[p], hi[p], p)
                    rl[p] += nlo[p]
                    rh[p] += nhi[p]
                    k[p] -= nlo[p] + nhi[p]
                    act[p] = k[p] >= 3
                else:
                    act[p] = False
        # further passes: only the pixels that rejected something move on, one by one
        # (the same operations as the vectorised pass)
        for p in range(tw):
            it = 1
            while act[p] and it < iterations:
                a, b = _fit_pixel(s, idx, unweighted, k[p], p, kl, kh, mad_k, meanabs_k)
                rl[p] += a
                rh[p] += b
                k[p] -= a + b
                act[p] = (a + b > 0) & (k[p] >= 3)
                it += 1
        for p in range(tw):
            q = t0 + p
            kept[q] = k[p]
            rlo[q] = rl[p]
            rhi[q] = rh[p]
            sw = 0.0
            swx = 0.0
            sx = 0.0
            for n in range(k[p]):
                y = np.float64(s[n, p])
                sx += y
                if not unweighted:
                    w = wt[idx[n, p], p]
                    sw += w
                    swx += w * y
            if k[p] == 0:
                img[q] = med0[p]  # NaN when the pixel has no sample at all
            elif unweighted or not sw > 0.0:
                img[q] = np.float32(sx / k[p])
            else:
                img[q] = np.float32(swx / sw)


@njit(**JIT)
def _fit_pixel(s, idx, unweighted, n, p, kl, kh, mad_k, meanabs_k):
    """One linear-fit pass for pixel ``p`` (its ``n`` kept samples sorted in ``s[:n, p]``), the
    operations of the vectorised pass: robust sigma, window line fit, residual test, compaction.
    Returns the numbers rejected low and high."""
    h = n // 2
    med = s[h, p] if n % 2 == 1 else (s[h - 1, p] + s[h, p]) * np.float32(0.5)
    mad = sorted_mad(s, n, med, p)
    if mad > 0.0:
        sig = mad_k * np.float64(mad)
    else:
        sabs = 0.0
        for r in range(n):
            sabs += abs(np.float64(s[r, p]) - np.float64(med))
        sig = meanabs_k * (sabs / n)
    wlo = np.float64(med) - kl * sig
    whi = np.float64(med) + kh * sig
    i0 = 0
    m = 0
    for r in range(n):
        y = np.float64(s[r, p])
        i0 += 1 if y < wlo else 0
        m += 1 if (y >= wlo) & (y <= whi) else 0
    mf = np.float64(m)
    c = i0 + (mf - 1.0) * 0.5
    sy = 0.0
    sxy = 0.0
    for r in range(i0, i0 + m):
        y = np.float64(s[r, p])
        sy += y
        sxy += (r - c) * y
    ybar = sy / mf if m >= 1 else np.float64(med)
    slope = sxy / (mf * (mf * mf - 1.0) / 12.0) if m >= 2 else 0.0
    lo = -kl * sig
    hi = kh * sig
    nlo = 0
    nhi = 0
    for r in range(n):
        e = np.float64(s[r, p]) - (ybar + slope * (r - c))
        nlo += 1 if e < lo else 0
        nhi += 1 if e > hi else 0
    if nlo + nhi > 0:
        _compact(s, idx, unweighted, n, c, ybar, slope, lo, hi, p)
    return nlo, nhi


@njit(inline="always", **JIT)
def _compact(s, idx, unweighted, k, half, ybar, slope, lo, hi, p):
    """Drop the rejected samples of pixel ``p`` from ``s[:k]`` (same residual test), keeping order."""
    j = 0
    for n in range(k):
        y = s[n, p]
        e = np.float64(y) - (ybar + slope * (n - half))
        if not ((e < lo) | (e > hi)):
            s[j, p] = y
            if not unweighted:
                idx[j, p] = idx[n, p]
            j += 1


@njit(**JIT)
def median_block(src, rs, n_frames, m_total, sc, of, ci, cj, use_net, T, img, kept):
    u = np.empty((n_frames, T), np.float32)
    s = np.empty((n_frames, T), np.float32)
    cnt = np.empty(T, np.int32)
    total = np.empty(T, np.float32)
    zero = np.zeros(T, np.int32)
    med = np.empty(T, np.float32)
    for t0 in range(0, m_total, T):
        tw = min(T, m_total - t0)
        load_sorted_tile(src, rs, t0, tw, sc, of, u, s, cnt, total, use_net, ci, cj)
        sorted_median(s, zero, cnt, tw, med)
        for p in range(tw):
            img[t0 + p] = med[p]
            kept[t0 + p] = cnt[p]


@njit(**JIT)
def mean_block(src, rs, n_frames, m_total, sc, of, wt, unweighted, T, as_sum, img, kept):
    """Weighted mean (``as_sum=False``) or weighted sum Σ w·x of the finite samples."""
    lo = np.full(T, -_FMAX, np.float32)
    hi = np.full(T, _FMAX, np.float32)
    u = np.empty((n_frames, T), np.float32)
    s = np.empty((n_frames, T), np.float32)
    cnt = np.empty(T, np.int32)
    total = np.empty(T, np.float32)
    below = np.empty(T, np.int32)
    img_t = np.empty(T, np.float32)
    kept_t = np.empty(T, np.int32)
    swx = np.empty(T, np.float64)
    for t0 in range(0, m_total, T):
        tw = min(T, m_total - t0)
        load_tile(src, rs, t0, tw, sc, of, u, s, cnt, total)
        if as_sum:
            for p in range(tw):
                swx[p] = 0.0
            for n in range(n_frames):
                un = u[n]
                wn = wt[n]
                for p in range(tw):
                    v = un[p]
                    swx[p] += wn[p] * np.float64(v) if v == v else 0.0
            for p in range(tw):
                img[t0 + p] = np.float32(swx[p]) if cnt[p] > 0 else np.float32(np.nan)
                kept[t0 + p] = cnt[p]
        else:
            weighted_mean_between(u, tw, wt, unweighted, lo, hi, img_t, kept_t, below)
            for p in range(tw):
                img[t0 + p] = img_t[p]
                kept[t0 + p] = kept_t[p]
