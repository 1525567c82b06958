"""Mosaic assembly: master tiles reprojected onto canvas blocks and combined by coverage.

The canvas is a north-up TAN grid at the frames' median scale. Each canvas block is one task:
it reads, from the tiles in Zarr, the windows that fall in the block, warps them and takes the
coverage-weighted mean, so the canvas is never held whole by a worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np

from zdask.graph.geometry import Grid, covering_grid, footprint_outline
from zdask.ops.background import Surface
from zdask.io import store
from zdask.io.chunkrows import read_rows
from zdask.io.fitsheader import wcs_from_header
from zdask.ops.coadd import accumulate_tile, weighted_mean
from zdask.ops.warp import pixel_map, remap, source_window, wcs_pixel_transform


@dataclass(frozen=True)
class PlacedTile:
    """A finished master tile and the canvas pixels its footprint touches."""

    root: str
    name: str          # Zarr group of the tile, e.g. "tiles/3"
    token: str         # the tile's fingerprint (invalidates worker caches when it changes)
    grid: Grid
    bbox: tuple[int, int, int, int]  # (y0, y1, x0, x1) on the canvas
    gain: tuple = ()       # per channel; the tile's pixels become gain·x + offset − surface
    offset: tuple = ()
    surface: tuple | None = None  # (coefficients, order, extent) in uncropped canvas pixels


def canvas_grid(tile_grids: list[Grid], scale_arcsec: float) -> Grid:
    """The north-up TAN canvas covering all tiles at ``scale_arcsec``."""
    outlines = [footprint_outline(g.wcs(), g.shape) for g in tile_grids]
    return covering_grid(outlines, scale_arcsec, margin=0)


def crop_grid(canvas: Grid, box: tuple[int, int, int, int]) -> Grid:
    """The part (y0, y1, x0, x1) of a grid, as a grid of its own (CRPIX shifted)."""
    y0, y1, x0, x1 = box
    header = dict(canvas.wcs_header)
    header["CRPIX1"] = float(header["CRPIX1"]) - x0
    header["CRPIX2"] = float(header["CRPIX2"]) - y0
    header["NAXIS1"], header["NAXIS2"] = x1 - x0, y1 - y0
    return Grid(header, (y1 - y0, x1 - x0))


def coadd_block(
    tiles: list[PlacedTile], canvas_header: dict, step: int, channels: int,
    origin: tuple[int, int] = (0, 0), block_info=None,
) -> np.ndarray:
    """Worker task: (h, w, C + 1) block: the weighted mean of the corrected tiles, and the
    effective coverage (frames × alpha). ``origin`` is the block grid's position on the
    uncropped canvas, where the tiles' surfaces are defined."""
    (r0, r1), (c0, c1), _ = block_info[None]["array-location"]
    h, w = r1 - r0, c1 - c0
    total = np.zeros((h, w, channels), dtype=np.float64)
    weight = np.zeros((h, w, channels), dtype=np.float64)
    coverage = np.zeros((h, w), dtype=np.float32)
    dst = wcs_from_header(canvas_header)
    for tile in tiles:
        y0, y1, x0, x1 = tile.bbox
        if y1 <= r0 or y0 >= r1 or x1 <= c0 or x0 >= c1:
            continue
        # One pixel map per (tile, block), shared by the image and its weight and coverage.
        map_x, map_y = pixel_map(wcs_pixel_transform(tile.grid.wcs(), dst), (r0, r1), (c0, c1), step)
        window = source_window(map_x, map_y, tile.grid.shape)
        if window is None:
            continue
        image, aux = _read_window(tile, window)
        image = remap(image, map_x, map_y, origin=window[::2])
        # Weight and effective coverage are resampled like the image, as one 2-channel image.
        aux = remap(aux, map_x, map_y, origin=window[::2])
        surface = None
        if tile.surface is not None:
            coeffs, order, extent = tile.surface
            surface = Surface(np.asarray(coeffs), order, tuple(extent), np.zeros(0)).evaluate(
                (h, w), offset=(r0 + origin[0], c0 + origin[1]))
        accumulate_tile(total, weight, coverage, image, aux, tile.gain, tile.offset, surface)
    out = np.empty((h, w, channels + 1), dtype=np.float32)
    weighted_mean(total, weight, out[..., :channels])
    out[..., channels] = coverage
    return out


def _read_window(tile: PlacedTile, window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A tile's image (h, w, C) and its (weight, coverage × alpha) (h, w, 2) in ``window``.

    Each array is read once, as whole stored rows decompressed only where the window's rows
    are (a tile's chunk strip spans several canvas blocks; through zarr every block decoded
    the whole strip again).
    """
    wy0, wy1, wx0, wx1 = window
    read = lambda key: read_rows(store.open_array(tile.root, f"{tile.name}/{key}", tile.token),  # noqa: E731
                                 wy0, wy1)[:, wx0:wx1]
    image = read("image")
    aux = np.empty((wy1 - wy0, wx1 - wx0, 2), dtype=np.float32)
    aux[..., 0] = read("weight")
    np.multiply(read("coverage"), read("alpha"), out=aux[..., 1])
    return image, aux


def mosaic_arrays(tiles: list[PlacedTile], canvas: Grid, channels: int, block: int, step: int,
                  origin: tuple[int, int] = (0, 0)) -> dict:
    """Lazy canvas arrays: image (H, W, C) float32 and coverage (H, W) float32."""
    h, w = canvas.shape
    chunks = (_split(h, block), _split(w, block), (channels + 1,))
    packed = da.map_blocks(
        coadd_block, tiles, canvas.wcs_header, step, channels, origin,
        chunks=chunks, dtype=np.float32, meta=np.empty((0, 0, 0), dtype=np.float32),
        name=f"coadd-{store.fingerprint([t.token for t in tiles], canvas.to_json())}",
    )
    return {"image": packed[..., :channels], "coverage": packed[..., channels]}


def _split(n: int, block: int) -> tuple[int, ...]:
    return (block,) * (n // block) + ((n % block,) if n % block else ())
