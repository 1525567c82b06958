"""Master tiles: each group's frames warped onto the tile grid and reduced along the frame axis.

The tile grid is cut into blocks (:func:`zdask.graph.stack.stack_chunks`: whole frame axis, the
block's N frames within the memory budget). One task per block reads, from the calibrated frames
in Zarr, only the windows that land in its block, warps them and reduces them at once
(:func:`stack_tile_block`): the warped samples never leave the task, so neither aligned stacks
nor warped blocks are ever held or written out, and a block task depends on nothing but the
tile's plain description (:class:`TileStack`), never on per-frame results.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from dataclasses import dataclass

import dask.array as da
import numpy as np
from dask.highlevelgraph import HighLevelGraph

from zdask.config import Config
from zdask.graph.geometry import Grid, covering_grid, footprint_outline, mean_direction
from zdask.graph.stack import stack_chunks
from zdask.graph.taskkeys import store_named, task_key
from zdask.io import store
from zdask.io.chunkrows import read_rows, read_whole, write_rows
from zdask.io.fitsheader import wcs_from_header
from zdask.io.scan import Frame
from zdask.ops.background import Surface
from zdask.ops.bgmesh import MeshBackground
from zdask.ops.blockwarp import block_grid, block_map, warp_frame
from zdask.ops.colour import equalize_rgb_medians, tile_health
from zdask.ops.framestats import FrameStats
from zdask.ops.masks import altaz_alpha, coverage_renormalisation_gain, feather_weights
from zdask.ops.normalize import frame_weights, normalization_coefficients
from zdask.ops._stacking_common import per_frame
from zdask.ops.stacking import METHODS

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
    background: MeshBackground | None = None  # the frame's own background (background_mesh > 0)


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
    sources: list[TileSource], grid_header: dict, step: int, channels: int, block_info=None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Worker task: the (N, h, w, C) block of the warped stack; NaN outside each footprint.

    Each frame's pixel map comes from its transform on the block's nodes (the nodes' sky
    positions computed once for all frames), its read stops at the rows the map reaches, and it
    is warped and sky-corrected band by band (:mod:`zdask.ops.blockwarp`). ``out``: a float32
    array of that shape to fill (see :func:`block_buffer`).
    """
    (_, _), rows, cols, _ = block_info[None]["array-location"]
    shape = (len(sources), rows[1] - rows[0], cols[1] - cols[0], channels)
    # np.empty, not np.full(nan): every frame's slice is written once, by warp_frame or below
    out = np.empty(shape, dtype=np.float32) if out is None else out
    grid = block_grid(tuple(rows), tuple(cols), step)
    ra, dec = wcs_from_header(grid_header).all_pix2world(grid.node_x, grid.node_y, 0)
    buffer = np.empty(0, dtype=np.uint8)
    for i, src in enumerate(sources):
        sx, sy = wcs_from_header(src.wcs_header).all_world2pix(ra, dec, 0)
        bmap = block_map(grid, np.asarray(sx, dtype=np.float64), np.asarray(sy, dtype=np.float64))
        window = bmap.window(src.shape)
        reached = None if window is None else bmap.rows_reached(window)
        if reached is None:  # the frame misses the block
            out[i] = np.nan
            continue
        ya, yb = reached
        z = store.open_array(src.root, f"frames/{src.key}", src.token)
        size = (yb - ya) * int(np.prod(z.shape[1:])) * np.dtype(z.dtype).itemsize
        if buffer.nbytes < size:  # one buffer for all the task's reads: no page faults per read
            buffer = np.empty(int(size * 1.25), dtype=np.uint8)
        # Whole rows, decompressing only what they need (a cost in the rows, not in the chunk)
        pixels = read_rows(z, ya, yb, buffer)
        sky = None
        if src.sky is not None:
            coeffs, order, extent = src.sky
            sky = Surface(np.asarray(coeffs), order, tuple(extent), np.zeros(0))
        warp_frame(pixels[:, window[2]:window[3]], bmap, window, (ya, yb), out[i], sky,
                   background=src.background)
    return out


