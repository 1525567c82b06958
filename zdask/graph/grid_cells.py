"""The grid mode's cell stage: each cell stacked from the frames that touch it, on its window
of the canvas, with the master tiles' engine.

Per cell: its frames carry their sky surfaces, matched once for the whole survey on the canvas
(:mod:`zdask.graph.grid_sky`; or each frame's local background with ``background_mesh``), then the fused warp + stack of
:func:`zdask.graph.tiles.master_tile` on the cell's grid (blocks holding the whole frame axis
within ``budget``: memory does not grow with the frame count), the coverage from the warp
footprints. Stored beside the stack, block by block: the cell's blending ``alpha`` (its share
of a partition of unity, :func:`zdask.graph.grid_plan.blend_profile`) and ``weight`` =
coverage × alpha, which the coadd reads. A finishing task per cell bins the cell by
``match_bin`` (read in bands of rows, never whole), judges its health and takes its RGB
medians: the binned cell is what the photometric match works on.

Working store: ``grid/cells/<fp>/{image, coverage, count, rejected_low, rejected_high, alpha,
weight, binned_image, binned_coverage}``, marked complete with the fingerprint of the cell's
frames, grid, blend and settings, so a second run reuses it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from zdask.cluster import wait_with_progress
from zdask.graph.geometry import Grid
from zdask.graph.grid_sky import frame_sky_on_canvas, surface_on_cell
from zdask.graph.harmonize import frame_backgrounds
from zdask.graph.tiles import TileSource, master_tile, release_worker_memory
from zdask.io import store
from zdask.io.chunkrows import read_rows
from zdask.ops.cellscale import cell_health
from zdask.ops.colour import equalize_rgb_medians
from zdask.ops.warp import bin_image

#: the stack's arrays as stored (lazy ones of master_tile, plus the blend's)
CELL_ARRAYS = ("image", "coverage", "count", "rejected_low", "rejected_high", "alpha", "weight")
#: rows of a cell read at a time by the finishing task (a multiple of any match_bin)
BAND_ROWS = 256
#: frames per local-background task (background_mesh > 0)
BACKGROUND_BATCH = 16


@dataclass(frozen=True)
class CellJob:
    """One cell to stack: its id, its grid (a window of the canvas), its box on the canvas, the
    blend profiles along its rows and columns, the frames' sources and statistics."""

    id: int
    grid: Grid
    box: tuple[int, int, int, int]
    profile_rows: np.ndarray
    profile_cols: np.ndarray
    sources: list
    stats: list
    exptimes: list
    fp: str

    @property
    def name(self) -> str:
        return f"grid/cells/{self.fp}"


@dataclass(frozen=True)
class StackedCell:
    """A stored cell as the photometry and the coadd see it, with its finishing summary."""

    id: int
    name: str
    fp: str
    grid: Grid
    box: tuple[int, int, int, int]
    n_frames: int
    summary: dict
    reused: bool


def _alpha_block(coverage: np.ndarray, rows: np.ndarray, cols: np.ndarray, block_info=None) -> np.ndarray:
    """The cell's blend weight on one block: its row profile × its column profile."""
    (r0, r1), (c0, c1) = block_info[0]["array-location"]
    return np.multiply.outer(rows[r0:r1], cols[c0:c1]).astype(np.float32)


def cell_arrays(job: CellJob, channels: int, config) -> dict[str, da.Array]:
    """Lazy arrays of one cell: the master-tile engine's stack on the cell's grid, its blend
    alpha and weight (same blocks: one warp + stack task per block feeds them all)."""
    arrays = master_tile(job.sources, job.stats, job.exptimes, job.grid, channels, config)
    coverage = arrays["coverage"]
    alpha = da.map_blocks(functools.partial(_alpha_block, rows=job.profile_rows, cols=job.profile_cols), coverage,
                          dtype=np.float32, meta=np.empty((0, 0), dtype=np.float32),
                          name=f"grid-alpha-{job.fp}")
    return {**arrays, "alpha": alpha, "weight": coverage * alpha}


