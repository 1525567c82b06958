"""The grid mode's survey-wide frame skies (zdask.graph.grid_sky) on planted, noiseless frames in a
real Zarr store: six overlapping frames (two rotated) whose skies are each a plane of their own plus
one curvature they all share, as a horizon glow gives."""

from __future__ import annotations

import numpy as np
import pytest

from zdask.graph.geometry import Grid, tan_header
from zdask.graph.grid_sky import frame_sky_on_canvas
from zdask.graph.tiles import TileSource
from zdask.io import store
from zdask.io.fitsheader import wcs_from_header
from zdask.ops.background import poly_terms
from zdask.ops.warp import binned_extent

SCALE = 2.0                 # arcsec per pixel, canvas and frames
CANVAS = (320, 600)         # canvas (height, width)
FRAME = (160, 240)          # frame (height, width)
FACTOR = 8                  # match_bin
# The curvature every frame shares (u², u·v, v² on the canvas' normalised coordinates), per channel
CURVATURE = np.array([[6.0, -3.0, 9.0], [4.0, -2.0, 6.0], [2.0, -1.0, 3.0]])
# Frames: centre (x, y) on the canvas, rotation (deg), level and gradient (ADU per px along x, y)
FRAMES = [((140, 100), 0.0, 300.0, (0.20, -0.10)), ((300, 110), 2.0, 340.0, (-0.15, 0.25)),
          ((460, 95), 0.0, 280.0, (0.30, 0.05)), ((150, 210), -3.0, 320.0, (0.05, 0.30)),
          ((310, 220), 0.0, 360.0, (-0.25, -0.20)), ((455, 215), 0.0, 310.0, (0.10, 0.15))]
CHANNEL_GAIN = (1.0, 0.8, 0.5)
NOISE = 1.0                 # ADU per pixel (the robust fits judge outliers by the noise: not 0)


def _canvas() -> Grid:
    return Grid(tan_header(150.0, 20.0, SCALE, ((CANVAS[1] + 1) / 2, (CANVAS[0] + 1) / 2)), CANVAS)


def _terms(x: np.ndarray, y: np.ndarray, order: int, extent) -> np.ndarray:
    """The polynomial terms at canvas pixels (x, y), shaped (*x.shape, n_terms)."""
    return poly_terms(np.ravel(x), np.ravel(y), order, tuple(extent)).reshape(*np.shape(x), -1)


