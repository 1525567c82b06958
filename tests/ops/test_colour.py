import numpy as np
import pytest

from zdask.ops.colour import equalize_rgb_medians, tile_health


def _rgb(levels, shape=(64, 80), seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.normal(lv, 1.0, shape) for lv in levels], axis=2).astype(np.float32)


def test_medians_are_matched_to_the_median_of_medians():
    img = _rgb([100.0, 102.0, 98.0])
    img[0, 0, :] = np.nan
    before = img.copy()
    out, gains = equalize_rgb_medians(img)
    np.testing.assert_array_equal(img, before, strict=True)  # input untouched
    med = np.nanmedian(before.reshape(-1, 3), axis=0).astype(np.float64)
    target = np.median(med)
    np.testing.assert_allclose(gains, target / med, rtol=1e-12)
    assert gains.dtype == np.float64 and out.dtype == np.float32
    out_med = np.nanmedian(out.reshape(-1, 3), axis=0)
    np.testing.assert_allclose(out_med, target, rtol=1e-6)
    assert np.isnan(out[0, 0]).all()


def test_gains_are_clipped_to_range():
    img = _rgb([100.0, 130.0, 70.0])
    _, gains = equalize_rgb_medians(img, gain_range=(0.95, 1.05))
    med = np.median(img.reshape(-1, 3), axis=0)
    assert gains[0] == pytest.approx(np.median(med) / med[0], rel=1e-12)
    assert gains[1] == 0.95 and gains[2] == 1.05


def test_mask_restricts_the_medians():
    img = _rgb([100.0, 100.0, 100.0])
    img[:, :40, 0] += 50  # a red nebula in the left half
    mask = np.zeros(img.shape[:2], bool)
    mask[:, 40:] = True
    _, g_masked = equalize_rgb_medians(img, mask=mask, gain_range=(0.5, 2.0))
    _, g_all = equalize_rgb_medians(img, gain_range=(0.5, 2.0))
    assert abs(g_masked[0] - 1) < 0.01
    assert g_all[0] < 0.8


def test_mono_and_unusable_channels_are_left_alone():
    mono = _rgb([10.0])
    out, gains = equalize_rgb_medians(mono)
    np.testing.assert_array_equal(gains, [1.0])
    np.testing.assert_array_equal(out, mono)
    assert out is not mono
    img = _rgb([100.0, 104.0, 0.0])
    img[..., 2] = 0  # background-subtracted to zero: no meaningful gain
    img[..., 0][:10] = np.nan
    _, gains = equalize_rgb_medians(img, gain_range=(0.5, 2.0))
    assert gains[2] == 1.0 and gains[0] > 1 and gains[1] < 1
    allnan = np.full((8, 8, 3), np.nan, np.float32)
    out, gains = equalize_rgb_medians(allnan)
    np.testing.assert_array_equal(gains, [1.0, 1.0, 1.0])


def test_equalize_rejects_bad_parameters():
    with pytest.raises(ValueError, match="gain_range"):
        equalize_rgb_medians(_rgb([1, 2, 3]), gain_range=(1.1, 1.2))
    with pytest.raises(ValueError, match="mask"):
        equalize_rgb_medians(_rgb([1, 2, 3]), mask=np.ones((3, 3), bool))


def test_tile_health_verdicts():
    good = _rgb([100.0, 100.0, 100.0])
    good[:16] = np.nan  # a quarter missing
    h = tile_health(good)
    assert h.ok and h.reason is None
    assert h.finite_fraction == 0.75
    assert 4 < h.dynamic_range < 8  # ~5.2 sigma of unit noise

    assert tile_health(np.full((8, 8, 3), np.nan, np.float32)).reason == "empty"
    covered_nothing = tile_health(good, coverage=np.zeros(good.shape[:2], np.float32))
    assert not covered_nothing.ok and covered_nothing.reason == "empty"
    assert covered_nothing.finite_fraction == 0.0

    flat = np.full((32, 32, 3), 7.5, np.float32)
    hf = tile_health(flat)
    assert not hf.ok and hf.reason == "flat" and hf.dynamic_range == 0
    flat[3, 4] = 1e4  # a few odd pixels on a constant fill are still a broken tile
    assert tile_health(flat).reason == "flat"
    zeros = np.zeros((32, 32, 3), np.float32)
    assert tile_health(zeros).reason == "flat"
    # One channel with data is enough.
    flat[..., 1] = _rgb([50.0])[:32, :32, 0]
    assert tile_health(flat).ok


def test_tile_health_uses_coverage_and_mono():
    img = _rgb([10.0])[..., 0]
    cov = np.zeros(img.shape, np.float32)
    cov[:, :20] = 3
    cov[0, 0] = np.nan
    h = tile_health(img, cov)
    assert h.ok and h.finite_fraction == pytest.approx((64 * 20 - 1) / (64 * 80))


def test_large_images_are_sampled_by_rows_and_sparse_masks_still_found(monkeypatch):
    from zdask.ops import colour

    monkeypatch.setattr(colour, "MAX_SAMPLES", 1024)  # every 4th row of 64 x 64 is read
    rng = np.random.default_rng(3)
    img = rng.normal(100.0, 1.0, (64, 64, 3)).astype(np.float32)
    img[..., 0] *= 1.02
    # A gradient along the rows: a sample of some rows only would be biased; a stride is not.
    img += np.linspace(-5, 5, 64, dtype=np.float32)[:, None, None]
    _, gains = equalize_rgb_medians(img, gain_range=(0.5, 2))
    full = np.median(img.reshape(-1, 3), axis=0)
    assert gains == pytest.approx(full[1] / full, rel=0.01)
    # Kept pixels only on rows the stride skips: the medians come from all rows instead.
    mask = np.zeros((64, 64), bool)
    mask[1::2] = True
    _, masked = equalize_rgb_medians(img, mask=mask, gain_range=(0.5, 2))
    assert masked[0] == pytest.approx(gains[0], rel=0.01) and masked[0] < 0.99
    health = tile_health(img, coverage=mask.astype(np.float32))
    assert health.ok and health.finite_fraction == pytest.approx(0.5)
