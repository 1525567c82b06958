"""The master-tile stage: per group, sky surfaces, the fused warp + stack, then finishing.

Per tile the report gets: id, mode, the alt-az cleanup decision, frames used and excluded,
rejected fraction, health, RGB gains. A tile whose outputs carry the fingerprint this run would
give it is reused as it is.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass

import dask
import numpy as np
import zarr

from zdask.cluster import wait_with_progress
from zdask.graph.harmonize import frame_backgrounds, group_sky
from zdask.graph.tiles import TileSource, finish_tile, master_tile, release_block_buffers, store_tile, tile_grid
from zdask.io import store
from zdask.io.chunkrows import read_whole
from zdask.io.outputs import write_image_fits
from zdask.ops.bgmesh import cells_across

# Settings a master tile depends on (besides its calibrated frames and grid).
TILE_FIELDS = (
    "reject", "kappa", "iterations", "normalization", "weights", "warp_grid_step", "tile_margin",
    "altaz_min_abs", "altaz_min_frac", "altaz_opening_px", "altaz_ramp_px", "rgb_equalize",
    "rgb_gain_range", "sky_surface_order", "match_bin", "coverage_renorm", "feather_px", "background_mesh",
)
MODE_ALTAZ = "ALT_AZ"
TILES_FOLDER = "tiles"
# What this stage writes in TILES_FOLDER: tile_NNN.fits, and while writing one of them a
# temporary .tile_NNN.fits.RANDOM.part (zdask.io.outputs.atomic_path), left behind by a killed run.
_TILE_FILE = re.compile(r"tile_\d{3,}\.fits|\.tile_\d{3,}\.fits\.[^/]*\.part")


def tile_file_name(tile_id: int) -> str:
    return f"tile_{tile_id:03d}.fits"


def remove_stale_tile_files(folder: str, written: set[str]) -> list[str]:
    """Delete zdask's tile files in ``folder`` that are not among ``written`` (names): the
    folder then holds exactly this run's tiles. Files zdask does not name so are left alone.

    Called with the output folder's lock held, so no other run is writing there.
    """
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    stale = [n for n in names if n not in written and _TILE_FILE.fullmatch(n)
             and os.path.isfile(os.path.join(folder, n)) and not os.path.islink(os.path.join(folder, n))]
    for name in stale:
        os.unlink(os.path.join(folder, name))
    return stale


def cleanup_decisions(modes: list[str], requested: bool) -> tuple[list[bool], list[str]]:
    """Per tile: alt-az cleanup on or off; and the run's warnings. Pure.

    Cleanup runs only on ALT_AZ tiles, and only when requested; a request on a run without any
    ALT_AZ tile is switched off with a warning (cleanup on an equatorial stack would eat it).
    """
    warnings = []
    if requested and MODE_ALTAZ not in modes:
        warnings.append("alt-az cleanup requested but no ALT_AZ frames detected: disabled")
    return [requested and mode == MODE_ALTAZ for mode in modes], warnings


def run_tile_stage(ctx, client, plan) -> None:
    """Compute (or reuse) every group's master tile; fills ctx.tiles and the report."""
    config = ctx.config
    modes = [g.mode for g in plan.groups]
    decisions, warnings = cleanup_decisions(modes, config.altaz_cleanup)
    for text in warnings:
        ctx.say(f"warning: {text}")
    ctx.report["warnings"].extend(warnings)
    settings = config.digest(*TILE_FIELDS)
    pending = []
    for group, cleanup in zip(plan.groups, decisions):
        frames = [ctx.frames[i] for i in group.frames if ctx.frames[i].path not in ctx.excluded]
        excluded = [{"path": ctx.frames[i].path, "reason": ctx.excluded[ctx.frames[i].path]}
                    for i in group.frames if ctx.frames[i].path in ctx.excluded]
        ctx.say(f"tile={group.id} mode={group.mode} cleanup requested={'on' if config.altaz_cleanup else 'off'} "
                f"tile={'on' if cleanup else 'off'}")
        entry = {"id": group.id, "mode": group.mode, "altaz_cleanup": cleanup,
                 "frames": [f.path for f in frames], "frames_excluded": excluded,
                 "n_frames": len(frames), "file": os.path.join(TILES_FOLDER, tile_file_name(group.id))}
        if not frames:
            entry.update(healthy=False, health_reason="no usable frame (see frames_excluded)", reused=False)
            ctx.tiles.append((entry, None, None))
            continue
        wcs = [ctx.wcs_of(f) for f in frames]
        grid = tile_grid(frames, config.tile_margin, wcs)
        fps = [ctx.calibrated[f.path][1] for f in frames]
        fp = store.fingerprint(fps, wcs, settings, grid.to_json(), ctx.channels, cleanup)
        entry.update(shape=list(grid.shape), zarr=f"tiles/{fp}")
        ctx.tiles.append((entry, grid, fp))
        if store.is_complete(ctx.root, entry["zarr"], fp):
            entry.update(zarr_summary(ctx.root, entry["zarr"]), reused=True)
            continue
        sources = [TileSource(ctx.root, *ctx.calibrated[f.path], h, (f.height, f.width))
                   for f, h in zip(frames, wcs)]
        pending.append((entry, grid, fp, sources, cleanup, [f.exptime_s for f in frames],
                        [ctx.stats[f.path] for f in frames]))
    futures = [None] * len(pending)

    def submit_tile(k: int) -> None:
        entry, grid, fp, sources, cleanup, exptimes, stats = pending[k]
        arrays = master_tile(sources, stats, exptimes, grid, ctx.channels, config)
        writes = store_tile(arrays, ctx.root, entry["zarr"])
        # One future per tile: its Zarr writes, then the finishing pass. The report's counts are
        # read back from the store: summing the lazy arrays here as well would be optimised as
        # separate collections and warp every block once per sum.
        summary = dask.delayed(_finish)(writes, ctx.root, entry["zarr"], entry["mode"],
                                        len(sources), cleanup, config, _tile_file(ctx, entry, grid, fp))
        futures[k] = client.compute(summary)

    # Each tile is submitted as soon as its frames' sky surfaces are known: its blocks run while
    # the other groups are still fitted (no idle thread at the end of the fits).
    _fit_sky(ctx, client, pending, submit_tile)
    done = wait_with_progress(futures, "master tiles", ctx.console)
    client.run(release_block_buffers)
    for (entry, _, fp, *_), summary in zip(pending, done):
        summary = {**summary, "sky_glow": entry.get("sky_glow")}
        entry.update(summary, reused=False)
        store.mark_complete(ctx.root, entry["zarr"], fp, summary=summary)
    for entry, grid, fp in ctx.tiles:
        if entry.get("reused"):  # (the tiles just computed wrote theirs in their finishing task)
            write_tile_fits(ctx.root, _tile_file(ctx, entry, grid, fp))
        if not entry.get("healthy", True):
            text = f"tile {entry['id']} excluded from the mosaic: {entry.get('health_reason')}"
            ctx.say(f"warning: {text}")
            ctx.report["warnings"].append(text)
        elif entry["altaz_cleanup"] and not entry.get("alpha_applied", True):
            text = f"tile {entry['id']}: alt-az mask not applied: {entry.get('alpha_note')}"
            ctx.say(f"warning: {text}")
            ctx.report["warnings"].append(text)
    # After the new files are in place: a crash before this point leaves old tiles, not none.
    written = {os.path.basename(entry["file"]) for entry, grid, _ in ctx.tiles if grid is not None}
    stale = remove_stale_tile_files(os.path.join(ctx.out_dir, TILES_FOLDER), written)
    if stale:
        ctx.say(f"removed {len(stale)} tile file(s) of an earlier run: {', '.join(stale)}")
    ctx.report["tiles"] = [entry for entry, _, _ in ctx.tiles]
    ctx.report["tiles_reused"] = [e["id"] for e, _, _ in ctx.tiles if e.get("reused")]
    ctx.report["tiles_computed"] = [e["id"] for e, _, _ in ctx.tiles if e.get("reused") is False and "zarr" in e]
    ctx.say(f"master tiles: {len(ctx.report['tiles_computed'])} computed, {len(ctx.report['tiles_reused'])} reused")


