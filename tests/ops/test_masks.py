import numpy as np
import pytest

from zdask.ops.masks import (altaz_alpha, altaz_reach, coverage_renormalisation_gain, feather_weights,
                             renormalisation_reach)


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _rotated_stack_coverage():
    """A 10-frame core (rows 20..79, cols 30..129) inside a 2-frame rim, uncovered outside."""
    cov = np.zeros((100, 160), np.float32)
    cov[5:95, 10:150] = 2
    cov[20:80, 30:130] = 10
    return cov


def test_threshold_drops_thin_rim_and_ramps_smoothly_inward():
    cov = _rotated_stack_coverage()
    res = altaz_alpha(cov, n_frames=10, ramp_px=8)
    a = res.alpha
    assert res.applied and a.dtype == np.float32 and a.shape == cov.shape
    assert a.min() >= 0 and a.max() <= 1
    # The 2-frame rim is below max(min(3, 10), 0.5 * 10) = 5 frames: fully masked.
    assert np.all(a[cov == 2] == 0) and np.all(a[cov == 0] == 0)
    # Mid-edge of the core: row 20 + k is k + 1 px from the rejected row 19.
    col = 80
    for k in range(10):
        assert a[20 + k, col] == pytest.approx(_smoothstep((k + 1) / 8), abs=1e-6)
    assert np.all(a[28:72, 38:122] == 1)


def test_min_abs_is_bounded_by_the_frames_used():
    cov = np.zeros((60, 60), np.float32)
    cov[10:50, 10:50] = 2  # a 2-frame group: min_abs=3 would mask everything
    res = altaz_alpha(cov, n_frames=2, min_abs=3.0, opening_px=0, ramp_px=0)
    assert res.applied
    np.testing.assert_array_equal(res.alpha, (cov > 0).astype(np.float32))


def test_opening_removes_slivers():
    cov = np.zeros((80, 80), np.float32)
    cov[20:60, 20:60] = 10
    cov[38:40, 60:78] = 10  # a 2-px-wide spur of full coverage
    opened = altaz_alpha(cov, n_frames=10, opening_px=3, ramp_px=0)
    kept = altaz_alpha(cov, n_frames=10, opening_px=0, ramp_px=0)
    assert np.all(opened.alpha[38:40, 62:78] == 0)
    assert np.all(kept.alpha[38:40, 62:78] == 1)
    assert np.all(opened.alpha[25:55, 25:55] == 1)


def test_fallback_when_mask_would_keep_too_little():
    cov = np.ones((60, 60), np.float32)
    cov[30:33, 30:33] = 10  # only a tiny patch passes, and the opening removes it
    cov[0:5, :] = np.nan  # NaN counts as uncovered
    res = altaz_alpha(cov, n_frames=10)
    assert not res.applied and "min_keep_fraction" in res.reason
    expected = np.ones((60, 60), np.float32)
    expected[0:5] = 0
    np.testing.assert_array_equal(res.alpha, expected)


def test_nothing_covered_is_not_applied():
    res = altaz_alpha(np.full((10, 10), np.nan, np.float32), n_frames=3)
    assert not res.applied and np.all(res.alpha == 0)


def test_full_coverage_gets_alpha_one_everywhere():
    res = altaz_alpha(np.full((30, 40), 5, np.float32), n_frames=5)
    assert res.applied and np.all(res.alpha == 1)


@pytest.mark.parametrize("kw, name", [
    ({"n_frames": 0}, "n_frames"), ({"n_frames": 3, "min_frac": 1.5}, "min_frac"),
    ({"n_frames": 3, "opening_px": -1}, "opening_px"), ({"n_frames": 3, "ramp_px": -2}, "ramp_px"),
    ({"n_frames": 3, "min_keep_fraction": 2}, "min_keep_fraction"),
])
def test_alpha_rejects_bad_parameters(kw, name):
    with pytest.raises(ValueError, match=name):
        altaz_alpha(np.ones((8, 8), np.float32), **kw)


def test_feather_is_linear_in_distance_and_treats_array_edge_as_uncovered():
    cov = np.full((50, 70), 3, np.float32)
    cov[:, 50:] = 0
    cov[:, 45:50] = np.nan
    f = feather_weights(cov, ramp_px=10)
    assert f.dtype == np.float32
    assert np.all(f[:, 45:] == 0)
    # Distance to the array top edge: row r is r + 1 px from outside.
    for r in range(12):
        assert f[r, 20] == pytest.approx(min((r + 1) / 10, 1.0), abs=1e-6)
    # Distance to the uncovered columns on the right (first uncovered column 45).
    for c in range(30, 45):
        assert f[25, c] == pytest.approx(min((45 - c) / 10, 1.0), abs=1e-6)
    assert np.all(f[12:38, 12:33] == 1)


def test_renormalisation_gain_is_one_on_uniform_footprint_and_softens_steps():
    cov = np.zeros((80, 120), np.float32)
    cov[10:70, 10:110] = 4
    g = coverage_renormalisation_gain(cov, smooth_px=5)
    # Normalised convolution: the footprint edge is not dragged down by uncovered pixels.
    np.testing.assert_allclose(g, 1.0, atol=1e-5)
    cov[10:70, 60:110] = 8  # coverage step at column 60
    g = coverage_renormalisation_gain(cov, smooth_px=5)
    assert g[40, 58] > 1.05 and g[40, 61] < 0.95
    np.testing.assert_allclose(g[40, 15:35], 1.0, atol=1e-5)
    np.testing.assert_allclose(g[40, 85:105], 1.0, atol=1e-5)
    assert np.all(g[cov == 0] == 1)


