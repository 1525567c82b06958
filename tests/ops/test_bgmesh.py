"""bgmesh: a frame's local background from its binned image, on planted truths."""

import numpy as np
import pytest

from zdask.ops.bgmesh import MIN_MESH, cells_across, mesh_background, sample_background
from zdask.ops.warp import bin_image

H, W = 540, 960
FACTOR = 8


def _positions(h=H, w=W):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return xx, yy


def _sky(xx, yy):
    """A horizon-like glow: a strong plane and a quadratic part (ADU)."""
    return 1000.0 + 0.15 * xx - 0.08 * yy + 2e-4 * (xx - 300.0) ** 2 + 1e-4 * (yy - 200.0) ** 2


def _stars(rng, shape, n=300):
    img = np.zeros(shape, np.float32)
    yy, xx = np.mgrid[-4:5, -4:5]
    psf = np.exp(-(xx ** 2 + yy ** 2) / (2 * 1.5 ** 2)).astype(np.float32)
    for _ in range(n):
        y, x = rng.integers(4, shape[0] - 5), rng.integers(4, shape[1] - 5)
        img[y - 4:y + 5, x - 4:x + 5] += rng.uniform(200, 20000) * psf
    return img


def test_a_constant_gives_exactly_that_constant_everywhere():
    binned = np.full((H // FACTOR, W // FACTOR, 3), 123.25, np.float32)
    binned[3:9, 10:30] = np.nan  # no data there: filled from the neighbours
    mesh = mesh_background(binned, FACTOR, 64)
    assert np.array_equal(mesh.values, np.full(mesh.values.shape, 123.25, np.float32))
    xx, yy = _positions()
    assert np.array_equal(mesh.evaluate(xx, yy), np.full((H, W, 3), 123.25, np.float32))


@pytest.mark.parametrize("mesh_px", [32, 64, 200])
def test_a_plane_is_kept_exactly_up_to_the_frame_edges(mesh_px):
    # The 3 x 3 median filter about the grid's plane, and the cubic through the cell centres
    # continued linearly past them, both keep a plane; a plain median filter moves the edge
    # cells, and OpenCV's bicubic (a = -0.75) waves by 5 % of a cell's step between centres.
    xx, yy = _positions()
    plane = (500.0 + 0.4 * xx - 0.25 * yy)[..., None]
    mesh = mesh_background(bin_image(plane, FACTOR), FACTOR, mesh_px)
    got = mesh.evaluate(xx, yy)
    assert np.abs(got - plane).max() < 0.01  # of 300 ADU across the frame


def test_a_smooth_sky_under_stars_and_noise_is_recovered_within_the_noise():
    rng = np.random.default_rng(7)
    xx, yy = _positions()
    sky = _sky(xx, yy)[..., None] * np.array([1.0, 0.8, 1.3], np.float32)
    noise = 25.0
    frame = sky + _stars(rng, (H, W))[..., None] + rng.normal(0, noise, (H, W, 3)).astype(np.float32)
    binned = bin_image(frame, FACTOR)
    mesh = mesh_background(binned, FACTOR, 64)
    assert mesh.values.shape == (H // 64, W // 64, 3)
    error = mesh.evaluate(xx, yy) - sky
    # Each cell's estimate comes from 64 binned samples of noise / 8 (the mode's spread is about
    # twice the mean's: ~0.8 ADU), the frame's edges are extrapolated: 1.6 ADU RMS measured, a
    # fifteenth of a pixel's noise. The stars (peaks up to 20000 ADU) must not lift the sky.
    assert np.sqrt((error ** 2).mean()) < 0.1 * noise
    assert np.abs(error.mean(axis=(0, 1))).max() < 0.02 * noise
    # What they would lift it by without the clipping: their mean flux, 20 times that bound.
    naive = np.nanmean(binned, axis=(0, 1)) - sky.mean(axis=(0, 1))
    assert naive.min() > 0.4 * noise


def test_a_bright_patch_smaller_than_a_cell_goes_to_the_neighbours_value():
    # A galaxy core filling one cell: the clipping cannot see it (all of the cell is bright), the
    # 3 x 3 median filter of the cell grid replaces it.
    binned = np.full((H // FACTOR, W // FACTOR, 1), 50.0, np.float32)
    binned[17:25, 40:48] += 400.0  # exactly cell (2, 5) of mesh 64 (8 binned pixels; grid origin 1, 0)
    mesh = mesh_background(binned, FACTOR, 64)
    assert mesh.origin == (8.0, 0.0)
    assert np.array_equal(mesh.values, np.full(mesh.values.shape, 50.0, np.float32))


def test_extended_emission_larger_than_the_mesh_is_taken_with_the_background():
    # The documented trade-off: a smooth blob 300 px across goes into a 64 px mesh's background.
    xx, yy = _positions()
    blob = 80.0 * np.exp(-((xx - 480) ** 2 + (yy - 270) ** 2) / (2 * 150.0 ** 2))
    mesh = mesh_background(bin_image((200.0 + blob)[..., None], FACTOR), FACTOR, 64)
    taken = mesh.evaluate(xx, yy)[..., 0] - 200.0
    assert taken[270, 480] > 0.85 * 80.0


def test_band_sampling_with_shifts_is_the_evaluation_at_the_shifted_positions():
    rng = np.random.default_rng(1)
    binned = (rng.normal(100, 3, (H // FACTOR, W // FACTOR, 3)) + np.arange(W // FACTOR)[None, :, None]).astype(
        np.float32)
    mesh = mesh_background(binned, FACTOR, 96)
    bx = rng.uniform(-5, 300, (20, 50)).astype(np.float32)
    by = rng.uniform(-5, 200, (20, 50)).astype(np.float32)
    got = sample_background(mesh.upsampled(), bx, by, x_shift=400, y_shift=250)
    expected = mesh.evaluate(bx + np.float32(400), by + np.float32(250))
    assert got.shape == (20, 50, 3)
    assert np.abs(got - expected).max() < 1e-3


def test_frames_smaller_than_a_cell_and_bad_arguments():
    small = np.full((3, 5), 7.0, np.float32)  # a 24 x 40 frame: one cell, the whole frame
    mesh = mesh_background(small, FACTOR, 64)
    assert mesh.values.shape == (1, 1, 1) and mesh.cell == (24.0, 40.0)
    xx, yy = _positions(24, 40)
    assert np.array_equal(mesh.evaluate(xx, yy), np.full((24, 40, 1), 7.0, np.float32))
    with pytest.raises(ValueError, match="mesh"):
        mesh_background(small, FACTOR, MIN_MESH - 1)
    with pytest.raises(ValueError, match="factor"):
        mesh_background(small, 0, 64)
    with pytest.raises(ValueError, match="binned"):
        mesh_background(np.zeros((2, 2, 2, 2)), FACTOR, 64)


def test_cells_across_counts_the_cells_the_background_gets():
    assert cells_across((135, 240), FACTOR, 64) == (16, 30) == mesh_background(
        np.zeros((135, 240, 1), np.float32), FACTOR, 64).values.shape[:2]
    # a 540 x 960 frame under a 512 px mesh: one cell across, its gradient cannot be followed
    assert cells_across((120, 67), FACTOR, 512) == (1, 1)
    assert cells_across((120, 67), FACTOR, 256) == (3, 2)
