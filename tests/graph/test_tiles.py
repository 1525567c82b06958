"""Master tiles on a planted layout: exact coverage, finishing (alpha, health, weights)."""

import os
import platform
import subprocess
import sys

import dask
import numpy as np
import pytest

from zdask.config import Config
from zdask.graph.geometry import Grid, tan_header
from zdask.graph.tiles import TileSource, finish_tile, master_tile
from zdask.io import store
from zdask.ops.framestats import frame_statistics

SCALE = 2.0  # arcsec / px


def _frame_header(dx: int, dy: int) -> dict:
    # Same tangent point and orientation as the tile: pixel (x, y) of the frame is pixel
    # (x + dx, y + dy) of the tile, exactly.
    return tan_header(10.0, 40.0, SCALE, (50.5 - dx, 40.5 - dy))


def _store_frames(root: str, shifts, shape=(30, 40), value=100.0):
    group = store.open_store(root)
    sources, stats = [], []
    for k, (dx, dy) in enumerate(shifts):
        image = np.full(shape + (1,), value + k, dtype=np.float32)
        store.create_array(group, f"frames/f{k}", image.shape, "float32", (16, shape[1], 1))[:] = image
        store.mark_complete(root, f"frames/f{k}", f"fp{k}")
        sources.append(TileSource(root, f"f{k}", f"fp{k}", _frame_header(dx, dy), shape))
        stats.append(frame_statistics(image))
    return sources, stats


def test_coverage_counts_the_frames_whose_footprint_covers_each_pixel(tmp_path):
    root = str(tmp_path / "work.zarr")
    shifts = [(0, 0), (10, 5), (25, 12)]
    sources, stats = _store_frames(root, shifts)
    grid = Grid(tan_header(10.0, 40.0, SCALE, (50.5, 40.5)), (60, 80))
    config = Config().replace(budget="1MiB", sky_surface_order=-1)
    arrays = master_tile(sources, stats, [10.0] * 3, grid, 1, config)
    coverage, image, count = dask.compute(arrays["coverage"], arrays["image"], arrays["count"], scheduler="sync")
    expected = np.zeros((60, 80), dtype=np.float32)
    for dx, dy in shifts:
        expected[dy:dy + 30, dx:dx + 40] += 1
    np.testing.assert_array_equal(coverage, expected)
    # Pixels covered by no frame are NaN with count 0; the others hold a sample mean.
    assert np.isnan(image[expected == 0]).all() and (count[..., 0][expected == 0] == 0).all()
    assert np.isfinite(image[expected > 0]).all()


