"""SDS polish on the canvas, block by block, with the classic mode's kernels
(:mod:`zdask.ops.masks`): the alt-az cleanup of an ALT_AZ lot's mega-tile and the two-pass
coverage renormalisation of the global stack.

Both kernels look only a bounded distance around a pixel (:func:`zdask.ops.masks.altaz_reach`:
15 px with the default opening and ramp; :func:`zdask.ops.masks.renormalisation_reach`: 60 px),
so each block task reads its block of the stored coverage with that margin (clipped at the
canvas's edge, where the kernels' own border rules apply as on the whole map), runs the kernel
on that window and keeps the block's part: the kernel's values on the whole canvas (the alpha bit
for bit; the renormalisation gain to a few float32 ulps, OpenCV's Gaussian rounding a pixel by
its place in the row), without the canvas ever being in memory.

Alt-az cleanup (per ALT_AZ lot, when asked; the classic mode's per-group gating): the alpha of
the lot's mega-tile coverage as :func:`~zdask.ops.masks.altaz_alpha` gives it for a master tile
(the relative threshold on the mega-tile's peak coverage, the absolute one bounded by the lot's
frames), stored in ``sds/altaz/<fp>/alpha`` (chunks = the canvas blocks; blocks the lot does
not touch are never written and read as 0). The kernel's guard (a mask keeping less than
:data:`~zdask.ops.masks.MIN_KEEP_FRACTION` of the covered pixels is not applied) is taken on the
blocks' counts summed. In the global stack the lot's weight becomes coverage × alpha and its
samples where alpha is 0 become NaN, so the corners take no part in the rejection either.

Memory per task: the window, ``(s + 2 r)²`` pixels for a block of side ``s`` and a reach ``r``,
times a few float32 maps (the coverage, the kernel's intermediates): ``s = 1024`` and the
renormalisation's ``r = 60`` make about 30 MB, independent of the number of frames and lots.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask
import numpy as np

from zdask.io import store
from zdask.ops.masks import (MIN_KEEP_FRACTION, RENORM_SMOOTH_PX, altaz_alpha, altaz_reach,
                             coverage_renormalisation_gain, renormalisation_reach)

__all__ = ["ALTAZ_PARAMS", "create_alpha_store", "altaz_tasks", "altaz_outcome", "renormalise_block"]

#: the alt-az mask's settings (the run's ``altaz_*`` fields, as the classic mode's finishing pass)
ALTAZ_PARAMS = ("min_abs", "min_frac", "opening_px", "ramp_px")


def _window(rows: tuple[int, int], cols: tuple[int, int], shape: tuple[int, int], reach: int):
    """(the block with ``reach`` pixels around it, clipped to ``shape``; the block inside it)."""
    (r0, r1), (c0, c1) = rows, cols
    y0, x0 = max(0, r0 - reach), max(0, c0 - reach)
    window = (slice(y0, min(shape[0], r1 + reach)), slice(x0, min(shape[1], c1 + reach)))
    return window, (slice(r0 - y0, r1 - y0), slice(c0 - x0, c1 - x0))


def _coverage(root: str, path: str, window: tuple) -> np.ndarray:
    return np.nan_to_num(np.asarray(store.open_array_at(root, path)[window], dtype=np.float32))


# --- alt-az cleanup of a lot's mega-tile -----------------------------------------------------------

def create_alpha_store(root: str, name: str, shape: tuple[int, int], side: int) -> None:
    """The lot's (empty) alpha on the canvas, one chunk per block; unwritten chunks read 0."""
    store.create_array(store.open_store(root), f"{name}/alpha", tuple(shape), "float32", (side, side),
                       fill_value=0.0)


def altaz_block(root: str, coverage: str, alpha: str, rows: tuple[int, int], cols: tuple[int, int],
                shape: tuple[int, int], n_frames: int, peak: float, params: dict) -> dict:
    """Worker task: one block of a lot's alt-az alpha (written to ``alpha``), from its coverage
    (the array ``coverage``) read with the kernel's reach; returns the block's kept (alpha > 0)
    and covered (coverage > 0) pixel counts, for the guard."""
    window, inner = _window(rows, cols, shape, altaz_reach(params["opening_px"], params["ramp_px"]))
    cov = _coverage(root, coverage, window)
    # The guard is the whole lot's (altaz_outcome): off here, or a window would decide alone.
    result = altaz_alpha(cov, n_frames=n_frames, peak=peak, min_keep_fraction=0.0,
                         **{k: params[k] for k in ALTAZ_PARAMS})
    block = np.ascontiguousarray(result.alpha[inner], dtype=np.float32)
    (r0, r1), (c0, c1) = rows, cols
    store.open_array_at(root, alpha, mode="r+")[r0:r1, c0:c1] = block
    return {"kept": int(np.count_nonzero(block > 0)), "covered": int(np.count_nonzero(cov[inner] > 0))}


def altaz_tasks(root: str, megatile: str, name: str, blocks, touched: Sequence[tuple[int, int]], n_frames: int,
                peak: float, params: dict) -> list:
    """Delayed block tasks of the alpha of the mega-tile stored in group ``megatile`` (the
    ``touched`` blocks of ``blocks``, a :class:`zdask.graph.sds.BlockGrid`), into ``name``."""
    params = {k: params[k] for k in ALTAZ_PARAMS}
    return [dask.delayed(altaz_block, pure=True)(root, f"{megatile}/coverage", f"{name}/alpha", blocks.rows(i),
                                                 blocks.cols(j), tuple(blocks.shape), int(n_frames), float(peak),
                                                 params, dask_key_name=f"sds-altaz-{name}-{i}-{j}")
            for i, j in touched]


def altaz_outcome(parts: Sequence[dict]) -> tuple[bool, str]:
    """(applied, note) from the blocks' counts: the kernel's guard on the whole mega-tile."""
    kept, covered = sum(p["kept"] for p in parts), sum(p["covered"] for p in parts)
    if covered == 0:
        return False, "no pixel has coverage > 0"
    fraction = kept / covered
    if fraction < MIN_KEEP_FRACTION:
        return False, (f"mask would keep {fraction:.1%} of covered pixels (< min_keep_fraction "
                       f"{MIN_KEEP_FRACTION:.1%}); using coverage > 0")
    return True, f"kept {fraction:.1%} of covered pixels"


# --- two-pass coverage renormalisation of the global stack -----------------------------------------

def renormalise_block(image: np.ndarray, root: str, coverage: str, threshold: float, shape: tuple[int, int],
                      block_info=None) -> np.ndarray:
    """``map_blocks`` function: a block (h, w, C) of the global stack's image times the
    renormalisation gain of the coverage that the cut keeps (below ``threshold``: 0), the gain
    of the whole canvas's cut coverage at those pixels (read from the array ``coverage`` with
    the kernel's reach)."""
    (r0, r1), (c0, c1) = block_info[0]["array-location"][:2]
    window, inner = _window((r0, r1), (c0, c1), shape, renormalisation_reach(RENORM_SMOOTH_PX))
    cov = _coverage(root, coverage, window)
    cut = np.where(cov >= np.float32(threshold), cov, np.float32(0))
    gain = coverage_renormalisation_gain(cut, smooth_px=RENORM_SMOOTH_PX)[inner]
    return (image * gain[..., None]).astype(np.float32)
