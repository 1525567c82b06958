"""Matching sky surfaces: relative gradients go, what all images share is fitted on the
assembled image with sources excluded, and extended emission stays."""

import numpy as np

from zdask.ops.background import Surface
from zdask.ops.skymatch import CutOut, accumulate, fit_common_sky, match_surfaces

H, W = 120, 160
EXTENT = (0.0, H - 1.0, 0.0, W - 1.0)


def _scene():
    yy, xx = np.mgrid[0:H, 0:W]
    galaxy = 40.0 * np.exp(-(((xx - 80) / 30.0) ** 2 + ((yy - 60) / 18.0) ** 2))
    common = 100.0 + 0.3 * xx - 0.2 * yy      # light pollution every image shares
    return galaxy, common


def _cutouts(rng, galaxy, common):
    """Four overlapping quadrant cut-outs, each with its own extra plane."""
    items, planted = [], []
    for y0, x0 in [(0, 0), (0, 70), (50, 0), (50, 70)]:
        ys, xs = slice(y0, y0 + 70), slice(x0, x0 + 90)
        coeffs = np.array([[rng.uniform(-20, 20), rng.uniform(-8, 8), rng.uniform(-8, 8)]])
        own = Surface(coeffs, 1, EXTENT, np.zeros(1)).evaluate((70, 90), offset=(y0, x0))
        image = (galaxy + common)[ys, xs, None] + own + rng.normal(0, 0.5, (70, 90, 1))
        items.append(CutOut(image.astype(np.float32), np.ones((70, 90), np.float32), (y0, x0)))
        planted.append(coeffs)
    return items, planted


def test_relative_planes_are_removed_and_the_galaxy_kept():
    rng = np.random.default_rng(2)
    galaxy, common = _scene()
    items, planted = _cutouts(rng, galaxy, common)
    coeffs = match_surfaces(items, (H, W), order=1, extent=EXTENT)
    # Each image's correction equals its own plane minus the mean plane of all images.
    mean = np.mean(planted, axis=0)
    for got, want in zip(coeffs, planted):
        np.testing.assert_allclose(got, want - mean, atol=0.3)
    corrected = [CutOut(it.image - Surface(c, 1, EXTENT, np.zeros(1)).evaluate(it.image.shape[:2], offset=it.origin),
                        it.weight, it.origin) for it, c in zip(items, coeffs)]
    total, wsum = accumulate(corrected, [c.image for c in corrected], (H, W), 1)
    mosaic = total[..., 0] / wsum
    common_fit = fit_common_sky(mosaic[..., None], wsum, order=1, extent=EXTENT)
    flat = mosaic - Surface(common_fit, 1, EXTENT, np.zeros(1)).evaluate((H, W))[..., 0]
    # What is left is the galaxy (on a constant): its flux kept, the sky flat around it.
    sky = galaxy < 0.5
    residual = flat - np.median(flat[sky])
    assert abs(residual.sum() / galaxy.sum() - 1.0) < 0.1
    assert np.std(residual[sky]) < 1.0


def test_a_single_image_or_no_overlap_gets_no_correction():
    rng = np.random.default_rng(3)
    galaxy, common = _scene()
    items, _ = _cutouts(rng, galaxy, common)
    assert not np.any(match_surfaces(items[:1], (H, W), order=1, extent=EXTENT)[0])
    apart = [CutOut(items[0].image[:20, :20], items[0].weight[:20, :20], (0, 0)),
             CutOut(items[3].image[:20, :20], items[3].weight[:20, :20], (100, 140))]
    assert all(not np.any(c) for c in match_surfaces(apart, (H, W), order=1, extent=EXTENT))
