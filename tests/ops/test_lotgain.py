"""Gain match of SDS mega-tiles: planted transparencies recovered exactly, degenerate mega-tiles
give gain 1 (never NaN or inf), and why the gain comes from sources rather than sky medians."""

import numpy as np
import pytest

from zdask.ops.lotgain import match_gain, median_gain, overlap_mask, reference_lot

SHAPE = (96, 128)


def _signal(seed: int = 0) -> np.ndarray:
    """A noiseless sky signal (H, W, 3): stars on a faint extended glow, positive everywhere."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]].astype(np.float64)
    image = 20.0 + 10.0 * np.exp(-((xx - 60) ** 2 + (yy - 40) ** 2) / 800.0)
    for _ in range(60):
        x0, y0, flux = rng.uniform(4, SHAPE[1] - 4), rng.uniform(4, SHAPE[0] - 4), rng.uniform(200, 3000)
        image = image + flux / (2 * np.pi * 1.5 ** 2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.5 ** 2))
    return (image[..., None] * np.array([0.9, 1.0, 1.1])).astype(np.float32)


def _coverage(x0: int = 0, x1: int = SHAPE[1], frames: float = 8.0) -> np.ndarray:
    cov = np.zeros(SHAPE, dtype=np.float32)
    cov[:, x0:x1] = frames
    return cov


@pytest.mark.parametrize("method", ["sources", "medians"])
def test_planted_transparency_is_recovered_exactly_on_noiseless_mega_tiles(method):
    # Transparencies that are powers of two scale float32 values exactly, so "exactly" can be
    # asserted bit for bit: the gain must be t_ref / t.
    signal = _signal()
    transparency = [1.0, 0.5, 2.0, 0.25]
    coverages = [_coverage(frames=f) for f in (8.0, 10.0, 7.0, 9.0)]
    ref = reference_lot([c.sum() for c in coverages])
    assert ref == 1
    tiles = [(t * signal).astype(np.float32) for t in transparency]
    for k, (tile, cov) in enumerate(zip(tiles, coverages)):
        got = match_gain(tiles[ref], coverages[ref], 10.0, tile, cov, float(cov.max()), method=method)
        expected = np.float32(transparency[ref] / transparency[k])
        np.testing.assert_array_equal(got.gain, np.full(3, expected))
        np.testing.assert_array_equal(got.offset, np.zeros(3, np.float32))
        assert got.fitted.all() and got.reason is None and got.gain.dtype == np.float32
        # After the correction the mega-tile is the reference's level exactly.
        np.testing.assert_array_equal(tile * got.gain + got.offset, tiles[ref])


def test_source_gains_ignore_the_sky_glow_that_fools_sky_medians():
    """Transparency scales the signal, not the sky: lots under brighter skies get the right gain
    from sources (and the offset that matches their sky), where the median ratio reads the sky."""
    signal = _signal(1)
    rng = np.random.default_rng(2)
    transparency = rng.uniform(0.6, 1.0, 5)
    skies = rng.uniform(300.0, 600.0, 5)
    tiles = [(t * signal + s).astype(np.float32) for t, s in zip(transparency, skies)]
    cov = _coverage()
    for k in range(1, 5):
        by_sources = match_gain(tiles[0], cov, 8.0, tiles[k], cov, 8.0, method="sources")
        by_medians = match_gain(tiles[0], cov, 8.0, tiles[k], cov, 8.0, method="medians")
        truth = transparency[0] / transparency[k]
        np.testing.assert_allclose(by_sources.gain, truth, rtol=1e-5)
        np.testing.assert_allclose(by_sources.offset, skies[0] - truth * skies[k], rtol=1e-4, atol=1e-2)
        assert np.all(np.abs(by_medians.gain / truth - 1) > 0.02)  # the sky ratio, not the gain


def test_only_pixels_both_cover_above_one_percent_of_their_peak_count():
    signal = _signal()
    ref_cov, cov = _coverage(0, 80, 100.0), _coverage(40, 128, 10.0)
    ref_cov[:, 70:80] = 0.5          # below 1 % of the reference's peak (100): left out
    mask = overlap_mask(ref_cov, cov, 100.0, 10.0)
    expected = np.zeros(SHAPE, bool)
    expected[:, 40:70] = True
    np.testing.assert_array_equal(mask, expected)
    # A target that differs where the reference barely covers it does not move the gain.
    target = (0.5 * signal).astype(np.float32)
    target[:, 70:80] *= 3
    got = match_gain(signal, ref_cov, 100.0, target, cov, 10.0, method="medians")
    np.testing.assert_array_equal(got.gain, np.full(3, 2.0, np.float32))
    assert got.n_pixels == 30 * SHAPE[0]


@pytest.mark.parametrize("method", ["sources", "medians"])
@pytest.mark.parametrize("case", ["all_nan", "constant", "zero", "no_overlap", "empty_peak"])
def test_degenerate_mega_tiles_give_gain_one_never_nan_or_inf(method, case):
    signal = _signal()
    ref_cov, cov, peak = _coverage(), _coverage(), 8.0
    target = (0.5 * signal).astype(np.float32)
    if case == "all_nan":
        target[:] = np.nan
    elif case == "constant":
        target[:] = 0.0 if method == "medians" else 42.0  # (a constant > 0 is a valid median ratio)
    elif case == "zero":
        target[:] = 0.0
    elif case == "no_overlap":
        ref_cov, cov = _coverage(0, 60), _coverage(60, 128)
    elif case == "empty_peak":
        peak = 0.0
    got = match_gain(signal, ref_cov, 8.0, target, cov, peak, method=method)
    np.testing.assert_array_equal(got.gain, np.ones(3, np.float32))
    assert not got.fitted.any() and got.reason
    assert np.isfinite(got.gain).all() and np.isfinite(got.offset).all()
    assert got.gain.dtype == np.float32 and got.offset.dtype == np.float32


def test_median_gain_falls_back_per_channel():
    ref = np.ones((4, 4, 3), np.float32)
    target = np.ones((4, 4, 3), np.float32) * np.array([0.5, 0.0, -1.0], np.float32)
    gain, fitted = median_gain(ref, target, np.ones((4, 4), bool))
    np.testing.assert_array_equal(gain, np.array([2.0, 1.0, 1.0], np.float32))
    np.testing.assert_array_equal(fitted, [True, False, False])


def test_reference_is_the_largest_summed_coverage_first_of_equals():
    assert reference_lot([3.0, 7.0, 7.0, np.nan]) == 1
    with pytest.raises(ValueError, match="no reference"):
        reference_lot([0.0, 0.0])
    with pytest.raises(ValueError, match="no reference"):
        reference_lot([])
    with pytest.raises(ValueError, match="unknown gain method"):
        match_gain(np.ones((2, 2, 1)), np.ones((2, 2)), 1.0, np.ones((2, 2, 1)), np.ones((2, 2)), 1.0,
                   method="mode")
