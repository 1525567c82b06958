"""The curvature every tile's sky shares, from the tiles' own skies: planted truths."""

import numpy as np
import pytest

from zdask.ops.background import Surface
from zdask.ops.background import pad_order, poly_terms
from zdask.ops.skyshape import (
    MIN_TILES, axis_multiple, common_curvature, glow_axis_shape, glow_curvature, plane_and_shape,
    tile_curvature,
)

EXTENT = (0.0, 299.0, 0.0, 299.0)   # the binned canvas the coefficients are normalised over
ORIGINS = [(y, x) for y in (0, 100, 200) for x in (0, 100, 200)]
GLOW = np.array([[0.0, 0.0, 0.0, 0.8, -0.3, 0.5]])   # a glow's curvature, the same in every tile


def _tile(origin, plane, rng, galaxy: float = 0.0):
    """A 100 x 100 cut-out at ``origin``: the glow's curvature, a plane of its own, noise, stars,
    and optionally a broad bright galaxy in the middle."""
    h = w = 100
    sky = Surface(GLOW + pad_order(plane, 1, 2), 2, EXTENT, np.zeros(1)).evaluate((h, w), offset=origin)
    image = sky + rng.normal(0, 0.002, (h, w, 1)).astype(np.float32)
    ys, xs = rng.integers(0, h, 30), rng.integers(0, w, 30)
    image[ys, xs] += 5.0                                   # stars: masked as sources
    if galaxy:
        yy, xx = np.mgrid[0:h, 0:w]
        image[..., 0] += galaxy * np.exp(-((yy - 50) ** 2 + (xx - 50) ** 2) / (2 * 30.0 ** 2))
    return image, np.ones((h, w), np.float32)


def test_each_tile_s_own_curvature_is_its_sky_s_quadratic_part():
    rng = np.random.default_rng(1)
    image, weight = _tile((100, 200), np.array([[3.0, 0.4, -0.2]]), rng)
    found = tile_curvature(image, weight, (100, 200), EXTENT)
    assert np.allclose(found[0, :3], 0.0)                  # the matching's to fix, not this
    assert np.allclose(found[0, 3:], GLOW[0, 3:], atol=0.02)


def test_the_common_curvature_is_the_median_a_galaxy_tile_does_not_move():
    rng = np.random.default_rng(2)
    curvatures = []
    for k, origin in enumerate(ORIGINS):
        plane = np.array([[rng.normal(), rng.normal(0, 0.3), rng.normal(0, 0.3)]])
        image, weight = _tile(origin, plane, rng, galaxy=2.0 if k == 4 else 0.0)
        curvatures.append(tile_curvature(image, weight, origin, EXTENT))
    # the galaxy tile's own curvature is far off the glow's ...
    assert np.abs(curvatures[4][0, 3:] - GLOW[0, 3:]).max() > 0.3
    common = common_curvature(curvatures)
    # ... the median is not
    assert np.allclose(common.coeffs[0, 3:], GLOW[0, 3:], atol=0.02)
    assert np.allclose(common.coeffs[0, :3], 0.0)
    assert common.determined == ("u^2", "u*v", "v^2") and common.undetermined == ()
    assert common.spread.shape == (1, 3)


def test_too_few_tiles_leave_the_curvature_alone():
    curvatures = [GLOW.copy() for _ in range(MIN_TILES - 1)]
    common = common_curvature(curvatures)
    assert np.allclose(common.coeffs, 0.0) and common.determined == ()


def test_the_glow_axis_shape_is_the_square_of_the_distance_along_the_tile_s_gradient():
    rng = np.random.default_rng(3)
    origin, angle = (100, 200), np.radians(35.0)
    d = np.array([np.cos(angle), np.sin(angle)])
    yy, xx = np.mgrid[0:100, 0:100]
    glow = 5.0 + 0.02 * (d[0] * (xx + origin[1]) + d[1] * (yy + origin[0]))   # brighter along d
    image = (glow + rng.normal(0, 0.002, glow.shape))[..., None].astype(np.float32)
    image[rng.integers(0, 100, 30), rng.integers(0, 100, 30)] += 5.0         # stars
    shape = glow_axis_shape(image, np.ones((100, 100), np.float32), origin, EXTENT)
    got = (poly_terms(xx.ravel() + origin[1], yy.ravel() + origin[0], 2, EXTENT) @ shape).reshape(100, 100)
    radius = np.hypot(299.0, 299.0) / 2          # the grid's half-diagonal, the same for every tile
    s = (d[0] * (xx - 49.5) + d[1] * (yy - 49.5)) / radius
    np.testing.assert_allclose(got, s * s, atol=2e-3)
    assert axis_multiple(3.0 * shape[None, :], shape)[0] == pytest.approx(3.0)
    flat = np.full((100, 100, 1), 5.0, np.float32)
    assert not np.any(glow_axis_shape(flat, np.ones((100, 100), np.float32), origin, EXTENT))


def test_glow_curvature_keeps_differences_the_tiles_confirm_and_levels_on_their_median():
    rng = np.random.default_rng(4)
    true = 10.0 + rng.normal(0, 2.0, (9, 1))                 # each tile's glow curvature
    relative = true - true.mean() + rng.normal(0, 0.1, (9, 1))   # the overlaps: differences only
    own = true + rng.normal(0, 0.3, (9, 1))                  # each tile's own: noisier, absolute
    own[4] += 25.0                                           # a tile a galaxy fills
    glow = glow_curvature(own, relative)
    assert glow.determined and glow.confirmed[0] > 0.8
    np.testing.assert_allclose(glow.multiples, true, atol=0.6)   # the galaxy tile too


def test_differences_the_tiles_do_not_confirm_shrink_to_the_median():
    rng = np.random.default_rng(5)
    own = 10.0 + rng.normal(0, 0.05, (9, 1))                 # the tiles agree: one curvature
    relative = rng.normal(0, 2.0, (9, 1))                    # the overlaps fitted their errors
    relative -= np.median(relative)
    relative[np.argsort(relative[:, 0])] = np.sort(relative, axis=0)[::-1]   # and not like the own
    glow = glow_curvature(own, relative)
    assert glow.confirmed[0] < 0.2
    assert np.abs(glow.multiples - 10.0).max() < 0.2 * np.abs(relative).max() + 0.1


def test_too_few_tiles_leave_the_glow_level_undetermined():
    glow = glow_curvature(np.array([[5.0], [6.0]]), np.array([[-0.5], [0.5]]))
    assert not glow.determined
    np.testing.assert_allclose(glow.multiples, [[-0.5], [0.5]])


def test_plane_and_shape_spans_a_plane_plus_a_multiple_of_the_shape():
    shape = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    basis = plane_and_shape(shape)
    np.testing.assert_allclose(basis @ np.array([1.0, 2.0, 3.0, 2.0]), [1.2, 2.4, 3.6, 0.8, 1.0, 1.2])
