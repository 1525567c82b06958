"""Photometric scaling between grid cells: planted gains and offsets recovered exactly (noiseless),
degenerate cells never NaN/inf, the reference skips unhealthy cells, coverage masks."""

from __future__ import annotations

import numpy as np
import pytest

from zdask.ops.cellscale import (
    apply_cell_scaling, cell_health, cell_stats, overlap_mask, reference_cell, scale_cells,
)


def _sky(h: int, w: int, seed: int) -> np.ndarray:
    """A noiseless RGB sky: a gradient, a broad glow and many stars."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    sky = 300 + 0.4 * xx - 0.2 * yy + 80 * np.exp(-((xx - w / 3) ** 2 + (yy - h / 2) ** 2) / (2 * 30.0 ** 2))
    image = np.repeat(sky[..., None], 3, axis=-1) * np.array([1.1, 1.0, 0.8])
    stars = h * w // 60
    for x, y, flux in zip(rng.uniform(0, w, stars), rng.uniform(0, h, stars), rng.uniform(200, 3000, stars)):
        star = flux * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.3 ** 2))
        image += star[..., None] * np.array([0.9, 1.0, 1.2])
    return image


def _cells(sky: np.ndarray, rows: int, cols: int, side: int, step: int):
    windows = [(r * step, c * step) for r in range(rows) for c in range(cols)]
    return windows, [sky[y:y + side, x:x + side] for y, x in windows]


@pytest.mark.parametrize("rows, cols", [(2, 2), (3, 4), (5, 6)])
def test_planted_gains_and_offsets_are_recovered_exactly(rows, cols):
    side, step = 40, 26
    sky = _sky(step * (rows - 1) + side, step * (cols - 1) + side, seed=rows * 10 + cols)
    origins, truth = _cells(sky, rows, cols, side, step)
    n = len(truth)
    rng = np.random.default_rng(n)
    a = rng.uniform(0.75, 1.3, (n, 3))
    b = rng.uniform(-150, 150, (n, 3))
    cells = [(a[k] * t + b[k]).astype(np.float32) for k, t in enumerate(truth)]
    coverage = [np.full((side, side), 5.0, np.float32) for _ in range(n)]
    reference = 2
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    result = scale_cells(cells, coverage, origins, [True] * n, pairs, reference=reference, erosion_px=0)
    assert result.reference == reference and result.disabled == ()
    np.testing.assert_allclose(result.gains, a[reference] / a, rtol=2e-5)
    np.testing.assert_allclose(result.offsets, b[reference] - a[reference] / a * b, atol=0.02)
    for k in range(n):
        corrected = apply_cell_scaling(cells[k], result.gains[k], result.offsets[k])
        np.testing.assert_allclose(corrected, a[reference] * truth[k] + b[reference], rtol=1e-5, atol=0.05)


def test_degenerate_cells_never_give_nan_or_inf_and_are_logged():
    side, step = 40, 26
    sky = _sky(side, step + side, seed=1)
    origins, truth = _cells(sky, 1, 2, side, step)
    cells = [truth[0].astype(np.float32), (1.2 * truth[1] + 7).astype(np.float32),
             np.full((side, side, 3), np.nan, np.float32),        # all NaN
             np.full((side, side, 3), 42.0, np.float32),          # constant
             truth[0].astype(np.float32)]                          # healthy but far away: no overlap
    origins = origins + [(0, 10), (0, 20), (500, 500)]
    coverage = [np.full((side, side), 3.0, np.float32) for _ in cells]
    health = [cell_health(c, cov) for c, cov in zip(cells, coverage)]
    assert [h.ok for h in health] == [True, True, False, False, True]
    assert [h.reason for h in health[2:4]] == ["empty", "flat"]
    lines = []
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    result = scale_cells(cells, coverage, origins, [h.ok for h in health], pairs, reference=0, say=lines.append)
    assert np.isfinite(result.gains).all() and np.isfinite(result.offsets).all()
    np.testing.assert_array_equal(result.gains[2:], 1.0)
    np.testing.assert_array_equal(result.offsets[2:], 0.0)
    assert result.disabled == (4,)
    assert "cell 4: no valid pixels, scaling disabled (gain 1, offset 0)" in lines
    assert any(line.startswith("cells 0 & 1: overlap mask ") for line in lines)
    np.testing.assert_allclose(result.gains[1], 1 / 1.2, rtol=1e-5)
    # cells without any healthy partner at all: still finite
    alone = scale_cells(cells[2:4], coverage[2:4], origins[2:4], [False, False], [(0, 1)], reference=None)
    assert np.isfinite(alone.gains).all() and np.isfinite(alone.offsets).all()


def test_the_reference_is_the_first_healthy_cell():
    nan = np.full((8, 8, 3), np.nan, np.float32)
    flat = np.full((8, 8, 3), 5.0, np.float32)
    good = np.arange(8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)
    cover = np.ones((8, 8), np.float32)
    health = [cell_health(nan, cover), cell_health(flat, cover), cell_health(good, np.zeros((8, 8))),
              cell_health(good, cover), cell_health(good, cover)]
    assert reference_cell(health) == (3, [(0, "empty"), (1, "flat"), (2, "empty")])
    assert reference_cell(health[:3])[0] is None


def test_the_overlap_mask_comes_from_coverage_eroded_and_finite():
    cov_a = np.full((10, 12), 8.0)
    cov_b = np.full((10, 12), 8.0)
    cov_b[:, :3] = 2.0                       # thin coverage on the left: below half the overlap's peak
    image = np.ones((10, 12, 3), np.float32)
    image_b = image.copy()
    image_b[5, 8] = np.nan
    mask = overlap_mask(image, cov_a, image_b, cov_b, min_fraction=0.5, erosion_px=0)
    expected = np.ones((10, 12), bool)
    expected[:, :3] = False
    expected[5, 8] = False
    np.testing.assert_array_equal(mask, expected)
    eroded = overlap_mask(image, cov_a, image_b, cov_b, min_fraction=0.5, erosion_px=1)
    assert not eroded[:, 3].any() and not any(eroded[y, x] for y, x in ((5, 8), (4, 8), (6, 8), (5, 7), (5, 9)))
    assert eroded[0, 11] and eroded[9, 5]   # the window's own border is not an edge


def test_scaling_makes_a_new_float32_array_and_stats_skip_invalid():
    image = np.arange(12, dtype=np.float64).reshape(2, 2, 3)
    out = apply_cell_scaling(image, [2, 1, 1], [0, 1, 0])
    assert out.dtype == np.float32 and not np.shares_memory(out, image)
    assert image[0, 0, 0] == 0 and out[1, 1, 0] == 18 and out[0, 0, 1] == 2
    stats = cell_stats(out, np.array([[True, False], [True, False]]))
    assert stats["min"][0] == 0 and stats["max"][0] == 12 and stats["median"][2] == 5
    assert cell_stats(out, np.zeros((2, 2), bool))["median"] == [None, None, None]
