"""The mosaic stage: tile photometry planned on binned cut-outs, autocrop, then the coadd, on
the canvas planned up front (:mod:`zdask.graph.canvas`).

Healthy tiles only; the plan (gains, offsets and surfaces per tile, the seam metric before and
after) is stored with the canvas so a reused mosaic reports it too.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from zdask.cluster import wait_with_progress
from zdask.graph.canvas import Canvas
from zdask.graph.errors import RunError
from zdask.graph.geometry import grid_bbox_of
from zdask.graph.harmonize import binned_shape, plan_tile_photometry, tile_cutout
from zdask.graph.modes.base import MasterTile
from zdask.graph.mosaic import PlacedTile, crop_grid, mosaic_arrays
from zdask.graph.taskkeys import store_named, task_key
from zdask.io import store
from zdask.ops.crop import autocrop_box

# The tile pairs' photometric fits run here, in the client, while the workers wait for the plan:
# on this machine's cores (a few: each holds two binned overlaps).
PAIR_FIT_THREADS = min(4, os.cpu_count() or 1)

def sky_model(mesh: int, frames_meshed: bool) -> dict:
    """What the run's sky model does, for the report: ``name`` and ``description``."""
    if mesh > 0 and frames_meshed:
        return {"name": "local_background_mesh", "mesh_px": mesh,
                "description": f"local background mesh {mesh} px (flattest; removes extended emission "
                               f"larger than ~{mesh} px): each frame's own background subtracted before "
                               "stacking; no matched sky surfaces (frames or tiles)"}
    return {"name": "matched_surfaces",
            "description": "matched surfaces (keeps extended emission): per-frame and per-tile surfaces "
                           "fitted to what differs between overlapping frames and tiles"}


