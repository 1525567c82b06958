"""The common quadratic of a mosaic's tiles, from the shape of their own skies: planted truths."""

import numpy as np

from zdask.ops.background import poly_terms
from zdask.ops.skyshape import common_quadratic, local_slopes, pad_order

CENTRES = np.array([(u, v) for v in (-0.6, 0.0, 0.6) for u in (-0.6, 0.0, 0.6)])


def _matched(quad: np.ndarray, slope: np.ndarray, rng) -> list[np.ndarray]:
    """Per tile, the correction matching leaves: every tile's sky is the same curve about its
    own centre; matching removes what differs between tiles, i.e. the tile's sky minus the
    common surface ``quad`` (one quadratic for all), plus any common plane."""
    out = []
    for u, v in CENTRES:
        qa, qb, qc = quad
        # q(p - c) - q(p) = linear in p: its plane coefficients, per the poly_terms order
        const = qa * u * u + qb * u * v + qc * v * v
        du, dv = -2 * qa * u - qb * v, -qb * u - 2 * qc * v
        plane = np.array([[const + rng.normal(0, 0.01), du + slope[0], dv + slope[1]]])
        out.append(pad_order(plane, 1, 2))
    return out


def test_planted_common_curvature_is_recovered():
    rng = np.random.default_rng(1)
    quad = np.array([0.8, -0.3, 0.5])
    matched = _matched(quad, np.array([0.2, -0.1]), rng)
    found = common_quadratic(matched, CENTRES, np.ones(len(CENTRES)))
    assert np.allclose(found.coeffs[0, 3:], quad, atol=1e-9)
    assert np.allclose(found.coeffs[0, :3], 0.0)  # the linear part is not this function's to set
    assert set(found.determined) == {"u^2", "u*v", "v^2"} and found.undetermined == ()
    # with P added, every tile's local slope is the same
    slopes = [local_slopes(c + found.coeffs, ck)[0] for c, ck in zip(matched, CENTRES)]
    assert np.allclose(slopes, slopes[0], atol=1e-9)


def test_one_row_of_tiles_leaves_the_curvature_across_it_alone():
    row = np.array([(u, 0.0) for u in np.linspace(-0.6, 0.6, 6)])
    coeffs = [pad_order(np.array([[0.0, -2 * 0.7 * u, 0.0]]), 1, 2) for u, _ in row]
    found = common_quadratic(coeffs, row, np.ones(len(row)))
    assert np.isclose(found.coeffs[0, 3], 0.7)
    assert found.coeffs[0, 5] == 0.0 and "v^2" in found.undetermined


def test_pad_order_keeps_the_surface():
    c = np.array([[1.0, 2.0, -3.0]])
    x, y = np.meshgrid(np.arange(5.0), np.arange(4.0))
    extent = (0, 3, 0, 4)
    assert np.allclose(poly_terms(x, y, 1, extent) @ c[0], poly_terms(x, y, 2, extent) @ pad_order(c, 1, 2)[0])
