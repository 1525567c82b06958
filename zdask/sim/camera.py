"""Per-frame rendering: Bayer sampling, light pollution, trails, noise.

Bayer convention
----------------
The 4-letter pattern (``BAYERPAT``, e.g. ``"GRBG"``) lists the filter colours
of the pixels at (row 0, col 0), (row 0, col 1), (row 1, col 0),
(row 1, col 1) of the data array *as stored*: numpy row 0 is FITS row 1 (the
first row in the file), and no flip is applied on reading or writing. So for
``"GRBG"``, ``data[0::2, 0::2]`` and ``data[1::2, 1::2]`` are green,
``data[0::2, 1::2]`` red and ``data[1::2, 0::2]`` blue. ``XBAYROFF`` and
``YBAYROFF`` are always 0.

A raw pixel of colour ``c`` at frame pixel ``(x, y)`` records, before noise,
``sky_c(x, y) + transparency * truth_c(world(x, y)) [+ trail]`` ADU above the
pedestal, where ``truth`` is the noiseless sky of ``truth.fits`` (stars
re-rendered at the frame's own PSF).
"""

from __future__ import annotations

import cv2
import numpy as np

from .psf import render_stars

__all__ = ["CHANNELS", "cfa_channels", "sky_background", "render_trail",
           "interp_matrix", "frame_signal", "digitise"]

CHANNELS = "RGB"
"""Channel order of every (3, ...) array: index 0 = R, 1 = G, 2 = B."""


def cfa_channels(pattern: str) -> np.ndarray:
    """(2, 2) array of channel indices (0 R, 1 G, 2 B) of a Bayer pattern.

    ``cfa_channels(p)[row % 2, col % 2]`` is the colour of data pixel
    ``(row, col)``.
    """
    return np.array([CHANNELS.index(ch) for ch in pattern.upper()]).reshape(2, 2)


def sky_background(x: np.ndarray, y: np.ndarray, level: float, frac: float, angle_deg: float,
                   ref: tuple[float, float], norm: float, quad: float = 0.0) -> np.ndarray:
    """Light-pollution sky of one channel, linear in pixel position.

    ``level * (1 + frac * ((x - xr) cos a + (y - yr) sin a) / norm)`` with
    ``a = angle_deg``: the sky brightens along direction ``a`` (towards the
    horizon) and changes by ``+/- frac`` at distance ``norm`` (half the
    frame diagonal, so the farthest corners) from ``ref`` (frame centre).

    Parameters
    ----------
    x, y : ndarray
        Broadcastable 0-based pixel coordinates.
    """
    a = np.deg2rad(angle_deg)
    gx = (np.asarray(x, dtype=np.float64) - ref[0]) * (frac * np.cos(a) / norm)
    gy = (np.asarray(y, dtype=np.float64) - ref[1]) * (frac * np.sin(a) / norm)
    if quad == 0.0:
        return (level * (1.0 + gx + gy)).astype(np.float32)
    # The quadratic part (``quad * (s² - 1/3)``, s the position along the gradient, -1..1)
    # curves the sky the way a horizon glow does; it moves and turns with the frame.
    s = ((np.asarray(x, dtype=np.float64) - ref[0]) * np.cos(a)
         + (np.asarray(y, dtype=np.float64) - ref[1]) * np.sin(a)) / norm
    return (level * (1.0 + gx + gy + quad * (s * s - 1.0 / 3.0))).astype(np.float32)


def render_trail(shape: tuple[int, int], p0: tuple[float, float], p1: tuple[float, float],
                 width: float, peak: float) -> np.ndarray:
    """A satellite trail: a straight line with a Gaussian cross-section.

    Parameters
    ----------
    shape : tuple of int
        (height, width) of the frame.
    p0, p1 : tuple of float
        Two points (x, y) on the line, 0-based pixels; the line is infinite
        (endpoints on the frame border make it cross the whole frame).
    width : float
        FWHM of the cross-section, pixels.
    peak : float
        ADU added on the line's centre, in every colour channel (sunlight
        reflected by a satellite is roughly white).
    """
    h, w = shape
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    n = np.hypot(dx, dy)
    nx, ny = -dy / n, dx / n  # unit normal
    d = ((np.arange(w, dtype=np.float32) - np.float32(p0[0])) * np.float32(nx))[None, :] \
        + ((np.arange(h, dtype=np.float32) - np.float32(p0[1])) * np.float32(ny))[:, None]
    sigma = width / 2.3548
    return (peak * np.exp(-0.5 * (d / np.float32(sigma)) ** 2)).astype(np.float32)


