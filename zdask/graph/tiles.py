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
from zdask.ops.background import Surface
from zdask.ops.colour import equalize_rgb_medians, tile_health
from zdask.ops.framestats import FrameStats
from zdask.ops.masks import altaz_alpha, coverage_renormalisation_gain, feather_weights
from zdask.ops.normalize import frame_weights, normalization_coefficients
from zdask.ops.warp import pixel_map, remap, source_window, wcs_pixel_transform

# The stack's arrays (master_tile's keys) and the names store_tile writes them under. The
# stacked image is kept apart from the finished ``image``: finish_tile reads one and writes the
# other, so running it twice (a task retried after its worker died) finishes the tile once.
TILE_ARRAYS = {"image": "stacked", "coverage": "coverage", "count": "count",
               "rejected_low": "rejected_low", "rejected_high": "rejected_high"}
# Written by finish_tile: the finished image, alpha (the alt-az cleanup mask, 1 elsewhere) and
# the coadd weight.
FINISHED_ARRAYS = ("image", "alpha", "weight")


@dataclass(frozen=True)
class TileSource:
    """One calibrated frame as a warp task sees it (plain values, cheap to ship)."""

    root: str
    key: str
    token: str
    wcs_header: dict
    shape: tuple[int, int]
    sky: tuple | None = None  # (coefficients, order, extent) of the frame's sky surface on the tile grid


def tile_grid(frames: list[Frame], margin: int, wcs_headers: list[dict] | None = None) -> Grid:
    """North-up TAN grid at the frames' median scale covering every frame of the group
    (placed by ``wcs_headers`` when given, e.g. after alignment, else by their own WCS)."""
    headers = wcs_headers or [f.wcs_header for f in frames]
    outlines = [footprint_outline(wcs_from_header(h), (f.height, f.width)) for f, h in zip(frames, headers)]
    # Frames registered without a WCS of their own have no scanned centre (NaN).
    placed = [f for f in frames if np.isfinite(f.ra_deg) and np.isfinite(f.dec_deg)]
    centre = mean_direction(np.array([f.ra_deg for f in placed]), np.array([f.dec_deg for f in placed])) \
        if placed else None
    scale = float(np.nanmedian([f.scale_arcsec for f in frames]))  # unsolved frames: NaN
    return covering_grid(outlines, scale, margin=margin, centre=centre)


def warp_block(
    sources: list[TileSource], grid_header: dict, step: int, channels: int, block_info=None
) -> np.ndarray:
    """Worker task: the (N, h, w, C) block of the warped stack; NaN outside each footprint."""
    (_, _), (r0, r1), (c0, c1), _ = block_info[None]["array-location"]
    # np.empty, not np.full(nan): every frame's slice is written once, by remap or below
    out = np.empty((len(sources), r1 - r0, c1 - c0, channels), dtype=np.float32)
    dst = wcs_from_header(grid_header)
    for i, src in enumerate(sources):
        map_x, map_y = pixel_map(
            wcs_pixel_transform(wcs_from_header(src.wcs_header), dst), (r0, r1), (c0, c1), step
        )
        window = source_window(map_x, map_y, src.shape)
        if window is None:
            out[i] = np.nan
            continue
        y0, y1, x0, x1 = window
        pixels = store.open_array(src.root, f"frames/{src.key}", src.token)[y0:y1, x0:x1, :]
        remap(pixels, map_x, map_y, origin=(y0, x0), out=out[i])
        if src.sky is not None:
            coeffs, order, extent = src.sky
            out[i] -= Surface(np.asarray(coeffs), order, tuple(extent), np.zeros(0)).evaluate(
                (r1 - r0, c1 - c0), offset=(r0, c0))
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
    if any(s.sky is not None for s in sources):
        # The sky surfaces already brought every frame's background to the group's consensus;
        # offsets from whole-frame statistics (measured before that) would undo it.
        offset = np.zeros_like(offset)
    weights = frame_weights(stats, config.weights, exptimes=exptimes)
    result = stack(
        warped, config.reject, weights=weights, scale=scale, offset=offset,
        budget=config.budget, **method_parameters(config),
    )
    # Coverage from geometry: a warped sample is NaN exactly where the frame's footprint ends,
    # so the samples kept plus those rejected count the footprints (no second pass over the
    # warped blocks).
    first = (slice(None), slice(None), 0) if result.count.ndim == 3 else (slice(None), slice(None))
    coverage = (result.count[first] + result.rejected_low[first] + result.rejected_high[first]).astype(np.float32)
    return {
        "image": result.image, "coverage": coverage, "count": result.count,
        "rejected_low": result.rejected_low, "rejected_high": result.rejected_high,
    }


def store_tile(arrays: dict[str, da.Array], root: str, name: str):
    """Delayed writes of a tile's arrays to ``root/name/*`` (Zarr chunks = dask blocks)."""
    group = store.open_store(root)
    targets, sources = [], []
    for key, stored in TILE_ARRAYS.items():
        arr = arrays[key]
        chunks = tuple(c[0] for c in arr.chunks)
        targets.append(store.create_array(group, f"{name}/{stored}", arr.shape, arr.dtype, chunks))
        sources.append(arr)
    return da.store(sources, targets, lock=False, compute=False)


def finish_tile(root: str, name: str, mode: str, n_frames: int, cleanup: bool, config: Config) -> dict:
    """Worker task after the stack: health check, alt-az alpha, colour equalisation, weights.

    Reads the stacked image, writes the finished ``image`` (renormalised, equalised), ``alpha``
    and ``weight`` (coverage × alpha × edge feather) beside it; the stack's own arrays are left as
    they are, so a second call gives the same result. Returns the tile's summary for the report.
    """
    group = store.open_store(root)
    image = np.asarray(group[f"{name}/{TILE_ARRAYS['image']}"][:])
    coverage = np.nan_to_num(np.asarray(group[f"{name}/coverage"][:]))
    health = tile_health(image, coverage)
    summary = {"healthy": bool(health.ok), "health_reason": health.reason, "alpha_applied": False,
               "alpha_note": None, "rgb_gains": [1.0] * image.shape[-1]}
    alpha = (coverage > 0).astype(np.float32)
    if cleanup and health.ok:
        result = altaz_alpha(coverage, n_frames=n_frames, min_abs=config.altaz_min_abs,
                             min_frac=config.altaz_min_frac, opening_px=config.altaz_opening_px,
                             ramp_px=config.altaz_ramp_px)
        alpha = result.alpha.astype(np.float32)
        summary["alpha_applied"] = bool(result.applied)
        summary["alpha_note"] = result.reason
    if health.ok and config.coverage_renorm:
        image = image * coverage_renormalisation_gain(coverage)[..., None]
    if health.ok and config.rgb_equalize and image.shape[-1] == 3:
        image, gains = equalize_rgb_medians(image, gain_range=config.rgb_gain_range, mask=alpha > 0.5)
        summary["rgb_gains"] = [float(g) for g in gains]
    feather = feather_weights(coverage, ramp_px=config.feather_px) if config.feather_px > 0 else 1.0
    weight = (coverage * alpha * feather).astype(np.float32)
    chunks = group[f"{name}/coverage"].chunks
    store.create_array(group, f"{name}/image", image.shape, "float32", chunks + image.shape[2:])[:] = image
    store.create_array(group, f"{name}/alpha", alpha.shape, "float32", chunks)[:] = alpha
    store.create_array(group, f"{name}/weight", weight.shape, "float32", chunks)[:] = weight
    return summary
