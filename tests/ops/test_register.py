"""Registration kernels: similarity fits, astroalign matching, offset vote, phase correlation."""

from __future__ import annotations

import numpy as np
import pytest

from zdask.ops.register import (
    apply_transform,
    as_matrix,
    match_by_offset_vote,
    match_stars,
    max_displacement,
    phase_correlation_shift,
    refine_matches,
    residuals,
    similarity_from_matches,
    similarity_parameters,
    transform_agrees,
    translation,
)


def _similarity(scale, rot_deg, tx, ty):
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty], [0, 0, 1.0]])


def _stars(n=80, seed=0, size=(600, 400)):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, 2)) * size


def test_similarity_from_matches_recovers_the_transform():
    src = _stars()
    t = _similarity(1.01, 12.0, 35.5, -20.25)
    fitted = similarity_from_matches(src, apply_transform(t, src))
    assert np.allclose(fitted, t, atol=1e-9)
    scale, rot, tx, ty = similarity_parameters(fitted)
    assert scale == pytest.approx(1.01) and rot == pytest.approx(12.0)
    assert (tx, ty) == pytest.approx((35.5, -20.25))
    rng = np.random.default_rng(1)
    noisy = apply_transform(t, src) + rng.normal(0, 0.1, src.shape)
    fitted = similarity_from_matches(src, noisy)
    assert max_displacement(np.linalg.inv(t) @ fitted, (400, 600)) < 0.1
    assert np.median(residuals(fitted, src, noisy)) < 0.15
    with pytest.raises(ValueError):
        similarity_from_matches(src[:1], src[:1])


def test_transform_agrees_measures_corners_and_centre():
    shape = (1080, 1920)
    assert transform_agrees(np.eye(3), shape, 0.5)
    assert transform_agrees(translation(6.0, -7.0), shape, 10.0)
    assert not transform_agrees(translation(8.0, -7.0), shape, 10.0)
    # 1° about the centre moves the corners by ~19 px although the centre stays put
    c = np.array([959.5, 539.5])
    rot = translation(*c) @ _similarity(1.0, 1.0, 0, 0) @ translation(*-c)
    assert max_displacement(rot, shape) == pytest.approx(np.radians(1) * np.hypot(*c), rel=0.01)
    assert not transform_agrees(rot, shape, 10.0)
    assert not transform_agrees(np.full((3, 3), np.nan), shape, 10.0)
    assert as_matrix(type("T", (), {"params": np.eye(3)})()).shape == (3, 3)


def test_match_stars_finds_the_transform_despite_extra_and_missing_stars():
    src = _stars(120)
    t = _similarity(0.995, -3.0, 40.0, 25.0)
    rng = np.random.default_rng(3)
    dst = apply_transform(t, src) + rng.normal(0, 0.05, src.shape)
    dst = np.concatenate([dst[10:], rng.uniform(0, 600, (15, 2))])  # 10 lost, 15 spurious
    found = match_stars(src, dst)
    assert found is not None
    m, si, di = found
    assert len(si) == len(di) >= 20
    assert max_displacement(np.linalg.inv(t) @ m, (400, 600)) < 0.5
    refined, si, di = refine_matches(src, dst, m)
    assert len(si) >= 100
    assert max_displacement(np.linalg.inv(t) @ refined, (400, 600)) < 0.05


def test_match_stars_returns_none_when_there_is_nothing_to_match():
    assert match_stars(_stars(2), _stars(40)) is None
    assert match_stars(np.zeros((0, 2)), _stars(40)) is None


def test_offset_vote_finds_a_small_shift_among_fixed_pattern_decoys():
    # Stars moved by (3.2, -2.4) px; 200 "hot pixels" sit at the same positions in both lists
    # shifted by a 25 px dither: only the stars' displacement is within max_shift.
    rng = np.random.default_rng(4)
    stars = _stars(60, seed=5)
    hot = rng.uniform(0, 600, (200, 2))
    src = np.concatenate([hot, stars])
    dst = np.concatenate([hot + (25.0, 5.0), stars + (3.2, -2.4)])
    found = match_by_offset_vote(src, dst, max_shift=10.0)
    assert found is not None
    m, votes = found
    assert votes >= 55 and np.allclose(m[:2, 2], (3.2, -2.4), atol=0.6)
    refined, si, _ = refine_matches(src, dst, m)
    assert np.allclose(refined[:2, 2], (3.2, -2.4), atol=0.01) and len(si) >= 58
    assert match_by_offset_vote(src[:2], dst[:2] + 50, max_shift=10.0) is None


def _blobs(shape, xy, shift=(0.0, 0.0), seed=0, noise=10.0):
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    rng = np.random.default_rng(seed)
    image = np.full(shape, 500.0) + rng.normal(0, noise, shape)
    for x, y in xy:
        image += 3000 * np.exp(-((xx - x - shift[0]) ** 2 + (yy - y - shift[1]) ** 2) / (2 * 1.2**2))
    return image.astype(np.float32)


@pytest.mark.parametrize("n_stars", [3, 40])
def test_phase_correlation_sign_and_accuracy(n_stars):
    shape = (300, 240)
    xy = np.random.default_rng(n_stars).uniform(30, [210, 270], (n_stars, 2))
    reference = _blobs(shape, xy, seed=1)
    moving = _blobs(shape, xy, shift=(4.0, -2.5), seed=2)
    moving[5, 7] += 30000  # a hot pixel does not matter
    dx, dy, response = phase_correlation_shift(reference, moving)
    assert (dx, dy) == pytest.approx((4.0, -2.5), abs=0.2)
    assert response > 0.5


def test_phase_correlation_of_unrelated_images_has_a_low_response():
    shape = (300, 240)
    rng = np.random.default_rng(7)
    reference = _blobs(shape, rng.uniform(30, [210, 270], (5, 2)), seed=1)
    noise = rng.normal(500, 10, shape).astype(np.float32)
    assert phase_correlation_shift(reference, noise)[2] < 0.3
    flat = np.full(shape, 3.0, np.float32)
    assert phase_correlation_shift(reference, flat) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        phase_correlation_shift(reference, reference[:10])


def test_phase_correlation_ignores_pixels_missing_in_either_image():
    shape = (300, 240)
    xy = np.random.default_rng(9).uniform(30, [210, 270], (30, 2))
    reference = _blobs(shape, xy, seed=1)
    moving = _blobs(shape, xy, shift=(-3.0, 1.5), seed=2)
    reference[:, :60] = np.nan
    dx, dy, response = phase_correlation_shift(reference, moving)
    assert (dx, dy) == pytest.approx((-3.0, 1.5), abs=0.2) and response > 0.5