def _fit_sky(ctx, client, pending, then) -> None:
    """Per-frame sky surfaces of the groups about to be stacked (one task per group); ``then(k)``
    is called for each group ``pending[k]`` once its sources carry their surfaces (at once for
    a group that gets none). With ``background_mesh``, each frame's own local background
    instead (every group, whatever its size)."""
    mesh = ctx.config.background_mesh
    if mesh > 0:
        _fit_backgrounds(ctx, client, pending, then, mesh)
        return
    order = ctx.config.sky_surface_order
    todo = [k for k, p in enumerate(pending) if order >= 0 and len(p[3]) >= 2]
    for k in sorted(set(range(len(pending))) - set(todo)):
        then(k)
    futures = [client.submit(group_sky, pending[k][3], pending[k][1], ctx.config.match_bin, order,
                             key=f"skyfit-{pending[k][2]}") for k in todo]

    def with_surfaces(index: int, result: tuple) -> None:
        entry, _, _, sources, *_ = pending[todo[index]]
        sources[:], glow = result
        # Kept in the tile's summary: the mosaic's common sky curvature is fixed by it.
        entry["sky_glow"] = glow
        then(todo[index])

    wait_with_progress(futures, "sky surfaces", ctx.console, on_result=with_surfaces)


def _fit_backgrounds(ctx, client, pending, then, mesh: int) -> None:
    """Each frame's local background on cells of ``mesh`` pixels (one task per group); a
    warning when frames get fewer than 2 cells across (their gradients then stay)."""
    factor = ctx.config.match_bin
    shapes = sorted({s.shape for p in pending for s in p[3]})
    coarse = [s for s in shapes if min(cells_across((s[0] // factor, s[1] // factor), factor, mesh)) < 2]
    if coarse:
        h, w = coarse[0]
        text = (f"background_mesh {mesh} px leaves frames of {w}x{h} fewer than 2 cells across: "
                f"their gradients stay (a mesh of at most {min(h, w) // 2} px removes them)")
        ctx.say(f"warning: {text}")
        ctx.report["warnings"].append(text)
    futures = [client.submit(frame_backgrounds, p[3], ctx.config.match_bin, mesh, key=f"bgmesh-{p[2]}")
               for p in pending]

    def with_backgrounds(k: int, backgrounds: list) -> None:
        sources = pending[k][3]
        sources[:] = [dataclasses.replace(s, background=b) for s, b in zip(sources, backgrounds)]
        then(k)

    wait_with_progress(futures, "local backgrounds", ctx.console, on_result=with_backgrounds)


def _finish(_writes, root, name, mode, n_frames, cleanup, config, tile_file: TileFile) -> dict:
    """Worker task: the finishing pass, the tile's FITS file, and the tile's summary."""
    summary = finish_tile(root, name, mode, n_frames, cleanup, config)
    write_tile_fits(root, tile_file)
    group = zarr.open_group(root, path=name, mode="r")
    rejected = sum(int(read_whole(group[k]).sum(dtype=np.int64)) for k in ("rejected_low", "rejected_high"))
    total = rejected + int(read_whole(group["count"]).sum(dtype=np.int64))
    summary["rejected_fraction"] = rejected / total if total else 0.0
    return summary


def zarr_summary(root: str, name: str) -> dict:
    return dict(zarr.open_group(root, path=name, mode="r").attrs["summary"])


@dataclass(frozen=True)
class TileFile:
    """Where a master tile's FITS file goes and what its header says."""

    path: str
    zarr: str          # the tile's entry in the store
    wcs_header: dict
    fingerprint: str
    tile_id: int
    mode: str
    n_frames: int


def _tile_file(ctx, entry: dict, grid, fp: str) -> TileFile:
    return TileFile(os.path.join(ctx.out_dir, entry["file"]), entry["zarr"], grid.wcs_header, fp,
                    entry["id"], entry["mode"], entry["n_frames"])


def write_tile_fits(root: str, tile: TileFile) -> None:
    """The tile as FITS (image + WCS + COVERAGE + ALPHA), unless an up-to-date file is there."""
    from astropy.io import fits

    if os.path.exists(tile.path):
        try:
            if fits.getheader(tile.path).get("ZDASKFP") == tile.fingerprint:
                return
        except OSError:
            pass  # unreadable leftovers are simply replaced
    group = zarr.open_group(root, path=tile.zarr, mode="r")
    alpha = np.round(np.clip(read_whole(group["alpha"]), 0, 1) * 255).astype(np.uint8)
    write_image_fits(
        tile.path, read_whole(group["image"]), tile.wcs_header,
        {"COVERAGE": read_whole(group["coverage"]), "ALPHA": alpha},
        {"ZDASKFP": tile.fingerprint, "TILEID": tile.tile_id, "MOUNT": tile.mode, "NFRAMES": tile.n_frames},
    )
