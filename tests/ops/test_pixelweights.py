"""Stacking with a weight per frame and pixel: each pixel is the kernel with its own weights."""

import numpy as np
import pytest

from zdask.ops.pixelweights import stack_pixel_weighted
from zdask.ops.stacking import METHODS


@pytest.mark.parametrize("method, params", [("kappa_sigma", {"kappa": (2.0, 2.0), "iterations": 2}),
                                            ("winsorized", {"kappa": (2.5, 2.5)}), ("mean", {})])
def test_every_pixel_is_the_kernel_with_that_pixels_weights(method, params):
    rng = np.random.default_rng(1)
    n, h, w, c = 7, 9, 11, 3
    stack = rng.normal(100, 5, (n, h, w, c)).astype(np.float32)
    stack[rng.random((n, h, w)) < 0.2] = np.nan       # frames missing some pixels
    stack[2, 4, 5] = 400.0                              # an outlier
    weights = rng.uniform(0.5, 9.0, (n, h, w))
    weights[np.isnan(stack[..., 0])] = np.nan           # no sample, no weight
    scale, offset = rng.uniform(0.8, 1.2, (n, c)), rng.normal(0, 3, (n, c))
    got = stack_pixel_weighted(stack, weights, method, scale=scale, offset=offset, **params)
    for y in range(h):
        for x in range(w):
            one = METHODS[method](stack[:, y:y + 1, x:x + 1], weights=np.nan_to_num(weights[:, y, x]),
                                  scale=scale, offset=offset, **params)
            for field, a, b in zip(got._fields, got, one):
                np.testing.assert_array_equal(a[y, x], b[0, 0], err_msg=f"{field} at {(y, x)}")
    if method != "mean":
        assert got.rejected_high[4, 5].sum() >= 1


def test_planted_weights_and_outlier():
    # Pixel 0: 10, 11, 12, 13 weighted 1, 1, 1, 3 -> 72 / 6 = 12. Pixel 1: the same samples
    # with weights 3, 3, 3, 1 -> 112 / 10 = 11.2. Pixel 2: five 10s and a 1000 that kappa-sigma
    # rejects, however heavy its weight.
    stack = np.full((6, 1, 3, 1), np.nan, dtype=np.float32)
    stack[:4, 0, 0, 0] = stack[:4, 0, 1, 0] = [10, 11, 12, 13]
    stack[:, 0, 2, 0] = [10, 10, 1000, 10, 10, 10]
    weights = np.zeros((6, 1, 3))
    weights[:4, 0, 0] = [1, 1, 1, 3]
    weights[:4, 0, 1] = [3, 3, 3, 1]
    weights[:, 0, 2] = [1, 1, 50, 1, 1, 1]
    result = stack_pixel_weighted(stack, weights, "kappa_sigma", kappa=(3.0, 3.0))
    np.testing.assert_allclose(result.image[0, :, 0], [12.0, 11.2, 10.0], rtol=1e-6)
    assert result.rejected_high[0, 2, 0] == 1 and result.count[0, 2, 0] == 5


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="weights must have shape"):
        stack_pixel_weighted(np.zeros((2, 3, 3, 1), np.float32), np.ones((2, 3)))
    with pytest.raises(ValueError, match="finite and >= 0"):
        stack_pixel_weighted(np.zeros((2, 3, 3, 1), np.float32), -np.ones((2, 3, 3)))
