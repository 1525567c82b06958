"""The mosaic stage: tile photometry planned on binned cut-outs, autocrop, then the coadd.

Healthy tiles only; the plan (gains, offsets and surfaces per tile, the seam metric before and
after) is stored with the canvas so a reused mosaic reports it too.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import dask
import dask.array as da
import numpy as np
import zarr
from astropy.wcs.utils import proj_plane_pixel_scales

from zdask.cluster import wait_with_progress
from zdask.graph.field import canvas_size_problem
from zdask.graph.geometry import grid_bbox_of
from zdask.graph.harmonize import binned_shape, plan_tile_photometry, tile_cutout
from zdask.graph.mosaic import PlacedTile, canvas_grid, crop_grid, mosaic_arrays
from zdask.io import store
from zdask.ops.crop import autocrop_box

# The tile pairs' photometric fits run here, in the client, while the workers wait for the plan:
# on this machine's cores (a few: each holds two binned overlaps).
PAIR_FIT_THREADS = min(4, os.cpu_count() or 1)

MOSAIC_FIELDS = ("harmonize", "sky_surface_order", "match_bin", "autocrop", "canvas_block", "warp_grid_step",
                 "background_mesh")


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


def run_mosaic_stage(ctx, client, plan) -> None:
    """Plan the tile photometry, crop the canvas, coadd into Zarr (or reuse a finished canvas)."""
    config = ctx.config
    from zdask.graph.runner import RunError

    tiles = [(e, g, fp) for e, g, fp in ctx.tiles if g is not None and e.get("healthy", True)]
    if not tiles:
        raise RunError("no usable master tile: every tile was empty or could not be aligned")
    used = [f for f in ctx.frames if f.path not in ctx.excluded]
    if used:  # the frames that are in the mosaic: an excluded one must not move its scale
        scale = float(np.nanmedian([f.scale_arcsec for f in used]))
    else:  # existing tiles: their own pixel scale
        scale = float(np.median([proj_plane_pixel_scales(g.wcs()).mean() * 3600 for _, g, _ in tiles]))
    try:
        canvas = canvas_grid([g for _, g, _ in tiles], scale)
    except ValueError as exc:  # tiles given with --tiles from opposite sides of the sky
        raise RunError(f"the tiles cannot share one mosaic canvas: {exc}") from None
    problem = canvas_size_problem(canvas.shape, config.max_canvas_pixels)
    if problem:
        raise RunError(problem)
    fp = store.fingerprint([fp for _, _, fp in tiles], canvas.to_json(), config.digest(*MOSAIC_FIELDS))
    if store.is_complete(ctx.root, "mosaic", fp):
        attrs = dict(zarr.open_group(ctx.root, path="mosaic", mode="r").attrs)
        ctx.report["mosaic"] = {**attrs["summary"], "reused": True}
        ctx.canvas_header = attrs["wcs"]
        _tile_photometry_into_report(tiles, attrs["summary"]["photometry"])
        return
    factor = config.match_bin
    placed, entries = [], []
    for entry, grid, tfp in tiles:
        bbox = grid_bbox_of(grid, canvas)
        if bbox is not None:
            placed.append(PlacedTile(ctx.root, entry["zarr"], tfp, grid, bbox))
            entries.append(entry)
    futures = [client.submit(tile_cutout, t.root, t.name, t.token, t.grid, canvas, factor, t.bbox,
                             key=f"cutout-{t.token}-{fp}") for t in placed]
    cutouts = wait_with_progress(futures, "tile photometry", ctx.console)
    shape_b = binned_shape(canvas.shape, factor)
    glows = [(e.get("sky_glow") or {}).get("gradient") for e in entries]
    # Frames flattened by their own local backgrounds carry no sky for the tiles to match (master
    # tiles given with --tiles were made elsewhere: matched as usual).
    model = sky_model(config.background_mesh, frames_meshed=bool(ctx.frames))
    meshed = model["name"] == "local_background_mesh"
    with ThreadPoolExecutor(PAIR_FIT_THREADS, thread_name_prefix="zdask-pair-fit") as pool:
        photometry = plan_tile_photometry(cutouts, shape_b, factor, harmonize=config.harmonize,
                                          order=-1 if meshed else config.sky_surface_order, glows=glows,
                                          map_pairs=pool.map)
    if meshed:  # nothing of the sky is left to determine: the local backgrounds assumed it all
        photometry["common_surface"] = {"determined": [], "undetermined": [],
                                        "assumed_flat": ["all (each frame's local background removed)"]}
    box = (0, canvas.shape[0], 0, canvas.shape[1])
    if config.autocrop:
        covered = np.zeros(shape_b, dtype=np.float32)
        for c in cutouts:
            ys, xs = c.window()
            covered[ys, xs] += c.weight
        found = autocrop_box(covered, min_coverage=1e-6)
        if found is not None:
            y0, y1, x0, x1 = found
            box = (y0 * factor, min(canvas.shape[0], y1 * factor),
                   x0 * factor, min(canvas.shape[1], x1 * factor))
    cropped = crop_grid(canvas, box)
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
    arrays = mosaic_arrays(final, cropped, ctx.channels, config.canvas_block, config.warp_grid_step,
                           origin=(box[0], box[2]))
    # The canvas of other tiles or settings is replaced under the same name: unmark it first,
    # or a crash while writing would leave it marked complete for the old fingerprint.
    store.begin_entry(ctx.root, "mosaic")
    group = store.open_store(ctx.root)
    targets = [store.create_array(group, f"mosaic/{key}", arrays[key].shape, arrays[key].dtype,
                                  tuple(c[0] for c in arrays[key].chunks)) for key in ("image", "coverage")]
    writes = da.store([arrays["image"], arrays["coverage"]], targets, lock=False, compute=False)
    wait_with_progress([client.compute(dask.delayed(lambda _: None)(writes))], "mosaic", ctx.console)
    per_tile = {e["id"]: {"gains": [float(v) for v in photometry["gains"][k]],
                          "offsets": [float(v) for v in photometry["offsets"][k]],
                          "surface": photometry["surfaces"][k]}
                for k, e in enumerate(entries)}
    summary = {
        "shape": list(cropped.shape), "scale_arcsec": scale, "channels": ctx.channels,
        "crop_box": list(box), "seam_before": photometry["seam_before"],
        "seam_after": photometry["seam_after"], "pair_seam_before": photometry["pair_seam_before"],
        "pair_seam_after": photometry["pair_seam_after"], "photometry_pairs": photometry["pairs"],
        "photometry": {str(k): v for k, v in per_tile.items()},
        "common_surface": photometry["common_surface"], "sky_model": model,
    }
    store.mark_complete(ctx.root, "mosaic", fp, wcs=cropped.wcs_header, summary=summary)
    ctx.report["mosaic"] = {**summary, "reused": False}
    ctx.canvas_header = cropped.wcs_header
    _tile_photometry_into_report(tiles, summary["photometry"])
    ctx.say(f"seam metric per channel: before {np.round(summary['seam_before'], 2).tolist()}, "
            f"after {np.round(summary['seam_after'], 2).tolist()}; steps between overlapping tiles: "
            f"before {np.round(summary['pair_seam_before'], 2).tolist()}, "
            f"after {np.round(summary['pair_seam_after'], 2).tolist()}")
    ctx.say(f"sky model: {model['description']}")
    common = summary["common_surface"]
    ctx.say(f"sky surface shared by all tiles: determined by the data {common['determined'] or 'nothing'}, "
            f"left as matched {common['undetermined'] or 'nothing'}, assumed flat {common.get('assumed_flat', [])}")


def _tile_photometry_into_report(tiles, photometry: dict) -> None:
    for entry, _, _ in tiles:
        found = photometry.get(str(entry["id"]))
        if found:
            entry["gains"], entry["offsets"] = found["gains"], found["offsets"]
