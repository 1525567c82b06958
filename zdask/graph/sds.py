"""SDS graph builders: each lot's mega-tile on the global canvas, the global stack, the polish.

Everything lives on ONE grid of square blocks of the canvas (:class:`BlockGrid`, side ``s`` a
multiple of the binning factor ``f``), so that a block of the global stack reads exactly one
stored chunk of each lot that touches it, and a lot's binned mega-tile has one chunk per block.
Only the blocks a lot's frames touch are computed and written: Zarr keeps no chunk that was
never written, and reads it back as its fill value (NaN image, zero coverage).

Working store (under ``root``)::

    sds/lots/<fp>/image            float32 (H, W, C)   the lot's mega-tile, chunks (s, s, C)
    sds/lots/<fp>/coverage         float32 (H, W)      frames whose footprint covers a pixel
    sds/lots/<fp>/binned_image     float32 (H//f, W//f, C)  f × f block means (gain match)
    sds/lots/<fp>/binned_coverage  float32 (H//f, W//f)
    sds/stack/<fp>/image           float32 (H, W, C)   the global stack of the mega-tiles
    sds/stack/<fp>/coverage        float32 (H, W)      the sum of the lots' coverages
    sds/stack/<fp>/peak_coverage   float32 (⌈H/f⌉, ⌈W/f⌉)  largest coverage of each f × f cell

Memory, per worker thread, whatever the number of frames or lots (:func:`block_side` sizes the
blocks so that both stacks fit ``budget``):

- a mega-tile task: the warped rectangle of whole blocks of its lot and its outputs,
  ``((N_lot + 4) × C × 4 + 4) × area`` bytes <= budget (:func:`megatile_regions`; the warped
  stack in one reused buffer per thread, as for master tiles), plus the frame rows of one warp;
- a global-stack block task: the lots touching it, ``L × s² × (C + 1) × 4`` bytes <= budget,
  plus the outputs (``s² × C × 16``);
- a gain task: two binned mega-tiles, at most ``2 × (H/f) × (W/f) × (C + 1) × 4`` bytes
  (0.25 MB per canvas megapixel with f = 8), and the median filter's copies of their overlap;
- a polish task (alt-az alpha, coverage renormalisation): a block's coverage with the kernel's
  reach around it, ``(s + 2 r)²`` pixels (:mod:`zdask.graph.sds_polish`);
- the client: a few numbers per lot and block, and the peak-coverage map ``(H/f)(W/f) × 4``.

So the process tree peaks near ``threads × (budget + frame windows)``, the bound of the
master-tile stage.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from zdask.graph.geometry import Grid, grid_bbox_of
from zdask.graph.mosaic import crop_grid
from zdask.graph.sds_polish import renormalise_block
from zdask.graph.stack import budget_bytes
from zdask.graph.tiles import TileSource, TileStack, stack_tile_block
from zdask.io import store
from zdask.io.outputs import alpha_from_coverage
from zdask.ops.crop import autocrop_box
from zdask.ops.lotgain import LotGain, match_gain, overlap_mask
from zdask.ops.pixelweights import stack_pixel_weighted
from zdask.ops.warp import bin_image

__all__ = ["BlockGrid", "MegaTile", "block_side", "lot_blocks", "megatile_regions", "megatile_tasks", "summarise_megatile",
           "lot_gain", "global_stack_tasks", "crop_box", "polished_arrays"]


@dataclass(frozen=True)
class BlockGrid:
    """Square blocks of ``side`` pixels over a canvas of ``shape`` (the last row/column smaller)."""

    shape: tuple[int, int]
    side: int

    @property
    def counts(self) -> tuple[int, int]:
        return -(-self.shape[0] // self.side), -(-self.shape[1] // self.side)

    def rows(self, i: int) -> tuple[int, int]:
        return i * self.side, min(self.shape[0], (i + 1) * self.side)

    def cols(self, j: int) -> tuple[int, int]:
        return j * self.side, min(self.shape[1], (j + 1) * self.side)

    def touching(self, bbox: tuple[int, int, int, int]) -> set[tuple[int, int]]:
        """Blocks that hold a pixel of ``bbox`` (y0, y1, x0, x1), ends exclusive."""
        y0, y1, x0, x1 = bbox
        s = self.side
        return {(i, j) for i in range(y0 // s, -(-y1 // s)) for j in range(x0 // s, -(-x1 // s))}


#: The blocks' side at most (px): a mega-tile task is a rectangle of whole blocks, so small
#: blocks let it come close to the budget on any canvas (with 728 px blocks, a 1089 px wide
#: canvas left its tasks at 70 % of it), while a block's chunk stays above half a megabyte.
MAX_SIDE = 384


def block_side(budget, max_frames: int, n_lots: int, channels: int, factor: int, cap: int = 1024) -> int:
    """The blocks' side: the largest multiple of ``factor`` (at most ``cap`` and
    :data:`MAX_SIDE`, at least ``factor``) whose mega-tile block (``max_frames`` frames) and
    global-stack block (``n_lots`` lots, with their coverages) both fit ``budget`` bytes. Pure."""
    per_pixel = max(megatile_pixel_bytes(max_frames, channels), n_lots * (channels + 1) * 4 + channels * 16)
    side = int(math.isqrt(max(1, budget_bytes(budget) // max(1, per_pixel))))
    return max(factor, min(min(cap, MAX_SIDE) // factor * factor, side // factor * factor))


def lot_blocks(sources: Sequence[TileSource], canvas: Grid, blocks: BlockGrid) -> tuple[tuple[int, int], ...]:
    """The blocks of the canvas that some frame of a lot touches (its footprint's bounding box)."""
    touched: set[tuple[int, int]] = set()
    for src in sources:
        bbox = grid_bbox_of(Grid(src.wcs_header, tuple(src.shape)), canvas)
        if bbox is not None:
            touched |= blocks.touching(bbox)
    return tuple(sorted(touched))


# --- mega-tiles ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MegaTile:
    """A lot's stored mega-tile, as the gain match and the global stack see it."""

    name: str                             # its Zarr group, e.g. "sds/lots/<fp>"
    blocks: tuple[tuple[int, int], ...]   # the blocks computed (the others hold no sample)
    coverage_sum: float
    coverage_peak: float
    kept: int
    rejected: int
    seconds: float                        # the block tasks' own time, summed


def create_megatile_store(root: str, name: str, blocks: BlockGrid, channels: int, factor: int) -> None:
    """The lot's (empty) arrays; each block task writes its own chunks."""
    group, (h, w), sb = _create_canvas_arrays(root, name, blocks, channels, factor)
    store.create_array(group, f"{name}/binned_image", (h // factor, w // factor, channels), "float32",
                       (sb, sb, channels))
    store.create_array(group, f"{name}/binned_coverage", (h // factor, w // factor), "float32", (sb, sb),
                       fill_value=0.0)


def _create_canvas_arrays(root: str, name: str, blocks: BlockGrid, channels: int, factor: int):
    """``name``'s image (H, W, C) and coverage (H, W) on the canvas, one chunk per block; returns
    the store's group, (H, W) and the binned blocks' side."""
    group = store.open_store(root)
    h, w = blocks.shape
    s = blocks.side
    store.create_array(group, f"{name}/image", (h, w, channels), "float32", (s, s, channels))
    store.create_array(group, f"{name}/coverage", (h, w), "float32", (s, s), fill_value=0.0)
    return group, (h, w), s // factor


def megatile_block(spec: TileStack, rows: tuple[int, int], cols: tuple[int, int], root: str, name: str,
                   factor: int) -> dict:
    """Worker task: one block of a lot's mega-tile, warped and stacked as a master tile's block
    (:func:`zdask.graph.tiles.stack_tile_block`, the canvas as the grid), written with its binned
    version; returns the block's sums."""
    start = time.perf_counter()
    image, count, low, high = stack_tile_block(spec, rows, cols)
    # A warped sample is NaN exactly where a footprint ends: kept + rejected = footprints.
    coverage = (count[..., 0] + low[..., 0] + high[..., 0]).astype(np.float32)
    (r0, r1), (c0, c1) = rows, cols
    _write(root, f"{name}/image", (slice(r0, r1), slice(c0, c1)), image)
    _write(root, f"{name}/coverage", (slice(r0, r1), slice(c0, c1)), coverage)
    binned = bin_image(image, factor)
    b0, d0 = r0 // factor, c0 // factor
    window = (slice(b0, b0 + binned.shape[0]), slice(d0, d0 + binned.shape[1]))
    if binned.size:
        _write(root, f"{name}/binned_image", window, binned)
        _write(root, f"{name}/binned_coverage", window, bin_image(coverage, factor))
    rejected = int(low.sum(dtype=np.int64) + high.sum(dtype=np.int64))
    return {"coverage_sum": float(coverage.sum(dtype=np.float64)), "coverage_peak": float(coverage.max(initial=0)),
            "kept": int(count.sum(dtype=np.int64)), "rejected": rejected,
            "seconds": time.perf_counter() - start}


def _write(root: str, path: str, where: tuple, data: np.ndarray) -> None:
    store.open_array_at(root, path, "r+")[where] = data


def megatile_pixel_bytes(n_frames: int, channels: int) -> int:
    """Bytes a mega-tile task holds per canvas pixel: the warped stack (float32 per frame and
    channel), the stacking's outputs (image float32, kept and rejected counts int32: 16 bytes
    per channel) and the coverage (float32). With a few frames a lot, the outputs weigh as much
    as the stack."""
    return n_frames * channels * 4 + channels * 16 + 4


def megatile_regions(touched: Sequence[tuple[int, int]], blocks: BlockGrid, n_frames: int, channels: int,
                     budget) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The rectangles of whole blocks that one lot's block tasks compute: the touched blocks'
    bounding box cut into rectangles of as many blocks as a task of ``n_frames`` frames fits in
    ``budget`` (:func:`megatile_pixel_bytes`; as wide as the box where it can: a frame is read
    in whole rows), keeping those that hold a touched block. Each is ((row block start, end),
    (column block start, end)), ends exclusive. Pure.

    A global-stack block must be small (it holds every lot), a lot's block need not: one task
    per few blocks saves re-reading each frame's rows once per block."""
    if not touched:
        return []
    i0, i1 = min(i for i, _ in touched), max(i for i, _ in touched) + 1
    j0, j1 = min(j for _, j in touched), max(j for _, j in touched) + 1
    limit = budget_bytes(budget) // megatile_pixel_bytes(n_frames, channels)  # pixels a task may hold

    # Pixels counted exactly (the canvas's last blocks are partial), on the first rectangle: the
    # others are the same or cut shorter by the canvas's edge.
    def height(t: int) -> int:
        return blocks.rows(i0 + t - 1)[1] - blocks.rows(i0)[0]

    def width(k: int) -> int:
        return blocks.cols(j0 + k - 1)[1] - blocks.cols(j0)[0]

    wide = j1 - j0
    while wide > 1 and height(1) * width(wide) > limit:
        wide -= 1
    tall = 1
    while tall < i1 - i0 and height(tall + 1) * width(wide) <= limit:
        tall += 1
    inside = set(touched)
    return [((i, min(i + tall, i1)), (j, min(j + wide, j1)))
            for i in range(i0, i1, tall) for j in range(j0, j1, wide)
            if any((a, b) in inside for a in range(i, min(i + tall, i1)) for b in range(j, min(j + wide, j1)))]


def megatile_tasks(spec: TileStack, root: str, name: str, blocks: BlockGrid, touched: Sequence[tuple[int, int]],
                   factor: int, budget) -> list:
    """Delayed tasks of one lot's mega-tile, one per :func:`megatile_regions` rectangle (the
    lot's description one shared key). A rectangle's blocks that no frame touches are written
    as the arrays' fill (NaN image, zero coverage), which they hold anyway."""
    shared = dask.delayed(spec, pure=True)
    regions = megatile_regions(touched, blocks, len(spec.sources), spec.channels, budget)
    return [dask.delayed(megatile_block, pure=True)(shared, (blocks.rows(i0)[0], blocks.rows(i1 - 1)[1]),
                                                    (blocks.cols(j0)[0], blocks.cols(j1 - 1)[1]), root, name,
                                                    factor, dask_key_name=f"sds-megatile-{name}-{i0}-{j0}")
            for (i0, i1), (j0, j1) in regions]


def summarise_megatile(name: str, touched: Sequence[tuple[int, int]], results: Sequence[dict]) -> MegaTile:
    return MegaTile(name, tuple(touched), float(sum(r["coverage_sum"] for r in results)),
                    float(max((r["coverage_peak"] for r in results), default=0.0)),
                    int(sum(r["kept"] for r in results)), int(sum(r["rejected"] for r in results)),
                    float(sum(r["seconds"] for r in results)))


# --- gain match ------------------------------------------------------------------------------------

def lot_gain(root: str, reference: MegaTile, lot: MegaTile, method: str, min_fraction: float) -> LotGain:
    """Worker task: ``lot``'s correction against ``reference`` from their binned mega-tiles, read
    over the bounding box of the pixels both cover (so the result does not depend on the blocks;
    none: the fallback, gain 1)."""
    read = lambda tile, key, window=(slice(None), slice(None)): \
        store.open_array_at(root, f"{tile.name}/{key}")[window]  # noqa: E731
    ref_cov, cov = read(reference, "binned_coverage"), read(lot, "binned_coverage")
    both = overlap_mask(ref_cov, cov, reference.coverage_peak, lot.coverage_peak, min_fraction)
    rows, cols = np.flatnonzero(both.any(axis=1)), np.flatnonzero(both.any(axis=0))
    window = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)) if rows.size \
        else (slice(0, 0), slice(0, 0))
    return match_gain(read(reference, "binned_image", window), ref_cov[window], reference.coverage_peak,
                      read(lot, "binned_image", window), cov[window], lot.coverage_peak, method=method,
                      min_fraction=min_fraction)


# --- the global stack ------------------------------------------------------------------------------

def create_stack_store(root: str, name: str, blocks: BlockGrid, channels: int, factor: int) -> None:
    """The global stack's (empty) arrays; each block task writes its own chunks."""
    group, (h, w), sb = _create_canvas_arrays(root, name, blocks, channels, factor)
    store.create_array(group, f"{name}/peak_coverage", (-(-h // factor), -(-w // factor)), "float32", (sb, sb),
                       fill_value=0.0)


def global_block(members: tuple[tuple[str, tuple, tuple, str | None], ...], rows: tuple[int, int],
                 cols: tuple[int, int],
                 root: str, name: str, method: str, params: dict, channels: int, factor: int) -> dict:
    """Worker task: one block of the global stack from the lots that touch it, ``members`` =
    ((mega-tile group, gain (C,), offset (C,), alt-az alpha array or None), ...): each lot's
    sample ``gain · x + offset``, weighted by the lot's coverage at that pixel (times its alt-az
    alpha, where it has one: :mod:`zdask.graph.sds_polish`), rejected and averaged by ``method``.
    Writes the image, the summed (weighted) coverage and the block's peak-coverage cells; returns
    its sums."""
    start = time.perf_counter()
    (r0, r1), (c0, c1) = rows, cols
    where = (slice(r0, r1), slice(c0, c1))
    stack = np.empty((len(members), r1 - r0, c1 - c0, channels), dtype=np.float32)
    weights = np.empty((len(members), r1 - r0, c1 - c0), dtype=np.float32)
    for k, (tile, _, _, alpha) in enumerate(members):
        # (opened once per worker, not once per block: every block reads every lot)
        stack[k] = store.open_array(root, f"{tile}/image")[where]
        weights[k] = store.open_array(root, f"{tile}/coverage")[where]
        np.nan_to_num(weights[k], copy=False, nan=0.0)  # (a lot at a time: its masks are small)
        if alpha is not None:
            cut = store.open_array(root, alpha)[where]
            weights[k] *= cut
            # A corner the mask cuts takes no part in the rejection either (as it is absent
            # from a cleaned master tile): weight 0 alone would still count in the median.
            stack[k][~(cut > 0)] = np.nan
    result = stack_pixel_weighted(stack, weights, method, scale=np.array([m[1] for m in members]),
                                  offset=np.array([m[2] for m in members]), **params)
    coverage = weights.sum(axis=0, dtype=np.float32)
    _write(root, f"{name}/image", where, result.image)
    _write(root, f"{name}/coverage", where, coverage)
    h, w = coverage.shape
    cells = np.zeros((-(-h // factor) * factor, -(-w // factor) * factor), dtype=np.float32)
    cells[:h, :w] = coverage
    peak = cells.reshape(cells.shape[0] // factor, factor, cells.shape[1] // factor, factor).max(axis=(1, 3))
    _write(root, f"{name}/peak_coverage", (slice(r0 // factor, r0 // factor + peak.shape[0]),
                                           slice(c0 // factor, c0 // factor + peak.shape[1])), peak)
    rejected = int(result.rejected_low.sum(dtype=np.int64) + result.rejected_high.sum(dtype=np.int64))
    return {"peak": float(coverage.max(initial=0)), "kept": int(result.count.sum(dtype=np.int64)),
            "rejected": rejected, "seconds": time.perf_counter() - start}


def global_stack_tasks(lots: Sequence[tuple[MegaTile, Sequence[float], Sequence[float], str | None]], root: str,
                       name: str, blocks: BlockGrid, method: str, params: dict, channels: int, factor: int) -> list:
    """Delayed block tasks of the global stack: one per block that some lot touches, its frame
    axis holding only those lots (``lots`` = (mega-tile, gain, offset, alt-az alpha array or
    None) per lot)."""
    by_block: dict[tuple[int, int], list] = {}
    for tile, gain, offset, alpha in lots:
        entry = (tile.name, tuple(float(g) for g in gain), tuple(float(o) for o in offset), alpha)
        for ij in tile.blocks:
            by_block.setdefault(ij, []).append(entry)
    return [dask.delayed(global_block, pure=True)(tuple(members), blocks.rows(i), blocks.cols(j), root, name, method,
                                                  dict(params), channels, factor,
                                                  dask_key_name=f"sds-global-{name}-{i}-{j}")
            for (i, j), members in sorted(by_block.items())]


# --- polish ----------------------------------------------------------------------------------------

def crop_box(root: str, name: str, threshold: float, shape: tuple[int, int], factor: int,
             autocrop: bool = True) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the canvas to keep: with ``autocrop``, the smallest box holding every
    pixel whose global coverage reaches ``threshold`` (found on the peak-coverage cells, then made
    exact on four strips of ``factor`` pixels); else the whole canvas. None when no pixel does."""
    # (a cut at 0 keeps every pixel; the box is still that of the covered ones)
    threshold = max(float(threshold), float(np.finfo(np.float32).tiny))
    peaks = store.open_array_at(root, f"{name}/peak_coverage")[:]
    coarse = autocrop_box(peaks, min_coverage=threshold)
    if coarse is None:
        return None
    if not autocrop:
        return 0, shape[0], 0, shape[1]
    coverage = store.open_array_at(root, f"{name}/coverage")
    y0, y1 = coarse[0] * factor, min(shape[0], coarse[1] * factor)
    x0, x1 = coarse[2] * factor, min(shape[1], coarse[3] * factor)
    # The first (last) kept row lies in the box's first (last) cell row; likewise for columns.
    top = np.flatnonzero((coverage[y0:min(y1, y0 + factor), x0:x1] >= threshold).any(axis=1))
    bottom = np.flatnonzero((coverage[max(y0, y1 - factor):y1, x0:x1] >= threshold).any(axis=1))
    left = np.flatnonzero((coverage[y0:y1, x0:min(x1, x0 + factor)] >= threshold).any(axis=0))
    right = np.flatnonzero((coverage[y0:y1, max(x0, x1 - factor):x1] >= threshold).any(axis=0))
    return (y0 + int(top[0]), max(y0, y1 - factor) + int(bottom[-1]) + 1,
            x0 + int(left[0]), max(x0, x1 - factor) + int(right[-1]) + 1)


def polished_arrays(root: str, name: str, canvas: Grid, box: tuple[int, int, int, int], threshold: float,
                    renormalise: bool = False) -> dict:
    """Lazy image (h, w, C), coverage (h, w) float32 and alpha (h, w) uint8 of the global stack
    cropped to ``box``: pixels below ``threshold`` coverage become NaN with coverage 0, alpha
    255 where coverage remains (:func:`zdask.io.outputs.alpha_from_coverage`); with
    ``renormalise``, the image times the two-pass coverage renormalisation gain of the coverage
    the cut keeps, on the whole canvas (:func:`zdask.graph.sds_polish.renormalise_block`). Also
    ``grid``, the cropped canvas (its WCS moved with the crop)."""
    y0, y1, x0, x1 = box
    stored_image = store.open_array_at(root, f"{name}/image")
    stored_coverage = store.open_array_at(root, f"{name}/coverage")
    image = da.from_array(stored_image, chunks=stored_image.chunks, asarray=True)
    if renormalise:
        image = image.map_blocks(renormalise_block, root, f"{name}/coverage", float(threshold),
                                 tuple(canvas.shape), dtype=np.float32)
    image = image[y0:y1, x0:x1]
    coverage = da.from_array(stored_coverage, chunks=stored_coverage.chunks, asarray=True)[y0:y1, x0:x1]
    keep = coverage >= np.float32(threshold)
    cut_image = da.where(keep[..., None], image, np.float32(np.nan)).astype(np.float32)
    cut_coverage = da.where(keep, coverage, np.float32(0)).astype(np.float32)
    return {"image": cut_image, "coverage": cut_coverage,
            "alpha": cut_coverage.map_blocks(alpha_from_coverage, dtype=np.uint8), "grid": crop_grid(canvas, box)}
