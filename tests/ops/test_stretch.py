"""The preview's display stretch: black, sky and white points on planted images."""

from __future__ import annotations

import numpy as np

from zdask.ops.stretch import asinh_stretch


def _sky(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (1000.0 + 10.0 * rng.standard_normal(shape)).astype(np.float32)


def test_sky_lands_at_the_background_level_and_nan_is_black():
    img = _sky((400, 500))
    img[:20] = np.nan
    img[200:203, 100:400] = 50_000.0  # a bright streak: the white point, not the sky
    out = asinh_stretch(img, background_level=0.12)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.all(out[:20] == 0)
    assert abs(np.median(out[20:200]) - 0.12 * 255) <= 3
    assert np.all(out[200:203, 100:400] == 255)


def test_grey_sky_stays_neutral_whatever_the_channel_offsets():
    base = _sky((300, 300))
    rgb = np.stack([base + 500.0, base, base * 1.0 + 50.0], axis=-1)  # offsets per channel
    out = asinh_stretch(rgb).astype(int)
    med = np.median(out.reshape(-1, 3), axis=0)
    assert np.ptp(med) <= 1  # black points per channel: the sky renders grey


def test_levels_from_a_subsample_match_the_whole_image():
    img = _sky((1200, 1000, 3), seed=1)  # 1.2 M pixels: the levels come from a subsample
    img[500:520, :, 1] += 3000.0
    out = asinh_stretch(img).astype(int)
    whole = asinh_stretch(img[::2, ::2]).astype(int)  # 300 k pixels: every pixel in the levels
    assert np.abs(np.median(out[::2, ::2], axis=(0, 1)) - np.median(whole, axis=(0, 1))).max() <= 1