def store_cell(arrays: dict[str, da.Array], root: str, name: str):
    """Delayed writes of a cell's arrays to ``root/name/*`` (Zarr chunks = dask blocks)."""
    group = store.open_store(root)
    targets = [store.create_array(group, f"{name}/{key}", arrays[key].shape, arrays[key].dtype,
                                  tuple(c[0] for c in arrays[key].chunks)) for key in CELL_ARRAYS]
    return da.store([arrays[key] for key in CELL_ARRAYS], targets, lock=False, compute=False)


def finish_cell(_writes, root: str, name: str, factor: int, rgb_equalize: bool, gain_range) -> dict:
    """Worker task: bin the stored cell by ``factor`` (bands of rows), store the binned image and
    coverage, and return its summary: health, RGB gains (median equalisation of the binned
    cell; 1 for mono or when off), rejected fraction, peak coverage."""
    group = store.open_group(root, name, mode="r+")
    image, coverage = group["image"], group["coverage"]
    h = image.shape[0] // factor * factor
    band = max(factor, BAND_ROWS // factor * factor)
    binned, binned_cov = [], []
    kept = rejected = 0
    for y in range(0, image.shape[0], band):
        y1 = min(image.shape[0], y + band)
        if y < h:
            binned.append(bin_image(read_rows(image, y, min(y1, h)), factor))
            binned_cov.append(bin_image(np.nan_to_num(read_rows(coverage, y, min(y1, h))), factor))
        kept += int(read_rows(group["count"], y, y1).sum(dtype=np.int64))
        rejected += int(sum(read_rows(group[k], y, y1).sum(dtype=np.int64) for k in ("rejected_low", "rejected_high")))
    channels = image.shape[-1]
    b_image = np.concatenate(binned) if binned else np.full((0, image.shape[1] // factor, channels), np.nan, np.float32)
    b_cov = np.concatenate(binned_cov) if binned_cov else np.zeros(b_image.shape[:2], np.float32)
    store.create_array(group, "binned_image", b_image.shape, "float32", b_image.shape or (1,))[...] = b_image
    store.create_array(group, "binned_coverage", b_cov.shape, "float32", b_cov.shape or (1,))[...] = b_cov
    health = cell_health(b_image, b_cov) if b_image.size else None
    healthy = bool(health is not None and health.ok)
    gains = np.ones(channels)
    equalised = False
    if healthy and rgb_equalize and channels == 3:
        _, gains = equalize_rgb_medians(b_image, gain_range=tuple(gain_range), mask=b_cov > 0)
        equalised = True
    return {"healthy": healthy, "health_reason": None if healthy else (health.reason if health else "empty"),
            "rgb_equalised": equalised, "rgb_gains": [float(g) for g in gains],
            "rejected_fraction": rejected / (kept + rejected) if kept + rejected else 0.0,
            "coverage_peak": float(b_cov.max(initial=0.0))}


def stack_cells(jobs: list[CellJob], channels: int, canvas: Grid, config, client, work) -> list[StackedCell]:
    """Stack (or reuse) every cell of ``jobs``; returns them in order with their summaries."""
    done: dict[int, StackedCell] = {}
    pending = []
    for job in jobs:
        if store.is_complete(work.root, job.name, job.fp):
            summary = dict(store.open_group(work.root, job.name).attrs["summary"])
            done[job.id] = StackedCell(job.id, job.name, job.fp, job.grid, job.box, len(job.sources), summary, True)
        else:
            pending.append(job)
    curvature = _frame_skies(pending, canvas, config, client, work) if pending else None
    futures = []
    for job in pending:
        store.begin_entry(work.root, job.name)
        writes = store_cell(cell_arrays(job, channels, config), work.root, job.name)
        summary = dask.delayed(finish_cell)(writes, work.root, job.name, config.match_bin, config.rgb_equalize,
                                            config.rgb_gain_range)
        futures.append(client.compute(summary))
    summaries = wait_with_progress(futures, "grid cells", work.console)
    client.run(release_worker_memory)
    for job, summary in zip(pending, summaries):
        summary = {**summary, "sky_curvature": curvature}
        store.mark_complete(work.root, job.name, job.fp, summary=summary)
        done[job.id] = StackedCell(job.id, job.name, job.fp, job.grid, job.box, len(job.sources), summary, False)
    return [done[job.id] for job in jobs]


def _frame_skies(pending: list[CellJob], canvas: Grid, config, client, work) -> dict | None:
    """Give the pending cells' sources their frames' skies: each frame's surface matched to
    every frame overlapping it on the canvas, less the curvature they all share
    (:func:`zdask.graph.grid_sky.frame_sky_on_canvas`, one task for the survey), shifted onto
    each cell; or, with ``background_mesh``, each frame's own local background (one task per
    :data:`BACKGROUND_BATCH` frames). Returns the report of that curvature (None without one)."""
    mesh, order = config.background_mesh, config.sky_surface_order
    frames = {}
    for job in pending:
        for src in job.sources:
            frames.setdefault(src.key, src)
    keys = sorted(frames)
    if mesh > 0:
        batches = [keys[k:k + BACKGROUND_BATCH] for k in range(0, len(keys), BACKGROUND_BATCH)]
        futures = [client.submit(frame_backgrounds, [frames[key] for key in batch], config.match_bin, mesh,
                                 key=f"grid-bgmesh-{store.fingerprint([frames[key].token for key in batch], mesh)}")
                   for batch in batches]
        found = wait_with_progress(futures, "grid local backgrounds", work.console)
        by_key = {key: b for batch, result in zip(batches, found) for key, b in zip(batch, result)}
        for job in pending:
            job.sources[:] = [dataclasses.replace(s, background=by_key[s.key]) for s in job.sources]
        return None
    if order < 0 or len(keys) < 2:
        return None
    token = store.fingerprint([frames[key].token for key in keys], [frames[key].wcs_header for key in keys],
                              canvas.to_json(), config.match_bin, order)
    future = client.submit(frame_sky_on_canvas, [frames[key] for key in keys], canvas, config.match_bin, order,
                           key=f"grid-frame-sky-{token}")
    found = wait_with_progress([future], "grid frame skies", work.console)[0]
    skies = dict(zip(keys, found["surfaces"]))
    work.say(f"grid frame skies: curvature taken out of every frame {found['curvature']}")
    for job in pending:
        job.sources[:] = [dataclasses.replace(s, sky=surface_on_cell(skies[s.key], job.box)) for s in job.sources]
    return found["curvature"]


def cell_job(cell_id: int, grid: Grid, box, profile_rows, profile_cols, frames, front, root: str, survey: str,
             config) -> CellJob:
    """A cell's job: its frames' sources (calibrated frames in ``root``, placed by their aligned
    WCS) and its fingerprint (frames, their WCS, the cell's grid and blend, the settings, and
    ``survey``, the fingerprint of all the frames: their skies are matched together)."""
    wcs = [front.wcs_of(f) for f in frames]
    sources = [TileSource(root, *front.calibrated[f.path], h, (f.height, f.width)) for f, h in zip(frames, wcs)]
    rows, cols = np.asarray(profile_rows, np.float32), np.asarray(profile_cols, np.float32)
    blend = hashlib.sha256(rows.tobytes() + b"|" + cols.tobytes()).hexdigest()
    fp = store.fingerprint([front.calibrated[f.path][1] for f in frames], wcs, grid.to_json(), blend, survey,
                           front.channels, config.stage_digest("tiles"), config.stage_digest("grid"))
    return CellJob(cell_id, grid, tuple(box), rows, cols, sources, [front.stats[f.path] for f in frames],
                   [f.exptime_s for f in frames], fp)
