"""The sds mode ("mosaic first"): lots of frames in time order, each reduced straight onto the
canvas to a mega-tile, the mega-tiles gain-matched and stacked again, then polished.

:func:`plan` is pure: the lots (:func:`zdask.graph.sds_plan.plan_lots` with the ``[sds]``
knobs, on the frames not excluded, placed by their aligned WCS), each with the canvas window its
frames touch and the binning its sky fit uses. :func:`build` matches the skies of each lot's
frames (as the classic mode matches a group's: :mod:`zdask.graph.sds_sky`), runs the chain
(:func:`zdask.graph.sds_run.run_sds`: mega-tiles, the alt-az cleanup of the ALT_AZ lots, gain
match, a global stack without any background matching, coverage cut, the two-pass coverage
renormalisation when ``coverage_renorm`` is on, and autocrop) and writes the mosaic's image and coverage
into ``sds/mosaic`` of the working store, reused by a re-run with the same fingerprint.

When SDS cannot make a mosaic (no lot, nothing covered, every pixel NaN, or a coverage cut that
keeps less than ``sds.min_field_kept`` of the field the frames cover: lots that do not each
cover the field, as in a survey of panels), the run says why in one line and in the report
(``sds_fallback_reason``) and builds the classic mode's mosaic instead (``mode`` "classic",
``mode_requested`` "sds").

Memory: every task is bounded by the stacking budget whatever the number of frames or lots:
a global-stack block holds the lots touching it (``L × s² × (C + 1) × 4`` bytes, its side
sized by :func:`zdask.graph.sds.block_side` to fit ``budget``), a mega-tile task its lot's
warped frames and outputs on a rectangle of whole blocks (``((N_lot + 4) × C × 4 + 4)`` bytes a
pixel, the rectangle chosen by :func:`zdask.graph.sds.megatile_regions` to fit ``budget``); the
lot planner holds a few coarse grids whatever the number of frames (:mod:`zdask.graph.sds_plan`);
a lot's sky fit is bounded by
:func:`zdask.graph.sds_sky.sky_bin` to about one budget; the gain match holds two binned
mega-tiles (0.25 MB per canvas megapixel at ``match_bin`` 8). So the process tree peaks near
``threads × (2 × budget + 2 × one frame) + 64 MiB`` above the cluster's start, the master-tile
stage's bound (tests/graph/test_sds_memory.py checks the chain against it at 6 and 24 lots, budget 4 MiB).

Alt-az cleanup (``altaz_cleanup``) is decided per lot as the classic mode decides it per group
(:func:`zdask.graph.tile_stage.cleanup_decisions`: ALT_AZ lots only, and a warning when the
run has no ALT_AZ frame); each lot's report says ``altaz_cleanup`` (asked of it) and
``altaz_applied`` (the mask's guard let it be used). How both polish steps stay bounded on the
canvas: :mod:`zdask.graph.sds_polish`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from zdask.cluster import wait_with_progress
from zdask.graph.canvas import Canvas, canvas_of_grids
from zdask.graph.modes import classic
from zdask.graph.modes.base import ModeResult
from zdask.graph.sds_plan import Lot, plan_lots
from zdask.graph.sds_run import GLOBAL_METHODS, SdsError, SdsSettings, run_sds
from zdask.graph.sds_sky import lot_backgrounds, lot_skies, lot_window, sky_bin
from zdask.graph.tile_stage import cleanup_decisions
from zdask.graph.tiles import TileSource, tile_grid
from zdask.io import store

INPUT = "frames"

# How mega-tiles are matched: gains from compact sources (classic's tile photometry), offsets
# from the sky (transparency scales the signal, not the sky glow that dominates a median ratio);
# over the pixels both mega-tiles cover above 1 % of their peaks (the ancestor's rule).
GAIN_METHOD = "sources"
GAIN_MIN_FRACTION = 0.01


@dataclass(frozen=True)
class LotJob:
    """One lot: its id and mount mode, its frames (indices into the front's frames), the
    fraction of its mode's survey cells it covers, the canvas window (y0, y1, x0, x1) its frames
    touch (None: none lies on the canvas), the binning of its sky fit and whether it gets the
    alt-az cleanup."""

    id: int
    mode: str
    frames: tuple[int, ...]
    coverage: float
    window: tuple[int, int, int, int] | None
    sky_bin: int
    cleanup: bool


@dataclass(frozen=True)
class SdsPlan:
    lots: tuple[LotJob, ...]
    warnings: tuple[str, ...]


def lot_knobs(config) -> dict:
    """``plan_lots``'s keyword arguments from the ``[sds]`` section."""
    return {"min_lot_size": config.sds.min_lot_size, "lot_coverage": config.sds.lot_coverage,
            "target_lot_size": config.sds.target_lot_size}


def plan(front, canvas: Canvas, config) -> SdsPlan:
    """The lots of ``front``'s frames that are not excluded, in input order. Pure."""
    used = [i for i, f in enumerate(front.frames) if f.path not in front.excluded]
    frames = [front.frames[i] for i in used]
    headers = [front.wcs_of(f) for f in frames]
    lots = plan_lots(frames, canvas.grid, wcs_headers=headers, **lot_knobs(config)) if frames else ()
    decisions, warnings = cleanup_decisions([lot.mode for lot in lots], config.altaz_cleanup)
    jobs = []
    for lot, cleanup in zip(lots, decisions):
        window = lot_window([headers[k] for k in lot.frames],
                            [(frames[k].height, frames[k].width) for k in lot.frames], canvas.grid)
        factor = config.match_bin if window is None else sky_bin(
            (window[1] - window[0], window[3] - window[2]), len(lot.frames), front.channels, config.match_bin,
            config.budget)
        jobs.append(LotJob(lot.id, lot.mode, tuple(used[k] for k in lot.frames), lot.coverage, window, factor,
                           cleanup))
    return SdsPlan(tuple(jobs), tuple(warnings))


def header_lots(frames, groups, config) -> tuple[Lot, ...]:
    """The lots of ``frames`` as their headers place them (``zdask plan --mode sds``, before any
    pixel is read): on the canvas covering the groups' tile grids, as a run plans its canvas."""
    grids = [tile_grid([frames[i] for i in g.frames], config.tile_margin) for g in groups]
    scale = float(np.nanmedian([f.scale_arcsec for f in frames]))
    canvas = canvas_of_grids(grids, scale, config.max_canvas_pixels, "tile")
    return plan_lots(frames, canvas.grid, **lot_knobs(config))


def settings_of(config) -> SdsSettings:
    """The chain's settings: the frames stacked as master tiles are, the mega-tiles by the run's
    rejection when it is one the global stack offers (kappa_sigma, winsorized), else kappa_sigma."""
    method = config.reject if config.reject in GLOBAL_METHODS else "kappa_sigma"
    return SdsSettings.from_config(config, global_method=method, gain_method=GAIN_METHOD,
                                   gain_min_fraction=GAIN_MIN_FRACTION,
                                   min_coverage_keep=config.sds.min_coverage_keep)


def build(plan: SdsPlan, front, canvas: Canvas, config, client, work) -> ModeResult:
    """The SDS mosaic, or the classic mode's with the reason when SDS cannot make one."""
    for text in plan.warnings:
        work.say(f"warning: {text}")
    try:
        return _build_sds(plan, front, canvas, config, client, work)
    except SdsError as exc:
        reason = str(exc)
    text = f"SDS cannot make a mosaic of these frames: {reason}; built in the classic mode instead"
    work.say(f"warning: {text}")
    result = classic.build(classic.plan(front, canvas, config), front, canvas, config, client, work)
    report = {**result.report, "mode": "classic", "mode_requested": "sds", "sds_fallback_reason": reason}
    # (the classic build states its own warnings: the sds plan's concern a mosaic not made)
    return dataclasses.replace(result, report=report, warnings=(text, *result.warnings))


def _sources(plan: SdsPlan, front, canvas: Canvas, config, client, work) -> dict[int, TileSource]:
    """Every lot frame's source (front index → TileSource), its sky matched within its lot (or
    its own local background subtracted, with ``background_mesh``), as a group's in classic."""
    sources = {}
    for job in plan.lots:
        for i in job.frames:
            f = front.frames[i]
            sources[i] = TileSource(work.root, *front.calibrated[f.path], front.wcs_of(f), (f.height, f.width))
    mesh, order = config.background_mesh, config.sky_surface_order
    if mesh > 0:
        todo = list(plan.lots)
    else:
        todo = [job for job in plan.lots if order >= 0 and len(job.frames) >= 2 and job.window is not None]
    futures = []
    for job in todo:
        lot_sources = [sources[i] for i in job.frames]
        key = store.fingerprint([s.token for s in lot_sources], [s.wcs_header for s in lot_sources],
                                canvas.grid.to_json(), job.window, job.sky_bin, order, mesh)
        if mesh > 0:
            futures.append(client.submit(lot_backgrounds, lot_sources, config.match_bin, mesh, key=f"sds-bg-{key}"))
        else:
            futures.append(client.submit(lot_skies, lot_sources, canvas.grid, job.window, job.sky_bin, order,
                                         key=f"sds-sky-{key}"))
    for job, matched in zip(todo, wait_with_progress(futures, "SDS lot skies", work.console)):
        sources.update(zip(job.frames, matched))
    return sources


def _build_sds(plan: SdsPlan, front, canvas: Canvas, config, client, work) -> ModeResult:
    if not plan.lots:
        raise SdsError("no SDS lot: no usable frame")
    timings = {}
    t = time.perf_counter()
    sources = _sources(plan, front, canvas, config, client, work)
    timings["sds_sky"] = time.perf_counter() - t
    t = time.perf_counter()
    order = sorted(sources)  # the chain's frame sequence; the lots index into it
    position = {i: k for k, i in enumerate(order)}
    frames = [front.frames[i] for i in order]
    lots = [Lot(job.id, job.mode, tuple(position[i] for i in job.frames), job.coverage) for job in plan.lots]
    result = run_sds([sources[i] for i in order], [front.stats[f.path] for f in frames],
                     [f.exptime_s for f in frames], lots, canvas.grid, front.channels, work.root,
                     settings_of(config), paths=[f.path for f in frames],
                     altaz_lots=[job.id for job in plan.lots if job.cleanup], client=client, say=work.say)
    timings["sds"] = time.perf_counter() - t
    t = time.perf_counter()
    chain = dict(result.report)
    kept = _field_kept(work.root, chain["zarr"], chain["coverage_threshold"], client)
    if kept < config.sds.min_field_kept:
        raise SdsError(f"the coverage cut ({config.sds.min_coverage_keep} x the peak coverage) keeps "
                       f"{kept:.0%} of the field the frames cover, below sds.min_field_kept "
                       f"{config.sds.min_field_kept}: the lots do not each cover the field (a survey of panels?)")
    fp = store.fingerprint(chain["zarr"], chain["crop_box"], chain["coverage_threshold"], chain["coverage_renorm"])
    reused = store.is_complete(work.root, MOSAIC, fp)
    if not reused:
        _store_mosaic(result, fp, client, work)
    timings["sds_write"] = time.perf_counter() - t
    jobs = {job.id: job for job in plan.lots}
    lots_report = [{**entry, "coverage": round(jobs[entry["id"]].coverage, 4),
                    "window": None if jobs[entry["id"]].window is None else list(jobs[entry["id"]].window),
                    "sky_bin": jobs[entry["id"]].sky_bin}
                   for entry in chain.pop("lots")]
    mosaic = {"shape": list(result.grid.shape), "scale_arcsec": canvas.scale_arcsec, "channels": front.channels,
              "crop_box": chain["crop_box"], "field_kept": kept, "reused": reused}
    report = {"mode": "sds", "lots": lots_report, "sds": chain, "mosaic": mosaic}
    return ModeResult(MOSAIC, result.grid.wcs_header, len(plan.lots), sum(len(job.frames) for job in plan.lots),
                      report, plan.warnings, timings)


#: the SDS mosaic's group in the working store (image, coverage)
MOSAIC = "sds/mosaic"


def _field_kept(root: str, stack: str, threshold: float, client) -> float:
    """Fraction of the global stack's covered pixels that the coverage cut keeps."""
    stored = store.open_array_at(root, f"{stack}/coverage")
    coverage = da.from_array(stored, chunks=stored.chunks, asarray=True)
    counts = da.stack([(coverage > 0).sum(), (coverage >= np.float32(threshold)).sum()])
    covered, kept = client.compute(counts).result()
    return float(kept) / max(1, int(covered))


def _store_mosaic(result, fp: str, client, work) -> None:
    """The polished image and coverage into :data:`MOSAIC`; SdsError when no pixel is finite."""
    store.begin_entry(work.root, MOSAIC)
    group = store.open_store(work.root)
    image, coverage = result.image, result.coverage
    targets = [store.create_array(group, f"{MOSAIC}/{key}", array.shape, "float32",
                                  tuple(c[0] for c in array.chunks))
               for key, array in (("image", image), ("coverage", coverage))]
    writes = da.store([image, coverage], targets, lock=False, compute=False)
    finite = (da.isfinite(image).all(axis=-1) & (coverage > 0)).sum()
    # One computation: the finite count shares the polished blocks the writes compute.
    done = dask.delayed(lambda _, count: int(count))(writes, finite)
    (n_finite,) = wait_with_progress([client.compute(done)], "SDS mosaic", work.console)
    if not n_finite:
        raise SdsError("every pixel of the SDS mosaic is NaN")
    store.mark_complete(work.root, MOSAIC, fp)
