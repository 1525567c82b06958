"""Coverage-derived weights for coadding tiles: alt-az alpha masks, edge feathers, renormalisation.

All three take a coverage map ``(H, W)`` float32 (number of frames whose footprint covers the
pixel; NaN = no data, counted as 0) and return a float32 ``(H, W)`` map. The intended coadd
weight of a tile is ``coverage × alpha × feather``.

NumPy-only: the morphology and distance transforms use OpenCV (``cv2``); pass host arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["AlphaResult", "MIN_KEEP_FRACTION", "RENORM_SMOOTH_PX", "altaz_alpha", "altaz_reach",
           "coverage_renormalisation_gain", "feather_weights", "renormalisation_reach"]

#: :func:`altaz_alpha`'s guard: a mask keeping less than this fraction of the covered pixels is
#: not applied (so no stack ever comes out empty).
MIN_KEEP_FRACTION = 0.05
#: :func:`coverage_renormalisation_gain`'s smoothing (px, the Gaussian's sigma).
RENORM_SMOOTH_PX = 15.0


@dataclass(frozen=True)
class AlphaResult:
    """Outcome of :func:`altaz_alpha`.

    Attributes
    ----------
    alpha : numpy.ndarray
        ``(H, W)`` float32 in ``[0, 1]``.
    applied : bool
        True when the thresholded, opened and ramped mask was used; False when the fallback
        ``alpha = (coverage > 0)`` was returned instead.
    reason : str
        Why the mask was (not) applied, for logs and reports.
    """

    alpha: np.ndarray
    applied: bool
    reason: str


def _coverage(coverage: np.ndarray, name: str = "coverage") -> np.ndarray:
    cov = np.asarray(coverage, dtype=np.float32)
    if cov.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W); got shape {cov.shape}")
    # NaN means "no data": the same as zero frames.
    return np.where(np.isfinite(cov), cov, np.float32(0.0)).astype(np.float32, copy=False)


def _check_nonneg(name: str, value: float) -> None:
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")


def _distance_inside(mask: np.ndarray, *, outside_is_edge: bool) -> np.ndarray:
    """Euclidean distance (px) from each True pixel to the nearest False pixel; 0 on False pixels.

    With ``outside_is_edge`` the array is padded by one False pixel, so the array border counts
    as an edge; otherwise OpenCV ignores the border and an all-True mask gets +inf.
    """
    m = mask.astype(np.uint8)
    if outside_is_edge:
        m = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    elif m.all():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    d = cv2.distanceTransform(m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    # OpenCV's exact transform is not reproducible to the last bit: the same mask gives
    # distances one float32 ulp apart from one call to the next (measured with OpenCV 5.1 on
    # thousands of pixels of an alt-az tile's mask), so the alpha, the coadd weights and the
    # mosaic changed from run to run. Its distances are exact up to that rounding: each is the
    # square root of an integer (dx² + dy²), recomputed here from that integer, the same bits
    # every time. (Exact where d² < 2²² or so: far beyond any ramp the masks use.)
    d = np.sqrt(np.rint(np.square(d, dtype=np.float64))).astype(np.float32)
    return d[1:-1, 1:-1] if outside_is_edge else d


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def altaz_alpha(
    coverage: np.ndarray,
    *,
    n_frames: int,
    min_abs: float = 3.0,
    min_frac: float = 0.5,
    opening_px: int = 3,
    ramp_px: float = 8,
    min_keep_fraction: float = MIN_KEEP_FRACTION,
    peak: float | None = None,
) -> AlphaResult:
    """Soft alpha mask that drops the thinly covered rim of a field-rotated (alt-az) stack.

    Field rotation leaves an alt-az panel's stack with fan-shaped corners covered by few
    frames: noisy and carrying the per-frame gradients badly averaged. This mask keeps the
    well covered core and fades out towards its edge.

    Steps:

    1. good pixels: ``coverage >= max(min(min_abs, n_frames), min_frac * peak)``, ``peak``
       the maximum coverage;
       ``min_abs`` is bounded by the frames actually stacked, so a 2-frame group is not
       masked away entirely;
    2. morphological opening with an elliptical (disk) structuring element of diameter
       ``2 * opening_px + 1`` (``cv2.MORPH_ELLIPSE``), removing thin slivers and spurs;
       ``opening_px = 0`` skips it;
    3. soft edge: ``alpha = smoothstep(d / ramp_px)`` where ``d`` is the Euclidean distance
       (``cv2.distanceTransform``) to the nearest rejected pixel, so alpha rises from 0 at the
       mask edge to 1 at ``ramp_px`` inside with zero slope at both ends. The array border is
       NOT an edge here (the tile is cut out of a larger canvas; :func:`feather_weights`
       handles borders). ``ramp_px = 0`` gives a hard 0/1 mask.

    Guard: if the mask keeps less than ``min_keep_fraction`` of the pixels with coverage > 0,
    it is not applied and ``alpha = (coverage > 0)`` is returned with ``applied=False``, so no
    tile ever comes out empty.

    Windows: a pixel's alpha depends only on the coverage within :func:`altaz_reach` pixels of
    it (and on ``peak``). So the alpha of a large map can be made window by window: cut the
    window with that margin (or up to the map's edge), pass the whole map's ``peak`` and
    ``min_keep_fraction=0``, keep the window's inner part; it equals the whole map's alpha
    there, bit for bit. The guard is then the caller's, on the counts of the inner parts
    (kept: ``alpha > 0``; covered: ``coverage > 0``).

    Parameters
    ----------
    coverage : numpy.ndarray
        ``(H, W)`` frames per pixel; NaN counts as 0.
    n_frames : int
        Number of frames stacked into this coverage (>= 1).
    min_abs : float
        Absolute coverage threshold (frames), capped at ``n_frames``; >= 0.
    min_frac : float
        Relative threshold, a fraction of the maximum coverage, in ``[0, 1]``.
    opening_px : int
        Radius (px) of the opening's disk; >= 0.
    ramp_px : float
        Width (px) of the smoothstep edge ramp; >= 0.
    min_keep_fraction : float
        Minimum kept fraction of the covered pixels, in ``[0, 1]``.
    peak : float, optional
        The maximum coverage the relative threshold uses (frames, >= 0); default the maximum of
        ``coverage``. Pass the whole map's when ``coverage`` is a window of it.

    Returns
    -------
    AlphaResult
        ``alpha`` float32 ``(H, W)`` in ``[0, 1]``, ``applied`` and ``reason``.
    """
    cov = _coverage(coverage)
    if int(n_frames) != n_frames or n_frames < 1:
        raise ValueError(f"n_frames must be an integer >= 1; got {n_frames!r}")
    _check_nonneg("min_abs", min_abs)
    _check_nonneg("ramp_px", ramp_px)
    if not 0.0 <= min_frac <= 1.0:
        raise ValueError(f"min_frac must be in [0, 1]; got {min_frac!r}")
    if not 0.0 <= min_keep_fraction <= 1.0:
        raise ValueError(f"min_keep_fraction must be in [0, 1]; got {min_keep_fraction!r}")
    if int(opening_px) != opening_px or opening_px < 0:
        raise ValueError(f"opening_px must be an integer >= 0; got {opening_px!r}")
    if peak is not None:
        _check_nonneg("peak", peak)

    covered = cov > 0
    n_covered = int(covered.sum())
    fallback = covered.astype(np.float32)
    if n_covered == 0:
        return AlphaResult(fallback, False, "no pixel has coverage > 0")

    top = float(cov.max()) if peak is None else float(peak)
    threshold = max(min(float(min_abs), float(n_frames)), float(min_frac) * top)
    # Never accept uncovered pixels, even with thresholds of 0.
    good = covered & (cov >= threshold)
    if opening_px > 0:
        size = 2 * int(opening_px) + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        good = cv2.morphologyEx(good.astype(np.uint8), cv2.MORPH_OPEN, kernel,
                                borderType=cv2.BORDER_REPLICATE).astype(bool)

    kept = int(good.sum()) / n_covered
    if kept < min_keep_fraction:
        return AlphaResult(
            fallback, False,
            f"mask would keep {kept:.1%} of covered pixels (< min_keep_fraction "
            f"{min_keep_fraction:.1%}; threshold {threshold:g} frames); using coverage > 0",
        )
    if ramp_px > 0:
        alpha = _smoothstep(_distance_inside(good, outside_is_edge=False) / np.float32(ramp_px))
    else:
        alpha = good.astype(np.float32)
    return AlphaResult(
        alpha, True, f"kept {kept:.1%} of covered pixels (coverage >= {threshold:g} frames)"
    )


def altaz_reach(opening_px: int, ramp_px: float) -> int:
    """How far (px) :func:`altaz_alpha`'s result at a pixel looks: the opening reads ``2 ×
    opening_px`` around it (an erosion, then a dilation of the eroded mask), and the ramp needs
    the nearest rejected pixel only when it lies closer than ``ramp_px``; one pixel more, so that
    a rejected pixel that the window's edge could invent lies beyond the ramp."""
    return 2 * int(opening_px) + int(np.ceil(float(ramp_px))) + 1


def feather_weights(coverage: np.ndarray, *, ramp_px: float = 32) -> np.ndarray:
    """Linear edge feather: 0 outside coverage, rising to 1 at ``ramp_px`` inside.

    ``feather = clip(d / ramp_px, 0, 1)`` with ``d`` the Euclidean distance (px) from a covered
    pixel (coverage > 0) to the nearest uncovered pixel, the area outside the array counting as
    uncovered (so a pixel on the array border has ``d = 1``). Tiles blended with these weights
    meet without visible seams at their footprint edges. ``ramp_px = 0`` gives ``coverage > 0``.

    Parameters
    ----------
    coverage : numpy.ndarray
        ``(H, W)`` frames per pixel; NaN counts as 0.
    ramp_px : float
        Feather width in pixels; >= 0.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32 in ``[0, 1]``.
    """
    cov = _coverage(coverage)
    _check_nonneg("ramp_px", ramp_px)
    covered = cov > 0
    if ramp_px == 0:
        return covered.astype(np.float32)
    d = _distance_inside(covered, outside_is_edge=True)
    return np.clip(d / np.float32(ramp_px), 0.0, 1.0).astype(np.float32)


def coverage_renormalisation_gain(
    coverage: np.ndarray, *, smooth_px: float = RENORM_SMOOTH_PX, clip: tuple[float, float] = (0.5, 2.0)
) -> np.ndarray:
    """Per-pixel gain ``smoothed(coverage) / coverage`` for two-pass coverage renormalisation.

    Where coverage jumps (frame edges inside a stack) a stack's brightness jumps with it when
    the frames do not agree perfectly (residual gradients, normalisation errors). The second
    pass multiplies the first-pass stack by this gain: 1 where coverage is locally uniform,
    above 1 on the low side of a step and below 1 on the high side, softening the step.

    The smoothing is a Gaussian of standard deviation ``smooth_px`` computed as a normalised
    convolution over covered pixels only, ``G*(cov) / G*(cov > 0)``, so uncovered pixels do not
    drag the footprint's edge down. Borders are reflected.

    Windows: the gain at a pixel reads the coverage within :func:`renormalisation_reach` pixels
    of it, so a window cut with that margin (or up to the map's edge) gives the whole map's gain
    on its inner part, to float32 rounding: OpenCV's vectorised Gaussian rounds a pixel's sum
    by where the pixel falls in its row (measured: at most 4 ulps of the gain).

    Parameters
    ----------
    coverage : numpy.ndarray
        ``(H, W)`` frames per pixel; NaN counts as 0.
    smooth_px : float
        Gaussian sigma in pixels; > 0.
    clip : tuple of float
        ``(low, high)`` bounds of the gain, ``0 < low <= 1 <= high``.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32 gain; exactly 1 where coverage is 0.
    """
    cov = _coverage(coverage)
    if not np.isfinite(smooth_px) or smooth_px <= 0:
        raise ValueError(f"smooth_px must be a finite number > 0; got {smooth_px!r}")
    radius = renormalisation_reach(smooth_px)
    lo, hi = (float(v) for v in clip)
    if not (0 < lo <= 1.0 <= hi and np.isfinite(hi)):
        raise ValueError(f"clip must be (low, high) with 0 < low <= 1 <= high; got {clip!r}")
    covered = cov > 0
    support = covered.astype(np.float32)
    blur = dict(ksize=(2 * radius + 1, 2 * radius + 1), sigmaX=float(smooth_px), sigmaY=float(smooth_px),
                borderType=cv2.BORDER_REFLECT_101)
    num = cv2.GaussianBlur(cov, **blur)
    den = cv2.GaussianBlur(support, **blur)
    gain = np.ones_like(cov)
    ok = covered & (den > 1e-6)
    gain[ok] = num[ok] / den[ok] / cov[ok]
    return np.clip(gain, lo, hi).astype(np.float32)


def renormalisation_reach(smooth_px: float) -> int:
    """The radius (px) of :func:`coverage_renormalisation_gain`'s Gaussian kernel: OpenCV's own
    choice for a float32 image given only sigma (``ksize = round(8σ + 1) | 1``), made explicit so
    that a caller cutting windows knows the margin they need."""
    return (int(np.rint(float(smooth_px) * 8 + 1)) | 1) // 2
