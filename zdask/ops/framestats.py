"""Per-frame statistics used for normalisation and weighting.

:func:`frame_statistics` summarises one calibrated frame ``(H, W)`` or
``(H, W, C)`` float32 (NaN allowed, channel last) per channel:

* ``background``: sigma-clipped median,
* ``noise``: sigma-clipped population standard deviation,
* ``p25``/``p90``: 25th/90th percentiles of the finite pixels,
* ``n_valid``: number of finite pixels (exact, all pixels),
* ``n_saturated``: number of pixels at or above ``saturation`` (exact; 0 when no level is given),

and for the whole frame ``n_pixels`` (H·W), ``saturation`` (the level used, NaN for none) and
``n_stars``: stars :func:`zdask.ops.stars.detect_stars` finds in the green channel (or the only
one), at most :data:`STAR_COUNT_LIMIT`; -1 when not counted. Counting costs about 45 ms on a
1080×1920 frame; a channel without signal (no finite pixel, zero noise) is not searched.

:func:`frame_defect` tells from these numbers alone whether a frame has no usable signal.

Subsampling (deterministic, documented): background, noise, P25 and P90 are
computed on the finite pixels among every ``k``-th pixel of the raster
(row-major, starting at the first), ``k = ceil(H·W / MAX_SAMPLES)`` — at
most :data:`MAX_SAMPLES` pixels per channel (k = 64 for 1920×1080); smaller
frames use every pixel.  ``n_valid`` counts all pixels.  A 1920×1080×3 frame
takes about 15 ms.  Sigma clipping: iterate up to
``iterations`` times ``keep |x − median| ≤ kappa·std`` over the survivors
(median/std of the survivors), stopping when nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from zdask.ops.backend import array_module

__all__ = ["FrameStats", "frame_statistics", "frame_stars", "star_channel", "frame_defect", "MAX_SAMPLES",
           "STAR_COUNT_LIMIT"]

#: at most this many finite pixels per channel enter the statistics
#: (32 768 samples put the median within 0.007 σ of the frame's and the noise within 0.4 %;
#: 131 072 cost a frame 15 ms more for precision no use of these figures needs)
MAX_SAMPLES = 32_768
#: stars are counted up to this many (the thresholds that read the count are far below it)
STAR_COUNT_LIMIT = 500
_PER_CHANNEL = ("background", "noise", "p25", "p90", "n_valid", "n_saturated")
_PER_FRAME = {"n_pixels": int, "n_stars": int, "saturation": float}


@dataclass(frozen=True, eq=False)
class FrameStats:
    """Statistics of one frame: per channel, 1-D float64 arrays of length C (C = 1 for mono);
    for the whole frame, ``n_pixels``, ``n_stars`` and ``saturation`` (see the module doc).
    Frame fields left out mean unknown (0 pixels, -1 stars, NaN level: no test reads them)."""

    background: np.ndarray
    noise: np.ndarray
    p25: np.ndarray
    p90: np.ndarray
    n_valid: np.ndarray
    n_saturated: np.ndarray | None = None  # None: zeros
    n_pixels: int = 0
    n_stars: int = -1
    saturation: float = float("nan")

    def __post_init__(self):
        if self.n_saturated is None:
            object.__setattr__(self, "n_saturated", np.zeros(np.size(self.background)))
        for name in _PER_CHANNEL:
            a = np.array(getattr(self, name), dtype=np.float64).reshape(-1)
            a.setflags(write=False)
            object.__setattr__(self, name, a)
        for name, kind in _PER_FRAME.items():
            object.__setattr__(self, name, kind(getattr(self, name)))
        sizes = {getattr(self, name).size for name in _PER_CHANNEL}
        if len(sizes) != 1:
            raise ValueError("FrameStats fields must all have the same length (one value per channel)")

    @property
    def channels(self) -> int:
        return int(self.background.size)

    def to_dict(self) -> dict:
        """JSON-friendly dict (lists of floats; non-finite values as None)."""
        out = {name: [float(v) if np.isfinite(v) else None for v in getattr(self, name)] for name in _PER_CHANNEL}
        out.update({name: getattr(self, name) for name in _PER_FRAME})
        out["saturation"] = self.saturation if np.isfinite(self.saturation) else None
        return out

    @classmethod
    def from_dict(cls, d: dict) -> FrameStats:
        def arr(v):
            v = v if isinstance(v, (list, tuple, np.ndarray)) else [v]
            return np.array([np.nan if x is None else float(x) for x in v], dtype=np.float64)

        frame = {name: d[name] for name in _PER_FRAME if d.get(name) is not None}
        return cls(**{name: arr(d[name]) for name in _PER_CHANNEL if name in d}, **frame)

    def __eq__(self, other) -> bool:
        if not isinstance(other, FrameStats):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name), equal_nan=True) for f in fields(self)
        )

    __hash__ = None  # arrays: not hashable


def _clipped(s: np.ndarray, kappa: float, iterations: int) -> tuple[float, float]:
    """Sigma-clipped (median, std) of a sorted 1-D float64 sample.

    The survivors of ``|x − median| ≤ kappa·std`` are a contiguous run of the sorted sample, so
    each round only moves the run's two ends (the same medians as clipping the unsorted
    sample, at a third of its time)."""
    lo, hi = 0, s.size
    for _ in range(iterations):
        run = s[lo:hi]
        med, sd = _sorted_median(run), run.std()
        new_lo = lo + int(np.searchsorted(run, med - kappa * sd, "left"))
        new_hi = lo + int(np.searchsorted(run, med + kappa * sd, "right"))
        if (new_lo, new_hi) == (lo, hi):
            break
        lo, hi = new_lo, new_hi
        if hi <= lo:
            return float(med), float(sd)
    run = s[lo:hi]
    return float(_sorted_median(run)), float(run.std())


def _sorted_median(run: np.ndarray) -> float:
    m = run.size
    return 0.5 * (run[(m - 1) // 2] + run[m // 2])


def frame_statistics(
    image, *, kappa: float = 3.0, iterations: int = 5, saturation: float | None = None,
    count_stars: bool = False,
) -> FrameStats:
    """Background, noise, P25, P90, valid and saturated pixels per channel; with
    ``count_stars`` the stars of the green (or only) channel (see module doc)."""
    xp = array_module(image)
    img = image.get() if xp is not np else np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"a frame must be (H, W) or (H, W, C), got shape {image.shape}")
    h, w, c = img.shape
    flat = img.reshape(h * w, c)
    fin = np.isfinite(flat)
    n_valid = np.array([np.count_nonzero(fin[:, ch]) for ch in range(c)], dtype=np.float64)
    stride = max(1, -(-(h * w) // MAX_SAMPLES))
    sub = np.asarray(flat[::stride], dtype=np.float64)
    out = {k: np.full(c, np.nan) for k in ("background", "noise", "p25", "p90")}
    for ch in range(c):
        col = sub[:, ch]
        sample = col[np.isfinite(col)]
        if sample.size == 0:
            if n_valid[ch] == 0:
                continue
            vals = flat[:, ch]  # rare: the stride missed every finite pixel
            sample = np.asarray(vals[np.isfinite(vals)], dtype=np.float64)
        sample = np.sort(sample)
        p25, p90 = np.percentile(sample, [25.0, 90.0])
        out["p25"][ch], out["p90"][ch] = p25, p90
        out["background"][ch], out["noise"][ch] = _clipped(sample, kappa, iterations)
    n_saturated = np.zeros(c)
    if saturation is not None:
        n_saturated = np.array([np.count_nonzero(flat[:, ch] >= saturation) for ch in range(c)], dtype=np.float64)
    stats = FrameStats(n_valid=n_valid, n_saturated=n_saturated, n_pixels=h * w,
                       saturation=np.nan if saturation is None else float(saturation), **out)
    if count_stars:
        stats = replace(stats, n_stars=len(frame_stars(img, stats)))
    return stats


def frame_stars(image, stats: FrameStats) -> np.ndarray:
    """Stars of the green channel (or the only one) of a frame with these statistics: float64
    ``(N, 3)`` x, y, flux, brightest first, at most :data:`STAR_COUNT_LIMIT`
    (:func:`zdask.ops.stars.detect_stars` with its defaults). None in a channel without
    signal (no finite pixel, or zero noise)."""
    from zdask.ops.stars import detect_stars

    img = np.asarray(image)
    ch = star_channel(1 if img.ndim == 2 else img.shape[-1])
    if not (stats.n_valid[ch] > 0 and stats.noise[ch] > 0):
        return np.zeros((0, 3))
    return detect_stars(img if img.ndim == 2 else img[:, :, ch], max_stars=STAR_COUNT_LIMIT)


def star_channel(channels: int) -> int:
    """The channel stars are found in: green of an RGB frame, else the only one."""
    return 1 if channels >= 3 else 0


def frame_defect(stats: FrameStats, *, max_saturated_fraction: float = 1.0, min_stars: int = 0) -> str | None:
    """Why a frame has no usable signal, from its statistics alone; None when it has.

    In this order: a channel without finite pixels ("no finite pixels"); more than
    ``max_saturated_fraction`` of the pixels of a channel at or above the saturation level; a
    channel whose clipped noise is zero (a constant image: a dead readout, a zero-filled
    file); fewer than ``min_stars`` stars (clouds, a closed cap; 0 disables). Unknown counts
    (see :class:`FrameStats`) pass their tests. A frame that passes could still be chosen as
    its group's alignment reference without ruining the group.
    """
    empty = np.flatnonzero(stats.n_valid == 0)
    if empty.size:
        where = "" if empty.size == stats.channels else f" in channel {', '.join(str(int(c)) for c in empty)}"
        return f"no finite pixels{where}"
    if stats.n_pixels > 0 and np.isfinite(stats.saturation):
        fraction = float(stats.n_saturated.max()) / stats.n_pixels
        if fraction > max_saturated_fraction:
            return (f"saturated: {100 * fraction:.1f}% of the pixels at or above {stats.saturation:g} "
                    f"(limit {100 * max_saturated_fraction:g}%, max_saturated_fraction)")
    if np.any(stats.noise == 0):
        levels = sorted({float(v) for v in stats.background})
        if len(levels) == 1 and np.all(stats.p25 == stats.p90):
            return f"no signal: every pixel is {levels[0]:g}"
        return f"no signal: constant image (background {', '.join(f'{v:g}' for v in stats.background)}, noise 0)"
    if 0 <= stats.n_stars < min_stars:
        return f"no stars: {stats.n_stars} detected (at least {min_stars} needed, min_frame_stars)"
    return None
