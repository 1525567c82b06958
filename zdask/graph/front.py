"""The frame front every frame mode shares: scan → plan → hot pixels → calibrate → align.

:func:`gather_frames` reads the inputs' headers (no pixels, no cluster): the frames of the main
field, their alignment groups and what was skipped. :func:`build_frame_front` then runs the
three stages that read pixels on the caller's dask client and returns one frozen
:class:`FrameFront`. Each stage takes values and returns values; its stored outputs carry a
fingerprint of their inputs and of the settings the stage declares (``Config.stage_digest``),
so a re-run reuses them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Sequence

import numpy as np

from zdask.cluster import wait_with_progress
from zdask.config import Config
from zdask.graph import calibrate as cal
from zdask.graph.align import attach_unsolved
from zdask.graph.align_stage import align_frames
from zdask.graph.errors import RunError
from zdask.graph.field import OFF_FIELD_REASON, field_canvas_problem, split_main_field
from zdask.graph.plan import Plan, TileGroup, plan_master_tiles
from zdask.graph.taskkeys import task_key
from zdask.graph.tiles import release_worker_memory
from zdask.io import store
from zdask.io.platesolve import available_solver, plate_solve
from zdask.io.scan import Frame, FrameTable, RejectedFile, scan, with_wcs
from zdask.ops.framestats import FrameStats


@dataclass(frozen=True)
class GatheredFrames:
    """The inputs as headers tell them: frames of the main field and their groups."""

    frames: tuple[Frame, ...]            # main field, input order; unsolved frames attached last
    groups: tuple[TileGroup, ...]        # alignment groups (indices into ``frames``)
    rejected: tuple[RejectedFile, ...]   # input files that are not usable frames, with reasons
    off_field: tuple[Frame, ...]         # frames outside the main field
    timings: Mapping[str, float]         # "scan", "plan" (seconds)


@dataclass(frozen=True)
class FrameFront:
    """What every frame mode starts from (see :mod:`zdask.graph.modes`). Read only."""

    frames: tuple[Frame, ...]
    groups: tuple[TileGroup, ...]
    calibrated: Mapping[str, tuple[str, str]]  # path → (Zarr key under frames/, fingerprint)
    stats: Mapping[str, FrameStats]            # path → statistics of the calibrated frame
    aligned: Mapping[str, dict]                # path → WCS cards, where alignment refined them
    excluded: Mapping[str, str]                # path → why the frame is not stacked
    channels: int                              # 3 colour, 1 mono
    hot_pixels: Mapping[str, int]              # sensor → hot pixels in its map
    frames_calibrated: int                     # frames calibrated by this run (not reused)
    alignment: Mapping | None                  # the alignment's report (None: alignment off)
    rejected: tuple[RejectedFile, ...]
    off_field: tuple[Frame, ...]

    def wcs_of(self, frame: Frame) -> dict:
        """The WCS that places a frame: its aligned one if alignment refined it."""
        return self.aligned.get(frame.path, frame.wcs_header)

    def used_frames(self) -> list[Frame]:
        """The frames that are not excluded, in order."""
        return [f for f in self.frames if f.path not in self.excluded]

    def group_frames(self, group: TileGroup) -> list[Frame]:
        """The frames of ``group`` that are not excluded."""
        return [self.frames[i] for i in group.frames if self.frames[i].path not in self.excluded]

    def exclusions(self) -> list[dict]:
        """Every frame of the inputs that is not in the mosaic, with its reason (report)."""
        return ([{"path": f.path, "reason": OFF_FIELD_REASON} for f in self.off_field]
                + [{"path": p, "reason": r} for p, r in self.excluded.items()])


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


def gather_frames(inputs: Sequence[str], config: Config, say) -> GatheredFrames:
    """Scan the inputs (headers only), keep the main field, check its canvas, group the frames."""
    t = time.perf_counter()
    table = scan(inputs)
    frames, rejected = usable_frames(table)
    scan_s = time.perf_counter() - t
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
    plan_s = time.perf_counter() - t
    say_skipped(rejected, say)
    for far in off_field:
        say(f"excluded {far.path}: {OFF_FIELD_REASON}")
    say(f"{len(frames)} frame(s) in {len(plan.groups)} master-tile group(s); {len(rejected)} file(s) skipped")
    return GatheredFrames(tuple(frames), plan.groups, tuple(rejected), tuple(off_field),
                          MappingProxyType({"scan": scan_s, "plan": plan_s}))


def build_frame_front(gathered: GatheredFrames, config: Config, client, work,
                      timings: dict[str, float]) -> FrameFront:
    """Hot pixels, calibration and alignment of the gathered frames on ``client``; each
    stage's seconds go into ``timings``."""
    frames = list(gathered.frames)
    t = time.perf_counter()
    hot = hot_pixel_maps(frames, config, client, work)
    timings["hotpixels"] = time.perf_counter() - t
    t = time.perf_counter()
    channels = cal.output_channels(frames)
    calibrated, stats, n_calibrated = calibrate_frames(frames, hot, channels, client, work)
    # Before alignment: a frame without signal must never become a group's reference.
    excluded = dict(cal.unusable_frames(stats, config))
    for path, reason in excluded.items():
        work.say(f"excluded {path}: {reason}")
    timings["calibrate"] = time.perf_counter() - t
    t = time.perf_counter()
    aligned, alignment = {}, None
    if config.align:
        aligned, failed, alignment = align_frames(frames, gathered.groups, calibrated, stats, excluded,
                                                  config, client, work)
        excluded.update(failed)
    timings["align"] = time.perf_counter() - t
    # (the heap pages thousands of frame-sized arrays left behind, back to the system before the
    # stacking stages: see trim_heap; an in-process worker runs it in this process)
    client.run(release_worker_memory)
    return FrameFront(
        gathered.frames, gathered.groups, MappingProxyType(calibrated), MappingProxyType(stats),
        MappingProxyType(aligned), MappingProxyType(excluded), channels,
        MappingProxyType({s: int(v.size) for s, v in hot.items()}), n_calibrated,
        None if alignment is None else MappingProxyType(alignment), gathered.rejected, gathered.off_field)


