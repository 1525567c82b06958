"""Stacking kernels: numba CPU kernels vs the plain reference, the statistics they implement, planted truths."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zdask.config import Config, describe_fields
from zdask.ops import stacking as S
from zdask.ops import stacking_reference as R
from zdask.ops.stacking import METHODS, StackResult, kappa_sigma, linear_fit_clip, mean, median, sum_stack, winsorized

REJECTING = ["kappa_sigma", "winsorized", "linear_fit_clip"]
FIELDS = ("count", "rejected_low", "rejected_high")


def make_stack(n, shape, *, seed=0, nan=0.1, outliers=0.03, level=100.0, noise=5.0):
    """Random stack with NaNs (missing samples) and planted outliers both ways."""
    rng = np.random.default_rng(seed)
    x = rng.normal(level, noise, (n, *shape)).astype(np.float32)
    x[rng.random(x.shape) < nan] = np.nan
    o = rng.random(x.shape) < outliers
    x[o] += (rng.choice([-1.0, 1.0], o.sum()) * rng.uniform(6, 60, o.sum()) * noise).astype(np.float32)
    return x


def assert_same(a: StackResult, b: StackResult):
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    np.testing.assert_array_equal(a.image, b.image)


def studentized_rejections(x, kl, kh):
    """Per pixel (rejected low, rejected high, near a bound) of the externally studentized
    leave-one-out test, from scratch in float64: sample i of k finite ones is rejected when
    t = (x_i − m') / (s'·sqrt(1 + 1/(k − 1))) — m', s' the mean and sample std of the others —
    lies beyond the Student-t (k − 2 dof) quantile at the Gaussian tail of kappa.  A pixel of
    exactly three samples keeps their median: one below it and one above it are rejected."""
    from scipy import stats

    x = x.reshape(x.shape[0], -1).astype(np.float64)
    fin = np.isfinite(x)
    k = fin.sum(0)
    xz = np.where(fin, x, 0.0)
    low = np.zeros(x.shape[1], int)
    high = np.zeros(x.shape[1], int)
    near = np.zeros(x.shape[1], bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        q_lo = stats.t.isf(stats.norm.sf(kl), k - 2)
        q_hi = stats.t.isf(stats.norm.sf(kh), k - 2)
        for i in range(x.shape[0]):
            others = fin.copy()
            others[i] = False
            m = (xz * others).sum(0) / (k - 1)
            s = np.sqrt(np.where(others, (x - m) ** 2, 0.0).sum(0) / (k - 2))
            t = (x[i] - m) / (s * np.sqrt(1 + 1 / (k - 1)))
            ok = fin[i] & (k >= 4)
            low += ok & (t < -q_lo)
            high += ok & (t > q_hi)
            near |= ok & ((np.abs(np.abs(t) / q_lo - 1) < 1e-4) | (np.abs(np.abs(t) / q_hi - 1) < 1e-4))
    med = np.nanmedian(np.where(fin, x, np.nan)[:, k == 3], axis=0)
    low[k == 3] = (x[:, k == 3] < med).sum(0)
    high[k == 3] = (x[:, k == 3] > med).sum(0)
    return low, high, near


# --------------------------------------------------------------------------- vs the reference


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("shape", [(23, 17), (11, 9, 3)], ids=["mono", "rgb"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_matches_reference(method, shape, weighted):
    rng = np.random.default_rng(1)
    c = shape[-1] if len(shape) == 3 else 1
    for n in (1, 2, 3, 4, 9, 30):
        x = make_stack(n, shape, seed=n)
        kw = {}
        if weighted:
            kw = dict(weights=rng.uniform(0.2, 2.0, (n, c)), scale=rng.uniform(0.9, 1.1, (n, c)),
                      offset=rng.uniform(-3, 3, (n, c)))
        assert_same(METHODS[method](x, **kw), R.METHODS[method](x, **kw))


@pytest.mark.parametrize("method,params", [
    ("kappa_sigma", dict(kappa=(2.0, 2.5), iterations=5)),
    ("kappa_sigma", dict(kappa=1.2, iterations=20)),
    ("winsorized", dict(kappa=(2.0, 2.5))),
    ("winsorized", dict(kappa=2.5, winsor=None)),
    ("winsorized", dict(kappa=3.0, winsor=(1.0, 2.0))),
    ("linear_fit_clip", dict(kappa=(2.0, 2.5), iterations=10)),
])
def test_matches_reference_parameters(method, params):
    for n in (5, 16, 33):
        x = make_stack(n, (12, 10, 3), seed=n + 7)
        assert_same(METHODS[method](x, **params), R.METHODS[method](x, **params))


@pytest.mark.parametrize("method", list(METHODS))
def test_deep_stack_column_sort_path(method, monkeypatch):
    """Stacks deeper than the sorting-network limit sort per pixel: same results."""
    x = make_stack(40, (9, 7, 3), seed=5)
    w = np.linspace(0.5, 1.5, 40)
    expected = METHODS[method](x, weights=w)
    monkeypatch.setattr(S, "NETWORK_MAX_FRAMES", 8)
    assert_same(METHODS[method](x, weights=w), expected)
    assert_same(expected, R.METHODS[method](x, weights=w))


def test_winsorized_matches_reference_on_many_tiles():
    """Enough pixels for several tiles, both split paths (vectorised pass, per-pixel walk)."""
    x = make_stack(30, (40, 64, 3), seed=11, nan=0.05, outliers=0.05)
    x[:, :5, :7] = 1000.0  # constant pixels: MAD = 0 and σ = 0
    x[:, 5, 5, 0] = np.float32(-3.0e4)  # a low outlier far beyond every other sample
    x[2, 5, 5, 0] = 1.0
    assert_same(winsorized(x), R.winsorized(x))


def huber_by_iteration(x, wl=1.5, wh=1.5, rounds=500):
    """Plain Huber iteration in float64 per column (winsorize, m = mean, σ = c·std) from the
    median and 1.4826·MAD."""
    c = S.winsor_consistency(wl, wh)
    m = np.median(x, axis=0)
    s = 1.4826 * np.median(np.abs(x - m), axis=0)
    for _ in range(rounds):
        w = np.clip(x, m - wl * s, m + wh * s)
        m, s = w.mean(axis=0), c * w.std(axis=0)
    return m, s


def test_winsorized_solves_huber_equations_exactly():
    """Planted truth: (m, σ) is the limit of the plain Huber iteration, not a truncated iterate
    (pixels with up to 4 of 30 samples 40σ high; at ~30% outliers the plain iteration itself
    needs ~40 rounds and the 10-step cap leaves σ growing)."""
    rng = np.random.default_rng(4)
    x = rng.normal(100.0, 5.0, (30, 1000)).astype(np.float32)
    bright = rng.random(x.shape) < 0.05
    x[bright] += np.float32(200.0)
    n = np.full(x.shape[1], 30)
    _, m, s = R.winsor_location_scale(np.sort(x, axis=0), n, 1.5, 1.5, S.winsor_consistency(1.5, 1.5))
    sel = bright.sum(axis=0) <= 4
    assert sel.sum() > 950
    m_true, s_true = huber_by_iteration(x[:, sel].astype(np.float64))
    np.testing.assert_allclose(m[sel], m_true, rtol=2e-6)
    np.testing.assert_allclose(s[sel], s_true, rtol=2e-5)


def test_strided_and_float64_inputs():
    base = make_stack(12, (20, 30, 3), seed=3)
    view = base[:, 3:15, 5:25]
    expected = kappa_sigma(np.ascontiguousarray(view))
    assert_same(kappa_sigma(view), expected)
    assert_same(kappa_sigma(view.astype(np.float64)), expected)
    assert_same(winsorized(base[:, ::2]), winsorized(np.ascontiguousarray(base[:, ::2])))


# --------------------------------------------------------------------------- the statistics


@pytest.mark.parametrize("n", [3, 4, 5, 10, 30, 64])
@pytest.mark.parametrize("kappa", [(3.0, 3.0), (2.0, 2.5), (1.3, 1.7)])
def test_kappa_sigma_one_iteration_is_the_studentized_leave_one_out_test(n, kappa):
    """One pass rejects exactly the samples whose externally studentized residual exceeds the
    Student-t quantile of kappa's Gaussian tail (computed here from scratch, sample by sample);
    only samples within 1e-4 of a bound may differ (float32 statistics in the kernel).  The image
    is the weighted mean of the kept samples."""
    rng = np.random.default_rng(n)
    x = make_stack(n, (40, 30, 3), seed=n, nan=0.05, outliers=0.05)
    x[:, :3, :3] = np.nan
    w = rng.uniform(0.5, 2.0, (n, 3)).astype(np.float32)
    low, high, near = studentized_rejections(x, *kappa)
    r = kappa_sigma(x, weights=w, kappa=kappa, iterations=1)
    sel = ~near
    assert sel.mean() > 0.98
    np.testing.assert_array_equal(r.rejected_low.ravel()[sel], low[sel])
    np.testing.assert_array_equal(r.rejected_high.ravel()[sel], high[sel])
    assert (low + high).sum() > 0
    np.testing.assert_array_equal(r.count + r.rejected_low + r.rejected_high, np.isfinite(x).sum(0))
    # the kept samples are an interval of the sorted ones (after the low rejections): their
    # weighted mean
    srt = np.sort(np.where(np.isfinite(x), x, np.inf), axis=0)
    first = np.take_along_axis(srt, r.rejected_low[None].astype(np.int64), 0)[0]
    last = np.take_along_axis(srt, np.maximum(r.rejected_low + r.count - 1, 0)[None].astype(np.int64), 0)[0]
    keep = np.isfinite(x) & (x >= first) & (x <= last)
    wb = np.broadcast_to(w[:, None, None, :], x.shape).astype(np.float64)
    with np.errstate(invalid="ignore"):
        image = np.where(keep, wb * x, 0.0).sum(0) / np.where(keep, wb, 0.0).sum(0)
    ok = r.count > 0
    np.testing.assert_allclose(r.image[ok], image[ok], rtol=1e-6)


@pytest.mark.parametrize("n", [4, 5, 8, 30])
def test_kappa_sigma_rejects_clean_noise_at_the_gaussian_rate(n):
    """Clean frames lose nothing beyond the Gaussian rate: on pure Gaussian noise a sample is
    rejected with probability 1 − Φ(κ) per side at EVERY N >= 4 (0.135 % each at κ = 3), as
    with a known σ (three samples keep their median, next test).  (With the sample std about the median, nothing at all could be rejected up to
    N = 10; with 1.4826·MAD, 11 % of clean samples at N = 3, 3.5 % at N = 8.)"""
    rng = np.random.default_rng(100 + n)
    pixels = 2_400_000 // n
    x = rng.normal(500.0, 3.0, (n, pixels)).astype(np.float32)
    r = kappa_sigma(x)
    samples = x.size
    per_side = 0.0013499  # 1 − Φ(3)
    tol = 5 * np.sqrt(per_side / samples)  # five binomial sigmas (≈ 1.2e-4)
    assert abs(r.rejected_low.sum() / samples - per_side) < tol, r.rejected_low.sum() / samples
    assert abs(r.rejected_high.sum() / samples - per_side) < tol, r.rejected_high.sum() / samples


def trail_stack(n, rng, level=500.0, noise=3.0, peak=3000.0, frame=1):
    """``n`` RGB frames of Gaussian noise, a +``peak`` satellite trail (two pixels wide) in ``frame``."""
    x = rng.normal(level, noise, (n, 64, 64, 3)).astype(np.float32)
    trail = np.zeros((64, 64), bool)
    rr = np.arange(64)
    trail[rr, rr] = True
    trail[rr[1:], rr[:-1]] = True
    x[frame][trail] += np.float32(peak)
    return x, trail


def test_kappa_sigma_keeps_the_median_of_three_samples():
    """Three samples give their median, exactly, weighted or not, whatever κ: one sample below it
    and one above are counted rejected (ties are kept: identical samples stay all kept)."""
    rng = np.random.default_rng(33)
    x = rng.normal(500.0, 3.0, (5, 50, 40, 3)).astype(np.float32)
    x[3:, :25] = np.nan  # the top half has three samples, the bottom half five
    w = rng.uniform(0.5, 2.0, 5)
    for kappa in ((3.0, 3.0), (1.0, 6.0)):
        r = kappa_sigma(x, weights=w, kappa=kappa)
        np.testing.assert_array_equal(r.image[:25], np.median(x[:3, :25], axis=0))
        np.testing.assert_array_equal(r.count[:25], 1)
        np.testing.assert_array_equal(r.rejected_low[:25], 1)
        np.testing.assert_array_equal(r.rejected_high[:25], 1)
        np.testing.assert_array_equal(r.count[25:] + r.rejected_low[25:] + r.rejected_high[25:], 5)
        assert (r.count[25:] >= 2).all() and (r.count[25:] > 1).mean() > 0.99
    same = np.repeat(x[:1], 3, axis=0)
    r = kappa_sigma(same)
    np.testing.assert_array_equal(r.image, x[0])
    np.testing.assert_array_equal(r.count, 3)


@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_default_method_rejects_a_trail_in_small_stacks(n):
    """A 1000σ trail in one of N = 3…8 frames is rejected at the defaults in every pixel, and the
    clean frames lose nothing there: from N = 4 the trail pixels keep exactly the other N − 1
    samples and their image IS the mean of the frames without the trail (bit for bit); at N = 3
    it is the median of the three (the trail sample is never it)."""
    x, trail = trail_stack(n, np.random.default_rng(n))
    method = Config().reject
    r = METHODS[method](x)
    np.testing.assert_array_equal(r.rejected_high[trail], 1)
    if n == 3:
        np.testing.assert_array_equal(r.image[trail], np.median(x, axis=0)[trail])
        assert (r.image[trail] < 600).all()  # the trail (+3000) is not the median
        return
    np.testing.assert_array_equal(r.count[trail], n - 1)
    np.testing.assert_array_equal(r.rejected_low[trail], 0)
    clean = mean(np.delete(x, 1, axis=0)).image
    np.testing.assert_array_equal(r.image[trail], clean[trail])


@pytest.mark.parametrize("method", REJECTING)
@pytest.mark.parametrize("n", [8, 10, 16])
def test_every_rejecting_method_rejects_one_extreme_outlier_at_its_defaults(method, n):
    """N >= 8: each rejecting method at its own defaults (those of the config) rejects a 1000σ
    trail in one frame (linear_fit_clip with κ in units of the mean absolute residual about a
    least-squares line that the outlier pulls kept it at N = 10)."""
    x, trail = trail_stack(n, np.random.default_rng(20 + n), frame=n // 2)
    r = METHODS[method](x)
    assert (r.rejected_high[trail] >= 1).all()
    # kept, the trail would add 3000 / N >= 187 ADU; rejected, the result is the clean frames'
    # mean give or take a clean sample rejected (noise σ = 3: a few ADU)
    clean = mean(np.delete(x, n // 2, axis=0)).image
    assert np.abs(r.image[trail] - clean[trail]).max() < 20.0


def test_kernel_defaults_are_the_config_defaults():
    """One kappa, one meaning per method, one default: the kernels' own defaults are the config's."""
    import inspect

    for method in REJECTING:
        default = inspect.signature(METHODS[method]).parameters["kappa"].default
        assert tuple(default) == Config().kappa, method
        assert method in dict((f[0], f[2]) for f in describe_fields())["kappa"]


# --------------------------------------------------------------------------- planted truths


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("n", [3, 4, 12])
def test_identical_frames(method, n):
    """N identical frames give that frame, every sample kept (also at a tiny kappa: zero spread)."""
    frame = make_stack(1, (15, 13, 3), seed=2, nan=0.0, outliers=0.0)[0]
    x = np.repeat(frame[None], n, axis=0)
    for kw in ({}, {"kappa": 0.01}) if method in REJECTING else ({},):
        r = METHODS[method](x, **kw)
        expected = frame * n if method == "sum" else frame
        np.testing.assert_allclose(r.image, expected, rtol=1e-6)
        if method != "sum":
            np.testing.assert_array_equal(r.image, frame)
        assert (r.count == n).all()
        assert (r.rejected_low == 0).all() and (r.rejected_high == 0).all()


@pytest.mark.parametrize("method", REJECTING)
def test_satellite_trail_rejected(method):
    rng = np.random.default_rng(4)
    x = rng.normal(500.0, 10.0, (10, 64, 64, 3)).astype(np.float32)
    trail = np.zeros((64, 64), bool)
    rr = np.arange(64)
    trail[rr, rr] = True
    trail[rr[1:], rr[:-1]] = True
    x[3][trail] += 2000.0
    r = METHODS[method](x)  # the defaults
    assert (r.rejected_high[trail] >= 1).all()
    clean = np.delete(x, 3, axis=0).mean(0)
    assert np.abs(r.image[trail] - clean[trail]).max() < 30.0
    assert (r.count[trail] <= 9).all()


@pytest.mark.parametrize("method", ["kappa_sigma", "winsorized"])
def test_gaussian_keeps_997_percent(method):
    x = np.random.default_rng(5).normal(0.0, 1.0, (100, 200, 100)).astype(np.float32)
    r = METHODS[method](x, kappa=3.0)
    kept = r.count.sum() / x.size
    assert abs(kept - 0.9973) < 0.0015, kept
    assert r.rejected_low.sum() + r.rejected_high.sum() + r.count.sum() == x.size


def test_linear_fit_gaussian_keeps_most():
    x = np.random.default_rng(6).normal(0.0, 1.0, (30, 100, 100)).astype(np.float32)
    kept = linear_fit_clip(x).count.sum() / x.size
    assert kept > 0.985, kept


def test_iterations_only_add_rejections():
    x = make_stack(25, (30, 30), seed=9, nan=0.0, outliers=0.1)
    one = kappa_sigma(x, kappa=2.0)
    many = kappa_sigma(x, kappa=2.0, iterations=10)
    assert (many.rejected_low >= one.rejected_low).all() and (many.rejected_high >= one.rejected_high).all()
    assert (many.rejected_low + many.rejected_high > one.rejected_low + one.rejected_high).any()
    total = many.count + many.rejected_low + many.rejected_high
    np.testing.assert_array_equal(total, np.isfinite(x).sum(0))


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("method", list(METHODS))
def test_edge_cases(method):
    x = np.full((6, 4, 3), np.nan, np.float32)
    x[0, 1] = 7.0                         # one sample
    x[:2, 2] = [[1.0, 100.0, 5.0], [3.0, -100.0, 5.0]]   # two samples
    x[:, 3] = np.array([1, 2, 3, 4, 5, 1000], np.float32)[:, None]  # six samples, one outlier
    r = METHODS[method](x, kappa=0.01) if method in REJECTING else METHODS[method](x)
    assert np.isnan(r.image[0]).all() and (r.count[0] == 0).all()
    if method == "sum":
        np.testing.assert_allclose(r.image[1], 7.0)
        np.testing.assert_allclose(r.image[2], [4.0, 0.0, 10.0])
    else:
        np.testing.assert_allclose(r.image[1], 7.0)
        np.testing.assert_allclose(r.image[2], [2.0, 0.0, 5.0])
        assert (r.count[1:3] == [[1] * 3, [2] * 3]).all()
    assert (r.rejected_low[:3] == 0).all() and (r.rejected_high[:3] == 0).all()
    assert np.isfinite(r.image[1:]).all()  # never NaN where a sample exists, even at tiny kappa
    assert r.image.dtype == np.float32 and r.count.dtype == np.int32
    assert r.rejected_low.dtype == np.int32 and r.rejected_high.dtype == np.int32


def test_zero_total_weight_falls_back_to_unweighted_mean():
    # four samples: three would give kappa_sigma's median of three
    x = np.array([1.0, 2.0, 4.0, 5.0], np.float32)[:, None, None, None] * np.ones((1, 1, 1, 2), np.float32)
    w = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 2.0], [0.0, 2.0]])
    for method in ("kappa_sigma", "winsorized", "linear_fit_clip", "mean"):
        r = METHODS[method](x, weights=w)
        np.testing.assert_allclose(r.image[0, 0], [12.0 / 4.0, 21.0 / 6.0], rtol=1e-6)


def test_weights_scale_offset_semantics():
    x = make_stack(8, (10, 12, 3), seed=11, nan=0.05, outliers=0.0)
    rng = np.random.default_rng(2)
    sc = rng.uniform(0.5, 2.0, (8, 3)).astype(np.float32)
    of = rng.uniform(-10, 10, (8, 3)).astype(np.float32)
    manual = x * sc[:, None, None, :] + of[:, None, None, :]
    for method in METHODS:
        assert_same(METHODS[method](x, scale=sc, offset=of), METHODS[method](manual))
    w1 = rng.uniform(0.5, 2.0, 8)
    assert_same(mean(x, weights=w1), mean(x, weights=np.repeat(w1[:, None], 3, 1)))
    wm = mean(x, weights=w1).image
    ref = np.nansum(w1[:, None, None, None] * x, 0) / np.nansum(w1[:, None, None, None] * np.isfinite(x), 0)
    np.testing.assert_allclose(wm, ref, rtol=1e-5)
    np.testing.assert_allclose(sum_stack(x).image, np.nansum(x, 0), rtol=1e-5)
    np.testing.assert_array_equal(median(x).image, np.nanmedian(x, 0))


def test_parameter_errors():
    x = make_stack(5, (4, 4))
    with pytest.raises(TypeError, match="bogus"):
        kappa_sigma(x, bogus=1)
    with pytest.raises(TypeError, match="iterations"):
        winsorized(x, iterations=2)
    with pytest.raises(ValueError, match="kappa"):
        kappa_sigma(x, kappa=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="kappa"):
        winsorized(x, kappa=-1)
    with pytest.raises(ValueError, match="iterations"):
        kappa_sigma(x, iterations=0)
    with pytest.raises(ValueError, match="weights"):
        mean(x, weights=np.ones(4))
    with pytest.raises(ValueError, match="weights"):
        mean(x, weights=-np.ones(5))
    with pytest.raises(ValueError, match="scale"):
        mean(x, scale=np.ones((5, 3)))


def test_methods_table_and_result_type():
    assert set(METHODS) == {"kappa_sigma", "winsorized", "linear_fit_clip", "median", "mean", "sum"}
    r = kappa_sigma(make_stack(4, (3, 2)))
    assert isinstance(r, StackResult) and r._fields == ("image", "count", "rejected_low", "rejected_high")
    assert r.image.shape == (3, 2)
    json.dumps({"fields": list(r._fields)})


@pytest.mark.parametrize("method", list(METHODS))
def test_warm_up_compiles_the_kernel_every_call_uses(method):
    """One compile (the warm-up's) serves stacks of every shape, layout, dtype and coefficient."""
    from zdask.ops import _stacking_numba_fit as F
    from zdask.ops import _stacking_numba_methods as M
    from zdask.ops import _stacking_numba_winsor as W

    kernel = {"kappa_sigma": M.kappa_sigma_block, "winsorized": W.winsorized_block,
              "linear_fit_clip": F.linear_fit_block, "median": F.median_block,
              "mean": F.mean_block, "sum": F.mean_block}[method]
    S.warm_up(method)
    assert len(kernel.signatures) == 1
    rng = np.random.default_rng(3)
    big = rng.normal(size=(7, 20, 30, 3)).astype(np.float32)
    fn = METHODS[method]
    fn(big[:, 5:15], weights=rng.random((7, 3)), offset=rng.random((7, 3)))  # strided view, per channel
    fn(big[..., 1], weights=rng.random(7), scale=rng.random(7))  # mono, per frame
    fn(big.astype(np.float64)[:, :4])  # converted copy
    assert len(kernel.signatures) == 1


def test_warm_up_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="unknown stacking method 'sigma'"):
        S.warm_up("sigma")
