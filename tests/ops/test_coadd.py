"""The fused coadd kernel gives, bit for bit, what the NumPy expressions of the coadd gave."""

import numpy as np
import pytest

from zdask.ops.coadd import accumulate_tile, weighted_mean


def _numpy_coadd(tiles, shape, channels):
    """The coadd as NumPy expressions (the mosaic's code before the kernel)."""
    h, w = shape
    total = np.zeros((h, w, channels), dtype=np.float64)
    weight = np.zeros((h, w, channels), dtype=np.float64)
    coverage = np.zeros((h, w), dtype=np.float32)
    for image, aux, gain, offset, surface in tiles:
        aux = np.nan_to_num(aux)
        if len(gain):
            image = image * np.asarray(gain, dtype=np.float32) + np.asarray(offset, dtype=np.float32)
        if surface is not None:
            image = image.copy()
            image -= surface
        good = np.isfinite(image) & (aux[..., :1] > 0)
        wts = np.where(good, aux[..., :1], 0.0)
        total += np.where(good, image, 0.0) * wts
        weight += wts
        coverage += aux[..., 1]
    out = np.empty((h, w, channels + 1), dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[..., :channels] = np.where(weight > 0, total / np.maximum(weight, 1e-30), np.nan)
    out[..., channels] = coverage
    return out


def _tiles(rng, shape, channels, n):
    h, w = shape
    tiles = []
    for k in range(n):
        image = rng.normal(1000.0, 300.0, (h, w, channels)).astype(np.float32)
        image[rng.random((h, w, channels)) < 0.05] = np.nan       # rejected samples
        image[:, : w // (k + 2)] = np.nan                            # outside the tile
        image[0, 0, 0] = np.inf
        aux = rng.uniform(0.0, 40.0, (h, w, 2)).astype(np.float32)
        aux[rng.random((h, w)) < 0.1, 0] = 0.0                       # zero weight
        aux[:, : w // (k + 2)] = np.nan                              # outside the footprint
        aux[1, 1, 0] = -3.0                                          # negative weight: not used
        gain, offset = ((), ()) if k == 0 else (rng.uniform(0.9, 1.1, channels), rng.normal(0, 20, channels))
        surface = None if k == 1 else rng.normal(0, 5, (h, w, channels)).astype(np.float32)
        tiles.append((image, aux, tuple(float(v) for v in gain), tuple(float(v) for v in offset), surface))
    return tiles


@pytest.mark.parametrize("channels", [1, 3])
def test_kernel_is_bit_identical_to_the_numpy_coadd(channels):
    rng = np.random.default_rng(7)
    shape = (37, 53)
    tiles = _tiles(rng, shape, channels, 4)
    expected = _numpy_coadd(tiles, shape, channels)
    total = np.zeros(shape + (channels,), np.float64)
    weight = np.zeros(shape + (channels,), np.float64)
    coverage = np.zeros(shape, np.float32)
    for image, aux, gain, offset, surface in tiles:
        accumulate_tile(total, weight, coverage, image, aux, gain, offset, surface)
    got = np.empty(shape + (channels + 1,), np.float32)
    weighted_mean(total, weight, got[..., :channels])
    got[..., channels] = coverage
    assert np.isnan(got[..., :channels]).any() and np.isfinite(got[..., :channels]).any()
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_kernel_leaves_its_inputs_alone():
    rng = np.random.default_rng(1)
    image, aux, gain, offset, surface = _tiles(rng, (9, 11), 3, 3)[2]
    before = image.copy(), aux.copy(), surface.copy()
    accumulate_tile(np.zeros((9, 11, 3)), np.zeros((9, 11, 3)), np.zeros((9, 11), np.float32),
                    image, aux, gain, offset, surface)
    for a, b in zip((image, aux, surface), before):
        np.testing.assert_array_equal(a, b)
