"""blockwarp: a frame warped band by band from its map nodes is the whole-map warp, bit for bit."""

import numpy as np
import pytest

from zdask.graph.geometry import tan_header
from zdask.io.fitsheader import wcs_from_header
from zdask.ops.background import Surface
from zdask.ops.blockwarp import block_grid, block_map, warp_frame
from zdask.ops.warp import pixel_map, remap, source_window, wcs_pixel_transform


def _header(ra, dec, rot_deg=0.0, scale=2.4, crpix=(200.5, 150.5)):
    h = tan_header(ra, dec, scale, crpix)
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    cd = np.array([[h["CD1_1"], 0], [0, h["CD2_2"]]]) @ np.array([[c, -s], [s, c]])
    h.update(CD1_1=cd[0, 0], CD1_2=cd[0, 1], CD2_1=cd[1, 0], CD2_2=cd[1, 1])
    return h


def _map(src_header, dst_header, rows, cols, step):
    """The block's BlockMap as the tile task builds it, and the whole map of pixel_map."""
    src, dst = wcs_from_header(src_header), wcs_from_header(dst_header)
    grid = block_grid(rows, cols, step)
    ra, dec = dst.all_pix2world(grid.node_x, grid.node_y, 0)
    sx, sy = src.all_world2pix(ra, dec, 0)
    return block_map(grid, sx, sy), pixel_map(wcs_pixel_transform(src, dst), rows, cols, step)


# (frame rotation in degrees, frame centre offset in the destination's pixels, block rows,
# block columns, node step): rotated frames cut by the block, frames reaching past its edges,
# a block of one row, a block narrower than a node step.
CASES = [
    (0.3, (0, 0), (40, 75), (0, 300), 32),
    (20.0, (30, -20), (0, 220), (0, 310), 32),
    (-35.0, (-120, 60), (100, 133), (0, 300), 16),
    (5.0, (0, 130), (210, 240), (20, 280), 32),
    (12.0, (10, 10), (57, 58), (0, 300), 32),
    (3.0, (5, 5), (30, 90), (100, 120), 32),
]


@pytest.mark.parametrize("rot, shift, rows, cols, step", CASES)
@pytest.mark.parametrize("channels", [3, 1])
def test_band_by_band_warp_is_the_whole_map_remap_minus_the_sky(rot, shift, rows, cols, step, channels):
    rng = np.random.default_rng(abs(hash((rot, rows))) % 2**32)
    frame = (rng.normal(100, 5, (180, 260, channels)) + np.arange(260)[None, :, None] * 0.1).astype(np.float32)
    dst = _header(10.0, 41.0, 0.0, 2.0, (150.5, 120.5))
    src = _header(10.0 + shift[0] * 2.0 / 3600 / np.cos(np.radians(41.0)), 41.0 + shift[1] * 2.0 / 3600,
                  rot, 2.1, (130.5, 90.5))
    bmap, (map_x, map_y) = _map(src, dst, rows, cols, step)
    window = source_window(map_x, map_y, frame.shape[:2])
    assert bmap.window(frame.shape[:2]) == window
    y0, y1, x0, x1 = window
    sky = Surface(rng.normal(0, 3, (channels, 6)), 2, (0.0, 300.0, 0.0, 320.0), np.zeros(0))
    expected = remap(frame[y0:y1, x0:x1], map_x, map_y, origin=(y0, x0))
    expected_sky = expected - sky.evaluate(expected.shape[:2], offset=(rows[0], cols[0]))
    ya, yb = bmap.rows_reached(window)
    assert y0 <= ya < yb <= y1
    for band in (1, 7, 32):
        for surface, reference in ((None, expected), (sky, expected_sky)):
            out = np.full(expected.shape, 7.0, np.float32)
            warp_frame(frame[ya:yb, x0:x1], bmap, window, (ya, yb), out, surface, band=band)
            assert np.array_equal(out, reference, equal_nan=True)
    # the whole window read gives the same (the read can stop at the rows the map reaches)
    out = np.empty(expected.shape, np.float32)
    warp_frame(frame[y0:y1, x0:x1], bmap, window, (y0, y1), out)
    assert np.array_equal(out, expected, equal_nan=True)
    assert np.isfinite(out).any()


def test_rows_reached_cut_the_read_to_the_block_when_the_frame_is_aligned():
    # A frame on the destination grid itself: a 30-row block samples its 30 rows (+1 above, +2
    # below, at most), where the window takes the every-eighth padding (slope 8 px, 2 more) on
    # both sides.
    h = _header(10.0, 41.0, 0.0, 2.0, (150.5, 120.5))
    bmap, _ = _map(h, h, (100, 130), (0, 300), 32)
    window = bmap.window((240, 300))
    assert window[0] <= 100 - 10 and window[1] >= 130 + 10
    ya, yb = bmap.rows_reached(window)
    assert 98 <= ya <= 99 and 131 <= yb <= 133