def test_renormalisation_gain_is_clipped():
    cov = np.ones((40, 80), np.float32)
    cov[:, 40:] = 100
    g = coverage_renormalisation_gain(cov, smooth_px=8, clip=(0.8, 1.25))
    assert g.max() == np.float32(1.25) and g.min() == np.float32(0.8)
    assert np.all(g[:, 40:47] < 1) and np.all(g[:, 33:40] > 1)
    with pytest.raises(ValueError, match="clip"):
        coverage_renormalisation_gain(cov, clip=(1.5, 2.0))
    with pytest.raises(ValueError, match="smooth_px"):
        coverage_renormalisation_gain(cov, smooth_px=0)



def _rotated_footprints_mask(h: int, w: int) -> np.ndarray:
    """Where four rotated rectangles overlap (the well covered core of an alt-az stack)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    good = np.ones(ys.shape, bool)
    for angle in (-0.2, -0.07, 0.05, 0.18):
        u = (xs - w / 2) * np.cos(angle) + (ys - h / 2) * np.sin(angle)
        v = -(xs - w / 2) * np.sin(angle) + (ys - h / 2) * np.cos(angle)
        good &= (np.abs(u) < 0.42 * w) & (np.abs(v) < 0.42 * h)
    return good


@pytest.mark.parametrize("shape", [(100, 160), (64, 64), (540, 360)])
def test_distances_are_exact_and_the_same_at_every_call(shape):
    """The masks' distances are the exact Euclidean ones rounded once to float32, at every call.
    OpenCV's exact transform alone gave, on the same mask, values one ulp apart from call to
    call (measured: the 100 x 160 mask at every call, 64 x 64 at half of them), and the
    mosaic's bytes changed from run to run."""
    from scipy.ndimage import distance_transform_edt

    from zdask.ops.masks import _distance_inside

    good = _rotated_footprints_mask(*shape)
    exact = distance_transform_edt(good).astype(np.float32)
    exact_edge = distance_transform_edt(np.pad(good, 1))[1:-1, 1:-1].astype(np.float32)
    for _ in range(8):
        np.testing.assert_array_equal(_distance_inside(good, outside_is_edge=False), exact)
        np.testing.assert_array_equal(_distance_inside(good, outside_is_edge=True), exact_edge)


def _dithered_coverage(shape=(150, 220), seed=4) -> np.ndarray:
    """Coverage of a dozen rectangular footprints: steps and thin rims everywhere."""
    rng = np.random.default_rng(seed)
    cov = np.zeros(shape, np.float32)
    for _ in range(12):
        y, x = rng.integers(0, shape[0] - 40), rng.integers(0, shape[1] - 60)
        cov[y:y + rng.integers(30, 90), x:x + rng.integers(40, 120)] += 1
    return cov


def _windows(shape, side, reach):
    """(window, inner, block) for every block of ``side`` px, the window ``reach`` px wider."""
    for r0 in range(0, shape[0], side):
        for c0 in range(0, shape[1], side):
            r1, c1 = min(shape[0], r0 + side), min(shape[1], c0 + side)
            y0, x0 = max(0, r0 - reach), max(0, c0 - reach)
            window = (slice(y0, min(shape[0], r1 + reach)), slice(x0, min(shape[1], c1 + reach)))
            yield window, (slice(r0 - y0, r1 - y0), slice(c0 - x0, c1 - x0)), (slice(r0, r1), slice(c0, c1))


@pytest.mark.parametrize("opening_px, ramp_px", [(3, 8), (0, 5), (2, 0)])
def test_alpha_made_window_by_window_with_its_reach_is_the_whole_maps_bit_for_bit(opening_px, ramp_px):
    cov = _dithered_coverage()
    kw = dict(n_frames=12, opening_px=opening_px, ramp_px=ramp_px)
    whole = altaz_alpha(cov, **kw).alpha
    assert 0 < (whole == 0)[cov > 0].mean() < 1  # the mask does cut somewhere
    for side in (16, 50):
        for window, inner, block in _windows(cov.shape, side, altaz_reach(opening_px, ramp_px)):
            part = altaz_alpha(cov[window], peak=float(cov.max()), min_keep_fraction=0.0, **kw).alpha[inner]
            np.testing.assert_array_equal(part, whole[block])
    # (without the whole map's peak, some window thresholds on its own maximum)
    assert any(not np.array_equal(altaz_alpha(cov[window], min_keep_fraction=0.0, **kw).alpha[inner], whole[block])
               for window, inner, block in _windows(cov.shape, 16, altaz_reach(opening_px, ramp_px)))


def test_renormalisation_gain_made_window_by_window_is_the_whole_maps_to_float32_rounding():
    cov = _dithered_coverage()
    whole = coverage_renormalisation_gain(cov)
    reach = renormalisation_reach(15)
    assert reach == 60  # OpenCV's kernel for sigma 15 on float32: 121 taps
    for side in (16, 50):
        for window, inner, block in _windows(cov.shape, side, reach):
            part = coverage_renormalisation_gain(cov[window])[inner]
            # (OpenCV's vectorised Gaussian rounds a pixel by where it falls in the row)
            ulps = np.abs(part.view(np.int32) - whole[block].view(np.int32))
            assert ulps.max() <= 8
    # a margin short of the reach is not enough
    assert max(np.abs(coverage_renormalisation_gain(cov[window])[inner] - whole[block]).max()
               for window, inner, block in _windows(cov.shape, 16, reach // 2)) > 1e-3
