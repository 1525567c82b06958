"""Shared numba building blocks of the CPU stacking kernels.

Layout: the block is ``(N, M)`` float32, passed as a flat contiguous buffer
``src`` with frame ``n`` at ``src[n*rs : n*rs + M]`` (``rs`` >= M: views of a
bigger array keep their row stride and need no copy).  It is
processed in tiles of ``T`` samples (a multiple of C, so the per-frame
coefficient tiles ``(N, T)`` line up with every tile).  Every pass is a loop
over frames (rows) with the pixel loop innermost, which LLVM vectorises.

Each tile holds two frames-first buffers:

* ``u (N, T)``: the normalised samples in frame order, NaN where missing;
* ``s (N, T)``: the same samples sorted per pixel, missing ones as +inf at
  the end (``cnt[p]`` finite samples in ``s[:cnt[p], p]``).

Every result depends on a pixel's own samples only, never on the tile or the
block it sits in (bit-identical whatever the block split).  Functions are
single-threaded and release the GIL (``nogil``): dask's threads provide the
parallelism.  ``fastmath`` is off on purpose (it breaks the NaN handling and
the float32 exactness of the kappa-sigma statistics).

Performance notes: keep each row loop to at most two or three output arrays
(more and LLVM gives up the runtime alias checks, i.e. the vectorisation);
per-pixel helpers called inside pixel loops are ``inline="always"`` (a
non-inlined call pays NRT reference counting on every array argument).
Passes that accumulate per pixel (sums, counts, minima) read two or four
rows per visit of the accumulators: loading and storing the accumulator
arrays for every row bound those loops (measured 15–35 % faster per pass;
the float sums still add the rows one at a time, in row order, so results
are unchanged).
"""

from __future__ import annotations

import numpy as np
from numba import njit

JIT = dict(cache=True, nogil=True, fastmath=False, boundscheck=False, error_model="numpy")

_FMAX = np.float32(np.finfo(np.float32).max)
_INF32 = np.float32(np.inf)


@njit(**JIT)
def load_tile(src, rs, t0, tw, sc, of, u, s, cnt, total):
    """Normalise ``src[:, t0:t0+tw]`` (x*scale+offset) into ``u`` and ``s``; count the finite
    samples into ``cnt`` and sum them into ``total`` (float32, frame order, like ``np.nansum``).

    ``src`` is the block as a flat contiguous buffer, frame ``n`` starting at ``n * rs``.
    The sum rides along for free here (the load is bound by reading ``src``) and saves
    kappa-sigma a pass over the tile.
    """
    n_frames = u.shape[0]
    for p in range(tw):
        cnt[p] = 0
        total[p] = 0.0
    for n in range(n_frames):
        row = src[n * rs + t0:n * rs + t0 + tw]
        un = u[n]
        sn = s[n]
        scn = sc[n]
        ofn = of[n]
        for p in range(tw):
            v = row[p] * scn[p] + ofn[p]
            fin = abs(v) <= _FMAX
            un[p] = v if fin else np.float32(np.nan)
            sn[p] = v if fin else _INF32
            cnt[p] += 1 if fin else 0
            total[p] += v if fin else np.float32(0.0)


@njit(**JIT)
def load_frames(src, rs, t0, tw, sc, of, u, cnt, total):
    """:func:`load_tile` without the sort buffer (kernels that need no sorted copy), the sum of
    the finite samples in float64 (frame order)."""
    n_frames = u.shape[0]
    for p in range(tw):
        cnt[p] = 0
        total[p] = 0.0
    for n in range(n_frames):
        row = src[n * rs + t0:n * rs + t0 + tw]
        un = u[n]
        scn = sc[n]
        ofn = of[n]
        for p in range(tw):
            v = row[p] * scn[p] + ofn[p]
            fin = abs(v) <= _FMAX
            un[p] = v if fin else np.float32(np.nan)
            cnt[p] += 1 if fin else 0
            total[p] += np.float64(v) if fin else 0.0


@njit(**JIT)
def load_tile_index(src, rs, t0, tw, sc, of, s, idx, cnt):
    """Like :func:`load_tile` but only the sort buffer, with the frame index payload."""
    n_frames = s.shape[0]
    for p in range(tw):
        cnt[p] = 0
    for n in range(n_frames):
        row = src[n * rs + t0:n * rs + t0 + tw]
        sn = s[n]
        ix = idx[n]
        scn = sc[n]
        ofn = of[n]
        for p in range(tw):
            v = row[p] * scn[p] + ofn[p]
            fin = abs(v) <= _FMAX
            sn[p] = v if fin else _INF32
            ix[p] = n
            cnt[p] += 1 if fin else 0


@njit(**JIT)
def sort_network(s, tw, ci, cj):
    """Apply the comparators ``(ci[k], cj[k])`` to every pixel (vectorised)."""
    for k in range(ci.shape[0]):
        a = s[ci[k]]
        b = s[cj[k]]
        for p in range(tw):
            x = a[p]
            y = b[p]
            a[p] = x if x < y else y
            b[p] = y if x < y else x


