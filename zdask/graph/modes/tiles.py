"""The tiles mode (``zdask run --tiles DIR``): assemble master tiles a user already has.

Its front is the folder's tiles, imported into the working store (:func:`import_tiles`): each
FITS file with a celestial WCS becomes a tile (image, coverage from its COVERAGE extension or 1
where finite, alpha from its ALPHA extension or 1, weight = coverage × alpha × feather). The
canvas covers the healthy ones; the mosaic is assembled as the classic mode's.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from zdask.graph.canvas import Canvas, tiles_canvas
from zdask.graph.errors import RunError
from zdask.graph.geometry import Grid
from zdask.graph.modes.base import MasterTile, ModeResult
from zdask.graph.modes.classic import tiles_report
from zdask.graph.mosaic_stage import assemble_mosaic
from zdask.io import store
from zdask.io.fitsheader import celestial_cards
from zdask.io.scan import FITS_EXTENSIONS
from zdask.ops.colour import tile_health
from zdask.ops.masks import feather_weights

INPUT = "tiles"


@dataclass(frozen=True)
class TileFront:
    """The imported master tiles (in file-name order) and their channel count."""

    tiles: tuple[MasterTile, ...]
    channels: int
    warnings: tuple[str, ...]   # tiles left out of the mosaic, with the reason


@dataclass(frozen=True)
class TilesPlan:
    tiles: tuple[MasterTile, ...]   # those the mosaic assembles


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


def import_tiles(folder: str, config, work) -> TileFront:
    """Write every tile file of ``folder`` into the store (reusing unchanged ones)."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(FITS_EXTENSIONS))
    if not names:
        raise RunError(f"no FITS tile in {folder}")
    group = store.open_store(work.root)
    channels: set[int] = set()
    tiles, warnings = [], []
    settings = config.stage_digest("import")
    for k, name in enumerate(names):
        path = os.path.abspath(os.path.join(folder, name))
        st = os.stat(path)
        fp = store.fingerprint(path, st.st_size, st.st_mtime_ns, settings)
        zname = f"tiles/{fp}"
        image, coverage, alpha, cards, mount = read_tile_file(path)
        health = tile_health(image, coverage)
        reused = store.is_complete(work.root, zname, fp)
        if not reused:
            feather = feather_weights(coverage, ramp_px=config.feather_px) if config.feather_px else 1.0
            arrays = {"image": image, "coverage": coverage, "alpha": alpha,
                      "weight": (coverage * alpha * feather).astype(np.float32)}
            for key, value in arrays.items():
                chunks = (min(1024, value.shape[0]), value.shape[1]) + value.shape[2:]
                store.create_array(group, f"{zname}/{key}", value.shape, "float32", chunks)[:] = value
            store.mark_complete(work.root, zname, fp, summary={"imported": path})
        tiles.append(MasterTile(k, mount, path, Grid(cards, image.shape[:2]), zname, fp, (),
                                healthy=bool(health.ok), health_reason=health.reason, reused=reused))
        if not health.ok:
            warnings.append(f"tile {path} excluded from the mosaic: {health.reason}")
        channels.add(image.shape[-1])
    if len(channels) > 1:
        raise RunError(f"tiles in {folder} mix mono and colour images")
    return TileFront(tuple(tiles), channels.pop(), tuple(warnings))


def front_canvas(front: TileFront, config) -> Canvas:
    """The canvas covering the healthy tiles, at their median pixel scale."""
    return tiles_canvas([t.grid for t in front.tiles if t.in_mosaic], config)


def plan(front: TileFront, canvas: Canvas, config) -> TilesPlan:
    """The tiles the mosaic assembles: the healthy ones. Pure."""
    return TilesPlan(tuple(t for t in front.tiles if t.in_mosaic))


def build(plan: TilesPlan, front: TileFront, canvas: Canvas, config, client, work) -> ModeResult:
    """Assemble the tiles on the canvas (matched as usual: tiles made elsewhere carry their sky)."""
    t = time.perf_counter()
    header, mosaic = assemble_mosaic(list(plan.tiles), canvas, front.channels, False, config, client, work)
    report = tiles_report(front.tiles, mosaic)
    del report["tiles_reused"], report["tiles_computed"]
    return ModeResult("mosaic", header, len(plan.tiles), 0, report, front.warnings,
                      {"mosaic": time.perf_counter() - t})
