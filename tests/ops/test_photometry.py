import numpy as np
import pytest

from zdask.ops.photometry import fit_source_gain, solve_tile_photometry
from zdask.ops.seams import seam_metric

H, W = 120, 160


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
    fit = fit_source_gain(_sky(), np.full((H, W, 3), 5.0))
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


def test_seam_metric_definition():
    meds = [np.array([1.0, 10.0]), None, np.array([3.0, np.nan]), np.array([5.0, 14.0])]
    np.testing.assert_allclose(seam_metric(meds), [np.std([1, 3, 5]), np.std([10, 14])])
    assert np.isnan(seam_metric([None, None])).all()


def test_source_gain_sees_transparency_through_different_skies():
    """Planted: the target's stars are 0.8 × the reference's, on a different sky and gradient."""
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