@njit(**JIT)
def sort_network_index(s, idx, tw, ci, cj):
    """Sorting network carrying an int32 payload (the frame index)."""
    for k in range(ci.shape[0]):
        a = s[ci[k]]
        b = s[cj[k]]
        ia = idx[ci[k]]
        ib = idx[cj[k]]
        for p in range(tw):
            x = a[p]
            y = b[p]
            ix = ia[p]
            iy = ib[p]
            sw = y < x
            a[p] = y if sw else x
            b[p] = x if sw else y
            ia[p] = iy if sw else ix
            ib[p] = ix if sw else iy


@njit(**JIT)
def sort_columns(s, tw, cnt):
    """Per-pixel sort (deep stacks): only the ``cnt[p]`` finite samples move."""
    n_frames = s.shape[0]
    col = np.empty(n_frames, np.float32)
    for p in range(tw):
        k = cnt[p]
        j = 0
        for n in range(n_frames):
            v = s[n, p]
            if v != _INF32:
                col[j] = v
                j += 1
        col[:k].sort()
        for n in range(k):
            s[n, p] = col[n]
        for n in range(k, n_frames):
            s[n, p] = _INF32


@njit(**JIT)
def load_sorted_tile(src, rs, t0, tw, sc, of, u, s, cnt, total, use_net, ci, cj):
    """Load a tile (``load_tile``), then sort each pixel's samples: the sorting network for
    shallow stacks, a per-pixel sort of the finite samples for deep ones."""
    load_tile(src, rs, t0, tw, sc, of, u, s, cnt, total)
    if use_net:
        sort_network(s, tw, ci, cj)
    else:
        sort_columns(s, tw, cnt)


@njit(**JIT)
def sort_columns_index(s, idx, tw, cnt):
    """Per-pixel stable argsort with payload (deep stacks); missing samples last."""
    n_frames = s.shape[0]
    col = np.empty(n_frames, np.float32)
    ids = np.empty(n_frames, np.int32)
    miss = np.empty(n_frames, np.int32)
    for p in range(tw):
        k = cnt[p]
        j = 0
        q = 0
        for n in range(n_frames):
            v = s[n, p]
            if v != _INF32:
                col[j] = v
                ids[j] = idx[n, p]
                j += 1
            else:
                miss[q] = idx[n, p]
                q += 1
        order = np.argsort(col[:k], kind="mergesort")
        for n in range(k):
            s[n, p] = col[order[n]]
            idx[n, p] = ids[order[n]]
        for n in range(q):
            s[k + n, p] = _INF32
            idx[k + n, p] = miss[n]


@njit(**JIT)
def sorted_median(s, a, b, tw, out):
    """Median of the sorted samples ``s[a[p]:b[p], p]`` (float32, like NumPy)."""
    for p in range(tw):
        k = b[p] - a[p]
        if k <= 0:
            out[p] = np.float32(np.nan)
            continue
        h = a[p] + k // 2
        if k % 2 == 1:
            out[p] = s[h, p]
        else:
            out[p] = (s[h - 1, p] + s[h, p]) * np.float32(0.5)


@njit(inline="always", **JIT)
def sorted_mad(s, n, m, p):
    """MAD of pixel ``p`` (float32) about its median ``m`` from its sorted samples ``s[:n, p]``:
    merge the deviations left and right of the median, smallest first."""
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


@njit(inline="always", **JIT)
def _window_step(o, x, y, c):
    """``min(o, max(|x − c|, |y − c|))``: one window's share of :func:`_window_min_max`."""
    dx = abs(x - c)
    dy = abs(y - c)
    mx = dx if dx > dy else dy
    return mx if mx < o else o


@njit(**JIT)
def _window_min_max(s, m, k, tw, out):
    """``out = min_i max(|s_i − m|, |s_{i+k} − m|)``: the (k+1)-th smallest deviation.

    The k+1 smallest deviations about the median are k+1 consecutive sorted
    samples, and the largest deviation of a window is at one of its ends.
    """
    n_frames = s.shape[0]
    for p in range(tw):
        out[p] = _INF32
    windows = n_frames - k
    w4 = windows - windows % 4
    for i in range(0, w4, 4):  # four windows per load/store of ``out``
        a0, a1, a2, a3 = s[i], s[i + 1], s[i + 2], s[i + 3]
        b0, b1, b2, b3 = s[i + k], s[i + k + 1], s[i + k + 2], s[i + k + 3]
        for p in range(tw):
            c = m[p]
            o = _window_step(out[p], a0[p], b0[p], c)
            o = _window_step(o, a1[p], b1[p], c)
            o = _window_step(o, a2[p], b2[p], c)
            out[p] = _window_step(o, a3[p], b3[p], c)
    for i in range(w4, windows):
        a = s[i]
        b = s[i + k]
        for p in range(tw):
            out[p] = _window_step(out[p], a[p], b[p], m[p])


