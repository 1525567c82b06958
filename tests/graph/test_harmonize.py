"""The sky surfaces of a group's frames, from a real Zarr store: planted planes recovered."""

import numpy as np

from zdask.graph.geometry import Grid, tan_header
from zdask.graph.harmonize import frame_sky_surfaces
from zdask.graph.tiles import TileSource
from zdask.io import store
from zdask.ops.background import Surface

SCALE = 2.0  # arcsec / px
TILE = (150, 200)
FRAME = (120, 160)


def _planted_group(root: str, n: int, seed: int):
    """``n`` frames shifted by whole pixels on the tile grid, each holding the tile's sky (a
    galaxy, stars) plus its own plane, written as calibrated RGB frames; the planes (tile
    pixels) come back as arrays on the tile grid."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:TILE[0], 0:TILE[1]]
    sky = 300.0 + 80.0 * np.exp(-(((xx - 100) / 45.0) ** 2 + ((yy - 75) / 30.0) ** 2))
    for y, x in rng.integers(3, (TILE[0] - 3, TILE[1] - 3), (30, 2)):
        sky[y - 1:y + 2, x - 1:x + 2] += 500.0
    group = store.open_store(root)
    sources, planes = [], []
    for k in range(n):
        dy, dx = (int(v) for v in rng.integers(0, 31, 2))
        a, b, c = rng.uniform(-30, 30), rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1)
        plane = a + b * (xx - 100) + c * (yy - 75)
        window = (slice(dy, dy + FRAME[0]), slice(dx, dx + FRAME[1]))
        image = (sky + plane)[window][..., None] * np.array([1.0, 1.1, 0.9]) + rng.normal(0, 1.0, (*FRAME, 3))
        store.create_array(group, f"frames/f{k}", image.shape, "float32", (32, FRAME[1], 3))[:] = image
        store.mark_complete(root, f"frames/f{k}", f"fp{k}")
        # Frame pixel (x, y) is tile pixel (x + dx, y + dy): same tangent point and orientation.
        header = tan_header(10.0, 40.0, SCALE, (100.5 - dx, 75.5 - dy))
        sources.append(TileSource(root, f"f{k}", f"fp{k}", header, FRAME))
        planes.append(plane[..., None] * np.array([1.0, 1.1, 0.9]))
    return sources, np.array(planes)


def test_frame_sky_surfaces_recover_each_frames_own_plane(tmp_path):
    root = str(tmp_path / "work.zarr")
    sources, planes = _planted_group(root, 12, seed=4)
    grid = Grid(tan_header(10.0, 40.0, SCALE, (100.5, 75.5)), TILE)
    surfaces = frame_sky_surfaces(sources, grid, 4, 1)
    assert len(surfaces) == len(sources)
    # On the tile grid each surface is the frame's plane less the planes' mean (the part all
    # frames share, left for the mosaic): the galaxy and the stars are not in it.
    expected = planes - planes.mean(axis=0)
    for (coeffs, order, extent), want in zip(surfaces, expected):
        got = Surface(np.asarray(coeffs), order, tuple(extent), np.zeros(3)).evaluate(TILE)
        np.testing.assert_allclose(got, want, atol=0.3)
