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


def _rotation(theta: float) -> np.ndarray:
    return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def _alt_az_corrections(glow_in_frame, angles_deg, brightness):
    """Per frame, the gradient of its sky correction on the tile grid: the glow fixed in the
    frame, turned with it, brightening and fading (zero-sum, as the consensus matching leaves it)."""
    jacobians = np.stack([_rotation(np.deg2rad(a)) for a in angles_deg])
    on_tile = np.stack([s * (np.linalg.inv(j).T @ glow_in_frame.T).T for j, s in zip(jacobians, brightness)])
    return on_tile - on_tile.mean(axis=0), on_tile.mean(axis=0), jacobians


def test_glow_from_rotation_recovers_the_glow_the_tile_still_carries():
    from zdask.ops.skyshape import glow_from_rotation

    glow = np.array([[0.30, -0.20], [0.10, 0.05]])  # (C, 2) per frame pixel
    brightness = 1 + np.random.default_rng(1).normal(0, 0.08, 8)  # the glow fades and brightens
    corrections, carried, jacobians = _alt_az_corrections(glow, np.linspace(-5, 5, 8), brightness)
    found = glow_from_rotation(corrections, jacobians)
    assert found.gradient is not None and found.explained > 0.99
    assert np.allclose(found.gradient, carried, rtol=0.03, atol=0.003)


def test_glow_from_rotation_leaves_an_equatorial_tile_undetermined():
    from zdask.ops.skyshape import glow_from_rotation

    glow = np.array([[0.30, -0.20]])
    corrections, _, jacobians = _alt_az_corrections(glow, np.full(8, 0.2), np.ones(8))
    noise = np.random.default_rng(2).normal(0, 0.01, corrections.shape)
    found = glow_from_rotation(corrections + noise, jacobians)
    assert found.gradient is None and found.rotation_rms_deg < 0.01


# Where the alt-az tiles of a skykit-like 3 x 3 mosaic sit: one in the middle row, the bottom row.
ALTAZ = (5, 6, 7, 8)


def _drifting_glow_tiles(quad: np.ndarray, plane: np.ndarray):
    """Per tile its correction from matching and the slope its correction must have: every tile
    carries its own glow (the amplitude drifted from panel to panel, in raster order), the
    matching leaves each correction short of it by one unknown common surface (``quad`` and
    ``plane``)."""
    coeffs, glows = [], []
    for k, (u, v) in enumerate(CENTRES):
        glow = np.array([[1.0, -1.2]]) * (1 + 0.06 * k)            # (C, 2), drifting
        qa, qb, qc = quad
        common_slope = plane + np.array([2 * qa * u + qb * v, qb * u + 2 * qc * v])
        tile = np.zeros((1, 6))
        tile[0, 0] = 5.0 + k
        tile[0, 1:3] = glow[0] - common_slope                       # local slope at the centre
        coeffs.append(tile)
        glows.append(glow)
    return coeffs, glows


def test_curvature_from_glows_recovers_the_common_curvature_when_the_glow_drifts():
    from zdask.ops.skyshape import curvature_from_glows

    quad, plane = np.array([0.8, -0.3, 0.5]), np.array([0.4, -0.2])
    coeffs, glows = _drifting_glow_tiles(quad, plane)
    wanted = [g if k in ALTAZ else None for k, g in enumerate(glows)]
    found = curvature_from_glows(coeffs, CENTRES, np.ones(len(CENTRES)), wanted)
    assert found.tiles == 4
    assert np.allclose(found.quadratic[0], quad, atol=1e-9)
    assert found.misfit < 1e-9
    # Making the tiles' slopes alike reads the drift as curvature: it misses the planted one.
    alike = common_quadratic(coeffs, CENTRES, np.ones(len(CENTRES)))
    assert np.abs(alike.coeffs[0, 3:] - quad).max() > 0.1


def test_curvature_from_glows_needs_four_known_tiles_that_span_it():
    from zdask.ops.skyshape import curvature_from_glows

    coeffs, glows = _drifting_glow_tiles(np.array([0.8, -0.3, 0.5]), np.zeros(2))
    three = [g if k in ALTAZ[:3] else None for k, g in enumerate(glows)]
    assert curvature_from_glows(coeffs, CENTRES, np.ones(9), three).quadratic is None
    # four tiles in one row say nothing about the curvature across it
    row = np.array([(u, 0.0) for u in (-0.6, -0.2, 0.2, 0.6)])
    found = curvature_from_glows(coeffs[:4], row, np.ones(4), glows[:4])
    assert found.quadratic is None and found.tiles == 4
