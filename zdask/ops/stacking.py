"""Stacking kernels: combine a stack of frames along its first axis.

Every method takes ``stack`` of shape ``(N, P...)`` float32 — ``(N, H, W)``
or RGB ``(N, H, W, C)`` with the channel LAST — where NaN means "no sample"
(any non-finite sample after normalisation is treated as missing), and
returns a :class:`StackResult` ``(image float32, count int32,
rejected_low int32, rejected_high int32)`` of shape ``P``.  NumPy inputs run
the numba CPU kernels, CuPy inputs the CuPy path (same semantics).

Common keywords
---------------
weights : ``(N,)`` or ``(N, C)``, >= 0
    Per-frame (per-channel) weights of the final mean: Σ w·x / Σ w over the
    kept samples; zero total weight falls back to the unweighted mean.
scale, offset : ``(N,)`` or ``(N, C)``
    Normalisation applied to every sample before rejection:
    ``x * scale + offset`` (float32), see :mod:`zdask.ops.normalize`.

Edge cases (all methods): a pixel with no sample gives NaN and count 0; with
one or two samples (or fewer than 3 survivors) nothing is rejected and their
mean is returned; N identical samples are all kept (their spread is 0,
whatever κ).  If a rejection would reject every sample of a pixel (possible
only with tiny kappa), the pixel falls back to the median of its samples
with ``count = 0`` — never NaN where a sample exists.

Methods
-------
kappa_sigma(kappa=(3, 3), iterations=1)
    Keep ``mean − K·σ ≤ x ≤ mean + K·σ`` (mean and population std of the
    finite samples, float64), ``K = K(k, κ)`` from
    ``_stacking_common.student_kappa_table``: exactly the externally
    studentized leave-one-out test — a sample is rejected when its distance
    from the mean of the OTHER samples, in units of their sample std (×
    sqrt(1 + 1/(k−1))), exceeds the Student-t (k − 2 degrees of freedom)
    quantile at κ's Gaussian tail.  So κ is a Gaussian significance: on
    clean Gaussian noise a sample is rejected with probability 1 − Φ(κ) per
    side at every N ≥ 4 (0.135 % at κ = 3), and a lone outlier is rejected
    (at κ = 3 in ≥ 99 % of pixels: 50σ at N = 4, 20σ at 5, 10σ at 8;
    ``K → κ`` for deep stacks).  A pixel of exactly three samples keeps
    their median (one rejected low, one high, unless tied): there the test
    would need a 1000σ outlier, since two samples hardly estimate a spread
    (``THREE_SAMPLE_MEDIAN``).  A deliberate
    departure from the ancestor (median ± κ·std of all samples), which
    at κ = 3 cannot reject anything below N = 8: a lone outlier, however
    bright, sits at most N/sqrt(N − 1) stds from the median (2.65 at
    N = 7; the std grows with it).  More iterations repeat
    the test on the survivors and stop as soon as nothing changes.  Needs no
    sort (the median only where every sample is rejected, tiny κ).
winsorized(kappa=(3, 3), winsor=1.5)
    PixInsight-style winsorized sigma clipping: start from the median and
    1.4826·MAD (mean absolute deviation ×1.2533 if the MAD is 0); winsorize
    the samples to ``m ± winsor·σ`` (Huber), recompute ``m`` = mean and
    ``σ`` = c·std of the winsorized samples (c = Gaussian consistency factor,
    1.134 for 1.5) until stable: the stable point is solved exactly, split by
    split (which samples fall below / inside / above the bounds), at most 10
    steps (see ``stacking_reference.winsor_location_scale``); then reject
    outside ``m − κlow·σ … m + κhigh·σ`` and take the weighted mean.
    ``winsor=None`` winsorizes at the rejection kappa itself (the literal
    "clip to m ± κσ" reading; far less robust to a bright outlier).
linear_fit_clip(kappa=(3, 3), iterations=3)
    Robust σ = 1.4826·MAD of the kept samples about their median (mean
    absolute deviation ×1.2533 if the MAD is 0); fit a least-squares line
    (value vs rank) to the sorted samples that lie within ``median −
    κlow·σ … median + κhigh·σ`` only, so that an outlier cannot pull it;
    reject the samples farther than κ·σ below/above the line; repeat on the
    survivors (re-ranked) until nothing changes or ``iterations``.  κ is in
    units of the same robust σ as the other methods; the line lets samples
    spread along it (a drifting sky across the frames) stay.  Clean Gaussian
    noise loses ~1.4 % at N = 8, 0.2 % at 16, 0.03 % at 30; a lone 1000σ
    outlier is rejected from N = 3.  (The former κ in units of the mean
    absolute residual from a line fitted to all samples kept a 1000σ
    outlier at N = 10: the outlier pulls that line and inflates the scale.)
median()
    Median of the samples (weights are ignored).
mean()
    Weighted mean of all samples.
sum_stack()   (``METHODS["sum"]``)
    Σ w·x over the samples (Σ x without weights).
"""

