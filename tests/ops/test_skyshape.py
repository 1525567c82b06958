"""The curvature every tile's sky shares, from the tiles' own skies: planted truths."""

import numpy as np

from zdask.ops.background import Surface
from zdask.ops.skyshape import MIN_TILES, common_curvature, pad_order, tile_curvature

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


def test_pad_order_keeps_the_surface():
    plane = np.array([[1.0, 2.0, -3.0]])
    padded = pad_order(plane, 1, 2)
    a = Surface(plane, 1, EXTENT, np.zeros(1)).evaluate((20, 30), offset=(5, 7))
    b = Surface(padded, 2, EXTENT, np.zeros(1)).evaluate((20, 30), offset=(5, 7))
    assert np.allclose(a, b)
