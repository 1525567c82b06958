"""Per-frame statistics used for normalisation and weighting.

:func:`frame_statistics` summarises one calibrated frame ``(H, W)`` or
``(H, W, C)`` float32 (NaN allowed, channel last) per channel:

* ``background``: sigma-clipped median,
* ``noise``: sigma-clipped population standard deviation,
* ``p25``/``p90``: 25th/90th percentiles of the finite pixels,
* ``n_valid``: number of finite pixels (exact, all pixels).

Subsampling (deterministic, documented): background, noise, P25 and P90 are
computed on the finite pixels among every ``k``-th pixel of the raster
(row-major, starting at the first), ``k = ceil(H·W / MAX_SAMPLES)`` — at
most :data:`MAX_SAMPLES` pixels per channel (k = 16 for 1920×1080); smaller
frames use every pixel.  ``n_valid`` counts all pixels.  A 1920×1080×3 frame
takes about 50 ms.  Sigma clipping: iterate up to
``iterations`` times ``keep |x − median| ≤ kappa·std`` over the survivors
(median/std of the survivors), stopping when nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from zdask.ops._stacking_common import array_namespace

__all__ = ["FrameStats", "frame_statistics", "MAX_SAMPLES"]

#: at most this many finite pixels per channel enter the statistics
MAX_SAMPLES = 131_072


@dataclass(frozen=True, eq=False)
class FrameStats:
    """Per-channel statistics of one frame: 1-D float64 arrays of length C (C = 1 for mono)."""

    background: np.ndarray
    noise: np.ndarray
    p25: np.ndarray
    p90: np.ndarray
    n_valid: np.ndarray

    def __post_init__(self):
        for f in fields(self):
            a = np.array(getattr(self, f.name), dtype=np.float64).reshape(-1)
            a.setflags(write=False)
            object.__setattr__(self, f.name, a)
        sizes = {getattr(self, f.name).size for f in fields(self)}
        if len(sizes) != 1:
            raise ValueError("FrameStats fields must all have the same length (one value per channel)")

    @property
    def channels(self) -> int:
        return int(self.background.size)

    def to_dict(self) -> dict:
        """JSON-friendly dict (lists of floats; non-finite values as None)."""
        return {
            f.name: [float(v) if np.isfinite(v) else None for v in getattr(self, f.name)]
            for f in fields(self)
        }

    @classmethod
    def from_dict(cls, d: dict) -> FrameStats:
        def arr(v):
            v = v if isinstance(v, (list, tuple, np.ndarray)) else [v]
            return np.array([np.nan if x is None else float(x) for x in v], dtype=np.float64)

        return cls(**{f.name: arr(d[f.name]) for f in fields(cls)})

    def __eq__(self, other) -> bool:
        if not isinstance(other, FrameStats):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name), equal_nan=True) for f in fields(self)
        )

    __hash__ = None  # arrays: not hashable


def _clipped(x: np.ndarray, kappa: float, iterations: int) -> tuple[float, float]:
    """Sigma-clipped (median, std) of a 1-D float64 sample."""
    for _ in range(iterations):
        med = np.median(x)
        sd = x.std()
        keep = np.abs(x - med) <= kappa * sd
        if keep.all():
            break
        x = x[keep]
        if x.size == 0:
            return float(med), float(sd)
    return float(np.median(x)), float(x.std())


def frame_statistics(image, *, kappa: float = 3.0, iterations: int = 5) -> FrameStats:
    """Background, noise, P25, P90 and number of valid pixels per channel (see module doc)."""
    xp = array_namespace(image)
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
        p25, p90 = np.percentile(sample, [25.0, 90.0])
        out["p25"][ch], out["p90"][ch] = p25, p90
        out["background"][ch], out["noise"][ch] = _clipped(sample, kappa, iterations)
    return FrameStats(n_valid=n_valid, **out)
