"""Frame normalisation and weights from per-frame statistics (pure functions).

:func:`normalization_coefficients` returns ``(scale, offset)`` arrays
``(N, C)`` float32 such that a normalised sample is ``x * scale + offset``;
pass them to any stacking kernel (``scale=``, ``offset=``) or to
``zdask.stack``.  :func:`frame_weights` returns ``(N, C)`` float32 weights.

Reference frame (default): the frame with the lowest noise (mean of its
finite per-channel noise values) among frames with valid statistics, ties
to the lowest index; index 0 if no frame has valid statistics.

Guards (never NaN/inf in the outputs):

* a frame/channel whose statistics are not usable (non-finite, or a zero/
  negative background for ``multiplicative``, or ``p90 <= p25`` for
  ``linear_fit``) gets a fallback: ``multiplicative`` → scale 1;
  ``linear_fit`` → the ``additive`` offset on P25 (scale 1); anything still
  non-finite → identity (scale 1, offset 0);
* weights: a frame/channel with non-finite or non-positive noise (or
  exposure) gets weight 0; if no frame of a channel is usable, every frame
  of that channel gets weight 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zdask.ops.framestats import FrameStats

__all__ = ["NORMALIZATIONS", "WEIGHTINGS", "normalization_coefficients", "frame_weights", "reference_frame"]

NORMALIZATIONS = ("none", "additive", "multiplicative", "linear_fit")
WEIGHTINGS = ("none", "exposure", "noise_variance")


def _field(stats: Sequence[FrameStats], name: str) -> np.ndarray:
    if len(stats) == 0:
        raise ValueError("no frame statistics given")
    c = {s.channels for s in stats}
    if len(c) != 1:
        raise ValueError(f"frame statistics have different channel counts: {sorted(c)}")
    return np.stack([np.asarray(getattr(s, name), dtype=np.float64) for s in stats])


def reference_frame(stats: Sequence[FrameStats]) -> int:
    """Index of the frame with the lowest (mean finite, positive) noise; 0 if none is valid."""
    noise = _field(stats, "noise")
    ok = np.isfinite(noise) & (noise > 0)
    k = ok.sum(axis=1)
    score = np.where(k > 0, np.where(ok, noise, 0.0).sum(axis=1) / np.maximum(k, 1), np.inf)
    return int(np.argmin(score)) if np.isfinite(score).any() else 0


def normalization_coefficients(
    stats: Sequence[FrameStats], mode: str, reference: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, offset)`` ``(N, C)`` float32 mapping each frame onto the reference frame.

    Modes: ``none`` (1, 0); ``additive`` (offset = bg_ref − bg); ``multiplicative``
    (scale = bg_ref / bg); ``linear_fit`` (map the frame's P25/P90 onto the
    reference's, per channel).
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {mode!r}; allowed: {', '.join(NORMALIZATIONS)}")
    bg = _field(stats, "background")
    n, c = bg.shape
    scale = np.ones((n, c))
    offset = np.zeros((n, c))
    if mode != "none":
        ref = reference_frame(stats) if reference is None else int(reference)
        if not -n <= ref < n:
            raise ValueError(f"reference frame {reference} out of range for {n} frames")
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if mode == "additive":
                offset = bg[ref] - bg
            elif mode == "multiplicative":
                ok = np.isfinite(bg) & (bg > 0) & np.isfinite(bg[ref]) & (bg[ref] > 0)
                scale = np.where(ok, bg[ref] / np.where(ok, bg, 1.0), 1.0)
            else:
                p25, p90 = _field(stats, "p25"), _field(stats, "p90")
                span, span_ref = p90 - p25, p90[ref] - p25[ref]
                ok = np.isfinite(span) & (span > 0) & np.isfinite(span_ref) & (span_ref > 0)
                scale = np.where(ok, span_ref / np.where(ok, span, 1.0), 1.0)
                offset = np.where(ok, p25[ref] - scale * p25, p25[ref] - p25)
    bad = ~(np.isfinite(scale) & np.isfinite(offset) & (np.abs(scale) < 3e38) & (np.abs(offset) < 3e38))
    scale = np.where(bad, 1.0, scale)
    offset = np.where(bad, 0.0, offset)
    return scale.astype(np.float32), offset.astype(np.float32)


def frame_weights(stats: Sequence[FrameStats], mode: str, exptimes=None) -> np.ndarray:
    """Per-frame, per-channel weights ``(N, C)`` float32 (see the module doc for guards).

    ``none``: 1; ``exposure``: t / max(t) (needs ``exptimes``);
    ``noise_variance``: σ²_min / σ²_frame per channel.
    """
    if mode not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {mode!r}; allowed: {', '.join(WEIGHTINGS)}")
    noise = _field(stats, "noise")
    n, c = noise.shape
    if mode == "none":
        return np.ones((n, c), dtype=np.float32)
    if mode == "exposure":
        if exptimes is None:
            raise ValueError("weights='exposure' needs the frames' exposure times (exptimes)")
        t = np.array([np.nan if v is None else float(v) for v in exptimes], dtype=np.float64)
        if t.shape != (n,):
            raise ValueError(f"exptimes must have one value per frame ({n}), got {t.shape[0]}")
        ok = np.isfinite(t) & (t > 0)
        if not ok.any():
            return np.ones((n, c), dtype=np.float32)
        w = np.where(ok, t / np.max(t[ok]), 0.0)
        return np.repeat(w[:, None], c, axis=1).astype(np.float32)
    var = noise * noise
    ok = np.isfinite(var) & (var > 0) & (var < 1e300)
    w = np.zeros((n, c))
    for ch in range(c):
        if not ok[:, ch].any():
            w[:, ch] = 1.0
            continue
        vmin = var[ok[:, ch], ch].min()
        w[ok[:, ch], ch] = vmin / var[ok[:, ch], ch]
    return w.astype(np.float32)