def hot_pixel_maps(frames: list[Frame], config: Config, client, work) -> dict[str, np.ndarray]:
    """One hot-pixel map per sensor, from candidates that repeat across its frames."""
    by_sensor: dict[str, list[Frame]] = {}
    for f in frames:
        by_sensor.setdefault(cal.sensor_key(f), []).append(f)
    hot = {}
    for sensor, members in by_sensor.items():
        fp = cal.hotmap_fingerprint(members, config)
        sample = cal.hot_pixel_frames(members, config)
        if not store.is_complete(work.root, f"hotpixels/{sensor}", fp):
            futures = client.map(cal.frame_hot_candidates, sample, sigma=config.hot_pixel_sigma,
                                 key=[task_key("hot-pixel-candidates", os.path.basename(f.path),
                                               store.fingerprint(f.fingerprint(), fp)) for f in sample])
            candidates = wait_with_progress(futures, f"hot pixels {sensor}", work.console)
            cal.save_hot_map(work.root, sensor, cal.combine_hot_candidates(candidates, config), fp)
        hot[sensor] = cal.load_hot_map(work.root, sensor)
        work.say(f"sensor {sensor}: {hot[sensor].size} hot pixel(s) from {len(sample)} of {len(members)} frame(s)")
    return hot


def calibrate_frames(frames: list[Frame], hot: dict[str, np.ndarray], channels: int, client, work
                     ) -> tuple[dict[str, tuple[str, str]], dict[str, FrameStats], int]:
    """Calibrated RGB float32 frames in Zarr with their statistics; finished ones are reused.
    Returns (path → (key, fingerprint), path → statistics, frames calibrated now)."""
    calibrated, jobs = {}, []
    for f in frames:
        sensor_hot = hot[cal.sensor_key(f)]
        key = store.frame_key(f.path)
        fp = cal.calibration_fingerprint(f, sensor_hot, channels)
        calibrated[f.path] = (key, fp)
        if not store.is_complete(work.root, f"frames/{key}", fp):
            jobs.append(cal.CalibrationJob(f, work.root, key, fp, sensor_hot, channels))
    futures = client.map(cal.calibrate_frame, jobs, key=[task_key("calibrate", os.path.basename(j.frame.path), j.fingerprint)
                                                       for j in jobs])
    done = wait_with_progress(futures, "calibrate", work.console)
    # The statistics come back with the tasks; only reused frames' are read from the store.
    computed = {job.frame.path: stats for job, stats in zip(jobs, done)}
    stats = {f.path: FrameStats.from_dict(computed.get(f.path) or cal.stored_stats(work.root, calibrated[f.path][0]))
             for f in frames}
    return calibrated, stats, len(jobs)