from __future__ import annotations

import numpy as np

from zdask.ops import _stacking_numba_fit as _fit
from zdask.ops import _stacking_numba_methods as _nb
from zdask.ops import _stacking_numba_winsor as _nw
from zdask.ops._stacking_common import (
    MEANABS_TO_SIGMA,
    NETWORK_MAX_FRAMES,
    WINSOR_MAX_ITER,
    StackResult,
    batcher_network,
    parse_iterations,
    parse_kappa,
    prepare_coefficients,
    stack_geometry,
    student_kappa_table,
    tile_width,
    winsor_consistency,
)
from zdask.ops.backend import array_module
from zdask.ops.robust import MAD_TO_SIGMA

__all__ = [
    "StackResult",
    "kappa_sigma",
    "winsorized",
    "linear_fit_clip",
    "median",
    "mean",
    "sum_stack",
    "METHODS",
    "warm_up",
]

_EMPTY = np.empty(0, dtype=np.int64)
_EMPTY.setflags(write=False)  # read-only like batcher_network's arrays: one kernel signature for both


class _Block:
    """A NumPy stack prepared for the numba kernels: ``(N, M)`` view + tiles."""

    def __init__(self, stack, weights, scale, offset):
        n, c, self.out_shape = stack_geometry(np.shape(stack))
        w, sc, of = prepare_coefficients(n, c, weights, scale, offset)
        x = np.asarray(stack, dtype=np.float32)
        src = x.reshape(n, -1)  # a view whenever each frame is contiguous
        m = src.shape[1]
        if not (src.strides[1] == 4 and src.strides[0] % 4 == 0 and src.strides[0] >= 4 * m) or n == 1:
            src = np.ascontiguousarray(src)
        self.rs = src.strides[0] // 4 if n > 1 else m
        # the memory span of the frames as one flat contiguous view (gaps included)
        self.src = np.lib.stride_tricks.as_strided(src, shape=((n - 1) * self.rs + m,), strides=(4,))
        self.n, self.m = n, m
        self.T = max(c, min(tile_width(n, c), m))
        reps = self.T // c
        self.sc = np.ascontiguousarray(np.tile(sc, (1, reps)))
        self.of = np.ascontiguousarray(np.tile(of, (1, reps)))
        wt = np.ones((n, c)) if w is None else w
        self.wt = np.ascontiguousarray(np.tile(wt, (1, reps)), dtype=np.float64)
        self.unweighted = w is None
        self.use_net = n <= NETWORK_MAX_FRAMES
        self.ci, self.cj = batcher_network(n) if self.use_net else (_EMPTY, _EMPTY)
        self.img = np.empty(m, np.float32)
        self.kept = np.empty(m, np.int32)
        self.rlo = np.zeros(m, np.int32)
        self.rhi = np.zeros(m, np.int32)

    def result(self) -> StackResult:
        shape = self.out_shape
        return StackResult(
            self.img.reshape(shape), self.kept.reshape(shape), self.rlo.reshape(shape), self.rhi.reshape(shape)
        )


def _gpu(name, stack, **kw):
    from zdask.ops import _stacking_cupy  # noqa: PLC0415  (CuPy only)

    return _stacking_cupy.run(name, stack, **kw)


def kappa_sigma(stack, *, weights=None, scale=None, offset=None, kappa=(3.0, 3.0), iterations=1) -> StackResult:
    """Kappa-sigma clipping about the median (see the module docstring)."""
    kl, kh = parse_kappa(kappa)
    iterations = parse_iterations(iterations)
    if array_module(stack) is not np:
        return _gpu("kappa_sigma", stack, weights=weights, scale=scale, offset=offset, kappa=(kl, kh),
                    iterations=iterations)
    b = _Block(stack, weights, scale, offset)
    _nb.kappa_sigma_block(b.src, b.rs, b.n, b.m, b.sc, b.of, b.wt, b.unweighted, student_kappa_table(b.n, kl),
                          student_kappa_table(b.n, kh), iterations, b.T, b.img, b.kept, b.rlo, b.rhi)
    return b.result()


