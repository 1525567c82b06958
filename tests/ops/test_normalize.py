"""Normalisation coefficients and frame weights from per-frame statistics."""

from __future__ import annotations

import numpy as np
import pytest

from zdask.ops.framestats import FrameStats, frame_statistics
from zdask.ops.normalize import frame_weights, normalization_coefficients, reference_frame
from zdask.ops.stacking import kappa_sigma, mean


def stats(bg, noise, p25=None, p90=None, n=1000):
    bg = np.atleast_1d(np.asarray(bg, float))
    noise = np.broadcast_to(np.asarray(noise, float), bg.shape)
    p25 = bg - 0.67 * noise if p25 is None else np.asarray(p25, float)
    p90 = bg + 1.28 * noise if p90 is None else np.asarray(p90, float)
    return FrameStats(background=bg, noise=noise, p25=p25, p90=p90, n_valid=np.full(bg.shape, n))


STATS = [stats([100.0, 50.0], 10.0), stats([120.0, 40.0], 5.0), stats([90.0, 60.0], 20.0)]


def test_shapes_dtypes_and_none():
    s, o = normalization_coefficients(STATS, "none")
    assert s.shape == o.shape == (3, 2) and s.dtype == o.dtype == np.float32
    assert (s == 1).all() and (o == 0).all()
    w = frame_weights(STATS, "none")
    assert w.shape == (3, 2) and w.dtype == np.float32 and (w == 1).all()


def test_reference_is_lowest_noise_by_default():
    assert reference_frame(STATS) == 1
    s, o = normalization_coefficients(STATS, "additive")
    np.testing.assert_allclose(o, [[20.0, -10.0], [0.0, 0.0], [30.0, -20.0]])
    assert (s == 1).all()
    s, o = normalization_coefficients(STATS, "additive", reference=0)
    np.testing.assert_allclose(o[1], [-20.0, 10.0])


def test_multiplicative_and_linear_fit():
    s, o = normalization_coefficients(STATS, "multiplicative")
    np.testing.assert_allclose(s, [[1.2, 0.8], [1.0, 1.0], [120 / 90, 40 / 60]], rtol=1e-6)
    assert (o == 0).all()
    s, o = normalization_coefficients(STATS, "linear_fit")
    p25 = np.stack([st.p25 for st in STATS])
    p90 = np.stack([st.p90 for st in STATS])
    # the frame's P25 / P90 land on the reference's
    np.testing.assert_allclose(p25 * s + o, np.broadcast_to(p25[1], p25.shape), rtol=1e-5)
    np.testing.assert_allclose(p90 * s + o, np.broadcast_to(p90[1], p90.shape), rtol=1e-5)


def test_invalid_mode_names_allowed_values():
    with pytest.raises(ValueError, match="additive.*multiplicative.*linear_fit"):
        normalization_coefficients(STATS, "bogus")
    with pytest.raises(ValueError, match="noise_variance"):
        frame_weights(STATS, "bogus")
    with pytest.raises(ValueError, match="exptimes"):
        frame_weights(STATS, "exposure")
    with pytest.raises(ValueError):
        normalization_coefficients(STATS, "additive", reference=5)


def test_guards_never_nan():
    bad = [stats([100.0], 10.0), stats([np.nan], np.nan, [np.nan], [np.nan], n=0),
           stats([0.0], 0.0, [5.0], [5.0]), stats([-3.0], 1.0)]
    for mode in ("none", "additive", "multiplicative", "linear_fit"):
        s, o = normalization_coefficients(bad, mode)
        assert np.isfinite(s).all() and np.isfinite(o).all(), mode
    s, o = normalization_coefficients(bad, "multiplicative")
    assert s[1, 0] == 1 and s[2, 0] == 1 and s[3, 0] == 1
    w = frame_weights(bad, "noise_variance")
    assert np.isfinite(w).all()
    np.testing.assert_allclose(w[:, 0], [0.01, 0.0, 0.0, 1.0])
    w = frame_weights([stats([1.0], np.nan)] * 2, "noise_variance")  # no usable frame: all 1
    assert (w == 1).all()


def test_weights():
    w = frame_weights(STATS, "noise_variance")
    np.testing.assert_allclose(w, [[0.25, 0.25], [1.0, 1.0], [1 / 16, 1 / 16]])
    w = frame_weights(STATS, "exposure", exptimes=[10.0, 20.0, None])
    np.testing.assert_allclose(w, [[0.5, 0.5], [1.0, 1.0], [0.0, 0.0]])
    with pytest.raises(ValueError):
        frame_weights(STATS, "exposure", exptimes=[1.0])


def test_normalised_stack_matches_the_reference_frame():
    """Frames differing by gain and offset: after linear_fit normalisation they stack onto the reference."""
    rng = np.random.default_rng(0)
    sky = rng.normal(1000.0, 10.0, (120, 160, 3)).astype(np.float32)
    gains = np.array([1.0, 1.3, 0.8, 1.1, 0.9])
    offsets = np.array([0.0, -200.0, 150.0, 30.0, -60.0])
    frames = np.stack([sky * np.float32(g) + np.float32(o) for g, o in zip(gains, offsets)])
    st = [frame_statistics(f) for f in frames]
    s, o = normalization_coefficients(st, "linear_fit", reference=0)
    np.testing.assert_allclose(s[:, 0], 1.0 / gains, rtol=2e-3)
    r = kappa_sigma(frames, scale=s, offset=o)
    np.testing.assert_allclose(r.image, sky, atol=0.5)
    w = frame_weights(st, "noise_variance")
    assert mean(frames, weights=w, scale=s, offset=o).image.shape == sky.shape