def _curvature_extent() -> tuple:
    """The full-resolution extent over which the surfaces' coefficients are normalised."""
    return binned_extent((CANVAS[0] // FACTOR, CANVAS[1] // FACTOR), FACTOR)


def _sky(k: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Frame k's planted sky at canvas pixels (x, y): its own plane plus the shared curvature."""
    (cx, cy), _, level, (gx, gy) = FRAMES[k]
    quad = _terms(x, y, 2, _curvature_extent())[..., 3:] @ CURVATURE.T
    plane = level + gx * (x - cx) + gy * (y - cy)
    return np.stack([plane * g for g in CHANNEL_GAIN], axis=-1) + quad


def _frame_header(k: int, canvas: Grid) -> dict:
    (cx, cy), rot, _, _ = FRAMES[k]
    ra, dec = canvas.wcs().all_pix2world([[cx, cy]], 0)[0]
    header = tan_header(ra, dec, SCALE, ((FRAME[1] + 1) / 2, (FRAME[0] + 1) / 2))
    c, s = np.cos(np.deg2rad(rot)), np.sin(np.deg2rad(rot))
    cd = np.array([[header["CD1_1"], 0.0], [0.0, header["CD2_2"]]]) @ np.array([[c, -s], [s, c]])
    header.update(CD1_1=cd[0, 0], CD1_2=cd[0, 1], CD2_1=cd[1, 0], CD2_2=cd[1, 1])
    return header


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The frames rendered from the planted skies (each frame pixel at its canvas position), in
    a Zarr store as the front writes calibrated frames; and the task's result."""
    root = str(tmp_path_factory.mktemp("store") / "work.zarr")
    group = store.open_store(root)
    canvas = _canvas()
    sources = []
    yy, xx = np.mgrid[0:FRAME[0], 0:FRAME[1]]
    rng = np.random.default_rng(17)
    for k in range(len(FRAMES)):
        header = _frame_header(k, canvas)
        ra, dec = wcs_from_header(header).all_pix2world(xx, yy, 0)
        x, y = canvas.wcs().all_world2pix(ra, dec, 0)
        key = f"frame{k}"
        store.create_array(group, f"frames/{key}", (*FRAME, 3), "float32", (64, FRAME[1], 3))[...] = \
            (_sky(k, x, y) + rng.normal(0.0, NOISE, (*FRAME, 3))).astype(np.float32)
        sources.append(TileSource(root, key, "t", header, FRAME))
    return canvas, sources, frame_sky_on_canvas(sources, canvas, FACTOR, order=1)


def _corrected(canvas: Grid, result: dict, k: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Frame k's planted sky less its fitted surface, at canvas pixels (x, y)."""
    coeffs, order, extent = result["surfaces"][k]
    return _sky(k, x, y) - _terms(x, y, order, extent) @ np.asarray(coeffs).T


def test_matched_frames_agree_wherever_they_overlap(planted):
    """Frame by frame, its sky less its surface equals every other frame's where they overlap:
    each plane matched, a gradient's level included (the sampled canvas' coordinates are where
    its samples lie: half a binned pixel off, a frame of gradient g got a level g · 4 px)."""
    canvas, sources, result = planted
    yy, xx = np.mgrid[8:CANVAS[0] - 8:4, 8:CANVAS[1] - 8:4].astype(np.float64)
    values, inside = [], []
    for k, src in enumerate(sources):
        ra, dec = canvas.wcs().all_pix2world(xx, yy, 0)
        fx, fy = wcs_from_header(src.wcs_header).all_world2pix(ra, dec, 0)
        # well inside the frame: its binned edge (a ragged last bin is dropped) plays no part
        inside.append((fx > FACTOR) & (fx < FRAME[1] - 2 * FACTOR) & (fy > FACTOR) & (fy < FRAME[0] - 2 * FACTOR))
        values.append(_corrected(canvas, result, k, xx, yy))
    worst, pairs = 0.0, 0
    for i in range(len(sources)):
        for j in range(i + 1, len(sources)):
            both = inside[i] & inside[j]
            if both.sum() > 20:
                pairs += 1
                worst = max(worst, float(np.sqrt(np.mean((values[i][both] - values[j][both]) ** 2))))
    # ADU, RMS over each overlap; the planted levels differ by up to 80 ADU, the gradients by
    # up to 0.55 ADU/px, the noise of a sampled pixel (16 × 16 frame pixels) is 0.06 ADU
    assert pairs >= 7 and worst < 0.1, (pairs, worst)


def test_the_curvature_every_frame_shares_is_taken_out_of_every_frame(planted):
    """The median of the frames' own curvatures is the planted one, and it is in every frame's
    surface: what the frames agree on is then flat (no bowl as wide as the mosaic)."""
    canvas, _, result = planted
    report = result["curvature"]
    assert report["determined"] == ["u^2", "u*v", "v^2"] and report["frames"] == len(FRAMES)
    np.testing.assert_allclose(np.asarray(report["surface"])[:, 3:], CURVATURE, rtol=0.05, atol=0.3)
    yy, xx = np.mgrid[8:CANVAS[0] - 8:4, 8:CANVAS[1] - 8:4].astype(np.float64)
    k = 4  # the central frame: its corrected sky over the whole canvas is the shared surface
    flat = _corrected(canvas, result, k, xx, yy).reshape(-1, 3)
    terms = _terms(xx, yy, 2, _curvature_extent()).reshape(-1, 6)
    fitted = np.linalg.lstsq(terms, flat, rcond=None)[0]
    assert np.abs(fitted[3:]).max() < 0.3, fitted[3:].T  # of up to 9 ADU planted