@dataclass(frozen=True)
class TileStack:
    """What every block task of one master tile needs: the frames, the tile grid and the
    reduction (plain values). The graph holds it once per tile, as one key that all the tile's
    block tasks share, so that the graph grows with the frames plus the blocks, not their product."""

    sources: tuple[TileSource, ...]
    grid_header: dict
    step: int
    channels: int
    method: str
    params: dict
    weights: np.ndarray | None  # (N, C) float64
    scale: np.ndarray | None    # (N, C) float32
    offset: np.ndarray | None   # (N, C) float32


def stack_tile_block(spec: TileStack, rows: tuple[int, int], cols: tuple[int, int]) -> tuple:
    """Worker task: warp the frames' windows onto one block of the tile grid and reduce them
    along the frame axis, in the same task. Returns the block's (image, count, rejected_low,
    rejected_high).

    The warped block (N × rows × cols × C samples, within the budget) lives only inside this
    task: it is never a task result that the scheduler could keep while other blocks are warped.
    """
    info = {None: {"array-location": [(0, len(spec.sources)), rows, cols, (0, spec.channels)]}}
    shape = (len(spec.sources), rows[1] - rows[0], cols[1] - cols[0], spec.channels)
    block = warp_block(list(spec.sources), spec.grid_header, spec.step, spec.channels, block_info=info,
                       out=block_buffer(shape))
    result = METHODS[spec.method](block, weights=spec.weights, scale=spec.scale, offset=spec.offset,
                                  **spec.params)
    # (the results must not live in the buffer the thread's next block overwrites)
    return tuple(np.array(r, copy=True) if np.may_share_memory(r, block) else r for r in result)


# One warped-block buffer per worker thread, reused by its block tasks: a fresh block of up to the
# budget (256 MiB) cost up to 0.5 s of page faults to touch, per block, when the page cache had
# to give the memory back first; a reused one is written at memory speed. The tile stage
# releases them when it ends (release_worker_memory), so they are held only while tiles stack.
_BLOCK_BUFFERS: dict[int, np.ndarray] = {}
_BLOCK_BUFFERS_LOCK = threading.Lock()


