import numpy as np

from zdask.graph.geometry import tan_header
from zdask.io.fitsheader import wcs_from_header
from zdask.ops.warp import footprint, pixel_map, remap, source_window, wcs_pixel_transform


def _wcs(ra, dec, rot_deg=0.0, scale=2.4, crpix=(200.5, 150.5)):
    h = tan_header(ra, dec, scale, crpix)
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    cd = np.array([[h["CD1_1"], 0], [0, h["CD2_2"]]]) @ np.array([[c, -s], [s, c]])
    h.update(CD1_1=cd[0, 0], CD1_2=cd[0, 1], CD2_1=cd[1, 0], CD2_2=cd[1, 1])
    return wcs_from_header(h)


def test_interpolated_map_matches_exact_wcs_transform():
    src, dst = _wcs(10.0, 41.0, rot_deg=7.0), _wcs(10.05, 41.1, rot_deg=-3.0, scale=2.0)
    transform = wcs_pixel_transform(src, dst)
    mx, my = pixel_map(transform, (5, 305), (17, 417), step=32)
    yy, xx = np.mgrid[5:305, 17:417].astype(np.float64)
    ex, ey = transform(xx, yy)
    assert mx.shape == (300, 400)
    assert np.max(np.abs(mx - ex)) < 1e-3 and np.max(np.abs(my - ey)) < 1e-3


def test_integer_shift_is_reproduced_exactly_and_footprint_is_geometric():
    rng = np.random.default_rng(1)
    image = rng.normal(100, 5, (40, 50, 3)).astype(np.float32)
    # Destination pixel (x, y) samples source pixel (x + 3, y - 2).
    mx, my = np.meshgrid(np.arange(50) + 3.0, np.arange(40) - 2.0)
    out = remap(image, mx, my)
    np.testing.assert_array_equal(out[2:, :47], image[:38, 3:])
    inside = footprint(mx, my, (40, 50))
    assert np.isnan(out[~inside]).all() and np.isfinite(out[inside]).all()
    assert inside.sum() == 38 * 47


def test_window_read_gives_the_same_result_as_the_whole_source():
    rng = np.random.default_rng(2)
    image = rng.normal(0, 1, (120, 160, 3)).astype(np.float32)
    src, dst = _wcs(10.0, 41.0, rot_deg=20.0, crpix=(80.5, 60.5)), _wcs(10.0, 41.0, crpix=(30.5, 30.5))
    mx, my = pixel_map(wcs_pixel_transform(src, dst), (0, 60), (0, 60), step=16)
    y0, y1, x0, x1 = source_window(mx, my, image.shape[:2])
    whole = remap(image, mx, my)
    windowed = remap(image[y0:y1, x0:x1], mx, my, origin=(y0, x0))
    # cv2.remap quantises positions to 1/32 px, so float32 round-off of the shifted map can
    # pick a neighbouring interpolation weight: equal to well below the noise.
    np.testing.assert_allclose(whole, windowed, rtol=0, atol=1e-4)
    assert np.array_equal(np.isnan(whole), np.isnan(windowed))


def test_window_is_none_when_the_map_misses_the_source():
    mx, my = np.meshgrid(np.arange(10) + 500.0, np.arange(10) + 500.0)
    assert source_window(mx, my, (100, 100)) is None


def test_remap_into_a_given_array_equals_a_fresh_result():
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:40, 0:50].astype(np.float64)
    map_x, map_y = 0.9 * xx - 3.2, 1.1 * yy - 2.7  # partly outside the source: NaN there
    for shape in [(30, 40, 3), (30, 40, 1), (30, 40)]:
        src = rng.normal(size=shape).astype(np.float32)
        fresh = remap(src, map_x, map_y, origin=(1, 2))
        block = np.zeros((3, 40, 50) + shape[2:], dtype=np.float32)
        got = remap(src, map_x, map_y, origin=(1, 2), out=block[1])
        assert np.shares_memory(got, block)
        assert np.array_equal(block[1], fresh, equal_nan=True)
        assert np.isnan(fresh).any() and np.all(block[0] == 0) and np.all(block[2] == 0)


def test_rotated_footprint_equals_one_whole_grid_remap():
    """remap works strip by strip on the columns the footprint reaches; a frame rotated on a
    grid twice its size must come out as one cv2.remap over the whole grid, blanked outside."""
    import cv2

    rng = np.random.default_rng(9)
    src = rng.normal(size=(90, 160, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:230, 0:210].astype(np.float64)
    ang = 0.6
    map_x = np.cos(ang) * (xx - 100) - np.sin(ang) * (yy - 120) + 80
    map_y = np.sin(ang) * (xx - 100) + np.cos(ang) * (yy - 120) + 45
    mx, my = map_x.astype(np.float32), map_y.astype(np.float32)
    expected = cv2.remap(src, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    expected[~footprint(mx, my, src.shape[:2])] = np.nan
    got = remap(src, map_x, map_y)
    assert 0.2 < np.isfinite(got[..., 0]).mean() < 0.5
    assert np.array_equal(got, expected, equal_nan=True)