def winsorized(stack, *, weights=None, scale=None, offset=None, kappa=(3.0, 3.0), winsor=1.5) -> StackResult:
    """Winsorized sigma clipping (see the module docstring)."""
    kl, kh = parse_kappa(kappa)
    wl, wh = (kl, kh) if winsor is None else parse_kappa(winsor, "winsor")
    cfac = winsor_consistency(wl, wh)
    if array_module(stack) is not np:
        return _gpu("winsorized", stack, weights=weights, scale=scale, offset=offset, kappa=(kl, kh),
                    winsor=(wl, wh))
    b = _Block(stack, weights, scale, offset)
    f32 = np.float32
    _nw.winsorized_block(b.src, b.rs, b.n, b.m, b.sc, b.of, b.wt, b.unweighted, f32(kl), f32(kh), f32(wl), f32(wh),
                         cfac, WINSOR_MAX_ITER, f32(MAD_TO_SIGMA), MEANABS_TO_SIGMA,
                         b.ci, b.cj, b.use_net, b.T, b.img, b.kept, b.rlo, b.rhi)
    return b.result()


def linear_fit_clip(stack, *, weights=None, scale=None, offset=None, kappa=(3.0, 3.0), iterations=3) -> StackResult:
    """Linear-fit clipping (see the module docstring)."""
    kl, kh = parse_kappa(kappa)
    iterations = parse_iterations(iterations)
    if array_module(stack) is not np:
        return _gpu("linear_fit_clip", stack, weights=weights, scale=scale, offset=offset, kappa=(kl, kh),
                    iterations=iterations)
    b = _Block(stack, weights, scale, offset)
    _fit.linear_fit_block(b.src, b.rs, b.n, b.m, b.sc, b.of, b.wt, b.unweighted, kl, kh, iterations, MAD_TO_SIGMA,
                          MEANABS_TO_SIGMA, b.ci, b.cj, b.use_net, b.T, b.img, b.kept, b.rlo, b.rhi)
    return b.result()


def median(stack, *, weights=None, scale=None, offset=None) -> StackResult:
    """Per-pixel median of the samples (``weights`` accepted and ignored)."""
    if array_module(stack) is not np:
        return _gpu("median", stack, weights=weights, scale=scale, offset=offset)
    b = _Block(stack, weights, scale, offset)
    _fit.median_block(b.src, b.rs, b.n, b.m, b.sc, b.of, b.ci, b.cj, b.use_net, b.T, b.img, b.kept)
    return b.result()


def mean(stack, *, weights=None, scale=None, offset=None) -> StackResult:
    """Weighted mean of all samples."""
    if array_module(stack) is not np:
        return _gpu("mean", stack, weights=weights, scale=scale, offset=offset)
    b = _Block(stack, weights, scale, offset)
    _fit.mean_block(b.src, b.rs, b.n, b.m, b.sc, b.of, b.wt, b.unweighted, b.T, False, b.img, b.kept)
    return b.result()


def sum_stack(stack, *, weights=None, scale=None, offset=None) -> StackResult:
    """Σ w·x of the samples (Σ x without weights); NaN where no sample."""
    if array_module(stack) is not np:
        return _gpu("sum", stack, weights=weights, scale=scale, offset=offset)
    b = _Block(stack, weights, scale, offset)
    _fit.mean_block(b.src, b.rs, b.n, b.m, b.sc, b.of, b.wt, b.unweighted, b.T, True, b.img, b.kept)
    return b.result()


def warm_up(method: str = "kappa_sigma") -> None:
    """Compile (or load from numba's on-disk cache) the CPU kernel of ``method``.

    The first call of a kernel in a fresh environment compiles it, about 5–10 s
    of one core; every later process loads the cached machine code in well
    under a second.  Calling this early, in a background thread, overlaps that
    compile with other work instead of stalling the first stacking task (the
    kernels take the same argument types whatever the stack, so this one
    compile serves every later call).
    """
    if method not in METHODS:
        raise ValueError(f"unknown stacking method {method!r}; allowed: {', '.join(METHODS)}")
    METHODS[method](np.zeros((3, 1, 1, 3), dtype=np.float32))


METHODS = {
    "kappa_sigma": kappa_sigma,
    "winsorized": winsorized,
    "linear_fit_clip": linear_fit_clip,
    "median": median,
    "mean": mean,
    "sum": sum_stack,
}
