"""numba CPU kernel of winsorized sigma clipping (see ``_stacking_numba`` for the layout).

Per tile: sort the samples, median, MAD, then the Huber iterations.  On
sorted samples, winsorizing to ``[lo, hi]`` only needs the counts below /
above and the sums of ``d = x − median`` and ``d²`` over the samples in
between ("split"): sums centred on the median (float32) keep the variance
from cancelling.  A Huber step is then a few flops per pixel; the split is
recomputed only for pixels whose bounds crossed a sample (one vectorised
pass when many did, per pixel otherwise).  The operations mirror
``stacking_reference.winsorized`` so both give the same masks.
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
_INF32 = np.float32(np.inf)

# rows of the per-pixel split state ``g``
_G1, _G2, _L1, _L2, _H1, _H2 = 0, 1, 2, 3, 4, 5


@njit(inline="always", **JIT)
def _mad_two_pointer(s, n, m, p):
    """MAD of one pixel (float32): merge the deviations left/right of the median."""
    i = n // 2 - 1
    r = n // 2
    steps = (n - 1) // 2 + 1 if n % 2 == 1 else n // 2 + 1
    d_prev = np.float32(0.0)
    d_cur = np.float32(0.0)
    for _ in range(steps):
        dl = abs(s[i, p] - m) if i >= 0 else _INF32
        dr = abs(s[r, p] - m) if r < n else _INF32
        d_prev = d_cur
        if dl <= dr:
            d_cur = dl
            i -= 1
        else:
            d_cur = dr
            r += 1
    return d_cur if n % 2 == 1 else (d_prev + d_cur) * np.float32(0.5)


@njit(**JIT)
def _window_min_max(s, m, k, tw, out):
    """``out = min_i max(|s_i − m|, |s_{i+k} − m|)``: the (k+1)-th smallest deviation.

    The k+1 smallest deviations about the median are k+1 consecutive sorted
    samples, and the largest deviation of a window is at one of its ends.
    """
    n_frames = s.shape[0]
    for p in range(tw):
        out[p] = _INF32
    for i in range(n_frames - k):
        a = s[i]
        b = s[i + k]
        for p in range(tw):
            d1 = abs(a[p] - m[p])
            d2 = abs(b[p] - m[p])
            mx = d1 if d1 > d2 else d2
            out[p] = mx if mx < out[p] else out[p]


@njit(**JIT)
def _mad(s, cnt, med, tw, out, tmp):
    """Median absolute deviation (float32) about ``med`` of the sorted samples.

    Vectorised for the pixels that have all N samples, per pixel otherwise.
    """
    n_frames = s.shape[0]
    k = (n_frames - 1) // 2
    _window_min_max(s, med, k, tw, out)
    if n_frames % 2 == 0:
        _window_min_max(s, med, k + 1, tw, tmp)
        for p in range(tw):
            out[p] = (out[p] + tmp[p]) * np.float32(0.5)
    for p in range(tw):
        n = cnt[p]
        if n != n_frames:
            out[p] = _mad_two_pointer(s, n, med[p], p) if n > 0 else np.float32(0.0)


@njit(**JIT)
def _split_all(s, med, m, sig, wl, wh, tw, lo32, hi32, il, j1, g):
    """For every pixel: ``il = #(x < lo)``, ``j1 = #(x <= hi)`` with ``lo, hi = m ∓ w·σ``, Σd
    and Σd² (float32, in row order) of the samples in between, and the sample values either
    side of each bound (for the cheap "same split" test of the next iteration)."""
    n_frames = s.shape[0]
    for p in range(tw):
        lo32[p] = m[p] - wl * sig[p]
        hi32[p] = m[p] + wh * sig[p]
    for p in range(tw):
        il[p] = 0
        j1[p] = 0
    for n in range(n_frames):  # counts (two outputs per pass keeps LLVM vectorising)
        sn = s[n]
        for p in range(tw):
            v = sn[p]
            il[p] += 1 if v < lo32[p] else 0
            j1[p] += 1 if v <= hi32[p] else 0
    g1 = g[_G1]
    g2 = g[_G2]
    for p in range(tw):
        g1[p] = 0.0
        g2[p] = 0.0
    for n in range(n_frames):  # float32 sums of d and d² between the bounds
        sn = s[n]
        for p in range(tw):
            v = sn[p]
            mid = (v >= lo32[p]) & (v <= hi32[p])
            d = v - med[p]
            g1[p] += d if mid else np.float32(0.0)
            g2[p] += d * d if mid else np.float32(0.0)
    for p in range(tw):  # the samples either side of each bound
        i = il[p]
        j = j1[p]
        g[_L1, p] = s[max(i - 1, 0), p] if i > 0 else -_INF32
        g[_L2, p] = s[min(i, n_frames - 1), p] if i < n_frames else _INF32
        g[_H1, p] = s[max(j - 1, 0), p] if j > 0 else -_INF32
        g[_H2, p] = s[min(j, n_frames - 1), p] if j < n_frames else _INF32


@njit(inline="always", **JIT)
def _split_one(s, n, med, lo, hi, p, il, j1, g):
    """:func:`_split_all` for one pixel, walking from its previous counts (same float32 sums)."""
    i = il[p]
    j = j1[p]
    while i > 0 and s[i - 1, p] >= lo:
        i -= 1
    while i < n and s[i, p] < lo:
        i += 1
    while j < n and s[j, p] <= hi:
        j += 1
    while j > 0 and s[j - 1, p] > hi:
        j -= 1
    il[p] = i
    j1[p] = j
    a = np.float32(0.0)
    b = np.float32(0.0)
    for r in range(i, j):
        d = s[r, p] - med
        a += d
        b += d * d
    g[_G1, p] = a
    g[_G2, p] = b
    g[_L1, p] = s[i - 1, p] if i > 0 else -_INF32
    g[_L2, p] = s[i, p] if i < s.shape[0] else _INF32
    g[_H1, p] = s[j - 1, p] if j > 0 else -_INF32
    g[_H2, p] = s[j, p] if j < s.shape[0] else _INF32


@njit(**JIT)
def _huber_step(cnt, inv_n, il, j1, g, m0, m, sig, act, fix, wl, wh, cfac, tol, tw):
    """One Huber iteration (float32) for every active pixel; flags those whose split must be redone."""
    any_act = False
    for p in range(tw):
        fl = np.float32(il[p])
        fh = np.float32(cnt[p] - j1[p])
        lo_d = (m[p] - wl * sig[p]) - m0[p]
        hi_d = (m[p] + wh * sig[p]) - m0[p]
        s1 = fl * lo_d + g[_G1, p] + fh * hi_d
        s2 = fl * (lo_d * lo_d) + g[_G2, p] + fh * (hi_d * hi_d)
        mean_d = s1 * inv_n[p]
        var = s2 * inv_n[p] - mean_d * mean_d
        mn = m0[p] + mean_d
        sn = cfac * np.sqrt(var if var > np.float32(0.0) else np.float32(0.0))
        on = act[p]
        conv = (abs(sn - sig[p]) <= tol * sig[p]) & (abs(mn - m[p]) <= tol * sig[p])
        m[p] = mn if on else m[p]
        sig[p] = sn if on else sig[p]
        on = on & (not conv) & (sn > np.float32(0.0))
        act[p] = on
        lo = m[p] - wl * sig[p]
        hi = m[p] + wh * sig[p]
        same = (g[_L1, p] < lo) & (lo <= g[_L2, p]) & (g[_H1, p] <= hi) & (hi < g[_H2, p])
        fix[p] = on & (not same)
        any_act |= on
    return any_act


@njit(**JIT)
def winsorized_block(src, rs, n_frames, m_total, sc, of, wt, unweighted, kl, kh, wl, wh, cfac, tol,
                     max_iter, mad_k, meanabs_k, ci, cj, use_net, T, img, kept, rlo, rhi):
    u = np.empty((n_frames, T), np.float32)
    s = np.empty((n_frames, T), np.float32)
    g = np.empty((6, T), np.float32)
    cnt = np.empty(T, np.int32)
    zero = np.zeros(T, np.int32)
    med = np.empty(T, np.float32)
    mad = np.empty(T, np.float32)
    tmp = np.empty(T, np.float32)
    inv_n = np.empty(T, np.float32)
    m = np.empty(T, np.float32)
    sig = np.empty(T, np.float32)
    act = np.empty(T, np.bool_)
    fix = np.empty(T, np.bool_)
    il = np.empty(T, np.int32)
    j1 = np.empty(T, np.int32)
    lo32 = np.empty(T, np.float32)
    hi32 = np.empty(T, np.float32)
    img_t = np.empty(T, np.float32)
    kept_t = np.empty(T, np.int32)
    for t0 in range(0, m_total, T):
        tw = min(T, m_total - t0)
        load_sorted_tile(src, rs, t0, tw, sc, of, u, s, cnt, use_net, ci, cj)
        sorted_median(s, zero, cnt, tw, med)
        _mad(s, cnt, med, tw, mad, tmp)
        any_act = False
        for p in range(tw):
            n = cnt[p]
            m[p] = med[p]
            inv_n[p] = np.float32(1.0 / n) if n > 0 else np.float32(0.0)
            sig[p] = mad_k * mad[p]
            if sig[p] == 0.0 and n >= 3:  # MAD = 0: mean absolute deviation about the median
                sabs = 0.0
                for r in range(n):
                    sabs += abs(np.float64(s[r, p]) - np.float64(med[p]))
                sig[p] = np.float32(meanabs_k * (sabs / n))
            act[p] = (n >= 3) & (sig[p] > 0.0)
            any_act |= act[p]
        if any_act and max_iter > 0:
            _split_all(s, med, m, sig, wl, wh, tw, lo32, hi32, il, j1, g)
            any_act = _huber_step(cnt, inv_n, il, j1, g, med, m, sig, act, fix, wl, wh, cfac, tol, tw)
        for _ in range(1, max_iter):
            if not any_act:
                break
            nfix = 0
            for p in range(tw):
                nfix += 1 if fix[p] else 0
            if nfix * 8 > tw:  # many splits changed: one vectorised pass over the tile
                _split_all(s, med, m, sig, wl, wh, tw, lo32, hi32, il, j1, g)
            elif nfix > 0:
                for p in range(tw):
                    if fix[p]:
                        _split_one(s, cnt[p], med[p], m[p] - wl * sig[p], m[p] + wh * sig[p], p, il, j1, g)
            any_act = _huber_step(cnt, inv_n, il, j1, g, med, m, sig, act, fix, wl, wh, cfac, tol, tw)
        # final rejection outside m − κlow·σ … m + κhigh·σ (float32)
        for p in range(tw):
            ok = (cnt[p] >= 3) & (sig[p] > 0.0)
            lo32[p] = m[p] - kl * sig[p] if ok else -_FMAX
            hi32[p] = m[p] + kh * sig[p] if ok else _FMAX
        weighted_mean_between(u, tw, wt, unweighted, lo32, hi32, img_t, kept_t)
        _count_outside(u, tw, lo32, hi32, il, j1)
        for p in range(tw):
            q = t0 + p
            img[q] = med[p] if (kept_t[p] == 0 and cnt[p] > 0) else img_t[p]
            kept[q] = kept_t[p]
            rlo[q] = il[p]
            rhi[q] = j1[p]


@njit(**JIT)
def _count_outside(u, tw, lo32, hi32, nlo, nhi):
    """``#(x < lo32)`` and ``#(x > hi32)`` over the finite samples (NaN never counts)."""
    n_frames = u.shape[0]
    for p in range(tw):
        nlo[p] = 0
        nhi[p] = 0
    for n in range(n_frames):
        un = u[n]
        for p in range(tw):
            v = un[p]
            nlo[p] += 1 if v < lo32[p] else 0
            nhi[p] += 1 if v > hi32[p] else 0
