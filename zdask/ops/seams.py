"""The seam metric the ancestor logged: the spread across tiles of each tile's overlap median.

Pure NumPy; the overlap medians come from :func:`zdask.graph.harmonize.overlap_medians`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["seam_metric"]


def seam_metric(overlap_medians: Sequence[np.ndarray | None]) -> np.ndarray:
    """Standard deviation across tiles of each tile's overlap median, per channel.

    The input holds, per tile, the ``(C,)`` median of that tile's pixels inside its overlaps
    with other tiles (see :func:`zdask.graph.harmonize.overlap_medians`); None or NaN entries
    (tiles without overlap) are ignored. Returns ``(C,)`` float64, population standard deviation (ddof 0);
    NaN for a channel with no usable tile. Lower is better, but it does not reach 0: different
    tiles' overlaps see different sky, so its floor is the sky's own variation between the
    overlap regions. Compare before and after harmonisation, not against 0.
    """
    rows = [np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in overlap_medians if m is not None]
    if not rows:
        return np.array([np.nan])
    if len({r.shape for r in rows}) != 1:
        raise ValueError("overlap_medians: all entries must have the same shape (C,)")
    arr = np.stack(rows)
    ok = np.isfinite(arr)
    n = ok.sum(axis=0)
    safe = np.where(ok, arr, 0.0)
    mean = safe.sum(axis=0) / np.maximum(n, 1)
    var = (np.where(ok, arr - mean, 0.0) ** 2).sum(axis=0) / np.maximum(n, 1)
    return np.where(n > 0, np.sqrt(var), np.nan)