@njit(**JIT)
def sorted_mad_tile(s, cnt, med, tw, out, tmp, need):
    """Median absolute deviation (float32) about ``med`` of the sorted samples ``s[:cnt[p], p]``.

    Vectorised for the pixels that have all N samples; per pixel (:func:`sorted_mad`) for the
    others where ``need[p] != 0`` (elsewhere ``out`` is left undefined).
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
        if n != n_frames and need[p] != 0:
            out[p] = sorted_mad(s, n, med[p], p) if n > 0 else np.float32(0.0)


@njit(inline="always", **JIT)
def _add_between(t, k, below, v, w, lo, hi):
    """Add sample ``v`` (weight ``w``) to a pixel's final mean: ``t + w·v`` (float64) and
    ``k + 1`` if ``lo <= v <= hi``; ``below + 1`` if ``v < lo``."""
    m = (v >= lo) & (v <= hi)
    return t + (w * np.float64(v) if m else 0.0), k + (1 if m else 0), below + (1 if v < lo else 0)


@njit(**JIT)
def weighted_mean_between(u, tw, wt, unweighted, lo, hi, img, kept, below):
    """Weighted mean of the samples of ``u`` (frame order) with ``lo <= x <= hi`` (float32 bounds).

    Sums in float64 (Σw·x / Σw); zero total weight falls back to the
    unweighted mean Σx / k.  Pixels keeping nothing get NaN and ``kept = 0``.
    Also counts ``below = #(x < lo)`` (missing samples never count), so that
    the rejection maps need no pass of their own: above = finite − kept − below.
    """
    n_frames = u.shape[0]
    sw = np.zeros(tw, np.float64)
    swx = np.zeros(tw, np.float64)
    k = np.zeros(tw, np.int32)
    for p in range(tw):
        below[p] = 0
    if unweighted:
        n4 = n_frames - n_frames % 4
        for n in range(0, n4, 4):  # four rows per load/store of the sums, still added one by one
            u0, u1, u2, u3 = u[n], u[n + 1], u[n + 2], u[n + 3]
            for p in range(tw):
                a = lo[p]
                b = hi[p]
                t, kk, nb = _add_between(swx[p], k[p], below[p], u0[p], 1.0, a, b)
                t, kk, nb = _add_between(t, kk, nb, u1[p], 1.0, a, b)
                t, kk, nb = _add_between(t, kk, nb, u2[p], 1.0, a, b)
                swx[p], k[p], below[p] = _add_between(t, kk, nb, u3[p], 1.0, a, b)
        for n in range(n4, n_frames):
            un = u[n]
            for p in range(tw):
                swx[p], k[p], below[p] = _add_between(swx[p], k[p], below[p], un[p], 1.0, lo[p], hi[p])
        for p in range(tw):
            kept[p] = k[p]
            img[p] = np.float32(swx[p] / k[p]) if k[p] > 0 else np.float32(np.nan)
        return
    n2 = n_frames - n_frames % 2
    for n in range(0, n2, 2):  # two rows per load/store of the sums, still added one by one
        u0, u1 = u[n], u[n + 1]
        w0, w1 = wt[n], wt[n + 1]
        for p in range(tw):
            a = lo[p]
            b = hi[p]
            v0 = u0[p]
            v1 = u1[p]
            t = sw[p]
            t += w0[p] if (v0 >= a) & (v0 <= b) else 0.0
            t += w1[p] if (v1 >= a) & (v1 <= b) else 0.0
            sw[p] = t
            t, kk, nb = _add_between(swx[p], k[p], below[p], v0, w0[p], a, b)
            swx[p], k[p], below[p] = _add_between(t, kk, nb, v1, w1[p], a, b)
    for n in range(n2, n_frames):
        un = u[n]
        wn = wt[n]
        for p in range(tw):
            v = un[p]
            sw[p] += wn[p] if (v >= lo[p]) & (v <= hi[p]) else 0.0
            swx[p], k[p], below[p] = _add_between(swx[p], k[p], below[p], v, wn[p], lo[p], hi[p])
    fallback = False
    for p in range(tw):
        kept[p] = k[p]
        if k[p] == 0:
            img[p] = np.float32(np.nan)
        elif sw[p] > 0.0:
            img[p] = np.float32(swx[p] / sw[p])
        else:
            fallback = True
    if fallback:  # zero total weight: unweighted mean of the kept samples
        for p in range(tw):
            swx[p] = 0.0
        for n in range(n_frames):
            un = u[n]
            for p in range(tw):
                v = un[p]
                m = (v >= lo[p]) & (v <= hi[p])
                swx[p] += np.float64(v) if m else 0.0
        for p in range(tw):
            if k[p] > 0 and not sw[p] > 0.0:
                img[p] = np.float32(swx[p] / k[p])
