"""Which frame of a group the others are aligned to (client side, pure, deterministic).

A group's reference must be a frame with a WCS and with statistics typical of the group: a
blank or saturated frame has the lowest noise of all, and would otherwise be chosen and make
every good frame of its panel fail alignment.
"""

from __future__ import annotations

import math

import numpy as np

from zdask.graph.plan import unit_vectors
from zdask.io.fitsheader import wcs_from_header
from zdask.ops.robust import mad_sigma


def _centre_sky(src) -> np.ndarray:
    """Unit vector of the sky at a frame's centre pixel (``src``: wcs_header and shape)."""
    h, w = src.shape
    ra, dec = wcs_from_header(src.wcs_header).all_pix2world([(w - 1) / 2], [(h - 1) / 2], 0)
    return unit_vectors(ra, dec)[0]


#: a frame is typical of its group when it has at least this fraction of the group's median
#: star count ...
TYPICAL_MIN_STAR_FRACTION = 0.5
#: ... and its background lies within this many robust sigmas (1.4826·MAD of the group's
#: backgrounds, at least the median frame noise) of the group's median background
TYPICAL_BACKGROUND_SIGMAS = 3.0


def _typical(solved: list[int], noise: list[float], n_stars, background) -> list[int]:
    """The solved frames whose star count and background are typical of the group (see
    :func:`reference_index`); all of them when none is, or nothing is known."""
    keep = list(solved)
    if n_stars is not None:
        median = float(np.median([n_stars[i] for i in solved]))
        keep = [i for i in keep if n_stars[i] >= TYPICAL_MIN_STAR_FRACTION * median]
    if background is not None:
        bg = np.array([background[i] for i in solved], dtype=np.float64)
        if np.isfinite(bg).any():
            median = float(np.nanmedian(bg))
            spread = float(mad_sigma(bg, median, skip_nan=True))
            typical_noise = [noise[i] for i in solved if math.isfinite(noise[i])]
            floor = float(np.median(typical_noise)) if typical_noise else 0.0
            limit = TYPICAL_BACKGROUND_SIGMAS * max(spread, floor)
            keep = [i for i in keep if math.isfinite(background[i]) and abs(background[i] - median) <= limit]
    return keep or list(solved)


def reference_index(
    sources: list, stats_noise: list[float], n_stars: list[int] | None = None,
    *, background: list[float] | None = None,
) -> int:
    """Index of the group's reference frame (pure, deterministic).

    Only frames with a WCS qualify. Robust to a bad frame among them: first the frames whose
    statistics are typical of the group are kept: with ``n_stars`` (stars detected per frame)
    those with at least :data:`TYPICAL_MIN_STAR_FRACTION` of the median count, with
    ``background`` (per frame) those within :data:`TYPICAL_BACKGROUND_SIGMAS` robust sigmas of
    the median background (all frames when none is typical). A blank or saturated frame has
    the lowest noise of all but no stars and an outlying background, so it is never chosen.
    Candidates among them: the frames whose noise (e.g. ``stats["noise"]``; None/NaN count as
    worst) is within 10 % of the lowest. Among candidates the frame whose centre is nearest to
    the mean of all frame centres wins (it overlaps the others most); ties go to the lowest
    index. Raises ValueError when no frame has a WCS.
    """
    solved = [i for i, s in enumerate(sources) if s.wcs_header]
    if not solved:
        raise ValueError("no frame of the group has a celestial WCS: nothing to align to")
    noise = [float(v) if v is not None and np.isfinite(v) else math.inf for v in stats_noise]
    typical = _typical(solved, noise, n_stars, background)
    low = min(noise[i] for i in typical)
    cands = [i for i in typical if noise[i] <= 1.1 * low] if math.isfinite(low) else typical
    if len(cands) == 1:
        return cands[0]
    centres = {i: _centre_sky(sources[i]) for i in solved}
    mean = np.mean(list(centres.values()), axis=0)
    return min(cands, key=lambda i: (float(np.linalg.norm(centres[i] - mean)), i))
