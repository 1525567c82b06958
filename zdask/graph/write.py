"""The one writer of every mode: mosaic.fits (+ COVERAGE, ALPHA), preview.png and report.json.

ALPHA is made from the coverage (:func:`zdask.io.outputs.alpha_from_coverage`) for every mode.
"""

from __future__ import annotations

import os

import numpy as np
import zarr
from dask.utils import parse_bytes

from zdask.graph.modes.base import ModeResult, Workspace
from zdask.io.outputs import PreviewSampler, rows_per_band, write_json, write_mosaic


def write_mosaic_outputs(result: ModeResult, config, work: Workspace) -> float:
    """mosaic.fits and preview.png from the mode's arrays in Zarr (each written atomically),
    streamed in bands of rows of at most the stacking budget, so no process ever holds the whole
    canvas. Returns the covered fraction of the mosaic (finite in every channel, coverage > 0)."""
    group = zarr.open_group(work.root, path=result.group, mode="r")
    image, coverage = group["image"], group["coverage"]
    # Bands of a quarter of the budget: two are in memory at once (one read while the other is
    # written), and bands of hundreds of MB cost more in page faults than their fewer writes save.
    band_rows = rows_per_band(image.shape, parse_bytes(config.budget) // 4)
    covered = 0
    preview = PreviewSampler(image.shape)  # filled from the mosaic's bands: no second read

    def each_band(y0: int, image_band: np.ndarray, coverage_band: np.ndarray) -> None:
        nonlocal covered
        covered += int(np.count_nonzero(np.isfinite(image_band).all(axis=-1) & (coverage_band > 0)))
        preview.add(y0, image_band)

    write_mosaic(os.path.join(work.out_dir, "mosaic.fits"), image, coverage, result.canvas_header,
                 {"NTILES": result.n_tiles, "NFRAMES": result.frames_used},
                 band_rows=band_rows, each_band=each_band)
    preview.save(os.path.join(work.out_dir, "preview.png"))
    return covered / max(1, coverage.shape[0] * coverage.shape[1])


def write_report(report: dict, work: Workspace) -> None:
    write_json(os.path.join(work.out_dir, "report.json"), report)