def test_no_rows_are_reached_when_the_frame_edge_lies_just_beyond_the_block():
    # The frame's first row lies 3.5 px below a one-row block: the window's padding takes the
    # frame in, but no pixel of the block is inside its footprint.
    dst = _header(10.0, 41.0, 0.0, 2.0, (150.5, 120.5))
    src = _header(10.0, 41.0, 0.0, 2.0, (150.5, 120.5 - 13.5))
    bmap, (map_x, map_y) = _map(src, dst, (10, 11), (0, 300), 32)
    window = bmap.window((240, 300))
    assert window == source_window(map_x, map_y, (240, 300)) and window is not None
    assert bmap.rows_reached(window) is None
    frame = np.ones((240, 300, 3), np.float32)
    y0, y1, x0, x1 = window
    assert np.isnan(remap(frame[y0:y1, x0:x1], map_x, map_y, origin=(y0, x0))).all()


def test_window_is_none_when_the_frame_misses_the_block():
    dst = _header(10.0, 41.0, 0.0, 2.0, (150.5, 120.5))
    far = _header(10.0, 41.5, 0.0, 2.0, (150.5, 120.5))  # 0.5 deg = 900 px north
    bmap, _ = _map(far, dst, (0, 50), (0, 300), 32)
    assert bmap.window((240, 300)) is None


def test_bad_arguments_are_refused():
    h = _header(10.0, 41.0)
    bmap, _ = _map(h, h, (0, 10), (0, 20), 32)
    window = bmap.window((100, 100))
    frame = np.zeros((100, 100, 3), np.float32)
    y0, y1, x0, x1 = window
    with pytest.raises(ValueError, match="rows"):
        warp_frame(frame[y0:y1, x0:x1], bmap, window, (y0, y1 + 1), np.empty((10, 20, 3), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        warp_frame(frame[y0:y1, x0:x1], bmap, window, (y0, y1), np.empty((10, 20, 3), np.float64))


@pytest.mark.parametrize("rot, shift, rows, cols, step", CASES[:4])
@pytest.mark.parametrize("channels", [3, 1])
def test_the_frame_background_is_subtracted_in_the_frame_pixels(rot, shift, rows, cols, step, channels):
    # The background belongs to the frame's pixel grid: at each warped pixel it is the mesh at
    # the position the pixel was sampled from. A steep background (1 ADU a frame pixel along a
    # rotated axis) makes any other placement miss by many ADU.
    from zdask.ops.bgmesh import mesh_background
    from zdask.ops.warp import bin_image

    rng = np.random.default_rng(11)
    fy, fx = np.mgrid[0:180, 0:260].astype(np.float32)
    frame = (300 + 1.0 * fx + 0.5 * fy)[..., None] + rng.normal(0, 1, (180, 260, channels)).astype(np.float32)
    mesh = mesh_background(bin_image(frame, 4), 4, 32)
    dst = _header(10.0, 41.0, 0.0, 2.0, (150.5, 120.5))
    src = _header(10.0 + shift[0] * 2.0 / 3600 / np.cos(np.radians(41.0)), 41.0 + shift[1] * 2.0 / 3600,
                  rot, 2.1, (130.5, 90.5))
    bmap, (map_x, map_y) = _map(src, dst, rows, cols, step)
    window = bmap.window(frame.shape[:2])
    y0, y1, x0, x1 = window
    ya, yb = bmap.rows_reached(window)
    plain = np.empty((rows[1] - rows[0], cols[1] - cols[0], channels), np.float32)
    warp_frame(frame[ya:yb, x0:x1], bmap, window, (ya, yb), plain)
    expected = plain - mesh.evaluate(map_x.astype(np.float32), map_y.astype(np.float32))
    for band in (7, 32):
        out = np.empty_like(plain)
        warp_frame(frame[ya:yb, x0:x1], bmap, window, (ya, yb), out, band=band, background=mesh)
        assert np.array_equal(np.isnan(out), np.isnan(plain))
        inside = np.isfinite(out)
        assert inside.any()
        assert np.abs(out[inside] - expected[inside]).max() < 1e-2
        # what is left is the frame's noise about zero: the background followed the frame
        assert abs(float(np.mean(out[inside]))) < 0.3 and float(np.std(out[inside])) < 1.5
