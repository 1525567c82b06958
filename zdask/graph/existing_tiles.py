"""``zdask run --tiles DIR``: assemble master tiles a user already has, skipping the frame stages.

Each FITS file with a celestial WCS becomes a tile in the working store (image, coverage from
its COVERAGE extension or 1 where finite, alpha from its ALPHA extension or 1, weight =
coverage × alpha × feather), then the mosaic stage runs as for stacked tiles.
"""

from __future__ import annotations

import os
import time

import numpy as np
from astropy.io import fits

from zdask.cluster import open_client
from zdask.config import Config
from zdask.graph.geometry import Grid
from zdask.graph.mosaic_stage import run_mosaic_stage
from zdask.graph.runner import RunContext, RunError, claim_output_folder, stage_write
from zdask.io import store
from zdask.io.fitsheader import celestial_cards
from zdask.io.outputs import write_json
from zdask.io.scan import FITS_EXTENSIONS
from zdask.ops.colour import tile_health
from zdask.ops.masks import feather_weights


def read_tile_file(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict, str]:
    """(image (h, w, C), coverage, alpha in [0, 1], celestial WCS cards, mount) of a tile file."""
    try:
        with fits.open(path, memmap=False) as hdul:
            hdu = next((h for h in hdul if h.data is not None and h.data.ndim in (2, 3)), None)
            if hdu is None:
                raise RunError(f"{path}: no image data")
            data = np.asarray(hdu.data, dtype=np.float32)
            cards = celestial_cards(hdu.header)
            if not any(str(v).startswith(("RA", "DEC", "GLON", "GLAT")) for k, v in cards.items()
                       if k.startswith("CTYPE")):
                raise RunError(f"{path}: no celestial WCS")
            names = {h.name for h in hdul}
            image = np.moveaxis(data, 0, -1) if data.ndim == 3 else data[..., None]
            finite = np.isfinite(image).all(axis=-1)
            coverage = (np.asarray(hdul["COVERAGE"].data, dtype=np.float32) if "COVERAGE" in names
                        else finite.astype(np.float32))
            alpha = (np.asarray(hdul["ALPHA"].data, dtype=np.float32) / 255.0 if "ALPHA" in names
                     else np.ones(finite.shape, dtype=np.float32))
            mount = str(hdu.header.get("MOUNT", "UNKNOWN"))
    except OSError as exc:
        raise RunError(f"{path}: unreadable ({exc})") from None
    if coverage.shape != image.shape[:2] or alpha.shape != image.shape[:2]:
        raise RunError(f"{path}: COVERAGE/ALPHA shape differs from the image's")
    return image, np.where(finite, coverage, 0.0), alpha, cards, mount


def import_tiles(folder: str, ctx: RunContext) -> None:
    """Write every tile file of ``folder`` into the store (reusing unchanged ones)."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(FITS_EXTENSIONS))
    if not names:
        raise RunError(f"no FITS tile in {folder}")
    group = store.open_store(ctx.root)
    channels: set[int] = set()
    for k, name in enumerate(names):
        path = os.path.abspath(os.path.join(folder, name))
        st = os.stat(path)
        fp = store.fingerprint(path, st.st_size, st.st_mtime_ns, ctx.config.feather_px)
        zname = f"tiles/{fp}"
        image, coverage, alpha, cards, mount = read_tile_file(path)
        health = tile_health(image, coverage)
        entry = {"id": k, "mode": mount, "altaz_cleanup": False, "frames": [], "frames_excluded": [],
                 "n_frames": 0, "file": path, "zarr": zname, "shape": list(image.shape[:2]),
                 "healthy": bool(health.ok), "health_reason": health.reason, "reused": True}
        if not store.is_complete(ctx.root, zname, fp):
            entry["reused"] = False
            feather = feather_weights(coverage, ramp_px=ctx.config.feather_px) if ctx.config.feather_px else 1.0
            arrays = {"image": image, "coverage": coverage, "alpha": alpha,
                      "weight": (coverage * alpha * feather).astype(np.float32)}
            for key, value in arrays.items():
                chunks = (min(1024, value.shape[0]), value.shape[1]) + value.shape[2:]
                store.create_array(group, f"{zname}/{key}", value.shape, "float32", chunks)[:] = value
            store.mark_complete(ctx.root, zname, fp, summary={"imported": path})
        ctx.tiles.append((entry, Grid(cards, image.shape[:2]), fp))
        if not health.ok:
            ctx.report["warnings"].append(f"tile {path} excluded from the mosaic: {health.reason}")
        channels.add(image.shape[-1])
    if len(channels) > 1:
        raise RunError(f"tiles in {folder} mix mono and colour images")
    ctx.channels = channels.pop()


def run_existing_tiles(folder: str, out_dir: str, config: Config, say=print, console=None) -> dict:
    """Build the mosaic of the master tiles in ``folder`` into ``out_dir``."""
    if not os.path.isdir(folder):
        raise RunError(f"--tiles {folder}: no such folder")
    out = os.path.realpath(out_dir)
    if out == os.path.realpath(folder) or out.startswith(os.path.realpath(folder) + os.sep):
        raise RunError(f"output folder {out_dir} is inside the tiles folder {folder}; choose another --out")
    with claim_output_folder(out_dir):
        return _assemble(folder, out_dir, config, say, console)


def _assemble(folder: str, out_dir: str, config: Config, say, console) -> dict:
    timings: dict[str, float] = {}
    ctx = RunContext([], config, out_dir, say, console)
    ctx.report = {"inputs": [os.path.abspath(folder)], "config": config.to_dict(), "frames_used": 0,
                  "frames_rejected": [], "warnings": [], "stages": timings}
    t = time.perf_counter()
    import_tiles(folder, ctx)
    timings["import"] = time.perf_counter() - t
    ctx.report["tiles"] = [e for e, _, _ in ctx.tiles]
    with open_client(config, say) as client:
        t = time.perf_counter()
        run_mosaic_stage(ctx, client, None)
        timings["mosaic"] = time.perf_counter() - t
    t = time.perf_counter()
    stage_write(ctx)
    timings["write"] = time.perf_counter() - t
    timings["total"] = sum(timings.values())
    write_json(os.path.join(out_dir, "report.json"), ctx.report)
    return ctx.report
