"""The one dask layer of the stacking engine: lazy reduction along the frame axis.

:func:`stack` maps a stacking kernel of :mod:`zdask.ops.stacking` over the
plane blocks of a dask array ``(N, H, W[, C])``: one task per block, each
reading its block of the source once and returning the image, count and
rejection maps of that block.  The frame axis must be a single chunk (it is
never rechunked implicitly); build sources with :func:`stack_chunks` so that
one block with the whole frame axis fits the memory budget.

Memory per task ≈ the block (``N × h × w × C`` samples in the source dtype,
plus a float32 copy when the dtype is not float32) + small tile buffers +
the block's outputs.  Peak memory of a computation ≈ budget × concurrent
tasks + the assembled outputs.

Results are bit-identical whatever the block size: every pixel is reduced
from its own samples only.
"""

from __future__ import annotations

import operator
import os
import uuid
from itertools import product

import dask.array as da
import numpy as np
from dask.array.core import slices_from_chunks
from dask.core import flatten
from dask.highlevelgraph import HighLevelGraph
from dask.utils import parse_bytes

from zdask.ops._stacking_common import per_frame
from zdask.ops.stacking import METHODS, StackResult

__all__ = ["stack", "stack_chunks", "wrap_array", "parse_bytes", "budget_bytes", "block_bytes"]

_FIELDS = (("image", np.float32), ("count", np.int32), ("rejected_low", np.int32), ("rejected_high", np.int32))


def budget_bytes(budget) -> int:
    """A memory budget as bytes: an int, or a dask byte string such as ``"256MiB"``."""
    if isinstance(budget, str):
        b = parse_bytes(budget)
    elif isinstance(budget, (int, np.integer)) and not isinstance(budget, bool):
        b = int(budget)
    elif isinstance(budget, float) and budget.is_integer():
        b = int(budget)
    else:
        raise TypeError(f"budget must be a number of bytes or a string like '256MiB', got {budget!r}")
    if b <= 0:
        raise ValueError(f"budget must be positive, got {budget!r}")
    return b


def _bytes_per_sample(dtype) -> int:
    """Source bytes per sample, plus the float32 copy the kernels make of other dtypes."""
    dt = np.dtype(dtype)
    return dt.itemsize + (0 if dt == np.float32 else 4)


def block_bytes(n: int, plane: int, dtype) -> int:
    """Bytes one task holds for a block of ``n`` frames × ``plane`` samples per frame."""
    return n * plane * _bytes_per_sample(dtype)


