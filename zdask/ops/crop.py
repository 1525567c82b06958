"""Autocrop: the bounding box of the covered part of a mosaic (NumPy or CuPy)."""

from __future__ import annotations

from zdask.ops.backend import array_module

__all__ = ["autocrop_box"]


def autocrop_box(coverage, *, min_coverage: float = 1.0, margin: int = 0) -> tuple[int, int, int, int] | None:
    """Smallest box holding every pixel with ``coverage >= min_coverage``, grown by ``margin``.

    Parameters
    ----------
    coverage : array
        ``(H, W)`` frames per pixel; NaN counts as uncovered.
    min_coverage : float
        Threshold in frames, > 0 (so uncovered pixels never count).
    margin : int
        Pixels added on every side, >= 0; the box is clipped to the array.

    Returns
    -------
    tuple of int or None
        ``(y0, y1, x0, x1)`` with exclusive ends (``coverage[y0:y1, x0:x1]``), or None when
        no pixel reaches ``min_coverage``.
    """
    xp = array_module(coverage)
    cov = xp.asarray(coverage)
    if cov.ndim != 2:
        raise ValueError(f"coverage must be 2-D (H, W); got shape {cov.shape}")
    if not (min_coverage > 0 and min_coverage < float("inf")):
        raise ValueError(f"min_coverage must be a finite number > 0; got {min_coverage!r}")
    if int(margin) != margin or margin < 0:
        raise ValueError(f"margin must be an integer >= 0; got {margin!r}")
    good = cov >= min_coverage  # NaN compares False: uncovered
    rows = xp.flatnonzero(good.any(axis=1))
    if int(rows.size) == 0:
        return None
    cols = xp.flatnonzero(good.any(axis=0))
    h, w = cov.shape
    m = int(margin)
    return (max(int(rows[0]) - m, 0), min(int(rows[-1]) + 1 + m, h),
            max(int(cols[0]) - m, 0), min(int(cols[-1]) + 1 + m, w))
