"""Plain vectorised reference implementation of every stacking method.

Whole-array NumPy (or CuPy: the array namespace is taken from the input)
code, written for clarity: it is what the fast numba kernels are tested
against, and it is the CuPy path.  Memory: several float64 temporaries of
the stack's size, so keep inputs small (tests) or tiled (``_stacking_cupy``).

Every function has the signature and semantics of its counterpart in
:mod:`zdask.ops.stacking` (documented there), and performs the same
floating-point operations in the same order as the numba kernels
(frame-order float64 statistics for kappa-sigma, float32 sorted-order sums
for the winsorized split, float64 row-order sums elsewhere), so on NumPy
both give the same rejection masks, bit for bit.

Kappa-sigma here deliberately differs from the ancestor's reference
semantics (centre = median, scale = std of all finite samples): the bounds
are ``mean ± K(k, κ)·std`` with the Student-t calibrated ``K`` of
``_stacking_common.student_kappa_table``, the leave-one-out studentized
test, which rejects at the Gaussian rate of κ at every N >= 4 where the
ancestor's rule at κ = 3 rejects nothing below N = 8; three samples keep
their median.
"""

from __future__ import annotations

import numpy as np

from zdask.ops._stacking_common import (
    FLT_MAX,
    MEANABS_TO_SIGMA,
    THREE_SAMPLE_MEDIAN,
    WINSOR_MAX_ITER,
    StackResult,
    parse_iterations,
    parse_kappa,
    prepare_coefficients,
    stack_geometry,
    student_kappa_table,
    winsor_consistency,
)
from zdask.ops.backend import array_module
from zdask.ops.robust import MAD_TO_SIGMA

__all__ = ["kappa_sigma", "winsorized", "linear_fit_clip", "median", "mean", "sum_stack"]


def _prepare(stack, weights, scale, offset):
    xp = array_module(stack)
    n, c, out_shape = stack_geometry(stack.shape)
    w, sc, of = prepare_coefficients(n, c, weights, scale, offset, xp)
    x = xp.asarray(stack, dtype=xp.float32).reshape(n, -1, c)
    x = x * sc[:, None, :] + of[:, None, :]
    fin = xp.abs(x) <= xp.float32(FLT_MAX)
    x = xp.where(fin, x, xp.float32(np.nan))
    if w is not None:
        w = xp.broadcast_to(w[:, None, :], x.shape)
    return xp, x, fin, w, out_shape


def _finish(xp, out_shape, image, count, rl, rh):
    def cast(a, dt):
        return xp.ascontiguousarray(a.astype(dt).reshape(out_shape))

    return StackResult(cast(image, xp.float32), cast(count, xp.int32), cast(rl, xp.int32), cast(rh, xp.int32))


def _take(xp, a, idx):
    idx = xp.clip(idx, 0, a.shape[0] - 1)
    return xp.take_along_axis(a, idx[None], axis=0)[0]


def _sorted_median(xp, srt, a, b):
    """Median of ``srt[a:b]`` per pixel (float32: mean of the two middle values)."""
    k = b - a
    h = a + k // 2
    hi = _take(xp, srt, h)
    lo = _take(xp, srt, h - 1)
    even = (lo + hi) * xp.float32(0.5)
    med = xp.where(k % 2 == 1, hi, even)
    return xp.where(k > 0, med, xp.float32(np.nan))


