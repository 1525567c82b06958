"""Matching sky surfaces: relative gradients go, what all images share is fitted on the
assembled image with sources excluded, and extended emission stays."""

import numpy as np

from zdask.ops.background import Surface
from zdask.ops.skymatch import CutOut, accumulate, fit_common_sky, match_surfaces, match_to_consensus

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


def test_the_consensus_solver_gives_the_pairwise_least_squares_solution():
    # Without clipping both solve the same least-squares problem, here on partial overlaps
    # chained across the grid (the case that needs the most conjugate-gradient steps).
    rng = np.random.default_rng(2)
    items, _ = _cutouts(rng, *_scene())
    pairwise = match_surfaces(items, (H, W), order=1, extent=EXTENT, passes=1)
    consensus = match_to_consensus(items, (H, W), order=1, extent=EXTENT, passes=1, tolerance=1e-12)
    for got, want in zip(consensus.coeffs, pairwise):
        np.testing.assert_allclose(got, want, atol=1e-8)
    assert not np.any(match_to_consensus(items[:1], (H, W), order=1, extent=EXTENT).coeffs[0])


GH, GW = 100, 130
GROUP_EXTENT = (0.0, GH - 1.0, 0.0, GW - 1.0)


def _group(n: int, seed: int):
    """``n`` dithered frames of one sky (a galaxy, stars, a gradient they all share), each with
    its own planted plane; frame 1 also crossed by a satellite trail."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:GH, 0:GW]
    sky = 40.0 * np.exp(-(((xx - 65) / 30.0) ** 2 + ((yy - 50) / 20.0) ** 2)) + 100.0 + 0.3 * xx - 0.2 * yy
    for y, x in rng.integers(5, (GH - 5, GW - 5), (25, 2)):
        sky[y - 1:y + 2, x - 1:x + 2] += 200.0
    items, planted = [], []
    for k in range(n):
        y0, x0 = (int(v) for v in rng.integers(0, 21, 2))
        coeffs = np.array([[rng.uniform(-20, 20), rng.uniform(-8, 8), rng.uniform(-8, 8)]])
        own = Surface(coeffs, 1, GROUP_EXTENT, np.zeros(1)).evaluate((80, 110), offset=(y0, x0))
        image = sky[y0:y0 + 80, x0:x0 + 110, None] + own + rng.normal(0, 0.5, (80, 110, 1))
        if k == 1:
            image[np.arange(80), np.arange(80) + 10] += 500.0
        items.append(CutOut(image.astype(np.float32), np.ones((80, 110), np.float32), (y0, x0)))
        planted.append(coeffs)
    return items, np.array(planted)


def test_group_matching_recovers_each_frames_plane_at_a_cost_per_frame_that_does_not_grow():
    passes, max_iterations = 4, 50
    per_frame = {}
    for n in (10, 40):
        items, planted = _group(n, seed=5)
        match = match_to_consensus(items, (GH, GW), order=1, extent=GROUP_EXTENT, passes=passes,
                                   max_iterations=max_iterations)
        # Each frame's own plane, up to the plane all frames share (the mean: that one is the
        # mosaic-level fit's job), the galaxy and the common gradient left alone.
        np.testing.assert_allclose(np.array(match.coeffs), planted - planted.mean(axis=0), atol=0.05)
        # Work counted in visits of one frame's window: a whole number per frame, bounded by
        # the passes and steps whatever the group size (pairwise matching would need n − 1
        # visits per frame per pass).
        assert match.visits % n == 0
        per_frame[n] = match.visits // n
        assert per_frame[n] <= passes * (2 * max_iterations + 10)
    assert per_frame[40] <= per_frame[10], per_frame


def _group_with_seeing(n: int, seed: int):
    """``n`` dithered frames of one sky whose stars differ from frame to frame (seeing of 0.7 to
    2 px), each with its own planted plane."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:GH, 0:GW]
    sky = 40.0 * np.exp(-(((xx - 65) / 30.0) ** 2 + ((yy - 50) / 20.0) ** 2)) + 100.0 + 0.3 * xx - 0.2 * yy
    stars = rng.uniform(5, (GH - 5, GW - 5), (40, 2))
    items, planted = [], []
    for _ in range(n):
        y0, x0 = (int(v) for v in rng.integers(0, 21, 2))
        coeffs = np.array([[rng.uniform(-20, 20), rng.uniform(-8, 8), rng.uniform(-8, 8)]])
        width = rng.uniform(0.7, 2.0)
        image = sky.copy()
        for y, x in stars:
            image += 300.0 / width ** 2 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * width ** 2))
        own = Surface(coeffs, 1, GROUP_EXTENT, np.zeros(1)).evaluate((80, 110), offset=(y0, x0))
        image = image[y0:y0 + 80, x0:x0 + 110, None] + own + rng.normal(0, 0.5, (80, 110, 1))
        items.append(CutOut(image.astype(np.float32), np.ones((80, 110), np.float32), (y0, x0)))
        planted.append(coeffs)
    return items, np.array(planted)


