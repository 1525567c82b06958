"""The master-tile stage: per tile job, sky surfaces, the fused warp + stack, then finishing.

Returns a :class:`~zdask.graph.modes.base.MasterTile` per job (the report shows its id, mode,
alt-az cleanup decision, frames used and excluded, rejected fraction, health, RGB gains). A tile
whose outputs carry the fingerprint this run would give it (its frames, their WCS, its grid and
the settings that declare the ``tiles`` stage) is reused as it is.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass

import dask
import numpy as np

from zdask.cluster import wait_with_progress
from zdask.graph.geometry import Grid
from zdask.graph.harmonize import frame_backgrounds, group_sky
from zdask.graph.modes.base import MasterTile
from zdask.graph.taskkeys import task_key
from zdask.graph.tiles import TileSource, finish_tile, master_tile, release_worker_memory, store_tile
from zdask.io import store, urls
from zdask.io.chunkrows import read_whole
from zdask.io.fitsheader import open_fits
from zdask.io.outputs import write_image_fits
from zdask.ops.bgmesh import cells_across

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

    Called with the output folder's lock held, so no other run is writing there. ``folder``
    may be a URL.
    """
    stale = [n for n in urls.file_names(folder) if n not in written and _TILE_FILE.fullmatch(n)]
    for name in stale:
        urls.remove(urls.join(folder, name))
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


@dataclass
class _Stacking:
    """One tile being stacked (private to this stage): its sources gain their sky surfaces
    (or local backgrounds) while the stage runs."""

    job: object                   # zdask.graph.modes.classic.TileJob
    entry: dict                   # what the tile's file and header need
    grid: Grid
    fp: str
    sources: list
    exptimes: list
    stats: list


def stack_master_tiles(plan, front, config, client, work) -> tuple[list[MasterTile], list[str]]:
    """Compute (or reuse) the master tile of every job of the classic ``plan``: (the tiles, in
    plan order, the stage's warnings)."""
    warnings = list(plan.warnings)
    for text in plan.warnings:
        work.say(f"warning: {text}")
    settings = config.stage_digest("tiles")
    tiles: dict[int, MasterTile] = {}
    pending: list[_Stacking] = []
    for job in plan.tiles:
        frames = [front.frames[i] for i in job.frames]
        work.say(f"tile={job.id} mode={job.mode} cleanup requested={'on' if config.altaz_cleanup else 'off'} "
                 f"tile={'on' if job.cleanup else 'off'}")
        base = MasterTile(job.id, job.mode, os.path.join(TILES_FOLDER, tile_file_name(job.id)), job.grid, None,
                          None, tuple(f.path for f in frames), job.excluded, job.cleanup)
        if job.grid is None:
            tiles[job.id] = dataclasses.replace(base, healthy=False,
                                                health_reason="no usable frame (see frames_excluded)")
            continue
        wcs = [front.wcs_of(f) for f in frames]
        fps = [front.calibrated[f.path][1] for f in frames]
        fp = store.fingerprint(fps, wcs, settings, job.grid.to_json(), front.channels, job.cleanup)
        tile = dataclasses.replace(base, zarr=f"tiles/{fp}", fingerprint=fp)
        if store.is_complete(work.root, tile.zarr, fp):
            tiles[job.id] = _with_summary(tile, zarr_summary(work.root, tile.zarr), reused=True)
            continue
        tiles[job.id] = tile
        sources = [TileSource(work.root, *front.calibrated[f.path], h, (f.height, f.width))
                   for f, h in zip(frames, wcs)]
        pending.append(_Stacking(job, {}, job.grid, fp, sources, [f.exptime_s for f in frames],
                                 [front.stats[f.path] for f in frames]))
    futures = [None] * len(pending)
    # The tiles' FITS files go to the output folder, which is the client's: with the store at a
    # URL the workers may run on nodes that do not see that folder, so the client writes them.
    by_client = store.is_url(work.root)

    def submit_tile(k: int) -> None:
        item = pending[k]
        tile = tiles[item.job.id]
        arrays = master_tile(item.sources, item.stats, item.exptimes, item.grid, front.channels, config,
                             tile_id=item.job.id)
        writes = store_tile(arrays, work.root, tile.zarr, tile_id=item.job.id)
        # One future per tile: its Zarr writes, then the finishing pass. The report's counts are
        # read back from the store: summing the lazy arrays here as well would be optimised as
        # separate collections and warp every block once per sum.
        summary = dask.delayed(_finish)(writes, work.root, tile.zarr, tile.mode, len(item.sources),
                                        item.job.cleanup, config, None if by_client else _tile_file(work, tile),
                                        dask_key_name=task_key("finish-tile", item.job.id, item.fp))
        futures[k] = client.compute(summary)

    # Each tile is submitted as soon as its frames' sky surfaces are known: its blocks run while
    # the other groups are still fitted (no idle thread at the end of the fits).
    _fit_sky(config, work, client, pending, submit_tile, warnings)
    done = wait_with_progress(futures, "master tiles", work.console)
    client.run(release_worker_memory)
    for item, summary in zip(pending, done):
        tiles[item.job.id] = _with_summary(tiles[item.job.id], summary, reused=False)
        store.mark_complete(work.root, tiles[item.job.id].zarr, item.fp, summary=summary)
    ordered = [tiles[job.id] for job in plan.tiles]
    for tile in ordered:
        if tile.reused or (by_client and tile.grid is not None):  # (else written by the finishing task)
            write_tile_fits(work.root, _tile_file(work, tile))
        if not tile.healthy:
            text = f"tile {tile.id} excluded from the mosaic: {tile.health_reason}"
        elif tile.altaz_cleanup and not tile.details.get("alpha_applied", True):
            text = f"tile {tile.id}: alt-az mask not applied: {tile.details.get('alpha_note')}"
        else:
            continue
        work.say(f"warning: {text}")
        warnings.append(text)
    # After the new files are in place: a crash before this point leaves old tiles, not none.
    written = {os.path.basename(t.file) for t in ordered if t.grid is not None}
    stale = remove_stale_tile_files(urls.join(work.out_dir, TILES_FOLDER), written)
    if stale:
        work.say(f"removed {len(stale)} tile file(s) of an earlier run: {', '.join(stale)}")
    computed = sum(1 for t in ordered if t.grid is not None and not t.reused)
    work.say(f"master tiles: {computed} computed, {sum(1 for t in ordered if t.reused)} reused")
    return ordered, warnings


