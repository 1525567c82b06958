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
    sorted_median,
    weighted_mean_between,
)

_FMAX = np.float32(np.finfo(np.float32).max)


@njit(**JIT)
def _line_sums(s, k, half, tw, sy, sxy):
    """Σy and Σ xc·y over the kept samples ``s[:k]`` (xc = rank − (k−1)/2), in rank order."""
    n_frames = s.shape[0]
    for p in range(tw):
        sy[p] = 0.0
        sxy[p] = 0.0
    for n in range(n_frames):
        sn = s[n]
        for p in range(tw):
            m = n < k[p]
            y = np.float64(sn[p])
            sy[p] += y if m else 0.0
            sxy[p] += (n - half[p]) * y if m else 0.0


@njit(**JIT)
def _line_abs(s, k, half, ybar, slope, tw, sabs):
    """Σ|y − (ȳ + b·xc)| over the kept samples."""
    n_frames = s.shape[0]
    for p in range(tw):
        sabs[p] = 0.0
    for n in range(n_frames):
        sn = s[n]
        for p in range(tw):
            e = np.float64(sn[p]) - (ybar[p] + slope[p] * (n - half[p]))
            sabs[p] += abs(e) if n < k[p] else 0.0


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
def linear_fit_block(src, rs, n_frames, m_total, sc, of, wt, unweighted, kl, kh, iterations, ci, cj, use_net,
                     T, img, kept, rlo, rhi):
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
    sabs = np.empty(T, np.float64)
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
        for _ in range(iterations):
            if not any_act:
                break
            for p in range(tw):
                half[p] = (k[p] - 1) * 0.5
            _line_sums(s, k, half, tw, sy, sxy)
            for p in range(tw):
                kf = np.float64(k[p])
                if k[p] >= 3:
                    ybar[p] = sy[p] / kf
                    slope[p] = sxy[p] / (kf * (kf * kf - 1.0) / 12.0)
            _line_abs(s, k, half, ybar, slope, tw, sabs)
            for p in range(tw):
                sig = sabs[p] / k[p] if k[p] > 0 else 0.0
                lo[p] = -kl * sig
                hi[p] = kh * sig
            _line_reject_counts(s, k, half, ybar, slope, lo, hi, tw, nlo, nhi)
            any_act = False
            for p in range(tw):
                if act[p] and nlo[p] + nhi[p] > 0:
                    _compact(s, idx, unweighted, k[p], half[p], ybar[p], slope[p], lo[p], hi[p], p)
                    rl[p] += nlo[p]
                    rh[p] += nhi[p]
                    k[p] -= nlo[p] + nhi[p]
                    act[p] = k[p] >= 3
                else:
                    act[p] = False
                any_act |= act[p]
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