def block_buffer(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of ``shape`` in this thread's reusable buffer (its contents undefined)."""
    size = int(np.prod(shape))
    thread = threading.get_ident()
    with _BLOCK_BUFFERS_LOCK:
        buffer = _BLOCK_BUFFERS.get(thread)
        if buffer is None or buffer.size < size:
            buffer = _BLOCK_BUFFERS[thread] = np.empty(size, dtype=np.float32)
    return buffer[:size].reshape(shape)


def release_worker_memory() -> int:
    """Free every thread's block buffer and give the heap's free pages back to the system (run
    on each worker when a stage ends); returns how many buffers were freed."""
    with _BLOCK_BUFFERS_LOCK:
        count = len(_BLOCK_BUFFERS)
        _BLOCK_BUFFERS.clear()
    trim_heap()
    return count


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    try:  # (the symbols the process already has: no library search, no ldconfig subprocess)
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim(0)``; nothing where
    the C library lacks it).

    Why: calibration and warping allocate and free frame-sized arrays (8-25 MB) thousands of
    times; once glibc's mmap threshold has risen past that size it serves them from its arenas,
    and the freed pages left between live blocks stay resident. Untrimmed, a process had 100 MB
    more resident after calibrating 720 frames than after 144 (enough to break SDS's "same peak
    whatever the frames"); trimmed at the stage's end, both had 0.47 GB. It takes milliseconds."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def method_parameters(config: Config) -> dict:
    """The keyword parameters that the configured rejection method takes."""
    if config.reject == "kappa_sigma":
        return {"kappa": config.kappa, "iterations": config.iterations}
    if config.reject in ("winsorized", "linear_fit_clip"):
        return {"kappa": config.kappa}
    return {}


def tile_stack_spec(
    sources: list[TileSource], stats: list[FrameStats], exptimes: list[float | None], grid: Grid,
    channels: int, config: Config,
) -> TileStack:
    """The reduction of one tile as plain values, validated here (bad parameters raise now, not
    in a worker; the probe also compiles the kernel)."""
    return stack_spec(sources, stats, exptimes, grid.wcs_header, config.warp_grid_step, channels, config.reject,
                      method_parameters(config), config.normalization, config.weights)


def stack_spec(
    sources: list[TileSource], stats: list[FrameStats], exptimes: list[float | None], grid_header: dict,
    step: int, channels: int, method: str, params: dict, normalization: str, weights_mode: str,
) -> TileStack:
    """:func:`tile_stack_spec` from plain values (any grid: a master tile's, or the canvas for an
    SDS mega-tile): normalised by ``normalization``, weighted by ``weights_mode``, reduced by
    ``method`` with ``params``; validated here."""
    n = len(sources)
    scale, offset = normalization_coefficients(stats, normalization)
    if any(s.sky is not None or s.background is not None for s in sources):
        # The sky surfaces already brought every frame's background to the group's consensus
        # (a local background, to zero); offsets from whole-frame statistics (measured before
        # that) would undo it.
        offset = np.zeros_like(offset)
    weights = frame_weights(stats, weights_mode, exptimes=exptimes)
    spec = TileStack(
        tuple(sources), grid_header, step, channels, method, dict(params),
        per_frame(weights, n, channels, "weights", np.float64),
        per_frame(scale, n, channels, "scale", np.float32),
        per_frame(offset, n, channels, "offset", np.float32),
    )
    probe = np.zeros((n, 1, 1, channels), dtype=np.float32)
    METHODS[spec.method](probe, weights=spec.weights, scale=spec.scale, offset=spec.offset, **params)
    return spec


def _block_output(outputs: tuple, index: int, _spec: TileStack) -> np.ndarray:
    """One of a block task's outputs. It takes the tile's description too, unused, so that it has
    two dependencies: dask's linear fusion then cannot fold the block task into each of its four
    outputs (it did, with one: every block warped and reduced four times)."""
    return outputs[index]


def master_tile(
    sources: list[TileSource], stats: list[FrameStats], exptimes: list[float | None],
    grid: Grid, channels: int, config: Config, tile_id: int | str = "",
) -> dict[str, da.Array]:
    """Lazy arrays of one master tile: image (h, w, C), coverage (h, w), count and rejections.

    One task per block of the tile grid warps and reduces that block (:func:`stack_tile_block`),
    blocks sized by :func:`zdask.graph.stack.stack_chunks` so that the block's N frames fit
    ``config.budget``. The tasks depend on nothing but the tile's :class:`TileStack`, so a block
    holds memory only while it runs: the stage's peak is about threads × (budget + the frame
    windows of one warp) whatever the number of frames or groups.
    """
    spec = tile_stack_spec(sources, stats, exptimes, grid, channels, config)
    n = len(sources)
    # Blocks that fill the budget: the stage's memory then does not depend on the frame count.
    _, rchunks, cchunks, _ = stack_chunks((n, *grid.shape, channels), np.float32, config.budget,
                                          fill_budget=True)
    backgrounds = [None if s.background is None else s.background.digest() for s in sources]
    token = store.fingerprint([s.token for s in sources], [s.sky for s in sources], backgrounds, grid.to_json(),
                              channels, config.stage_digest("stack"))
    # In the dashboard: stack-tile-<id> blocks ((key, row, column, 0)), their outputs
    # tile-image-<id>, tile-count-<id>, ... (zdask.graph.taskkeys)
    spec_key = task_key("tile-spec", tile_id, token)
    name = task_key("stack-tile", tile_id, token)
    rstarts, cstarts = np.cumsum((0,) + rchunks), np.cumsum((0,) + cchunks)
    blocks = {}
    for i in range(len(rchunks)):
        for j in range(len(cchunks)):
            rows = (int(rstarts[i]), int(rstarts[i + 1]))
            cols = (int(cstarts[j]), int(cstarts[j + 1]))
            blocks[(name, i, j, 0)] = (stack_tile_block, spec_key, rows, cols)
    layers = {spec_key: {spec_key: spec}, name: blocks}
    dependencies = {spec_key: set(), name: {spec_key}}
    chunks = (rchunks, cchunks, (channels,))
    result = {}
    for k, (field, dtype) in enumerate((("image", np.float32), ("count", np.int32),
                                        ("rejected_low", np.int32), ("rejected_high", np.int32))):
        out = task_key(f"tile-{field.replace('_', '-')}", tile_id, token)
        layer = {(out,) + key[1:]: (_block_output, key, k, spec_key) for key in blocks}
        graph = HighLevelGraph({**layers, out: layer}, {**dependencies, out: {name, spec_key}})
        result[field] = da.Array(graph, out, chunks=chunks, dtype=dtype,
                                 meta=np.empty((0, 0, 0), dtype=dtype))
    # Coverage from geometry: a warped sample is NaN exactly where the frame's footprint ends,
    # so the samples kept plus those rejected count the footprints (no second pass over the
    # warped blocks).
    # (not "tile-coverage": the dashboard's key_split takes an 8-letter word starting a-f for hex)
    result["coverage"] = da.map_blocks(_footprints, result["count"], result["rejected_low"], result["rejected_high"],
                                       drop_axis=2, dtype=np.float32, meta=np.empty((0, 0), np.float32),
                                       name=task_key("tile-footprints", tile_id, token))
    return result


def _footprints(count: np.ndarray, rejected_low: np.ndarray, rejected_high: np.ndarray) -> np.ndarray:
    """A block's coverage: the frames whose footprint holds each pixel (kept + rejected)."""
    return (count[..., 0] + rejected_low[..., 0] + rejected_high[..., 0]).astype(np.float32)


def store_tile(arrays: dict[str, da.Array], root: str, name: str, tile_id: int | str = ""):
    """Delayed writes of a tile's arrays to ``root/name/*`` (Zarr chunks = dask blocks), named
    ``write-tile-<tile_id>-...`` in the dashboard."""
    group = store.open_store(root)
    targets, sources = [], []
    for key, stored in TILE_ARRAYS.items():
        arr = arrays[key]
        chunks = tuple(c[0] for c in arr.chunks)
        targets.append(store.create_array(group, f"{name}/{stored}", arr.shape, arr.dtype, chunks))
        sources.append(arr)
    return store_named(sources, targets, "write-tile", tile_id, os.path.basename(name))


def finish_tile(root: str, name: str, mode: str, n_frames: int, cleanup: bool, config: Config) -> dict:
    """Worker task after the stack: health check, alt-az alpha, colour equalisation, weights.

    Reads the stacked image, writes the finished ``image`` (renormalised, equalised), ``alpha``
    and ``weight`` (coverage × alpha × edge feather) beside it; the stack's own arrays are left as
    they are, so a second call gives the same result. Returns the tile's summary for the report.
    """
    group = store.open_store(root)
    # Read and written through chunkrows: (de)compressed in this thread, so that two tiles
    # finishing at once do not queue in zarr's one I/O thread.
    image = read_whole(group[f"{name}/{TILE_ARRAYS['image']}"])
    coverage = np.nan_to_num(read_whole(group[f"{name}/coverage"]))
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
    write_rows(store.create_array(group, f"{name}/image", image.shape, "float32", chunks + image.shape[2:]), image)
    write_rows(store.create_array(group, f"{name}/alpha", alpha.shape, "float32", chunks), alpha)
    write_rows(store.create_array(group, f"{name}/weight", weight.shape, "float32", chunks), weight)
    return summary