def _with_summary(tile: MasterTile, summary: dict, reused: bool) -> MasterTile:
    """The tile with its finishing summary (as stored with it): health typed, the rest (alpha
    decision, RGB gains, rejected fraction) kept for the report."""
    details = {k: v for k, v in summary.items() if k not in ("healthy", "health_reason")}
    return dataclasses.replace(tile, healthy=bool(summary.get("healthy", True)),
                               health_reason=summary.get("health_reason"), details=details, reused=reused)


def _fit_sky(config, work, client, pending: list[_Stacking], then, warnings: list[str]) -> None:
    """Per-frame sky surfaces of the groups about to be stacked (one task per group); ``then(k)``
    is called for each group ``pending[k]`` once its sources carry their surfaces (at once for
    a group that gets none). With ``background_mesh``, each frame's own local background
    instead (every group, whatever its size)."""
    mesh = config.background_mesh
    if mesh > 0:
        _fit_backgrounds(config, work, client, pending, then, mesh, warnings)
        return
    order = config.sky_surface_order
    todo = [k for k, p in enumerate(pending) if order >= 0 and len(p.sources) >= 2]
    for k in sorted(set(range(len(pending))) - set(todo)):
        then(k)
    futures = [client.submit(group_sky, pending[k].sources, pending[k].grid, config.match_bin, order,
                             key=task_key("sky-fit", pending[k].job.id, pending[k].fp)) for k in todo]

    def with_surfaces(index: int, sources: list) -> None:
        pending[todo[index]].sources[:] = sources
        then(todo[index])

    wait_with_progress(futures, "sky surfaces", work.console, on_result=with_surfaces)


def _fit_backgrounds(config, work, client, pending: list[_Stacking], then, mesh: int, warnings: list[str]) -> None:
    """Each frame's local background on cells of ``mesh`` pixels (one task per group); a
    warning when frames get fewer than 2 cells across (their gradients then stay)."""
    factor = config.match_bin
    shapes = sorted({s.shape for p in pending for s in p.sources})
    coarse = [s for s in shapes if min(cells_across((s[0] // factor, s[1] // factor), factor, mesh)) < 2]
    if coarse:
        h, w = coarse[0]
        text = (f"background_mesh {mesh} px leaves frames of {w}x{h} fewer than 2 cells across: "
                f"their gradients stay (a mesh of at most {min(h, w) // 2} px removes them)")
        work.say(f"warning: {text}")
        warnings.append(text)
    futures = [client.submit(frame_backgrounds, p.sources, config.match_bin, mesh, key=task_key("local-background", p.job.id, p.fp))
               for p in pending]

    def with_backgrounds(k: int, backgrounds: list) -> None:
        sources = pending[k].sources
        sources[:] = [dataclasses.replace(s, background=b) for s, b in zip(sources, backgrounds)]
        then(k)

    wait_with_progress(futures, "local backgrounds", work.console, on_result=with_backgrounds)


def _finish(_writes, root, name, mode, n_frames, cleanup, config, tile_file: TileFile | None) -> dict:
    """Worker task: the finishing pass, the tile's FITS file (unless None), and the tile's summary."""
    summary = finish_tile(root, name, mode, n_frames, cleanup, config)
    if tile_file is not None:
        write_tile_fits(root, tile_file)
    group = store.open_group(root, name)
    rejected = sum(int(read_whole(group[k]).sum(dtype=np.int64)) for k in ("rejected_low", "rejected_high"))
    total = rejected + int(read_whole(group["count"]).sum(dtype=np.int64))
    summary["rejected_fraction"] = rejected / total if total else 0.0
    return summary


def zarr_summary(root: str, name: str) -> dict:
    return dict(store.open_group(root, name).attrs["summary"])


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


def _tile_file(work, tile: MasterTile) -> TileFile:
    return TileFile(urls.join(work.out_dir, tile.file), tile.zarr, tile.grid.wcs_header, tile.fingerprint,
                    tile.id, tile.mode, tile.n_frames)


def write_tile_fits(root: str, tile: TileFile) -> None:
    """The tile as FITS (image + WCS + COVERAGE + ALPHA), unless an up-to-date file is there."""
    if urls.exists(tile.path):
        try:
            with open_fits(tile.path) as hdul:
                if hdul[0].header.get("ZDASKFP") == tile.fingerprint:
                    return
        except OSError:
            pass  # unreadable leftovers are simply replaced
    group = store.open_group(root, tile.zarr)
    alpha = np.round(np.clip(read_whole(group["alpha"]), 0, 1) * 255).astype(np.uint8)
    write_image_fits(
        tile.path, read_whole(group["image"]), tile.wcs_header,
        {"COVERAGE": read_whole(group["coverage"]), "ALPHA": alpha},
        {"ZDASKFP": tile.fingerprint, "TILEID": tile.tile_id, "MOUNT": tile.mode, "NFRAMES": tile.n_frames},
    )