def _weighted_mean(xp, x, w, keep):
    """Weighted mean of the kept samples; zero total weight → unweighted mean."""
    xd = x.astype(xp.float64)
    k = keep.sum(axis=0)
    sx = xp.where(keep, xd, 0.0).sum(axis=0)
    if w is None:
        sw, swx = k.astype(xp.float64), sx
    else:
        sw = xp.where(keep, w, 0.0).sum(axis=0)
        swx = xp.where(keep, w * xd, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        img = xp.where(sw > 0, swx / xp.where(sw > 0, sw, 1.0), sx / xp.maximum(k, 1))
    img = xp.where(k > 0, img, np.nan)
    return img.astype(xp.float32), k


def kappa_sigma(stack, *, weights=None, scale=None, offset=None, kappa=(3.0, 3.0), iterations=1):
    kl, kh = parse_kappa(kappa)
    iterations = parse_iterations(iterations)
    xp, x, fin, w, out_shape = _prepare(stack, weights, scale, offset)
    n = fin.sum(axis=0)
    k_lo = xp.asarray(student_kappa_table(x.shape[0], kl))
    k_hi = xp.asarray(student_kappa_table(x.shape[0], kh))
    f32 = xp.float32
    keep_lo = xp.full(n.shape, -np.inf)
    keep_hi = xp.full(n.shape, np.inf)
    rl = xp.zeros_like(n)
    rh = xp.zeros_like(n)
    three = n == THREE_SAMPLE_MEDIAN
    if bool(three.any()):  # three samples: their median (no spread estimate can judge them)
        srt = xp.sort(xp.where(fin, x, f32(np.inf)), axis=0)
        med = _sorted_median(xp, srt, xp.zeros_like(n), n).astype(xp.float64)
        keep_lo = xp.where(three, med, keep_lo)
        keep_hi = xp.where(three, med, keep_hi)
        rl = xp.where(three, (fin & (x < med)).sum(axis=0), rl)
        rh = xp.where(three, (fin & (x > med)).sum(axis=0), rh)
    act = n > THREE_SAMPLE_MEDIAN
    xd = x.astype(xp.float64)
    for it in range(iterations):
        if not bool(act.any()):
            break
        surv = (x >= keep_lo) & (x <= keep_hi)
        k = surv.sum(axis=0)
        kd = xp.maximum(k, 1).astype(xp.float64)
        mu = xp.where(surv, xd, 0.0).sum(axis=0) / kd
        d = xd - mu
        sd = xp.sqrt(xp.where(surv, d * d, 0.0).sum(axis=0) / kd)
        lo = mu - k_lo[k] * sd
        hi = mu + k_hi[k] * sd
        nlo = (surv & (x < lo)).sum(axis=0)
        nhi = (surv & (x > hi)).sum(axis=0)
        upd = act & (nlo + nhi > 0)
        rl = rl + xp.where(upd, nlo, 0)
        rh = rh + xp.where(upd, nhi, 0)
        keep_lo = xp.where(upd, xp.maximum(keep_lo, lo), keep_lo)
        keep_hi = xp.where(upd, xp.minimum(keep_hi, hi), keep_hi)
        act = upd & (k - nlo - nhi >= 3)
    keep = (x >= keep_lo) & (x <= keep_hi)
    img, kk = _weighted_mean(xp, x, w, keep)
    if bool(((kk == 0) & (n > 0)).any()):  # every sample rejected (tiny kappa): the median
        srt = xp.sort(xp.where(fin, x, f32(np.inf)), axis=0)
        img = xp.where((kk == 0) & (n > 0), _sorted_median(xp, srt, xp.zeros_like(n), n), img)
    return _finish(xp, out_shape, img, kk, rl, rh)


def winsor_location_scale(srt, n, wl, wh, cfac, mad_k=MAD_TO_SIGMA):
    """Huber location ``m`` and scale ``σ`` (float32) of sorted samples (missing = +inf at the end).

    Start: median and ``mad_k``·MAD (mean absolute deviation ×1.2533 if the MAD is 0).  Then
    solve Huber's equations exactly: with ``i`` samples below ``m − wl·σ``, ``k`` above
    ``m + wh·σ`` and the sums ``g1 = Σd``, ``g2 = Σd²`` (``d = x − median``) over the ``r``
    samples between, the fixed point of "winsorize, then m = mean and σ = c·std of the
    winsorized samples" is ``m − median = a + b·σ`` with ``a = g1/r``,
    ``b = (k·wh − i·wl)/r`` and ``σ² = (g2 − g1·a) / (n/c² − q)``,
    ``q = i·(b − wl)² + k·(b + wh)² − n·b²``.  Each step solves for the current split and
    moves the split to the solution's bounds; it stops when the split reproduces itself
    (at most ``WINSOR_MAX_ITER`` solves).  Sums of ``d`` are float32 in sorted order, the
    solve float64, the state and bounds float32 (the numba kernel does the same).
    """
    xp = array_module(srt)
    f32 = np.float32
    sfin = srt <= f32(FLT_MAX)
    med = _sorted_median(xp, srt, xp.zeros_like(n), n)
    # MAD in float32 (deviations about the float32 median)
    dev = xp.sort(xp.where(sfin, xp.abs(srt - med), f32(np.inf)), axis=0)
    h = n // 2
    mad = xp.where(n % 2 == 1, _take(xp, dev, h), (_take(xp, dev, h - 1) + _take(xp, dev, h)) * f32(0.5))
    sig = f32(mad_k) * xp.where(n > 0, mad, f32(0.0))
    need = (sig == 0) & (n >= 3)
    nd = xp.maximum(n, 1).astype(xp.float64)
    meanabs = xp.where(sfin, xp.abs(srt.astype(xp.float64) - med.astype(xp.float64)), 0.0).sum(axis=0)
    sig = xp.where(need, (MEANABS_TO_SIGMA * (meanabs / nd)).astype(f32), sig)
    wl, wh = f32(wl), f32(wh)
    wl64, wh64 = np.float64(wl), np.float64(wh)
    c2 = np.float64(cfac) * np.float64(cfac)
    ic2 = np.float64(1.0) / c2
    inv_n = 1.0 / nd
    d = srt - med
    med64 = med.astype(xp.float64)
    m = med
    act = (n >= 3) & (sig > 0)
    prev_i = xp.full(n.shape, -1, dtype=n.dtype)
    prev_j = xp.full(n.shape, -1, dtype=n.dtype)
    for _ in range(WINSOR_MAX_ITER):
        lo = m - wl * sig
        hi = m + wh * sig
        below = sfin & (srt < lo)
        mid = sfin & ~below & (srt <= hi)
        i = below.sum(axis=0)
        j = i + mid.sum(axis=0)
        act = act & ~((i == prev_i) & (j == prev_j))
        if not bool(act.any()):
            break
        g1 = xp.where(mid, d, f32(0.0)).sum(axis=0, dtype=f32).astype(xp.float64)
        g2 = xp.where(mid, d * d, f32(0.0)).sum(axis=0, dtype=f32).astype(xp.float64)
        r = (j - i).astype(xp.float64)
        fi = i.astype(xp.float64)
        fk = (n - j).astype(xp.float64)
        # the exact solution for this split ...
        inv_r = 1.0 / xp.maximum(r, 1.0)
        a = g1 * inv_r
        b = (fk * wh64 - fi * wl64) * inv_r
        u = b - wl64
        v = b + wh64
        den = nd * ic2 - (fi * (u * u) + fk * (v * v) - nd * (b * b))
        solved = (r > 0) & (den > 0)
        # ... or, where it has none (σ grows past this split), one plain Huber step
        lo_d = lo.astype(xp.float64) - med64
        hi_d = hi.astype(xp.float64) - med64
        mean_d = (fi * lo_d + g1 + fk * hi_d) * inv_n
        var = (fi * (lo_d * lo_d) + g2 + fk * (hi_d * hi_d)) * inv_n - mean_d * mean_d
        s64 = xp.sqrt(xp.where(solved, xp.maximum(g2 - g1 * a, 0.0) / xp.where(solved, den, 1.0),
                               c2 * xp.maximum(var, 0.0)))
        s_new = s64.astype(f32)
        m_new = xp.where(solved, med64 + (a + b * s64), med64 + mean_d).astype(f32)
        m = xp.where(act, m_new, m)
        sig = xp.where(act, s_new, sig)
        act = act & (s_new > 0)
        # a split repeats only after an exact solve (a plain step may stay inside it)
        prev_i = xp.where(solved, i, -1)
        prev_j = xp.where(solved, j, -1)
    return med, m, sig


def winsorized(stack, *, weights=None, scale=None, offset=None, kappa=(3.0, 3.0), winsor=1.5):
    kl, kh = parse_kappa(kappa)
    wl, wh = (kl, kh) if winsor is None else parse_kappa(winsor, "winsor")
    f32 = np.float32
    xp, x, fin, w, out_shape = _prepare(stack, weights, scale, offset)
    n = fin.sum(axis=0)
    srt = xp.sort(xp.where(fin, x, f32(np.inf)), axis=0)
    med, m, sig = winsor_location_scale(srt, n, wl, wh, winsor_consistency(wl, wh))
    kl, kh = f32(kl), f32(kh)
    ok = (n >= 3) & (sig > 0)
    lo = xp.where(ok, m - kl * sig, f32(-FLT_MAX))
    hi = xp.where(ok, m + kh * sig, f32(FLT_MAX))
    rl = (x < lo).sum(axis=0)
    rh = (x > hi).sum(axis=0)
    img, k = _weighted_mean(xp, x, w, (x >= lo) & (x <= hi))
    img = xp.where((k == 0) & (n > 0), med, img)
    return _finish(xp, out_shape, img, k, rl, rh)


def robust_sigma(xp, srt, k):
    """``(median, sigma)`` of the sorted samples ``srt[:k]``: the median (float32) and
    ``MAD_TO_SIGMA``·MAD about it (float64; the deviations float32), or
    ``MEANABS_TO_SIGMA``·mean absolute deviation where the MAD is 0; sigma 0 for ``k = 0``.
    ``srt`` holds ``+inf`` beyond each pixel's ``k`` samples.

    Not :func:`zdask.ops.robust.robust_sigma` on purpose: per pixel along the frame axis of a
    sorted (N, M) stack (NumPy or CuPy), medians picked from the sort rather than taken again,
    and the mean-deviation fallback where the MAD is 0 (a σ of 0 would reject every sample
    that differs); the numba kernels reproduce exactly these operations."""
    f32 = np.float32
    zero = xp.zeros_like(k)
    med = _sorted_median(xp, srt, zero, k)
    rows = xp.arange(srt.shape[0]).reshape((-1,) + (1,) * (srt.ndim - 1))
    inside = rows < k
    dev = xp.sort(xp.where(inside, xp.abs(srt - med), f32(np.inf)), axis=0)
    mad = _sorted_median(xp, dev, zero, k)
    kd = xp.maximum(k, 1).astype(xp.float64)
    meanabs = xp.where(inside, xp.abs(srt.astype(xp.float64) - med.astype(xp.float64)), 0.0).sum(axis=0) / kd
    sig = xp.where(mad > 0, MAD_TO_SIGMA * mad.astype(xp.float64), MEANABS_TO_SIGMA * meanabs)
    return med, xp.where(k > 0, sig, 0.0)


def linear_fit_clip(stack, *, weights=None, scale=None, offset=None, kappa=(3.0, 3.0), iterations=3):
    kl, kh = parse_kappa(kappa)
    iterations = parse_iterations(iterations)
    xp, x, fin, w, out_shape = _prepare(stack, weights, scale, offset)
    n = fin.sum(axis=0)
    kw = {"kind": "stable"} if xp is np else {}
    order = xp.argsort(xp.where(fin, x, xp.float32(np.inf)), axis=0, **kw)
    srt = xp.take_along_axis(xp.where(fin, x, xp.float32(np.inf)), order, axis=0)
    ws = None if w is None else xp.take_along_axis(xp.ascontiguousarray(w), order, axis=0)
    ys = srt.astype(xp.float64)
    med0 = _sorted_median(xp, srt, xp.zeros_like(n), n)
    kp = xp.arange(x.shape[0]).reshape((-1,) + (1,) * (x.ndim - 1)) < n
    k = n.copy()
    act = k >= 3
    rl = xp.zeros_like(n)
    rh = xp.zeros_like(n)
    for _ in range(iterations):
        if not bool(act.any()):
            break
        # robust sigma of the kept samples (sorted, first in each column)
        med, sig = robust_sigma(xp, xp.sort(xp.where(kp, srt, xp.float32(np.inf)), axis=0), k)
        med64 = med.astype(xp.float64)
        # the line is fitted to the kept samples within the kappa window about the median only
        # (a contiguous range of ranks i0 … i0 + m − 1), so that an outlier cannot pull it
        win_lo = med64 - kl * sig
        win_hi = med64 + kh * sig
        inl = kp & (ys >= win_lo) & (ys <= win_hi)
        i0 = (kp & (ys < win_lo)).sum(axis=0)
        m = inl.sum(axis=0)
        mf = m.astype(xp.float64)
        c = i0 + (mf - 1.0) * 0.5
        r = (xp.cumsum(kp, axis=0) - kp).astype(xp.float64)
        sy = xp.where(inl, ys, 0.0).sum(axis=0)
        sxy = xp.where(inl, (r - c) * ys, 0.0).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ybar = xp.where(m >= 1, sy / mf, med64)
            slope = xp.where(m >= 2, sxy / (mf * (mf * mf - 1.0) / 12.0), 0.0)
            e = ys - (ybar + slope * (r - c))
        low = kp & act & (e < -kl * sig)
        high = kp & act & (e > kh * sig)
        nlo = low.sum(axis=0)
        nhi = high.sum(axis=0)
        kp = kp & ~(low | high)
        upd = act & (nlo + nhi > 0)
        rl = rl + xp.where(upd, nlo, 0)
        rh = rh + xp.where(upd, nhi, 0)
        k = k - xp.where(upd, nlo + nhi, 0)
        act = upd & (k >= 3)
    img, kk = _weighted_mean(xp, srt, ws, kp)
    img = xp.where(kk == 0, med0, img)
    return _finish(xp, out_shape, img, kk, rl, rh)


def median(stack, *, weights=None, scale=None, offset=None):
    xp, x, fin, _, out_shape = _prepare(stack, weights, scale, offset)
    n = fin.sum(axis=0)
    srt = xp.sort(xp.where(fin, x, xp.float32(np.inf)), axis=0)
    med = _sorted_median(xp, srt, xp.zeros_like(n), n)
    z = xp.zeros_like(n)
    return _finish(xp, out_shape, med, n, z, z)


def mean(stack, *, weights=None, scale=None, offset=None):
    xp, x, fin, w, out_shape = _prepare(stack, weights, scale, offset)
    img, k = _weighted_mean(xp, x, w, fin)
    z = xp.zeros_like(k)
    return _finish(xp, out_shape, img, k, z, z)


def sum_stack(stack, *, weights=None, scale=None, offset=None):
    xp, x, fin, w, out_shape = _prepare(stack, weights, scale, offset)
    xd = x.astype(xp.float64)
    s = xp.where(fin, xd if w is None else w * xd, 0.0).sum(axis=0)
    n = fin.sum(axis=0)
    img = xp.where(n > 0, s.astype(xp.float32), xp.float32(np.nan))
    z = xp.zeros_like(n)
    return _finish(xp, out_shape, img, n, z, z)


METHODS = {
    "kappa_sigma": kappa_sigma,
    "winsorized": winsorized,
    "linear_fit_clip": linear_fit_clip,
    "median": median,
    "mean": mean,
    "sum": sum_stack,
}
