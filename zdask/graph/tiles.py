"""Master tiles: each group's frames warped onto the tile grid and reduced along the frame axis.

The warped stack is a dask array ``(N, h, w, C)`` whose blocks are made by one task each: the
task reads, from the calibrated frames in Zarr, only the windows that land in its block and
warps them. The frame axis is one chunk and the blocks fit the memory budget, so
``zdask.stack`` reduces each block where it was made; aligned stacks are never written out.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np

from zdask.config import Config
from zdask.graph.geometry import Grid, covering_grid, footprint_outline, mean_direction, wcs_from_header
from zdask.graph.stack import stack, stack_chunks
from zdask.io import store
from zdask.io.scan import Frame
from zdask.ops.framestats import FrameStats
from zdask.ops.normalize import frame_weights, normalization_coefficients
from zdask.ops.warp import pixel_map, remap, source_window, wcs_pixel_transform

TILE_ARRAYS = ("image", "coverage", "count", "rejected_low", "rejected_high")


@dataclass(frozen=True)
class TileSource:
    """One calibrated frame as a warp task sees it (plain values, cheap to ship)."""

    root: str
    key: str
    token: str
    wcs_header: dict
    shape: tuple[int, int]


def tile_grid(frames: list[Frame], margin: int) -> Grid:
    """North-up TAN grid at the frames' median scale covering every frame of the group."""
    outlines = [footprint_outline(f.wcs(), (f.height, f.width)) for f in frames]
    centre = mean_direction(np.array([f.ra_deg for f in frames]), np.array([f.dec_deg for f in frames]))
    scale = float(np.median([f.scale_arcsec for f in frames]))
    return covering_grid(outlines, scale, margin=margin, centre=centre)


def warp_block(
    sources: list[TileSource], grid_header: dict, step: int, channels: int, block_info=None
) -> np.ndarray:
    """Worker task: the (N, h, w, C) block of the warped stack; NaN outside each footprint."""
    (_, _), (r0, r1), (c0, c1), _ = block_info[None]["array-location"]
    out = np.full((len(sources), r1 - r0, c1 - c0, channels), np.nan, dtype=np.float32)
    dst = wcs_from_header(grid_header)
    for i, src in enumerate(sources):
        map_x, map_y = pixel_map(
            wcs_pixel_transform(wcs_from_header(src.wcs_header), dst), (r0, r1), (c0, c1), step
        )
        window = source_window(map_x, map_y, src.shape)
        if window is None:
            continue
        y0, y1, x0, x1 = window
        pixels = store.open_array(src.root, f"frames/{src.key}", src.token)[y0:y1, x0:x1, :]
        out[i] = remap(pixels, map_x, map_y, origin=(y0, x0))
    return out


def warped_stack(sources: list[TileSource], grid: Grid, channels: int, config: Config) -> da.Array:
    """Lazy (N, h, w, C) float32 stack of the group's frames on the tile grid."""
    shape = (len(sources), *grid.shape, channels)
    chunks = stack_chunks(shape, np.float32, config.budget)
    return da.map_blocks(
        warp_block, sources, grid.wcs_header, config.warp_grid_step, channels,
        chunks=chunks, dtype=np.float32, meta=np.empty((0, 0, 0, 0), dtype=np.float32),
        name=f"warp-{store.fingerprint([s.token for s in sources], grid.to_json())}",
    )


def method_parameters(config: Config) -> dict:
    """The keyword parameters that the configured rejection method takes."""
    if config.reject == "kappa_sigma":
        return {"kappa": config.kappa, "iterations": config.iterations}
    if config.reject in ("winsorized", "linear_fit_clip"):
        return {"kappa": config.kappa}
    return {}


def master_tile(
    sources: list[TileSource], stats: list[FrameStats], exptimes: list[float | None],
    grid: Grid, channels: int, config: Config,
) -> dict[str, da.Array]:
    """Lazy arrays of one master tile: image (h, w, C), coverage (h, w), count and rejections."""
    warped = warped_stack(sources, grid, channels, config)
    scale, offset = normalization_coefficients(stats, config.normalization)
    weights = frame_weights(stats, config.weights, exptimes=exptimes)
    result = stack(
        warped, config.reject, weights=weights, scale=scale, offset=offset,
        budget=config.budget, **method_parameters(config),
    )
    # Coverage from geometry: a warped sample is NaN exactly where the frame's footprint ends.
    coverage = da.isfinite(warped[..., 0]).sum(axis=0, dtype=np.float32)
    return {
        "image": result.image, "coverage": coverage, "count": result.count,
        "rejected_low": result.rejected_low, "rejected_high": result.rejected_high,
    }


def store_tile(arrays: dict[str, da.Array], root: str, name: str):
    """Delayed writes of a tile's arrays to ``root/name/*`` (Zarr chunks = dask blocks)."""
    group = store.open_store(root)
    targets, sources = [], []
    for key in TILE_ARRAYS:
        arr = arrays[key]
        chunks = tuple(c[0] for c in arr.chunks)
        targets.append(store.create_array(group, f"{name}/{key}", arr.shape, arr.dtype, chunks))
        sources.append(arr)
    return da.store(sources, targets, lock=False, compute=False)
