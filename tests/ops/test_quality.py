"""The survey scores (zdask.ops.quality.survey_scores) on planted truths: a mosaic made from a
known truth, noise of known σ, and one planted defect at a time."""

import numpy as np
import pytest

from zdask.ops.quality import block_median_rms, polygon_mask, survey_scores

H, W = 256, 640
SIGMA = 2.0                 # the mosaic's per-pixel noise
GAIN, OFFSET = 1.7, 100.0   # the mosaic's units and sky level against the truth's
# Median of a 32 × 32 block of white noise: σ · sqrt(π/2) / 32 = 0.039 σ; the RMS of 160 such
# medians stays below 0.06 σ (more than 5 standard errors of that RMS above it).
NOISE_FLOOR = 0.06


@pytest.fixture(scope="module")
def truth():
    """Stars (Gaussian, 1.2 px) and a broad extended object, in truth units."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    stars = np.zeros((H, W), np.float32)
    for x, y, flux in zip(rng.uniform(5, W - 5, 250), rng.uniform(5, H - 5, 250), rng.uniform(50, 3000, 250)):
        x0, y0 = int(x), int(y)
        sl = np.s_[max(y0 - 8, 0):y0 + 9, max(x0 - 8, 0):x0 + 9]
        stars[sl] += flux / (2 * np.pi * 1.44) * np.exp(-((xx[sl] - x) ** 2 + (yy[sl] - y) ** 2) / (2 * 1.44))
    extended = (12.0 * np.exp(-((xx - 300) ** 2 / (2 * 120.0 ** 2) + (yy - 130) ** 2 / (2 * 70.0 ** 2)))).astype(np.float32)
    return stars, extended


def mosaic_of(stars, extended, kept=1.0, plant=0.0, seed=2):
    noise = np.random.default_rng(seed).normal(0, SIGMA, stars.shape)
    return (GAIN * (stars + kept * extended) + OFFSET + noise + plant).astype(np.float32)


def score(image, stars, extended, panels=None):
    covered = np.ones(image.shape, bool)
    return survey_scores(image, stars, extended, covered, np.zeros(image.shape, bool), panels)


def bowl(rms_sigma):
    """A bowl, low in the middle, of RMS ``rms_sigma`` σ over the image and zero mean."""
    yy, xx = np.mgrid[0:H, 0:W]
    u, v = (xx + 0.5) / W * 2 - 1, (yy + 0.5) / H * 2 - 1
    shape = u ** 2 + v ** 2 - 2 / 3
    return rms_sigma * SIGMA * shape / shape.std()


def test_truth_plus_noise_leaves_only_the_noise(truth):
    stars, extended = truth
    s = score(mosaic_of(stars, extended), stars, extended)
    assert s["noise"] == pytest.approx(SIGMA, rel=0.03)   # σ is the mosaic's own noise
    assert s["fit"]["star_gain"] == pytest.approx(GAIN, rel=0.002)
    assert s["large_scale"] < NOISE_FLOOR, s
    assert s["residual"] == pytest.approx(1.0, abs=0.03)
    assert s["extended_kept"] == pytest.approx(1.0, abs=0.01)


def test_a_planted_bowl_reads_as_its_amplitude(truth):
    # Stars only: a bowl that correlates with an extended object also shifts the fitted offset
    # (it is then read as larger, and as extended light lost or gained).
    stars, _ = truth
    none = np.zeros_like(stars)
    for amplitude in (0.5, 2.0):
        s = score(mosaic_of(stars, none, plant=bowl(amplitude)), stars, none)
        # block medians sample the bowl at 160 points: its RMS there within 5 %
        assert s["large_scale"] == pytest.approx(amplitude, rel=0.05, abs=NOISE_FLOOR), s


def test_halved_extended_light_reads_as_half_kept(truth):
    stars, extended = truth
    assert score(mosaic_of(stars, extended, kept=0.5), stars, extended)["extended_kept"] == pytest.approx(0.5, abs=0.01)
    # a sky model that took out more than the object: negative
    assert score(mosaic_of(stars, extended, kept=-0.3), stars, extended)["extended_kept"] == pytest.approx(-0.3, abs=0.01)


def test_no_extended_light_above_the_noise_gives_no_figure(truth):
    stars, _ = truth
    faint = np.full(stars.shape, 0.2 * SIGMA / GAIN, np.float32)  # a flat glow well below σ
    s = score(mosaic_of(stars, faint), stars, faint)
    assert s["extended_kept"] is None and "exceeds σ on 0.0%" in s["extended_note"]


def three_panels():
    """Panels 0, 1, 2 side by side, overlapping 64 px: 0 | 0+1 | 1 | 1+2 | 2."""
    masks = {}
    for p, x0 in enumerate((0, 192, 384)):
        m = np.zeros((H, W), bool)
        m[:, x0:x0 + 256] = True
        masks[p] = m
    return masks


def test_a_step_between_two_panels_shows_at_that_boundary_only(truth):
    stars, extended = truth
    step = 2.0
    # panel 2 sits 2 σ above panels 0 and 1, blended linearly across the 1+2 overlap (a seam)
    x = np.arange(W)
    plant = np.broadcast_to(step * SIGMA * np.clip((x - 384) / 64, 0, 1), (H, W))
    s = score(mosaic_of(stars, extended, plant=plant), stars, extended, three_panels())["seams"]
    boundaries = {tuple(b["panels"]): b for b in s["boundaries"]}
    assert set(boundaries) == {(0, 1), (1, 2)}
    assert boundaries[(1, 2)]["step"] == pytest.approx(step, abs=0.1)
    assert boundaries[(0, 1)]["step"] == pytest.approx(0.0, abs=0.1)
    for b in boundaries.values():
        assert b["excess"] == pytest.approx(0.0, abs=0.1)  # each overlap sits between its panels
    # region medians: 0, 0, step (own regions), 0 and step / 2 (overlaps) less their mean: std 0.4 step
    assert s["std"] == pytest.approx(0.4 * step, abs=0.1)
    clean = score(mosaic_of(stars, extended), stars, extended, three_panels())["seams"]
    assert clean["std"] < 0.1 and clean["max_step"] < 0.1


def test_block_medians_ignore_masked_pixels_and_sparse_blocks():
    image = np.zeros((64, 96), np.float32)
    image[:32, :32] = 5.0
    mask = np.ones(image.shape, bool)
    assert block_median_rms(image, mask) == pytest.approx(np.sqrt(25 / 6))
    mask[:32, :32] = False  # the bright block's pixels are not background: left out
    assert block_median_rms(image, mask) == 0.0
    mask[:32, :32] = np.random.default_rng(0).random((32, 32)) < 0.2  # too few pixels to count
    assert block_median_rms(image, mask) == 0.0


def test_polygon_mask_fills_the_pixels_the_polygon_touches():
    mask = polygon_mask((20, 30), np.array([-0.5, 9.5, 9.5, -0.5]), np.array([-0.5, -0.5, 4.5, 4.5]))
    # the 10 × 5 pixels inside, and the row and column the right and bottom edges touch
    assert mask[:6, :11].all() and mask.sum() == 66
