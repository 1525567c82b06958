"""The runner: scan → plan → hot pixels → calibrate → master tiles → mosaic → outputs.

Each stage names its outputs in the working Zarr store with a fingerprint of its inputs and
settings; a stage whose outputs carry the fingerprint it would compute now is skipped. That is
how a second run reuses finished tiles and how a crashed run resumes.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import zarr
from astropy.utils.exceptions import AstropyWarning
from dask.utils import parse_bytes

from zdask.cluster import open_client, wait_with_progress
from zdask.config import Config
from zdask.graph import calibrate as cal
from zdask.graph.geometry import Grid
from zdask.graph.align import attach_unsolved
from zdask.graph.align_stage import run_align_stage
from zdask.graph.field import OFF_FIELD_REASON, field_canvas_problem, split_main_field
from zdask.graph.mosaic_stage import run_mosaic_stage
from zdask.graph.plan import Plan, plan_master_tiles
from zdask.graph.tile_stage import run_tile_stage
from zdask.io import store
from zdask.io.folderlock import FolderInUse, FolderLock
from zdask.io.outputs import PreviewSampler, rows_per_band, write_json, write_mosaic
from zdask.io.platesolve import available_solver, plate_solve
from zdask.io.scan import Frame, FrameTable, RejectedFile, scan, with_wcs
from zdask.ops.framestats import FrameStats
from zdask.ops.coadd import warm_up as coadd_warm_up
from zdask.ops.stacking import warm_up

class RunError(Exception):
    """A run cannot start or go on; the message is one line for the user (exit status 2)."""


@dataclass
class RunContext:
    """What the stages share: inputs, settings, where to write, and the growing report."""

    frames: list[Frame]
    config: Config
    out_dir: str
    say: Callable[[str], None]
    console: object = None
    report: dict = field(default_factory=dict)
    # Filled in by the stages, in order:
    hot: dict[str, np.ndarray] = field(default_factory=dict)        # sensor → hot pixel indices
    channels: int = 3                                                # 3 colour, 1 mono
    calibrated: dict[str, tuple[str, str]] = field(default_factory=dict)  # path → (key, fingerprint)
    stats: dict[str, FrameStats] = field(default_factory=dict)      # path → frame statistics
    excluded: dict[str, str] = field(default_factory=dict)          # path → why it is not stacked
    aligned: dict[str, dict] = field(default_factory=dict)          # path → WCS after alignment
    tiles: list[tuple[dict, Grid | None, str | None]] = field(default_factory=list)  # (entry, grid, fp)
    canvas_header: dict | None = None

    def wcs_of(self, frame: Frame) -> dict:
        """The WCS that places a frame: its aligned one if alignment refined it."""
        return self.aligned.get(frame.path, frame.wcs_header)

    @property
    def root(self) -> str:
        return os.path.join(self.out_dir, "work.zarr")


def usable_frames(table: FrameTable) -> tuple[list[Frame], list[RejectedFile]]:
    """Frames of one colour kind: a run mixing mono and colour frames keeps the majority kind."""
    colour = [f for f in table.frames if f.layout != "mono"]
    mono = [f for f in table.frames if f.layout == "mono"]
    if colour and mono:
        keep, drop = (colour, mono) if len(colour) >= len(mono) else (mono, colour)
        kind = "colour" if keep is colour else "mono"
        extra = [RejectedFile(f.path, f"wrong dimensions: {f.layout} frame in a {kind} run") for f in drop]
        return keep, list(table.rejected) + extra
    return list(table.frames), list(table.rejected)


def attach_unsolved_frames(frames: list[Frame], rejected: list[RejectedFile], unsolved: list[Frame],
                           plan: Plan, say) -> tuple[list[Frame], list[RejectedFile], Plan]:
    """Put each frame without a WCS into the group of the solved frame nearest in time, to be
    registered there by star matching; frames with no such neighbour stay rejected."""
    nearest = attach_unsolved(frames, unsolved)
    frames = list(frames)
    index = {f.path: i for i, f in enumerate(frames)}
    extra: dict[int, list[int]] = {}
    attached = set()
    for frame in unsolved:
        target = nearest.get(frame.path)
        if target is None:
            continue
        group = next(g for g in plan.groups if index[target] in g.frames)
        frames.append(frame)
        extra.setdefault(group.id, []).append(len(frames) - 1)
        attached.add(frame.path)
        say(f"{frame.path}: no celestial WCS; registering it with group {group.id} by star matching")
    groups = tuple(dataclasses.replace(g, frames=g.frames + tuple(extra.get(g.id, ()))) for g in plan.groups)
    return frames, [r for r in rejected if r.path not in attached], dataclasses.replace(plan, groups=groups)


def plate_solve_frames(unsolved: list[Frame], solved: list[Frame], say) -> tuple[list[Frame], list[Frame]]:
    """Plate-solve frames without a WCS when solve-field or astap is installed:
    (frames that got a WCS, frames still without one)."""
    hint = float(np.nanmedian([f.scale_arcsec for f in solved])) if solved else None
    done, left = [], []
    for frame in unsolved:
        cards = plate_solve(frame.path, scale_arcsec_hint=hint)
        if cards:
            done.append(with_wcs(frame, cards))
            say(f"{frame.path}: plate-solved with {available_solver()}")
        else:
            left.append(frame)
    return done, left


#: console lines per skip reason; report.json lists every skipped file
SKIPPED_LINES_PER_REASON = 5


def say_skipped(rejected: Sequence[RejectedFile], say) -> None:
    """One console line per skipped file, at most :data:`SKIPPED_LINES_PER_REASON` for one reason
    (a folder of frames may hold a JPEG beside each of them), then a count."""
    by_reason: dict[str, list[str]] = {}
    for bad in rejected:
        by_reason.setdefault(bad.reason, []).append(bad.path)
    for reason, paths in by_reason.items():
        for path in paths[:SKIPPED_LINES_PER_REASON]:
            say(f"skipped {path}: {reason}")
        if len(paths) > SKIPPED_LINES_PER_REASON:
            say(f"skipped {len(paths) - SKIPPED_LINES_PER_REASON} more file(s): {reason} "
                f"(report.json lists them all)")


def check_output_location(inputs: Sequence[str], out_dir: str) -> None:
    """Refuse a missing input, and an output folder inside an input folder: inputs are never written."""
    out = os.path.realpath(out_dir)
    for item in inputs:
        if not os.path.exists(item):
            raise RunError(f"{item}: no such file or folder")
        folder = os.path.realpath(item if os.path.isdir(item) else os.path.dirname(item) or ".")
        if out == folder or out.startswith(folder + os.sep):
            raise RunError(f"output folder {out_dir} is inside input folder {item}; choose another --out")


def claim_output_folder(out_dir: str) -> FolderLock:
    """Lock ``out_dir`` (creating it) for the whole run: a second run into it is refused."""
    try:
        return FolderLock.acquire(out_dir)
    except FolderInUse as exc:
        holder = f" (pid {exc.pid})" if exc.pid else ""
        raise RunError(f"output folder {out_dir} is in use by another zdask run{holder}; "
                       f"wait for it or choose another --out") from None
    except OSError as exc:
        raise RunError(f"output folder {out_dir}: {exc.strerror or exc}") from None


def run(inputs: Sequence[str], out_dir: str, config: Config, say=print, console=None) -> dict:
    """Build the mosaic of ``inputs`` into ``out_dir``; returns the report (also report.json)."""
    # zdask silences astropy's header-fix notices where it reads headers, with catch_warnings
    # blocks; those are not thread-safe: one closing in another thread (a worker, numba's
    # compile in the warm-up thread) restores the filters while another block is still open,
    # and the notice leaks. One filter for the whole run, set before any thread starts, holds.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        check_output_location(inputs, out_dir)
        with claim_output_folder(out_dir):
            return _run(inputs, out_dir, config, say, console)


def _run(inputs: Sequence[str], out_dir: str, config: Config, say, console) -> dict:
    timings: dict[str, float] = {}
    # Compile the stacking kernel while the first stages run: in a fresh environment the
    # compile takes seconds of one core, and the tile stage would otherwise wait for it.
    threading.Thread(target=warm_up, args=(config.reject,), name="zdask-kernel-warm-up", daemon=True).start()
    threading.Thread(target=coadd_warm_up, name="zdask-coadd-warm-up", daemon=True).start()
    t = time.perf_counter()
    table = scan(inputs)
    frames, rejected = usable_frames(table)
    timings["scan"] = time.perf_counter() - t
    if not frames:
        say_skipped(rejected, say)
        raise RunError(f"no usable frame among {len(rejected)} input file(s); see the reasons above")
    t = time.perf_counter()
    unsolved = list(table.unsolved)
    if unsolved and available_solver():
        solved, unsolved = plate_solve_frames(unsolved, frames, say)
        if solved:
            frames = frames + solved
            done = {f.path for f in solved}
            rejected = [r for r in rejected if r.path not in done]
    # A frame from another part of the sky must neither size the canvas nor get a tile.
    frames, off_field = split_main_field(frames)
    problem = field_canvas_problem(frames, config.tile_margin, config.max_canvas_pixels)
    if problem:
        raise RunError(problem)
    plan = plan_master_tiles(frames, link_fov_fraction=config.link_fov_fraction,
                             max_group_size=config.max_group_size)
    if config.align and unsolved:
        frames, rejected, plan = attach_unsolved_frames(frames, rejected, unsolved, plan, say)
    timings["plan"] = time.perf_counter() - t
    say_skipped(rejected, say)
    for far in off_field:
        say(f"excluded {far.path}: {OFF_FIELD_REASON}")
    say(f"{len(frames)} frame(s) in {len(plan.groups)} master-tile group(s); {len(rejected)} file(s) skipped")
    os.makedirs(out_dir, exist_ok=True)
    ctx = RunContext(frames, config, out_dir, say, console)
    ctx.report = {
        "inputs": [os.path.abspath(p) for p in inputs],
        "config": config.to_dict(),
        "frames_used": len(frames),
        "frames_rejected": [{"path": r.path, "reason": r.reason} for r in rejected],
        "warnings": [],
        "stages": timings,
    }
    with open_client(config, say) as client:
        for name, stage in (("hotpixels", stage_hot_pixels), ("calibrate", stage_calibrate),
                            ("align", run_align_stage), ("tiles", run_tile_stage),
                            ("mosaic", run_mosaic_stage)):
            t = time.perf_counter()
            stage(ctx, client, plan)
            timings[name] = time.perf_counter() - t
    t = time.perf_counter()
    stage_write(ctx)
    timings["write"] = time.perf_counter() - t
    timings["total"] = sum(v for k, v in timings.items() if k != "total")
    # Every accepted frame that is not in the mosaic, with its reason (main field, no usable
    # signal, alignment); the tiles list their own group's exclusions as well.
    ctx.report["frames_excluded"] = ([{"path": f.path, "reason": OFF_FIELD_REASON} for f in off_field]
                                     + [{"path": p, "reason": r} for p, r in ctx.excluded.items()])
    write_json(os.path.join(out_dir, "report.json"), ctx.report)
    return ctx.report


# --- stages ----------------------------------------------------------------------------------------

def stage_hot_pixels(ctx: RunContext, client, plan: Plan) -> None:
    """One hot-pixel map per sensor, from candidates that repeat across its frames."""
    by_sensor: dict[str, list[Frame]] = {}
    for f in ctx.frames:
        by_sensor.setdefault(cal.sensor_key(f), []).append(f)
    for sensor, frames in by_sensor.items():
        fp = cal.hotmap_fingerprint(frames, ctx.config)
        sample = cal.hot_pixel_frames(frames, ctx.config)
        if not store.is_complete(ctx.root, f"hotpixels/{sensor}", fp):
            futures = client.map(cal.frame_hot_candidates, sample, sigma=ctx.config.hot_pixel_sigma,
                                 key=[f"hotcand-{store.fingerprint(f.fingerprint(), fp)}" for f in sample])
            candidates = wait_with_progress(futures, f"hot pixels {sensor}", ctx.console)
            cal.save_hot_map(ctx.root, sensor, cal.combine_hot_candidates(candidates, ctx.config), fp)
        ctx.hot[sensor] = cal.load_hot_map(ctx.root, sensor)
        ctx.say(f"sensor {sensor}: {ctx.hot[sensor].size} hot pixel(s) from {len(sample)} of {len(frames)} frame(s)")
    ctx.report["hot_pixels"] = {s: int(v.size) for s, v in ctx.hot.items()}


def stage_calibrate(ctx: RunContext, client, plan: Plan) -> None:
    """Calibrated RGB float32 frames in Zarr with their statistics; finished ones are reused."""
    ctx.channels = cal.output_channels(ctx.frames)
    jobs = []
    for f in ctx.frames:
        hot = ctx.hot[cal.sensor_key(f)]
        key = store.frame_key(f.path)
        fp = cal.calibration_fingerprint(f, hot, ctx.channels)
        ctx.calibrated[f.path] = (key, fp)
        if not store.is_complete(ctx.root, f"frames/{key}", fp):
            jobs.append(cal.CalibrationJob(f, ctx.root, key, fp, hot, ctx.channels))
    futures = client.map(cal.calibrate_frame, jobs, key=[f"calibrate-{j.fingerprint}" for j in jobs])
    done = wait_with_progress(futures, "calibrate", ctx.console)
    # The statistics come back with the tasks; only reused frames' are read from the store.
    computed = {job.frame.path: stats for job, stats in zip(jobs, done)}
    ctx.stats = {}
    for f in ctx.frames:
        stats = computed.get(f.path) or cal.stored_stats(ctx.root, ctx.calibrated[f.path][0])
        ctx.stats[f.path] = FrameStats.from_dict(stats)
    # Before alignment: a frame without signal must never become a group's reference.
    for path, reason in cal.unusable_frames(ctx.stats, ctx.config).items():
        ctx.excluded[path] = reason
        ctx.say(f"excluded {path}: {reason}")
    ctx.report["frames_calibrated"] = len(jobs)


def stage_write(ctx: RunContext) -> None:
    """mosaic.fits and preview.png from the canvas in Zarr (each written atomically), streamed in
    bands of rows of at most the stacking budget, so no process ever holds the whole canvas."""
    group = zarr.open_group(ctx.root, path="mosaic", mode="r")
    image, coverage = group["image"], group["coverage"]
    # Bands of a quarter of the budget: two are in memory at once (one read while the other is
    # written), and bands of hundreds of MB cost more in page faults than their fewer writes save.
    band_rows = rows_per_band(image.shape, parse_bytes(ctx.config.budget) // 4)
    covered = 0
    preview = PreviewSampler(image.shape)  # filled from the mosaic's bands: no second read

    def each_band(y0: int, image_band: np.ndarray, coverage_band: np.ndarray) -> None:
        nonlocal covered
        covered += int(np.count_nonzero(np.isfinite(image_band).all(axis=-1) & (coverage_band > 0)))
        preview.add(y0, image_band)

    # What went into the mosaic: its healthy tiles and their frames, excluded frames not counted.
    assembled = [entry for entry, grid, _ in ctx.tiles if grid is not None and entry.get("healthy", True)]
    ctx.report["frames_used"] = sum(entry["n_frames"] for entry in assembled)
    write_mosaic(os.path.join(ctx.out_dir, "mosaic.fits"), image, coverage, ctx.canvas_header,
                 {"NTILES": len(assembled), "NFRAMES": ctx.report["frames_used"]},
                 band_rows=band_rows, each_band=each_band)
    ctx.report["mosaic"]["covered_fraction"] = covered / max(1, coverage.shape[0] * coverage.shape[1])
    preview.save(os.path.join(ctx.out_dir, "preview.png"))