def interp_matrix(nodes: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Dense linear-interpolation weights from ``nodes`` to ``coords``.

    ``M @ f(nodes) ~= f(coords)`` for 1-D, increasing, uniformly spaced
    ``nodes``; coordinates outside extrapolate linearly from the end cells.
    Bilinear interpolation of a coarse grid ``G`` is then
    ``My @ G @ Mx.T``: two small matrix products instead of a per-pixel
    gather.
    """
    step = nodes[1] - nodes[0]
    i = np.clip(np.floor((coords - nodes[0]) / step).astype(np.int64), 0, nodes.size - 2)
    t = (coords - nodes[i]) / step
    m = np.zeros((coords.size, nodes.size))
    rows = np.arange(coords.size)
    m[rows, i] = 1.0 - t
    m[rows, i + 1] = t
    return m


def frame_signal(shape, cfa, to_truth, extended, stars_xy, star_flux, fwhm, transparency,
                 sky_levels, gradient_frac, gradient_angle, trail=None, gradient_quad=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Expected ADU above pedestal of every raw pixel (no noise).

    Parameters
    ----------
    shape : tuple of int
        Frame (height, width).
    cfa : ndarray
        (2, 2) channel indices (:func:`cfa_channels`).
    to_truth : tuple
        ``(nodes_x, nodes_y, grid_x, grid_y)``: truth-pixel coordinates
        ``grid_*`` (shape (len(nodes_y), len(nodes_x))) of frame pixels on a
        coarse grid; bilinear interpolation of it is exact to far below a
        pixel because the frame-to-truth map is a near-affine TAN-to-TAN map.
    extended : ndarray
        (3, Ht, Wt) float32 galaxy on the truth grid, resampled here.
    stars_xy : tuple of ndarray
        Frame pixel (x, y) of the stars to draw.
    star_flux : ndarray
        (N, 3) fluxes at transparency 1.
    fwhm, transparency : float
        PSF core FWHM (pixels) and signal multiplier.
    sky_levels, gradient_frac : sequence of 3 float
        Per-channel sky level and gradient amplitude (:func:`sky_background`).
    gradient_angle : float
        Direction of increasing sky, degrees.
    trail : dict, optional
        ``{"x0", "y0", "x1", "y1", "width_px", "peak_adu"}``.
    gradient_quad : sequence of 3 float
        Per-channel quadratic part of the gradient (:func:`sky_background`).

    Returns
    -------
    ndarray of float32
        (height, width) signal in ADU.
    """
    h, w = shape
    nodes_x, nodes_y, grid_x, grid_y = to_truth
    signal = np.empty(shape, dtype=np.float32)
    ref, norm = ((w - 1) / 2.0, (h - 1) / 2.0), 0.5 * np.hypot(w, h)
    # Work per Bayer phase: each quarter-resolution sub-lattice is one colour,
    # so the galaxy and the sky are evaluated once per raw pixel, not 3 times.
    for py in (0, 1):
        ys = np.arange(py, h, 2, dtype=np.float64)
        my = interp_matrix(nodes_y, ys)
        for px in (0, 1):
            ch = int(cfa[py, px])
            xs = np.arange(px, w, 2, dtype=np.float64)
            mx = interp_matrix(nodes_x, xs)
            map_x = (my @ grid_x @ mx.T).astype(np.float32)
            map_y = (my @ grid_y @ mx.T).astype(np.float32)
            gal = cv2.remap(extended[ch], map_x, map_y, interpolation=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
            sky = sky_background(xs[None, :], ys[:, None], sky_levels[ch], gradient_frac[ch],
                                 gradient_angle, ref, norm, gradient_quad[ch])
            signal[py::2, px::2] = sky + np.float32(transparency) * gal
    sx, sy = stars_xy
    signal += render_stars(shape, sx, sy, transparency * np.asarray(star_flux), fwhm,
                           cfa=cfa).astype(np.float32)
    if trail is not None:
        signal += render_trail(shape, (trail["x0"], trail["y0"]), (trail["x1"], trail["y1"]),
                               trail["width_px"], trail["peak_adu"])
    return signal


def digitise(rng: np.random.Generator, signal: np.ndarray, gain: float, read_noise_e: float,
             pedestal: float, hot_xy: np.ndarray | None = None,
             hot_adu: np.ndarray | None = None) -> np.ndarray:
    """Turn expected ADU into a noisy 16-bit raw frame.

    Photon (Poisson) noise on the electrons, Gaussian read noise, the bias
    pedestal, hot pixels (a fixed excess added on top, like strong dark
    current), rounding, and clipping to 0..65535 -- so bright stars saturate
    at 65535.

    Parameters
    ----------
    rng : numpy.random.Generator
        Noise stream of this frame.
    signal : ndarray
        Expected ADU above pedestal, float.
    gain : float
        Electrons per ADU.
    read_noise_e : float
        Read noise, electrons RMS.
    pedestal : float
        Bias offset, ADU.
    hot_xy : ndarray, optional
        (K, 2) hot pixel (x, y) data-array positions.
    hot_adu : ndarray, optional
        (K,) excess ADU of each hot pixel.

    Returns
    -------
    ndarray of uint16
    """
    electrons = rng.poisson(np.maximum(signal, 0.0).astype(np.float64) * gain)
    adu = electrons.astype(np.float32) * np.float32(1.0 / gain)
    adu += rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(read_noise_e / gain)
    adu += np.float32(pedestal)
    if hot_xy is not None and len(hot_xy):
        adu[hot_xy[:, 1], hot_xy[:, 0]] += np.asarray(hot_adu, dtype=np.float32)
    np.rint(adu, out=adu)
    np.clip(adu, 0, 65535, out=adu)
    return adu.astype(np.uint16)
