"""The one writer of every mode: mosaic.fits (+ COVERAGE, ALPHA), preview.png, report.json and
report.html.

ALPHA is made from the coverage (:func:`zdask.io.outputs.alpha_from_coverage`) for every mode.
The pictures of report.html (the preview, the coverage on the preview's pixels) are sampled
from the bands of the mosaic as they are written: the report reads no pixel again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from dask.utils import parse_bytes

from zdask.graph.geometry import footprint_outline
from zdask.graph.modes.base import ModeResult, Workspace
from zdask.io import store, urls
from zdask.io.fitsheader import open_fits
from zdask.io.outputs import PreviewSampler, rows_per_band, write_json, write_mosaic, write_text
from zdask.io.reporthtml import TileOutline, render_report_html


@dataclass(frozen=True)
class WrittenMosaic:
    """What writing the mosaic leaves for the report: the covered fraction (finite in every
    channel, coverage > 0), the preview's pixels (uint8, north up), the coverage on the same
    pixels (north up), the canvas pixels per preview pixel, and the mosaic's WCS cards."""

    covered_fraction: float
    preview: np.ndarray
    coverage: np.ndarray
    step: int
    canvas_header: dict


def write_mosaic_outputs(result: ModeResult, config, work: Workspace) -> WrittenMosaic:
    """mosaic.fits and preview.png from the mode's arrays in Zarr (each written atomically),
    streamed in bands of rows of at most the stacking budget, so no process ever holds the whole
    canvas."""
    group = store.open_group(work.root, result.group)
    image, coverage = group["image"], group["coverage"]
    # Bands of a quarter of the budget: two are in memory at once (one read while the other is
    # written), and bands of hundreds of MB cost more in page faults than their fewer writes save.
    band_rows = rows_per_band(image.shape, parse_bytes(config.budget) // 4)
    covered = 0
    preview = PreviewSampler(image.shape)  # filled from the mosaic's bands: no second read
    coverage_preview = PreviewSampler(coverage.shape)

    def each_band(y0: int, image_band: np.ndarray, coverage_band: np.ndarray) -> None:
        nonlocal covered
        covered += int(np.count_nonzero(np.isfinite(image_band).all(axis=-1) & (coverage_band > 0)))
        preview.add(y0, image_band)
        coverage_preview.add(y0, coverage_band)

    write_mosaic(urls.join(work.out_dir, "mosaic.fits"), image, coverage, result.canvas_header,
                 {"NTILES": result.n_tiles, "NFRAMES": result.frames_used},
                 band_rows=band_rows, each_band=each_band)
    pixels = preview.save(urls.join(work.out_dir, "preview.png"))
    return WrittenMosaic(covered / max(1, coverage.shape[0] * coverage.shape[1]), pixels,
                         coverage_preview.pixels[::-1], preview.step, dict(result.canvas_header))


def write_report(report: dict, work: Workspace, written: WrittenMosaic | None = None) -> None:
    """report.json, then report.html (with the pictures of ``written`` when given)."""
    write_json(urls.join(work.out_dir, "report.json"), report)
    outlines = tile_outlines(report.get("tiles", []), work.out_dir, written) if written else ()
    page = render_report_html(report, written.preview if written else None,
                              written.coverage if written else None, outlines)
    write_text(urls.join(work.out_dir, "report.html"), page)


def tile_outlines(tiles: list[dict], out_dir: str, written: WrittenMosaic) -> list[TileOutline]:
    """Each tile of the report whose FITS file is there, outlined on the preview's pixels: its
    footprint (from the file's WCS and size, headers only) projected onto the mosaic's WCS."""
    canvas = WCS(written.canvas_header)
    rows = written.preview.shape[0]
    outlines = []
    for tile in tiles:
        path = urls.join(out_dir, tile.get("file") or "")
        if not tile.get("file") or not urls.isfile(path):
            continue
        with open_fits(path) as hdul:
            header = hdul[0].header
        wcs = WCS(header).celestial
        ra, dec = footprint_outline(wcs, (header["NAXIS2"], header["NAXIS1"]))
        x, y = canvas.all_world2pix(ra, dec, 0)
        # canvas pixel centre (x, y) → preview units: columns x / step, rows flipped (north up)
        points = tuple((float(px / written.step + 0.5), float(rows - 0.5 - py / written.step))
                       for px, py in zip(x, y))
        label = f"tile {tile['id']} · {tile.get('n_frames', '?')} frames"
        outlines.append(TileOutline(int(tile["id"]), points, label))
    return outlines
