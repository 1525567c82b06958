"""numba CPU kernel of winsorized sigma clipping (see ``_stacking_numba`` for the layout).

Per tile: sort the samples, median, MAD, then Huber's equations solved
exactly split by split (see ``stacking_reference.winsor_location_scale``).
On sorted samples a split is two counts (``il`` samples below the lower
bound, ``j1`` up to the upper one) and the float32 sums of ``d = x − median``
and ``d²`` over the samples in between.  While over 1/8 of the tile's
pixels still move, each step is one vectorised split pass and one vectorised
solve over the whole tile; after that, only the moving pixels are walked
(their bounds move by a sample or two) and solved, one by one — a tile-wide
solve for a handful of pixels cost more than the walks.  The operations
mirror the reference so both give the same masks.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from zdask.ops._stacking_numba import (
    JIT,
    load_sorted_tile,
    sorted_mad_tile,
    sorted_median,
    weighted_mean_between,
)

_FMAX = np.float32(np.finfo(np.float32).max)
_INF32 = np.float32(np.inf)


@njit(inline="always", **JIT)
def _split_step(v, lo, hi, mp, a, b, below, upto):
    """Add sample ``v`` to a pixel's split: ``d = v − mp`` and ``d²`` to the sums ``a``, ``b``
    when ``lo <= v <= hi``; counts ``below`` (v < lo) and ``upto`` (v <= hi)."""
    mid = (v >= lo) & (v <= hi)
    d = v - mp
    return (a + (d if mid else np.float32(0.0)), b + (d * d if mid else np.float32(0.0)),
            below + (1 if v < lo else 0), upto + (1 if v <= hi else 0))


@njit(**JIT)
def _split_all(s, med, m, sig, wl, wh, tw, lo32, hi32, il, j1, g1, g2):
    """For every pixel: ``il = #(x < lo)``, ``j1 = #(x <= hi)`` with ``lo, hi = m ∓ w·σ``
    (float32) and the float32 sums (row order) of ``d`` and ``d²`` between the bounds."""
    n_frames = s.shape[0]
    for p in range(tw):
        lo32[p] = m[p] - wl * sig[p]
        hi32[p] = m[p] + wh * sig[p]
        il[p] = 0
        j1[p] = 0
        g1[p] = 0.0
        g2[p] = 0.0
    # four rows per visit of the accumulators (the float32 sums still add the rows one by one,
    # in row order)
    n4 = n_frames - n_frames % 4
    for n in range(0, n4, 4):
        s0, s1, s2, s3 = s[n], s[n + 1], s[n + 2], s[n + 3]
        for p in range(tw):
            lo = lo32[p]
            hi = hi32[p]
            mp = med[p]
            a, b, below, upto = _split_step(s0[p], lo, hi, mp, g1[p], g2[p], 0, 0)
            a, b, below, upto = _split_step(s1[p], lo, hi, mp, a, b, below, upto)
            a, b, below, upto = _split_step(s2[p], lo, hi, mp, a, b, below, upto)
            a, b, below, upto = _split_step(s3[p], lo, hi, mp, a, b, below, upto)
            g1[p] = a
            g2[p] = b
            il[p] += below
            j1[p] += upto
    for n in range(n4, n_frames):
        sn = s[n]
        for p in range(tw):
            a, b, below, upto = _split_step(sn[p], lo32[p], hi32[p], med[p], g1[p], g2[p], 0, 0)
            g1[p] = a
            g2[p] = b
            il[p] += below
            j1[p] += upto


@njit(inline="always", **JIT)
def _split_one(s, n, med, lo, hi, p, il, j1, g1, g2, prev_i, prev_j):
    """:func:`_split_all` for one pixel, walking its counts from their previous values.

    Returns False, without summing, if the split is the one last solved exactly
    (the pixel stops there and its sums are not needed).
    """
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
    if i == prev_i[p] and j == prev_j[p]:
        return False
    a = np.float32(0.0)
    b = np.float32(0.0)
    for r in range(i, j):
        d = s[r, p] - med
        a += d
        b += d * d
    g1[p] = a
    g2[p] = b
    return True


@njit(inline="always", **JIT)
def _solve_pixel(p, cnt, inv_n, il, j1, g1, g2, med, m, sig, act, prev_i, prev_j, wl, wh, cfac):
    """One step for pixel ``p``: stop if its split reproduces the last solved one, else solve
    Huber's equations for this split (float64), or take one plain Huber step where this
    split has no solution.  Returns 1 if the pixel is still active, else 0."""
    wl64 = np.float64(wl)
    wh64 = np.float64(wh)
    c2 = cfac * cfac
    ic2 = 1.0 / c2
    i = il[p]
    j = j1[p]
    on = act[p] & ((i != prev_i[p]) | (j != prev_j[p]))
    m0 = np.float64(med[p])
    k = cnt[p]
    nd = np.float64(k if k > 1 else 1)  # (not max(): numba's max() keeps LLVM from vectorising the solve)
    r = np.float64(j - i)
    fi = np.float64(i)
    fk = np.float64(cnt[p] - j)
    h1 = np.float64(g1[p])
    h2 = np.float64(g2[p])
    inv_r = 1.0 / (r if r > 1.0 else 1.0)
    a = h1 * inv_r
    b = (fk * wh64 - fi * wl64) * inv_r
    u = b - wl64
    v = b + wh64
    den = nd * ic2 - (fi * (u * u) + fk * (v * v) - nd * (b * b))
    solved = (r > 0.0) & (den > 0.0)
    c = h2 - h1 * a
    lo_d = np.float64(m[p] - wl * sig[p]) - m0
    hi_d = np.float64(m[p] + wh * sig[p]) - m0
    mean_d = (fi * lo_d + h1 + fk * hi_d) * inv_n[p]
    var = (fi * (lo_d * lo_d) + h2 + fk * (hi_d * hi_d)) * inv_n[p] - mean_d * mean_d
    s2 = (c if c > 0.0 else 0.0) / den if solved else c2 * (var if var > 0.0 else 0.0)
    s64 = np.sqrt(s2)
    sn = np.float32(s64)
    mn = np.float32(m0 + (a + b * s64) if solved else m0 + mean_d)
    m[p] = mn if on else m[p]
    sig[p] = sn if on else sig[p]
    on = on & (sn > np.float32(0.0))
    act[p] = on
    prev_i[p] = i if solved else -1
    prev_j[p] = j if solved else -1
    return 1 if on else 0


@njit(**JIT)
def _solve_split(cnt, inv_n, il, j1, g1, g2, med, m, sig, act, prev_i, prev_j, wl, wh, cfac, tw):
    """:func:`_solve_pixel` for every pixel of the tile (vectorised); returns the number of
    pixels still active."""
    n_act = 0
    for p in range(tw):
        n_act += _solve_pixel(p, cnt, inv_n, il, j1, g1, g2, med, m, sig, act, prev_i, prev_j, wl, wh, cfac)
    return n_act


@njit(**JIT)
def winsorized_block(src, rs, n_frames, m_total, sc, of, wt, unweighted, kl, kh, wl, wh, cfac,
                     max_iter, mad_k, meanabs_k, ci, cj, use_net, T, img, kept, rlo, rhi):
    u = np.empty((n_frames, T), np.float32)
    s = np.empty((n_frames, T), np.float32)
    cnt = np.empty(T, np.int32)
    total = np.empty(T, np.float32)
    inv_n = np.empty(T, np.float64)
    zero = np.zeros(T, np.int32)
    every = np.ones(T, np.int32)
    med = np.empty(T, np.float32)
    mad = np.empty(T, np.float32)
    tmp = np.empty(T, np.float32)
    m = np.empty(T, np.float32)
    sig = np.empty(T, np.float32)
    act = np.empty(T, np.bool_)
    il = np.empty(T, np.int32)
    j1 = np.empty(T, np.int32)
    prev_i = np.empty(T, np.int32)
    prev_j = np.empty(T, np.int32)
    g1 = np.empty(T, np.float32)
    g2 = np.empty(T, np.float32)
    lo32 = np.empty(T, np.float32)
    hi32 = np.empty(T, np.float32)
    img_t = np.empty(T, np.float32)
    kept_t = np.empty(T, np.int32)
    for t0 in range(0, m_total, T):
        tw = min(T, m_total - t0)
        load_sorted_tile(src, rs, t0, tw, sc, of, u, s, cnt, total, use_net, ci, cj)
        sorted_median(s, zero, cnt, tw, med)
        sorted_mad_tile(s, cnt, med, tw, mad, tmp, every)
        for p in range(tw):  # (vectorised: the rare MAD = 0 case has a loop of its own)
            m[p] = med[p]
            sig[p] = mad_k * mad[p]
            prev_i[p] = -1
            prev_j[p] = -1
            inv_n[p] = 1.0 / np.float64(cnt[p] if cnt[p] > 1 else 1)
        for p in range(tw):
            n = cnt[p]
            if sig[p] == 0.0 and n >= 3:  # MAD = 0: mean absolute deviation about the median
                sabs = 0.0
                for r in range(n):
                    sabs += abs(np.float64(s[r, p]) - np.float64(med[p]))
                sig[p] = np.float32(meanabs_k * (sabs / n))
        n_act = 0
        for p in range(tw):
            act[p] = (cnt[p] >= 3) & (sig[p] > 0.0)
            n_act += 1 if act[p] else 0
        for step in range(max_iter):
            if n_act == 0:
                break
            if step == 0 or n_act * 8 > tw:  # many pixels moving: vectorised passes over the tile
                _split_all(s, med, m, sig, wl, wh, tw, lo32, hi32, il, j1, g1, g2)
                n_act = _solve_split(cnt, inv_n, il, j1, g1, g2, med, m, sig, act, prev_i, prev_j, wl, wh, cfac, tw)
            else:  # few: walk and solve the moving pixels only
                n_act = 0
                for p in range(tw):
                    if not act[p]:
                        continue
                    lo = m[p] - wl * sig[p]
                    hi = m[p] + wh * sig[p]
                    if _split_one(s, cnt[p], med[p], lo, hi, p, il, j1, g1, g2, prev_i, prev_j):
                        n_act += _solve_pixel(p, cnt, inv_n, il, j1, g1, g2, med, m, sig, act, prev_i, prev_j,
                                              wl, wh, cfac)
                    else:  # the split of the last exact solve: converged
                        act[p] = False
        # final rejection outside m − κlow·σ … m + κhigh·σ (float32)
        for p in range(tw):
            ok = (cnt[p] >= 3) & (sig[p] > 0.0)
            lo32[p] = m[p] - kl * sig[p] if ok else -_FMAX
            hi32[p] = m[p] + kh * sig[p] if ok else _FMAX
        weighted_mean_between(u, tw, wt, unweighted, lo32, hi32, img_t, kept_t, il)
        for p in range(tw):
            q = t0 + p
            img[q] = med[p] if (kept_t[p] == 0 and cnt[p] > 0) else img_t[p]
            kept[q] = kept_t[p]
            rlo[q] = il[p]
            rhi[q] = cnt[p] - kept_t[p] - il[p]

