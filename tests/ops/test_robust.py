"""The one robust σ (1.4826·MAD) of the kernels, on planted values."""

import numpy as np

from zdask.ops.robust import MAD_TO_SIGMA, mad_sigma, robust_sigma


def test_robust_sigma_is_1_4826_mad_of_the_finite_values():
    # median 3, absolute deviations 2 1 0 1 97: MAD 1 whatever the outlier
    values = np.array([1.0, 2.0, np.nan, 3.0, 4.0, np.inf, 100.0, -np.inf])
    assert robust_sigma(values) == 1.4826
    assert robust_sigma(np.full(4, np.nan)) == 0.0
    assert np.isnan(robust_sigma([], empty=float("nan")))


def test_the_strided_subsample_is_taken_before_the_finite_filter():
    # arange(20) every 4th value: 0 4 8 12 16, MAD 4 (all 20: MAD 5). A NaN between the samples
    # changes nothing; filtered first, the stride would fall on other values (MAD 6).
    values = np.arange(20.0)
    assert robust_sigma(values) == 5.0 * MAD_TO_SIGMA
    assert robust_sigma(values, max_samples=5) == 4.0 * MAD_TO_SIGMA
    values[1] = np.nan
    assert robust_sigma(values, max_samples=5) == 4.0 * MAD_TO_SIGMA


def test_the_arithmetic_keeps_the_callers_dtype():
    # float32 in: the product 1.4826 × MAD rounds to float32; dtype=float64 casts first.
    x = np.array([0.0, 0.1, 0.2], dtype=np.float32)
    mad32 = np.float32(0.1)
    as32 = float(np.float32(MAD_TO_SIGMA) * mad32)
    as64 = MAD_TO_SIGMA * float(mad32)
    assert as32 != as64  # the planted value tells the two precisions apart
    assert robust_sigma(x) == as32
    assert robust_sigma(x, dtype=np.float64) == as64


def test_mad_sigma_along_an_axis_about_the_callers_centre():
    r = np.array([[0.0, 10.0], [1.0, 10.0], [3.0, 14.0], [7.0, 10.0]])
    np.testing.assert_array_equal(mad_sigma(r, np.median(r, axis=0), axis=0), MAD_TO_SIGMA * np.array([1.5, 0.0]))
    # about 0 (lengths): the median of |r|, not of |r - median|
    assert mad_sigma(np.array([1.0, 2.0, 9.0]), 0.0) == 2.0 * MAD_TO_SIGMA


def test_kappa_is_folded_into_the_factor_first():
    # med - 2.5·1.4826·MAD as the preview's black point always computed it: (2.5·1.4826)·MAD,
    # which in float32 is not 2.5·(1.4826·MAD) for this planted MAD
    m = np.float32(1.1)
    v = np.array([-m, 0.0, m], dtype=np.float32)
    folded = np.float32(2.5 * MAD_TO_SIGMA) * m
    assert folded != np.float32(2.5) * mad_sigma(v, np.float32(0.0))
    assert mad_sigma(v, np.float32(0.0), kappa=2.5) == folded


def test_skip_nan_takes_nanmedian():
    bg = np.array([100.0, 101.0, np.nan, 99.0, 140.0])
    assert np.isnan(mad_sigma(bg, 100.0))
    assert mad_sigma(bg, 100.0, skip_nan=True) == MAD_TO_SIGMA * 1.0
