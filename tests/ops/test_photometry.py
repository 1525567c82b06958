import numpy as np
import pytest

from zdask.ops.seams import overlap_medians, seam_metric
from zdask.ops.photometry import (
    apply_photometry,
    fit_gain_offset,
    solve_tile_photometry,
)

H, W = 120, 160
GAIN = np.array([1.2, 0.9, 1.05])
OFFSET = np.array([-10.0, 5.0, 2.0])


def _sky(shape=(H, W), stars=20, seed=1):
    """A sky with a gradient and a faint nebula (structure to fit on) plus compact stars."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    sky = 100 + 0.2 * xx + 0.1 * yy + 30 * np.exp(-((xx - 60) ** 2 + (yy - 50) ** 2) / (2 * 30 ** 2))
    rng = np.random.default_rng(seed)
    for _ in range(stars):
        y, x = rng.integers(3, h - 3), rng.integers(3, w - 3)
        sky[y - 1:y + 2, x - 1:x + 2] += 500
    return np.repeat(sky[:, :, None], 3, axis=2)


def test_noiseless_planted_gain_offset_is_exact_despite_stars():
    target = _sky()
    reference = GAIN * _sky(seed=2) + OFFSET  # different stars in the reference
    fit = fit_gain_offset(reference, target)
    assert fit.ok and fit.reason is None and fit.fitted.all()
    assert fit.n_pixels == H * W
    np.testing.assert_allclose(fit.gain, GAIN, rtol=1e-9)
    np.testing.assert_allclose(fit.offset, OFFSET, atol=1e-7)


@pytest.mark.parametrize("noise_ref, noise_tgt", [(0.5, 2.0), (2.0, 0.5), (2.0, 2.0)])
def test_noisy_fit_is_unbiased_with_unequal_noise(noise_ref, noise_tgt):
    # Least squares of reference on a noisy target is biased low, and selecting the band on
    # the noisy values biases further: both are corrected for (errors-in-variables fit).
    rng = np.random.default_rng(5)
    sky = _sky(stars=0)
    target = sky + rng.normal(0, noise_tgt, sky.shape)
    reference = GAIN * sky + OFFSET + rng.normal(0, noise_ref, sky.shape)
    fit = fit_gain_offset(reference, target)
    assert fit.ok
    np.testing.assert_allclose(fit.gain, GAIN, rtol=0.015)


def test_mask_and_nan_restrict_the_overlap():
    target = _sky()
    reference = GAIN * target + OFFSET
    reference[:, :40] = np.nan
    reference[:, 40:60] = 0.0  # garbage outside the mask
    mask = np.ones((H, W), bool)
    mask[:, :60] = False
    fit = fit_gain_offset(reference, target, mask=mask)
    assert fit.n_pixels == H * (W - 60)
    np.testing.assert_allclose(fit.gain, GAIN, rtol=1e-9)


def test_flat_sky_constrains_only_the_offset():
    rng = np.random.default_rng(3)
    flat = np.full((H, W, 3), 100.0)
    target = flat + rng.normal(0, 1, flat.shape)
    reference = 1.1 * flat + 3 + rng.normal(0, 1, flat.shape)
    fit = fit_gain_offset(reference, target)
    assert not fit.ok and not fit.fitted.any() and "correlation" in fit.reason
    np.testing.assert_array_equal(fit.gain, 1.0)
    np.testing.assert_allclose(fit.offset, 13.0, atol=0.1)  # median difference


def test_guards_fall_back_to_finite_offsets():
    target = _sky()
    reference = target + 4.0
    mask = np.zeros((H, W), bool)
    mask[50:55, 50:58] = True  # 40 pixels < 50
    few = fit_gain_offset(reference, target, mask=mask)
    assert not few.ok and "min_pixels" in few.reason and few.n_pixels == 40
    np.testing.assert_array_equal(few.gain, 1.0)
    np.testing.assert_allclose(few.offset, 4.0)

    const = fit_gain_offset(reference, np.full_like(target, 7.0))
    assert not const.ok and "zero variance" in const.reason
    assert np.isfinite(const.offset).all() and np.all(const.gain == 1)

    none = fit_gain_offset(reference, np.full_like(target, np.nan))
    assert none.n_pixels == 0 and not none.ok
    np.testing.assert_array_equal(none.gain, 1.0)
    np.testing.assert_array_equal(none.offset, 0.0)
    with pytest.raises(ValueError, match="sky_band"):
        fit_gain_offset(reference, target, sky_band=(60, 5))


def _planted(n, c, rng, anchor=0):
    g = rng.uniform(0.7, 1.4, (n, c))
    o = rng.uniform(-20, 20, (n, c))
    g[anchor], o[anchor] = 1.0, 0.0
    return g, o


def _pairs_from_truth(edges, g, o, rng):
    # Tile k measures T_k = (S - o_k) / g_k, so T_i = (g_j / g_i) T_j + (o_j - o_i) / g_i.
    return [(i, j, g[j] / g[i], (o[j] - o[i]) / g[i], rng.uniform(0.5, 3.0)) for i, j in edges]


def _chain(n):
    return [(k, k + 1) if k % 2 else (k + 1, k) for k in range(n - 1)]


def _grid(rows, cols):
    idx = lambda r, c: r * cols + c  # noqa: E731
    e = [(idx(r, c), idx(r, c + 1)) for r in range(rows) for c in range(cols - 1)]
    return e + [(idx(r + 1, c), idx(r, c)) for r in range(rows - 1) for c in range(cols)]


def _random_connected(n, rng):
    perm = rng.permutation(n)
    e = [(int(perm[k]), int(perm[rng.integers(0, k)])) for k in range(1, n)]  # a random tree
    extra = [(int(a), int(b)) for a, b in rng.integers(0, n, (n, 2)) if a != b]
    return e + extra


@pytest.mark.parametrize("kind, n", [("chain", 4), ("chain", 30), ("grid", 12), ("grid", 30),
                                     ("random", 7), ("random", 30)])
def test_solver_recovers_planted_photometry_exactly(kind, n):
    rng = np.random.default_rng(n)
    if kind == "chain":
        edges = _chain(n)
    elif kind == "grid":
        edges = _grid(n // 6, 6)
    else:
        edges = _random_connected(n, rng)
    anchor = int(rng.integers(0, n))
    g, o = _planted(n, 3, rng, anchor)
    sol = solve_tile_photometry(n, _pairs_from_truth(edges, g, o, rng), anchor=anchor)
    assert sol.connected.all()
    np.testing.assert_allclose(sol.gains, g, rtol=1e-9, atol=0)
    np.testing.assert_allclose(sol.offsets, o, rtol=0, atol=1e-9)


def test_disconnected_components_anchor_at_their_first_tile():
    rng = np.random.default_rng(0)
    g, o = _planted(7, 2, rng)
    edges = [(0, 1), (1, 2), (4, 3), (5, 4)]  # {0,1,2}, {3,4,5}, {6}
    sol = solve_tile_photometry(7, _pairs_from_truth(edges, g, o, rng), anchor=0)
    np.testing.assert_array_equal(sol.connected, [1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(sol.gains[:3], g[:3], rtol=1e-9)
    # Second component: relative to tile 3, i.e. g_k / g_3 and (o_k - o_3) / g_3.
    np.testing.assert_allclose(sol.gains[3:6], g[3:6] / g[3], rtol=1e-9)
    np.testing.assert_allclose(sol.offsets[3:6], (o[3:6] - o[3]) / g[3], atol=1e-9)
    np.testing.assert_array_equal(sol.gains[6], 1.0)
    np.testing.assert_array_equal(sol.offsets[6], 0.0)


def test_solver_degenerate_inputs_give_finite_identity():
    sol = solve_tile_photometry(5, [], n_channels=3)
    assert sol.gains.shape == (5, 3)
    np.testing.assert_array_equal(sol.gains, 1.0)
    np.testing.assert_array_equal(sol.offsets, 0.0)
    np.testing.assert_array_equal(sol.connected, [1, 0, 0, 0, 0])
    nan_pair = (0, 1, np.array([np.nan, 1.0, 1.0]), np.zeros(3), 1.0)
    zero_weight = (1, 2, np.ones(3), np.ones(3), 0.0)
    sol = solve_tile_photometry(3, [nan_pair, zero_weight])
    np.testing.assert_array_equal(sol.gains, 1.0)
    np.testing.assert_array_equal(sol.offsets, 0.0)
    # A constant tile's fit falls back to finite values: never NaN downstream.
    fit = fit_gain_offset(_sky(), np.full((H, W, 3), 5.0))
    sol = solve_tile_photometry(2, [(0, 1, fit.gain, fit.offset, fit.n_pixels)])
    assert np.isfinite(sol.gains).all() and np.isfinite(sol.offsets).all()
    with pytest.raises(ValueError, match="anchor"):
        solve_tile_photometry(3, [], anchor=3)
    with pytest.raises(ValueError, match="pairs"):
        solve_tile_photometry(3, [(0, 0, np.ones(1), np.zeros(1), 1.0)])


def test_solver_clips_gains():
    pairs = [(0, 1, np.array([5.0]), np.array([0.0]), 1.0), (0, 2, np.array([0.1]), np.array([1.0]), 1.0)]
    sol = solve_tile_photometry(3, pairs, gain_clip=(0.5, 2.0))
    np.testing.assert_array_equal(sol.gains[:, 0], [1.0, 2.0, 0.5])
    # Offsets follow from the clipped gains: o_j - o_i = g_i * b.
    np.testing.assert_allclose(sol.offsets[:, 0], [0.0, 0.0, 1.0])


def test_apply_photometry_is_a_float32_copy():
    img = np.arange(24, dtype=np.float64).reshape(2, 4, 3)
    out = apply_photometry(img, [2.0, 1.0, 0.5], [1.0, 0.0, -1.0])
    assert out.dtype == np.float32 and img[0, 0, 0] == 0
    np.testing.assert_array_equal(out, (img * [2.0, 1.0, 0.5] + [1.0, 0.0, -1.0]).astype(np.float32))
    with pytest.raises(ValueError, match="gain"):
        apply_photometry(img, [1.0], [0.0, 0.0, 0.0])


def test_seam_metric_definition():
    meds = [np.array([1.0, 10.0]), None, np.array([3.0, np.nan]), np.array([5.0, 14.0])]
    np.testing.assert_allclose(seam_metric(meds), [np.std([1, 3, 5]), np.std([10, 14])])
    assert np.isnan(seam_metric([None, None])).all()


def test_end_to_end_harmonisation_removes_the_seams():
    """Four overlapping tiles of one sky, each with its own gain and offset, on a common grid."""
    rng = np.random.default_rng(11)
    sky = _sky(shape=(200, 260), stars=40)
    boxes = [(0, 120, 0, 150), (0, 120, 110, 260), (80, 200, 0, 150), (80, 200, 110, 260)]
    g, o = _planted(4, 3, rng)
    tiles, true_tiles = [], []
    for (y0, y1, x0, x1), gk, ok in zip(boxes, g, o):
        t = np.full(sky.shape, np.nan)
        t[y0:y1, x0:x1] = sky[y0:y1, x0:x1]
        true_tiles.append(t)
        tiles.append((t - ok) / gk)
    before = seam_metric(overlap_medians(tiles))
    pairs = []
    for i in range(4):
        for j in range(i + 1, 4):
            fit = fit_gain_offset(tiles[i], tiles[j])
            if fit.n_pixels:
                pairs.append((i, j, fit.gain, fit.offset, fit.n_pixels))
    sol = solve_tile_photometry(4, pairs)
    fixed = [apply_photometry(t, sol.gains[k], sol.offsets[k]) for k, t in enumerate(tiles)]
    after = seam_metric(overlap_medians(fixed))
    np.testing.assert_allclose(sol.gains, g, rtol=1e-5)
    # The metric's floor is the sky's own variation between overlap regions, reached exactly.
    floor = seam_metric(overlap_medians(true_tiles))
    np.testing.assert_allclose(after, floor, rtol=1e-5)
    assert np.all(before > 3 * floor)


def test_source_gain_sees_transparency_through_different_skies():
    """Planted: the target's stars are 0.8 × the reference's, on a different sky and gradient."""
    from zdask.ops.photometry import fit_source_gain

    rng = np.random.default_rng(5)
    h, w = 150, 200
    yy, xx = np.mgrid[0:h, 0:w]
    stars = np.zeros((h, w))
    for x, y, f in zip(rng.uniform(5, w - 5, 80), rng.uniform(5, h - 5, 80), rng.uniform(200, 3000, 80)):
        stars += f * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.2 ** 2))
    reference = 300 + 0.4 * xx + stars + rng.normal(0, 2, (h, w))
    target = 250 - 0.3 * yy + 0.8 * stars + rng.normal(0, 2, (h, w))
    fit = fit_source_gain(reference[..., None], target[..., None])
    assert fit.ok and abs(fit.gain[0] - 1.25) < 0.02
    # On sky alone there is no gain to see: the fit says so instead of inventing one.
    flat = fit_source_gain(reference[..., None] - stars[..., None], target[..., None] - 0.8 * stars[..., None])
    assert not flat.ok and flat.gain[0] == 1.0