def test_group_matching_drops_what_the_frames_disagree_on_for_good():
    # No star mask: the star cores, different in every frame, are clipped by all of them.
    # Judged against the kept pixels of the others only, such a pixel would have no others
    # left, come back in the next round and leave again, and a fit with every star core in
    # it would end the rounds (errors of 1.1 here instead of 0.15).
    for n in (10, 40):
        items, planted = _group_with_seeing(n, seed=5)
        match = match_to_consensus(items, (GH, GW), order=1, extent=GROUP_EXTENT, passes=3)
        np.testing.assert_allclose(np.array(match.coeffs), planted - planted.mean(axis=0), atol=0.2)


def test_widened_sources_keep_a_halo_s_wings_out_of_the_sky_fit():
    # A flat sky under a galaxy whose halo fades below the clip: its wings bend the fitted
    # quadratic unless the masked sources are widened.
    from zdask.ops.skymatch import fit_common_sky
    rng = np.random.default_rng(4)
    h = w = 120
    yy, xx = np.mgrid[0:h, 0:w]
    halo = 3.0 * np.exp(-((yy - 60) ** 2 + (xx - 60) ** 2) / (2 * 18.0 ** 2))
    image = (100.0 + halo + rng.normal(0, 0.5, (h, w)))[..., None].astype(np.float32)
    weight = np.ones((h, w), np.float32)
    extent = (0.0, h - 1.0, 0.0, w - 1.0)
    plain = fit_common_sky(image, weight, order=2, extent=extent)
    widened = fit_common_sky(image, weight, order=2, extent=extent, source_grow=2)
    curvature = lambda c: float(np.abs(c[0, 3:]).max())  # the sky has none
    assert curvature(plain) > 0.7           # 0.78 of a halo 3.0 high
    assert curvature(widened) < 0.6 * curvature(plain)   # 0.42


def _axis_shape(angle_deg: float) -> np.ndarray:
    """(6,): (cos a·u + sin a·v)² on EXTENT's normalised coordinates."""
    a, b = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    return np.array([0.0, 0.0, 0.0, a * a, 2 * a * b, b * b])


def test_each_image_s_multiple_of_its_own_shape_is_matched_with_its_plane():
    # Each cut-out carries its own plane and its own multiple of its own quadratic shape (the
    # shapes turn from image to image, as a glow does between alt-az panels).
    rng = np.random.default_rng(4)
    galaxy, common = _scene()
    items, planted = _cutouts(rng, galaxy, common)
    shapes = [_axis_shape(a) for a in (10.0, 25.0, -5.0, 40.0)]
    multiples = np.array([30.0, -10.0, 20.0, 5.0])
    curved = []
    for it, e, k in zip(items, shapes, multiples):
        surface = Surface(k * e[None, :], 2, EXTENT, np.zeros(1)).evaluate(it.image.shape[:2], offset=it.origin)
        curved.append(CutOut(it.image + surface, it.weight, it.origin))
    coeffs = match_surfaces(curved, (H, W), order=1, extent=EXTENT, shapes=shapes)
    found = np.array([c[0, 3:] @ e[3:] / (e[3:] @ e[3:]) for c, e in zip(coeffs, shapes)])
    # the shapes differ, so the data show every multiple, their sum too
    np.testing.assert_allclose(found, multiples, atol=1.0)   # of a spread of 40
    for c, e, k in zip(coeffs, shapes, found):   # what is returned is the plane plus the multiple
        np.testing.assert_allclose(c[0, 3:], k * e[3:], atol=1e-9)
    # without the shapes the same images leave a seam the shapes take out
    flat = match_surfaces(curved, (H, W), order=1, extent=EXTENT)
    def worst_step(cs, order):
        out = [CutOut(it.image - Surface(c, order, EXTENT, np.zeros(1)).evaluate(it.image.shape[:2], offset=it.origin),
                      it.weight, it.origin) for it, c in zip(curved, cs)]
        total, wsum = accumulate(out, [o.image for o in out], (H, W), 1)
        sq, _ = accumulate(out, [o.image ** 2 for o in out], (H, W), 1)
        spread = np.sqrt(np.maximum(sq[..., 0] / np.maximum(wsum, 1) - (total[..., 0] / np.maximum(wsum, 1)) ** 2, 0))
        return float(spread[wsum > 1].max())
    assert worst_step(coeffs, 2) < 2.0 < worst_step(flat, 1)


def test_with_one_shape_for_all_the_multiples_sum_to_zero():
    # the same shape in every image: a multiple they all share is not seen, and is held at zero
    rng = np.random.default_rng(5)
    items, _ = _cutouts(rng, *_scene())
    shape = _axis_shape(20.0)
    multiples = np.array([30.0, -10.0, 20.0, 5.0])
    curved = [CutOut(it.image + Surface(k * shape[None, :], 2, EXTENT, np.zeros(1)).evaluate(
        it.image.shape[:2], offset=it.origin), it.weight, it.origin) for it, k in zip(items, multiples)]
    coeffs = match_surfaces(curved, (H, W), order=1, extent=EXTENT, shapes=[shape] * 4)
    found = np.array([c[0, 3:] @ shape[3:] / (shape[3:] @ shape[3:]) for c in coeffs])
    np.testing.assert_allclose(found, multiples - multiples.mean(), atol=1.0)   # of a spread of 40
    assert abs(found.sum()) < 1e-3