def _split(size: int, parts: int) -> tuple[int, ...]:
    """``size`` in about ``parts`` chunks of one size and a smaller last one.

    Regular, as a Zarr chunk grid is: stores written block by block then give every block
    chunks of its own. (Balanced bands such as 126, 126, 125, 125 made two blocks share a
    Zarr chunk, and two tasks writing one chunk at once lose one of the writes.)"""
    if size <= 0:
        return (0,)
    step = -(-size // max(1, min(parts, size)))
    count = -(-size // step)
    return (step,) * (count - 1) + (size - step * (count - 1),)


def stack_chunks(shape, dtype, budget, *, min_blocks: int = 1,
                 multiple_of: int | None = None, fill_budget: bool = False) -> tuple[tuple[int, ...], ...]:
    """Dask chunks for a stack ``(N, H, W[, C])``: frame axis whole, blocks within ``budget``.

    Blocks are bands of whole rows (full width, C whole), as many rows as fit
    the budget, all of one height but a lower last one (a regular grid: see :func:`_split`);
    ``min_blocks`` asks for at least that many bands (when H allows), and the
    number of bands is rounded up to a multiple of ``multiple_of`` (default:
    the number of cores, so that the threads finish together).  If even one
    row of all frames exceeds the budget, the rows are split into column
    blocks (1 row × as many columns as fit; at least one pixel).

    ``fill_budget``: bands of exactly as many rows as fit (the last one lower), neither evened
    out nor rounded to the cores: a stage whose peak memory is its largest block then holds the
    same memory whatever the frame count (evened-out bands fill 50-100 % of the budget,
    depending on how the rows divide).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4):
        raise ValueError(f"a stack must be (N, H, W) or (N, H, W, C), got shape {shape}")
    n, h, w = shape[:3]
    c = shape[3] if len(shape) == 4 else 1
    b = budget_bytes(budget)
    k = max(1, int(os.cpu_count() or 1) if multiple_of is None else int(multiple_of))
    pixel = max(1, n * c * _bytes_per_sample(dtype))
    row = pixel * max(w, 1)
    if row <= b:
        rows = max(1, min(max(h, 1), b // row))
        parts = max(-(-h // rows), int(min_blocks))
        if fill_budget:
            rchunks = (rows,) * (h // rows) + ((h % rows,) if h % rows else ())
        else:
            if parts > 1:
                parts = -(-parts // k) * k
            rchunks = _split(h, parts)
        cchunks = (w,)
    else:
        cols = max(1, b // pixel)
        rchunks, cchunks = _split(h, h), _split(w, -(-w // cols))
    chunks = ((n,), rchunks, cchunks)
    return chunks + ((c,),) if len(shape) == 4 else chunks


def wrap_array(arr, budget, *, min_blocks: int | None = None) -> da.Array:
    """A NumPy/CuPy array as a dask array with :func:`stack_chunks` blocks, WITHOUT copying it.

    (``dask.array.from_array`` copies its input; here the blocks are views of
    ``arr`` — do not modify ``arr`` before the result is computed.)  At least
    4 blocks per core by default, so that the cores finish together even when one runs
    slower (measured: 4 blocks per core 10–20 % faster than 2 on 2 busy cores).
    """
    arr = arr if hasattr(arr, "shape") and hasattr(arr, "dtype") else np.asarray(arr)
    if min_blocks is None:
        min_blocks = 4 * (os.cpu_count() or 1)
    chunks = stack_chunks(arr.shape, arr.dtype, budget, min_blocks=min_blocks) if arr.ndim in (3, 4) \
        else tuple((s,) for s in arr.shape)
    name = f"stack-input-{uuid.uuid4().hex}"
    dsk = {
        (name, *idx): arr[slc]
        for idx, slc in zip(product(*(range(len(c)) for c in chunks)), slices_from_chunks(chunks))
    }
    meta = arr[(slice(0, 0),) * arr.ndim]
    return da.Array(dsk, name, chunks=chunks, dtype=arr.dtype, meta=meta)


def _single(x):
    """Blockwise passes the blocks of a contracted index (the frame axis) as a list: one block."""
    while isinstance(x, list):
        (x,) = x
    return x


def _block_task(block, weights, scale, offset, *, method, params):
    # concatenate=False: dask would otherwise copy the block to "concatenate" its single frame chunk
    block, weights, scale, offset = (_single(v) for v in (block, weights, scale, offset))
    return tuple(METHODS[method](block, weights=weights, scale=scale, offset=offset, **params))


def _coefficient(coef, n: int, c: int, four_d: bool, name: str):
    """Validate a per-frame coefficient → ``(dask array, index, host copy or None)``."""
    if coef is None:
        return None, None, None
    ind = ("n", "c") if four_d else ("n",)
    if isinstance(coef, da.Array):
        if coef.ndim == 1 and four_d:
            coef = da.broadcast_to(coef[:, None], (n, c))
        elif coef.ndim == 2 and not four_d:
            if coef.shape[1] != 1:
                raise ValueError(f"{name} must have shape ({n},) or ({n}, 1) for a mono stack")
            coef = coef[:, 0]
        if coef.shape != ((n, c) if four_d else (n,)):
            raise ValueError(f"{name} must have shape ({n},) or ({n}, {c}), got {coef.shape}")
        return coef.rechunk(-1), ind, None
    a = per_frame(coef, n, c, name, np.float64 if name == "weights" else np.float32)
    a = a if four_d else a[:, 0]
    return da.from_array(a, chunks=-1), ind, a


def stack(stack, method: str = "kappa_sigma", *, weights=None, scale=None, offset=None,
          budget="256MiB", **parameters) -> StackResult:
    """Lazy stacking of ``stack (N, H, W[, C])`` along the frame axis.

    Parameters
    ----------
    stack : dask array (or NumPy/CuPy array, wrapped without a copy by :func:`wrap_array`)
        Frame axis first and in ONE chunk (else ``ValueError``); channel last.
    method : one of ``zdask.ops.stacking.METHODS``
        ``kappa_sigma``, ``winsorized``, ``linear_fit_clip``, ``median``, ``mean``, ``sum``.
    weights, scale, offset : ``(N,)`` or ``(N, C)``, NumPy or dask
        Per-frame weights and normalisation (``x * scale + offset``).
    budget : int bytes or str (``"256MiB"``)
        Memory for one task's block.  If the input's plane chunks exceed it,
        the plane axes (only) are rechunked to :func:`stack_chunks` blocks —
        the source chunks are then still read whole, so build sources with
        :func:`stack_chunks` to really bound memory.  A channel axis split in
        several chunks is merged.
    **parameters
        The method's parameters (``kappa``, ``iterations``, ``winsor``); an
        unknown one raises ``TypeError`` naming it, here rather than at compute.

    Returns
    -------
    StackResult of dask arrays: ``image`` float32 ``(H, W[, C])``, ``count``,
    ``rejected_low``, ``rejected_high`` int32 — one task per block (plus one
    cheap getter per output and block).
    """
    if method not in METHODS:
        raise ValueError(f"unknown stacking method {method!r}; allowed: {', '.join(METHODS)}")
    b = budget_bytes(budget)
    if not isinstance(stack, da.Array):
        stack = wrap_array(stack, b)
    if stack.ndim not in (3, 4):
        raise ValueError(f"a stack must be (N, H, W) or (N, H, W, C), got shape {stack.shape}")
    if len(stack.chunks[0]) != 1:
        raise ValueError(
            f"the frame axis of the stack must be a single chunk, got chunks {stack.chunks[0]}; "
            "zdask never rechunks it implicitly: build the source with stack_chunks() "
            "or call .rechunk({0: -1}) yourself"
        )
    four_d = stack.ndim == 4
    n = stack.shape[0]
    c = stack.shape[3] if four_d else 1
    if four_d and len(stack.chunks[3]) != 1:
        stack = stack.rechunk({3: -1})
    plane = max(stack.chunks[1]) * max(stack.chunks[2]) * c
    if block_bytes(n, plane, stack.dtype) > b:
        target = stack_chunks(stack.shape, stack.dtype, b)
        stack = stack.rechunk({1: target[1], 2: target[2]})

    coefs = [_coefficient(v, n, c, four_d, k) for k, v in (("weights", weights), ("scale", scale),
                                                          ("offset", offset))]
    # Validate the parameters now (and compile the kernel) on a one-pixel stack.
    probe = np.zeros((n, 1, 1, c) if four_d else (n, 1, 1), dtype=np.float32)
    host = [h for _, _, h in coefs]
    METHODS[method](probe, weights=host[0], scale=host[1], offset=host[2], **parameters)

    xind = ("n", "y", "x", "c") if four_d else ("n", "y", "x")
    oind = xind[1:]
    args = [stack, xind]
    for a, ind, _ in coefs:
        args += [a, ind]
    meta = np.empty((0,) * len(oind), dtype=np.float32)
    tmp = da.blockwise(
        _block_task, oind, *args, concatenate=False, dtype=np.float32, meta=meta,
        method=method, params=dict(parameters),
    )
    keys = list(flatten(tmp.__dask_keys__()))
    out = []
    for i, (field, dtype) in enumerate(_FIELDS):
        name = f"stack-{field.replace('_', '-')}-{tmp.name}"
        dsk = {(name,) + k[1:]: (operator.getitem, k, i) for k in keys}
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=[tmp])
        meta_i = da.utils.meta_from_array(stack._meta, ndim=len(oind), dtype=dtype)
        out.append(da.Array(graph, name, chunks=tmp.chunks, dtype=dtype, meta=meta_i))
    return StackResult(*out)

