"""The runner: scan → plan → hot pixels → calibrate → master tiles → mosaic → outputs.

Each stage names its outputs in the working Zarr store with a fingerprint of its inputs and
settings; a stage whose outputs carry the fingerprint it would compute now is skipped. That is
how a second run reuses finished tiles and how a crashed run resumes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import dask
import dask.array as da
import numpy as np
import zarr

from zdask.cluster import open_client, wait_with_progress
from zdask.config import Config
from zdask.graph import calibrate as cal
from zdask.graph.geometry import Grid
from zdask.graph.mosaic import canvas_grid, mosaic_arrays, place_tiles
from zdask.graph.plan import Plan, plan_master_tiles
from zdask.graph.tiles import TileSource, master_tile, store_tile, tile_grid
from zdask.io import store
from zdask.io.outputs import write_image_fits, write_json, write_mosaic, write_preview
from zdask.io.scan import Frame, FrameTable, RejectedFile, scan
from zdask.ops.framestats import FrameStats

STACKING_FIELDS = ("reject", "kappa", "iterations", "normalization", "weights", "warp_grid_step", "tile_margin")


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
    tiles: list[tuple[dict, Grid, str]] = field(default_factory=list)  # (report entry, grid, fp)
    canvas: Grid | None = None

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


def check_output_location(inputs: Sequence[str], out_dir: str) -> None:
    """Refuse an output folder inside an input folder: inputs are never written."""
    out = os.path.realpath(out_dir)
    for item in inputs:
        folder = os.path.realpath(item if os.path.isdir(item) else os.path.dirname(item) or ".")
        if out == folder or out.startswith(folder + os.sep):
            raise RunError(f"output folder {out_dir} is inside input folder {item}; choose another --out")


def run(inputs: Sequence[str], out_dir: str, config: Config, say=print, console=None) -> dict:
    """Build the mosaic of ``inputs`` into ``out_dir``; returns the report (also report.json)."""
    timings: dict[str, float] = {}
    check_output_location(inputs, out_dir)
    t = time.perf_counter()
    table = scan(inputs)
    frames, rejected = usable_frames(table)
    timings["scan"] = time.perf_counter() - t
    for bad in rejected:
        say(f"skipped {bad.path}: {bad.reason}")
    if not frames:
        raise RunError(f"no usable frame among {len(rejected)} input file(s); see the reasons above")
    t = time.perf_counter()
    plan = plan_master_tiles(frames, link_fov_fraction=config.link_fov_fraction,
                             max_group_size=config.max_group_size)
    timings["plan"] = time.perf_counter() - t
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
                            ("tiles", stage_tiles), ("mosaic", stage_mosaic)):
            t = time.perf_counter()
            stage(ctx, client, plan)
            timings[name] = time.perf_counter() - t
    t = time.perf_counter()
    stage_write(ctx)
    timings["write"] = time.perf_counter() - t
    timings["total"] = sum(v for k, v in timings.items() if k != "total")
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
        if not store.is_complete(ctx.root, f"hotpixels/{sensor}", fp):
            futures = client.map(cal.frame_hot_candidates, frames, sigma=ctx.config.hot_pixel_sigma,
                                 key=[f"hotcand-{store.fingerprint(f.fingerprint(), fp)}" for f in frames])
            candidates = wait_with_progress(futures, f"hot pixels {sensor}", ctx.console)
            cal.save_hot_map(ctx.root, sensor, cal.combine_hot_candidates(candidates, ctx.config), fp)
        ctx.hot[sensor] = cal.load_hot_map(ctx.root, sensor)
        ctx.say(f"sensor {sensor}: {ctx.hot[sensor].size} hot pixel(s) from {len(frames)} frame(s)")
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
    wait_with_progress(futures, "calibrate", ctx.console)
    ctx.stats = {f.path: FrameStats.from_dict(cal.stored_stats(ctx.root, ctx.calibrated[f.path][0]))
                 for f in ctx.frames}
    ctx.report["frames_calibrated"] = len(jobs)


def stage_tiles(ctx: RunContext, client, plan: Plan) -> None:
    """One master tile per group in Zarr and ``tiles/tile_NNN.fits``; finished ones are reused."""
    stacking = ctx.config.digest(*STACKING_FIELDS)
    pending = []
    for group in plan.groups:
        frames = [ctx.frames[i] for i in group.frames]
        grid = tile_grid(frames, ctx.config.tile_margin)
        fps = [ctx.calibrated[f.path][1] for f in frames]
        fp = store.fingerprint(fps, stacking, grid.to_json(), ctx.channels)
        name = f"tiles/{fp}"
        entry = {
            "id": group.id, "mode": group.mode, "frames": [f.path for f in frames],
            "n_frames": len(frames), "shape": list(grid.shape), "zarr": name,
            "file": os.path.join("tiles", f"tile_{group.id:03d}.fits"),
        }
        ctx.tiles.append((entry, grid, fp))
        if store.is_complete(ctx.root, name, fp):
            entry.update(zarr.open_group(ctx.root, path=name, mode="r").attrs["summary"], reused=True)
            continue
        sources = [TileSource(ctx.root, *ctx.calibrated[f.path], f.wcs_header, (f.height, f.width))
                   for f in frames]
        arrays = master_tile(sources, [ctx.stats[f.path] for f in frames],
                             [f.exptime_s for f in frames], grid, ctx.channels, ctx.config)
        writes = store_tile(arrays, ctx.root, name)
        rejected = (arrays["rejected_low"].sum(dtype=np.int64) + arrays["rejected_high"].sum(dtype=np.int64))
        kept = arrays["count"].sum(dtype=np.int64)
        # One future per tile: its Zarr writes, then the rejection counts of the report.
        counts = dask.delayed(_after_writes)(writes, rejected, kept)
        pending.append((entry, fp, client.compute(counts)))
    done = wait_with_progress([p[2] for p in pending], "master tiles", ctx.console)
    for (entry, fp, _), (rejected, kept) in zip(pending, done):
        total = int(rejected) + int(kept)
        summary = {"rejected_fraction": float(rejected) / total if total else 0.0}
        entry.update(summary, reused=False)
        store.mark_complete(ctx.root, entry["zarr"], fp, summary=summary)
    for entry, grid, fp in ctx.tiles:
        write_tile_fits(ctx, entry, grid, fp)
    ctx.report["tiles"] = [entry for entry, _, _ in ctx.tiles]
    ctx.report["tiles_reused"] = [e["id"] for e, _, _ in ctx.tiles if e["reused"]]
    ctx.report["tiles_computed"] = [e["id"] for e, _, _ in ctx.tiles if not e["reused"]]
    ctx.say(f"master tiles: {len(ctx.report['tiles_computed'])} computed, "
            f"{len(ctx.report['tiles_reused'])} reused")


def _after_writes(_writes, rejected, kept) -> tuple[int, int]:
    return int(rejected), int(kept)


def write_tile_fits(ctx: RunContext, entry: dict, grid: Grid, fp: str) -> None:
    """The tile as FITS (image + WCS + COVERAGE), unless an up-to-date file is already there."""
    from astropy.io import fits

    path = os.path.join(ctx.out_dir, entry["file"])
    if os.path.exists(path):
        try:
            if fits.getheader(path).get("ZDASKFP") == fp:
                return
        except OSError:
            pass  # unreadable leftovers are simply replaced
    group = zarr.open_group(ctx.root, path=entry["zarr"], mode="r")
    write_image_fits(
        path, np.asarray(group["image"][:]), grid.wcs_header,
        {"COVERAGE": np.asarray(group["coverage"][:])},
        {"ZDASKFP": fp, "TILEID": entry["id"], "MOUNT": entry["mode"], "NFRAMES": entry["n_frames"]},
    )


def stage_mosaic(ctx: RunContext, client, plan: Plan) -> None:
    """The canvas: tiles reprojected onto canvas blocks and combined by coverage, in Zarr."""
    scale = float(np.median([f.scale_arcsec for f in ctx.frames]))
    grids = [grid for _, grid, _ in ctx.tiles]
    canvas = canvas_grid(grids, scale)
    fp = store.fingerprint([fp for _, _, fp in ctx.tiles], canvas.to_json(), ctx.config.canvas_block)
    ctx.canvas = canvas
    ctx.report["mosaic"] = {"shape": list(canvas.shape), "scale_arcsec": scale,
                            "channels": ctx.channels}
    if store.is_complete(ctx.root, "mosaic", fp):
        ctx.report["mosaic"]["reused"] = True
        return
    placed = place_tiles([(ctx.root, e["zarr"], tfp, g) for e, g, tfp in ctx.tiles], canvas)
    arrays = mosaic_arrays(placed, canvas, ctx.channels, ctx.config.canvas_block, ctx.config.warp_grid_step)
    group = store.open_store(ctx.root)
    targets = []
    for key in ("image", "coverage"):
        arr = arrays[key]
        targets.append(store.create_array(group, f"mosaic/{key}", arr.shape, arr.dtype,
                                          tuple(c[0] for c in arr.chunks)))
    writes = da.store([arrays["image"], arrays["coverage"]], targets, lock=False, compute=False)
    wait_with_progress([client.compute(dask.delayed(_after_writes)(writes, 0, 0))], "mosaic", ctx.console)
    store.mark_complete(ctx.root, "mosaic", fp, wcs=canvas.wcs_header)
    ctx.report["mosaic"]["reused"] = False


def stage_write(ctx: RunContext) -> None:
    """mosaic.fits and preview.png from the canvas in Zarr (each written atomically)."""
    group = zarr.open_group(ctx.root, path="mosaic", mode="r")
    image = np.asarray(group["image"][:])
    coverage = np.asarray(group["coverage"][:])
    covered = np.isfinite(image).all(axis=-1) & (coverage > 0)
    ctx.report["mosaic"]["covered_fraction"] = float(covered.mean())
    write_mosaic(os.path.join(ctx.out_dir, "mosaic.fits"), image, coverage, ctx.canvas.wcs_header,
                 {"NTILES": len(ctx.tiles), "NFRAMES": len(ctx.frames)})
    write_preview(os.path.join(ctx.out_dir, "preview.png"), image)
