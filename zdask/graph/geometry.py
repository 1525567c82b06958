"""Pure planners of pixel grids on the sky: master-tile grids and the mosaic canvas.

Both are north-up gnomonic (TAN) grids that cover a set of footprints (frames for a tile, tiles
for the canvas) at a given pixel scale. A grid is carried as a dict of FITS WCS cards plus its
shape, so it travels to workers and into FITS headers without astropy objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS

from zdask.io.fitsheader import wcs_from_header


@dataclass(frozen=True)
class Grid:
    """A north-up TAN pixel grid: FITS WCS cards and the array shape (height, width)."""

    wcs_header: dict
    shape: tuple[int, int]

    def wcs(self) -> WCS:
        return wcs_from_header(self.wcs_header)

    def to_json(self) -> dict:
        return {"wcs": self.wcs_header, "shape": list(self.shape)}


def tan_header(ra_deg: float, dec_deg: float, scale_arcsec: float, crpix: tuple[float, float]) -> dict:
    """Cards of a north-up (east left) TAN projection; crpix is 1-based as in FITS."""
    s = scale_arcsec / 3600.0
    return {
        "NAXIS": 2,
        "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN",
        "CUNIT1": "deg", "CUNIT2": "deg",
        "CRVAL1": float(ra_deg), "CRVAL2": float(dec_deg),
        "CRPIX1": float(crpix[0]), "CRPIX2": float(crpix[1]),
        "CD1_1": -s, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": s,
        "RADESYS": "ICRS", "EQUINOX": 2000.0,
    }


def footprint_outline(wcs: WCS, shape: tuple[int, int], per_side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) of points along the edge of an image, pixel-edge outermost."""
    h, w = shape
    t = np.linspace(0.0, 1.0, per_side, endpoint=False)
    xs = np.concatenate([t * w, np.full_like(t, w), (1 - t) * w, np.zeros_like(t)]) - 0.5
    ys = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), (1 - t) * h]) - 0.5
    ra, dec = wcs.all_pix2world(xs, ys, 0)
    return np.asarray(ra), np.asarray(dec)


def mean_direction(ra_deg: np.ndarray, dec_deg: np.ndarray) -> tuple[float, float]:
    """Mean of sky positions as unit vectors (safe across RA = 0)."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    v = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).mean(axis=1)
    v /= np.linalg.norm(v)
    return float(np.degrees(np.arctan2(v[1], v[0])) % 360.0), float(np.degrees(np.arcsin(v[2])))


def covering_grid(
    outlines: list[tuple[np.ndarray, np.ndarray]], scale_arcsec: float, margin: int = 0,
    centre: tuple[float, float] | None = None,
) -> Grid:
    """The smallest north-up TAN grid at ``scale_arcsec`` containing every outline (+ margin px).

    Raises ValueError when an outline point lies 90° or more from the centre: it has no place
    on any TAN grid about that centre."""
    ra = np.concatenate([o[0] for o in outlines])
    dec = np.concatenate([o[1] for o in outlines])
    ra0, dec0 = centre if centre is not None else mean_direction(ra, dec)
    probe = wcs_from_header(tan_header(ra0, dec0, scale_arcsec, (0.0, 0.0)))
    x, y = probe.all_world2pix(ra, dec, 0)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        # A gnomonic projection holds less than a hemisphere: a point 90° or more from the
        # centre has no pixel (astropy gives NaN), and the grid's size would be NaN.
        raise ValueError(f"footprints reach 90° or more from the grid centre (RA {ra0:.4f}, "
                         f"Dec {dec0:.4f}): no TAN grid holds them")
    # Outlines run along pixel edges; keep every grid pixel whose centre lies on or inside
    # them (the 1e-6 absorbs round-off that would otherwise add a spurious row or column).
    x0 = np.floor(np.min(x) + 0.5 + 1e-6) - margin
    y0 = np.floor(np.min(y) + 0.5 + 1e-6) - margin
    width = int(np.ceil(np.max(x) - 0.5 - 1e-6) - x0) + margin + 1
    height = int(np.ceil(np.max(y) - 0.5 - 1e-6) - y0) + margin + 1
    # The probe's reference pixel is at 0-based (-1, -1) (CRPIX 0, FITS being 1-based); shifting
    # the grid so the probe's pixel (x0, y0) becomes pixel 0 puts it at 1-based (-x0, -y0).
    header = tan_header(ra0, dec0, scale_arcsec, (float(-x0), float(-y0)))
    header["NAXIS1"], header["NAXIS2"] = width, height
    return Grid(header, (height, width))


def grid_bbox_of(grid_src: Grid, grid_dst: Grid) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of ``grid_src``'s footprint in ``grid_dst`` pixels, clipped; None if apart."""
    ra, dec = footprint_outline(grid_src.wcs(), grid_src.shape)
    x, y = grid_dst.wcs().all_world2pix(ra, dec, 0)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return None  # the footprint reaches beyond the destination's hemisphere: not on it
    h, w = grid_dst.shape
    x0, x1 = max(0, int(np.floor(x.min()))), min(w, int(np.ceil(x.max())) + 1)
    y0, y1 = max(0, int(np.floor(y.min()))), min(h, int(np.ceil(y.max())) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1