def test_finish_tile_masks_alt_az_corners_without_emptying_and_reports_health(tmp_path):
    root = str(tmp_path / "work.zarr")
    yy, xx = np.mgrid[0:80, 0:100]
    # A rotated-stack-like coverage: 10 frames in the middle, fewer towards two corners.
    coverage = np.clip(10 - (np.maximum(0, xx - 70) + np.maximum(0, 20 - yy)) // 3, 0, 10).astype(np.float32)
    sky = (50.0 + 0.1 * xx)[..., None] * np.array([1.0, 1.02, 0.97])
    image = np.where(coverage[..., None] > 0, sky, np.nan).astype(np.float32)
    group = store.open_store(root)
    for key, value in {"stacked": image, "coverage": coverage}.items():
        store.create_array(group, f"tiles/t/{key}", value.shape, "float32", (80, 100) + value.shape[2:])[:] = value
    summary = finish_tile(root, "tiles/t", "ALT_AZ", 10, True, Config())
    alpha = np.asarray(group["tiles/t/alpha"][:])
    weight = np.asarray(group["tiles/t/weight"][:])
    assert summary["healthy"] and summary["alpha_applied"]
    assert (alpha[coverage < 5] == 0).all()          # below max(3, 0.5 × 10) frames: masked
    assert (alpha[30:60, 20:50] == 1).all()           # the well-covered core stays whole
    assert (weight <= coverage).all() and (weight[alpha == 0] == 0).all()
    assert max(abs(g - 1) for g in summary["rgb_gains"]) <= 0.05 + 1e-9  # gains clipped


def test_finish_tile_reports_an_empty_tile(tmp_path):
    root = str(tmp_path / "work.zarr")
    group = store.open_store(root)
    store.create_array(group, "tiles/e/stacked", (20, 20, 3), "float32", (20, 20, 3))[:] = np.nan
    store.create_array(group, "tiles/e/coverage", (20, 20), "float32", (20, 20))[:] = 0
    summary = finish_tile(root, "tiles/e", "EQ", 4, False, Config())
    assert not summary["healthy"] and summary["health_reason"]


def test_finish_tile_twice_finishes_the_tile_once(tmp_path):
    """A finishing task run again (retried after its worker died, or a second run on the same
    store) gives the same tile: renormalisation and colour gains are applied to the stack once."""
    root = str(tmp_path / "work.zarr")
    coverage = np.full((40, 50), 8.0, dtype=np.float32)
    coverage[:, :10] = 4.0  # renormalisation scales these columns
    sky = 100.0 + np.random.default_rng(0).normal(0.0, 2.0, (40, 50, 1))  # a flat tile is unhealthy
    stacked = (sky * np.array([1.03, 1.0, 0.96])).astype(np.float32)
    group = store.open_store(root)
    for key, value in {"stacked": stacked, "coverage": coverage}.items():
        store.create_array(group, f"tiles/t/{key}", value.shape, "float32", (40, 50) + value.shape[2:])[:] = value
    config = Config().replace(coverage_renorm=True, rgb_equalize=True)
    first = finish_tile(root, "tiles/t", "EQ", 8, False, config)
    once = np.asarray(group["tiles/t/image"][:])
    second = finish_tile(root, "tiles/t", "EQ", 8, False, config)
    np.testing.assert_array_equal(np.asarray(group["tiles/t/image"][:]), once)
    np.testing.assert_array_equal(np.asarray(group["tiles/t/stacked"][:]), stacked)
    assert second == first
    # The planted colour cast is removed once (within the gain clip), not twice.
    assert first["healthy"] and first["rgb_gains"] == pytest.approx([1 / 1.03, 1.0, 1 / 0.96], rel=1e-4)


def _rotated_header(ra, dec, rot_deg, scale, crpix):
    h = tan_header(ra, dec, scale, crpix)
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    cd = np.array([[h["CD1_1"], 0], [0, h["CD2_2"]]]) @ np.array([[c, -s], [s, c]])
    h.update(CD1_1=cd[0, 0], CD1_2=cd[0, 1], CD2_1=cd[1, 0], CD2_2=cd[1, 1])
    return h


def test_block_warp_is_each_frames_whole_map_remap_minus_its_sky(tmp_path):
    """warp_block (nodes once per block, maps band by band, reads cut to the rows reached) gives
    what warping each frame with its whole pixel map, source window and remap gives, bit for
    bit: rotated frames with sky surfaces, frames cut by the block and a frame that misses it."""
    from zdask.io.fitsheader import wcs_from_header
    from zdask.graph.tiles import block_buffer, release_worker_memory, warp_block
    from zdask.ops.background import Surface
    from zdask.ops.warp import pixel_map, remap, source_window, wcs_pixel_transform

    rng = np.random.default_rng(4)
    root = str(tmp_path / "work.zarr")
    group = store.open_store(root)
    grid_header = tan_header(10.0, 40.0, SCALE, (120.5, 100.5))
    shape = (150, 170)
    # (rotation, dx, dy): the last frame lies 400 px away, beside every block
    layout = [(0.2, 0, 0), (17.0, 30, -25), (-40.0, -60, 40), (4.0, 10, 95), (0.0, 400, 0)]
    sources, frames = [], []
    for k, (rot, dx, dy) in enumerate(layout):
        image = rng.normal(100, 5, shape + (3,)).astype(np.float32)
        store.create_array(group, f"frames/f{k}", image.shape, "float32", (64, shape[1], 3),
                           compressor=store.FRAME_COMPRESSOR)[:] = image
        header = _rotated_header(10.0, 40.0, rot, SCALE * 1.02, (85.5 - dx, 75.5 - dy))
        sky = (rng.normal(0, 2, (3, 3)).tolist(), 1, (0.0, 200.0, 0.0, 240.0))
        sources.append(TileSource(root, f"f{k}", "t", header, shape, sky))
        frames.append(image)
    dst = wcs_from_header(grid_header)
    for rows, cols in [((0, 200), (0, 240)), ((37, 71), (0, 240)), ((120, 121), (0, 240)),
                       ((60, 140), (50, 90)), ((0, 1), (0, 240)), ((199, 200), (0, 240))]:
        info = {None: {"array-location": [(0, len(sources)), rows, cols, (0, 3)]}}
        got = warp_block(sources, grid_header, 32, 3, block_info=info)
        # Into a reused buffer holding another block's values (block_buffer): the same block.
        reused = block_buffer(got.shape)
        reused[...] = 1e30
        assert np.array_equal(warp_block(sources, grid_header, 32, 3, block_info=info, out=reused), got,
                              equal_nan=True)
        for k, (src, image) in enumerate(zip(sources, frames)):
            map_x, map_y = pixel_map(wcs_pixel_transform(wcs_from_header(src.wcs_header), dst), rows, cols, 32)
            window = source_window(map_x, map_y, shape)
            if window is None:
                assert np.isnan(got[k]).all()
                continue
            assert k != 4
            y0, y1, x0, x1 = window
            expected = remap(image[y0:y1, x0:x1], map_x, map_y, origin=(y0, x0))
            coeffs, order, extent = src.sky
            expected -= Surface(np.asarray(coeffs), order, extent, np.zeros(0)).evaluate(
                expected.shape[:2], offset=(rows[0], cols[0]))
            assert np.array_equal(got[k], expected, equal_nan=True), (rows, cols, k)
        assert np.isfinite(got[:4]).any()
    assert release_worker_memory() == 1 and release_worker_memory() == 0


_TRIM_PROBE = """
import numpy as np
from zdask.graph.tiles import trim_heap

def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

arrays, pins = [], []
for _ in range(64):              # 4 MB arrays, each followed by a small live block that pins
    arrays.append(np.ones(1 << 20, np.float32))   # the heap above it: free() cannot shrink it
    pins.append(np.ones(64, np.float32))
del arrays
before = resident()
trim_heap()
print(before - resident())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's; resident size read from /proc")
def test_trim_heap_gives_freed_heap_pages_back():
    """Freed frame-sized arrays left between live blocks stay resident until trim_heap: with glibc
    told to serve them from its heap and never to trim by itself (as it does on its own once its
    mmap threshold has risen), 64 freed 4 MB arrays come back to the system, 256 MB. In a child
    process: those malloc settings must not reach this one."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(32 << 20), MALLOC_TRIM_THRESHOLD_=str(1 << 40),
               MALLOC_ARENA_MAX="1")
    freed = int(subprocess.run([sys.executable, "-c", _TRIM_PROBE], env=env, capture_output=True, text=True,
                               check=True).stdout)
    assert freed > 200 << 20, freed
