import numpy as np
import pytest

from zdask.ops.debayer import BAYER_PATTERNS, channel_masks, debayer_bilinear


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_masks_partition_the_sensor_with_two_greens(pattern):
    masks = channel_masks(pattern, (6, 8))
    total = sum(m.astype(int) for m in masks)
    assert (total == 1).all()
    assert [int(m.sum()) for m in masks] == [12, 24, 12]


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_flat_colour_field_is_recovered_exactly_everywhere(pattern):
    # A uniformly coloured scene: every interpolated value must equal the true colour, edges too.
    colour = np.array([1000.0, 400.0, 90.0], dtype=np.float32)
    masks = channel_masks(pattern, (10, 14))
    raw = sum(m * colour[c] for c, m in enumerate(masks)).astype(np.uint16)
    rgb = debayer_bilinear(raw, pattern)
    assert rgb.shape == (10, 14, 3) and rgb.dtype == np.float32
    np.testing.assert_array_equal(rgb, np.broadcast_to(colour, rgb.shape))


def test_measured_pixels_are_kept_and_gradient_is_interpolated_linearly():
    pattern = "GRBG"
    h, w = 8, 12
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    scene = 100 + 3 * xx + 5 * yy  # a linear ramp, identical in all channels
    rgb = debayer_bilinear(scene, pattern)
    masks = channel_masks(pattern, (h, w))
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c][masks[c]], scene[masks[c]])
        # Bilinear interpolation of a linear ramp is exact away from the reflected border.
        np.testing.assert_allclose(rgb[1:-1, 1:-1, c], scene[1:-1, 1:-1], rtol=0, atol=1e-4)


def test_unknown_pattern_is_refused():
    with pytest.raises(ValueError, match="unknown Bayer pattern"):
        debayer_bilinear(np.zeros((4, 4), np.uint16), "RGBX")
