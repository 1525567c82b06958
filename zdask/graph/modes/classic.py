"""The classic mode: master tiles by sky position (one per alignment group), then their coadd.

:func:`plan` is pure: per group of the frame front, the frames it stacks (those not excluded),
its tile grid and its alt-az cleanup decision. :func:`build` stacks the tiles
(:mod:`zdask.graph.tile_stage`) and assembles them on the canvas (:mod:`zdask.graph.mosaic_stage`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from zdask.graph.canvas import Canvas, group_grids
from zdask.graph.geometry import Grid
from zdask.graph.modes.base import ModeResult
from zdask.graph.mosaic_stage import assemble_mosaic
from zdask.graph.tile_stage import cleanup_decisions, stack_master_tiles

INPUT = "frames"


@dataclass(frozen=True)
class TileJob:
    """One master tile to stack: its group's id and mount mode, the frames (indices into the
    front's frames, excluded ones left out), the group's excluded frames with their reasons,
    the tile grid (None when no frame is left) and whether alt-az cleanup applies."""

    id: int
    mode: str
    frames: tuple[int, ...]
    excluded: tuple[tuple[str, str], ...]
    grid: Grid | None
    cleanup: bool


@dataclass(frozen=True)
class ClassicPlan:
    tiles: tuple[TileJob, ...]
    warnings: tuple[str, ...]   # e.g. cleanup requested on a run without ALT_AZ frames


def plan(front, canvas: Canvas, config) -> ClassicPlan:
    """The master tiles of ``front``: one per alignment group. Pure."""
    decisions, warnings = cleanup_decisions([g.mode for g in front.groups], config.altaz_cleanup)
    grids = group_grids(front, config.tile_margin)
    jobs = []
    for group, cleanup, grid in zip(front.groups, decisions, grids):
        kept = tuple(i for i in group.frames if front.frames[i].path not in front.excluded)
        excluded = tuple((front.frames[i].path, front.excluded[front.frames[i].path])
                         for i in group.frames if front.frames[i].path in front.excluded)
        jobs.append(TileJob(group.id, group.mode, kept, excluded, grid, cleanup))
    return ClassicPlan(tuple(jobs), tuple(warnings))


def build(plan: ClassicPlan, front, canvas: Canvas, config, client, work) -> ModeResult:
    """Stack (or reuse) the master tiles, then assemble them on the canvas."""
    timings = {}
    t = time.perf_counter()
    tiles, warnings = stack_master_tiles(plan, front, config, client, work)
    timings["tiles"] = time.perf_counter() - t
    t = time.perf_counter()
    meshed = config.background_mesh > 0
    header, mosaic = assemble_mosaic(tiles, canvas, front.channels, meshed, config, client, work)
    timings["mosaic"] = time.perf_counter() - t
    return ModeResult("mosaic", header, sum(1 for t in tiles if t.in_mosaic),
                      sum(t.n_frames for t in tiles if t.in_mosaic),
                      tiles_report(tiles, mosaic), tuple(warnings), timings)


def tiles_report(tiles, mosaic: dict) -> dict:
    """The report's ``tiles`` (each with its photometric gains and offsets from the mosaic),
    ``tiles_reused``, ``tiles_computed`` and ``mosaic``."""
    entries = []
    for tile in tiles:
        entry = tile.to_report()
        found = mosaic["photometry"].get(str(tile.id)) if tile.in_mosaic else None
        if found:
            entry["gains"], entry["offsets"] = found["gains"], found["offsets"]
        entries.append(entry)
    return {"tiles": entries,
            "tiles_reused": [t.id for t in tiles if t.reused],
            "tiles_computed": [t.id for t in tiles if t.grid is not None and not t.reused],
            "mosaic": mosaic}