def assemble_mosaic(tiles: list[MasterTile], canvas: Canvas, channels: int, frames_meshed: bool,
                    config, client, work) -> tuple[dict, dict]:
    """Plan the photometry of the tiles in the mosaic, crop the canvas, coadd into Zarr
    (``mosaic/image``, ``mosaic/coverage``), or reuse a finished canvas. Returns (the cropped
    canvas's WCS cards, the mosaic's summary for the report, with ``reused`` and per tile id
    its ``photometry``). ``frames_meshed``: the frames were flattened by their own local
    backgrounds (``background_mesh``), so the tiles carry no sky to match."""
    tiles = [t for t in tiles if t.in_mosaic]
    if not tiles:
        raise RunError("no usable master tile: every tile was empty or could not be aligned")
    grid, scale = canvas.grid, canvas.scale_arcsec
    fp = store.fingerprint([t.fingerprint for t in tiles], grid.to_json(), config.stage_digest("mosaic"))
    if store.is_complete(work.root, "mosaic", fp):
        attrs = dict(store.open_group(work.root, "mosaic").attrs)
        return attrs["wcs"], {**attrs["summary"], "reused": True}
    factor = config.match_bin
    placed, entries = [], []
    for tile in tiles:
        bbox = grid_bbox_of(tile.grid, grid)
        if bbox is not None:
            placed.append(PlacedTile(work.root, tile.zarr, tile.fingerprint, tile.grid, bbox))
            entries.append(tile)
    futures = [client.submit(tile_cutout, t.root, t.name, t.token, t.grid, grid, factor, t.bbox,
                             key=task_key("tile-cutout", tile.id, f"{t.token}-{fp}"))
               for t, tile in zip(placed, entries)]
    cutouts = wait_with_progress(futures, "tile photometry", work.console)
    shape_b = binned_shape(grid.shape, factor)
    model = sky_model(config.background_mesh, frames_meshed=frames_meshed)
    meshed = model["name"] == "local_background_mesh"
    with ThreadPoolExecutor(PAIR_FIT_THREADS, thread_name_prefix="zdask-pair-fit") as pool:
        photometry = plan_tile_photometry(cutouts, shape_b, factor, harmonize=config.harmonize,
                                          order=-1 if meshed else config.sky_surface_order,
                                          map_pairs=pool.map)
    if meshed:  # nothing of the sky is left to determine: the local backgrounds assumed it all
        photometry["common_surface"] = {"determined": [], "undetermined": [],
                                        "assumed_flat": ["all (each frame's local background removed)"]}
    box = (0, grid.shape[0], 0, grid.shape[1])
    if config.autocrop:
        covered = np.zeros(shape_b, dtype=np.float32)
        for c in cutouts:
            ys, xs = c.window()
            covered[ys, xs] += c.weight
        found = autocrop_box(covered, min_coverage=1e-6)
        if found is not None:
            y0, y1, x0, x1 = found
            box = (y0 * factor, min(grid.shape[0], y1 * factor),
                   x0 * factor, min(grid.shape[1], x1 * factor))
    cropped = crop_grid(grid, box)
    final = []
    for k, t in enumerate(placed):
        y0, y1, x0, x1 = t.bbox
        bbox = (max(0, y0 - box[0]), min(cropped.shape[0], y1 - box[0]),
                max(0, x0 - box[2]), min(cropped.shape[1], x1 - box[2]))
        if bbox[0] >= bbox[1] or bbox[2] >= bbox[3]:
            continue
        final.append(PlacedTile(t.root, t.name, t.token, t.grid, bbox,
                                tuple(float(v) for v in photometry["gains"][k]),
                                tuple(float(v) for v in photometry["offsets"][k]),
                                photometry["surfaces"][k]))
    coadd_into_store(final, cropped, (box[0], box[2]), channels, config, client, work, "mosaic", fp)
    per_tile = {t.id: {"gains": [float(v) for v in photometry["gains"][k]],
                          "offsets": [float(v) for v in photometry["offsets"][k]],
                          "surface": photometry["surfaces"][k]}
                for k, t in enumerate(entries)}
    summary = {
        "shape": list(cropped.shape), "scale_arcsec": scale, "channels": channels,
        "crop_box": list(box), "seam_before": photometry["seam_before"],
        "seam_after": photometry["seam_after"], "pair_seam_before": photometry["pair_seam_before"],
        "pair_seam_after": photometry["pair_seam_after"], "photometry_pairs": photometry["pairs"],
        "photometry": {str(k): v for k, v in per_tile.items()},
        "common_surface": photometry["common_surface"], "sky_model": model,
    }
    store.mark_complete(work.root, "mosaic", fp, wcs=cropped.wcs_header, summary=summary)
    work.say(f"seam metric per channel: before {np.round(summary['seam_before'], 2).tolist()}, "
            f"after {np.round(summary['seam_after'], 2).tolist()}; steps between overlapping tiles: "
            f"before {np.round(summary['pair_seam_before'], 2).tolist()}, "
            f"after {np.round(summary['pair_seam_after'], 2).tolist()}")
    work.say(f"sky model: {model['description']}")
    common = summary["common_surface"]
    work.say(f"sky surface shared by all tiles: determined by the data {common['determined'] or 'nothing'}, "
            f"left as matched {common['undetermined'] or 'nothing'}, assumed flat {common.get('assumed_flat', [])}")
    return cropped.wcs_header, {**summary, "reused": False}


def coadd_into_store(tiles: list[PlacedTile], canvas, origin: tuple[int, int], channels: int, config, client,
                     work, name: str, fp: str) -> None:
    """The feathered coadd of ``tiles`` on ``canvas`` written as ``name``/image and
    ``name``/coverage in the work store, block by block by the workers (not yet marked
    complete: the caller does, with its summary)."""
    arrays = mosaic_arrays(tiles, canvas, channels, config.canvas_block, config.warp_grid_step, origin=origin)
    # The canvas of other tiles or settings is replaced under the same name: unmark it first,
    # or a crash while writing would leave it marked complete for the old fingerprint.
    store.begin_entry(work.root, name)
    group = store.open_store(work.root)
    targets = [store.create_array(group, f"{name}/{key}", arrays[key].shape, arrays[key].dtype,
                                  tuple(c[0] for c in arrays[key].chunks)) for key in ("image", "coverage")]
    writes = store_named([arrays["image"], arrays["coverage"]], targets, "write-mosaic", None, fp)
    wait_with_progress([client.compute(writes)], name, work.console)

