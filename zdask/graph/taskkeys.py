"""Names of the tasks a run submits, as the dask dashboard shows them, and block writes named so.

The dashboard groups tasks by the leading words of their keys (``dask.utils.key_split``: the
words before the first one that is not purely alphabetic). A zdask key is
``<stage>-<label>-<token>``: the stage is the group (``calibrate``, ``align``, ``stack-tile``,
``write-tile``, ...), the label says which frame or tile, and the token (a fingerprint) keeps
the keys of different inputs apart.
"""

from __future__ import annotations

import re
from typing import Sequence

import dask
import dask.array as da
import numpy as np
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

_UNSAFE = re.compile(r"[^A-Za-z0-9_.+]")


def task_key(stage: str, label: object, token: str) -> str:
    """``<stage>-<label>-<token>``, ``label`` (a frame's file name, a tile id) made one word
    that ends the dashboard's group name: characters other than letters, digits, ``_.+``
    become ``_``, and a label of letters only gets a leading ``_``. No label (None):
    ``<stage>-<token>``."""
    if label is None:
        return f"{stage}-{token}"
    word = _UNSAFE.sub("_", str(label)) or "_"
    if word.isalpha():
        word = "_" + word
    return f"{stage}-{word}-{token}"


def store_named(sources: Sequence[da.Array], targets: Sequence, stage: str, label: object, token: str) -> Delayed:
    """Delayed writes of each of ``sources`` into its target (a Zarr array whose chunks are the
    source's blocks), one task per block (``<stage>-<label>-<token>-<k>``, the dashboard's
    ``stage`` group), and one task keyed ``task_key(stage, label, token)`` that is done when every
    block is written. The writes' own results are dropped there, so nothing gathers them.

    Not ``dask.array.store``: its tasks are named ``store-map``, and a delayed call on what it
    returns adds a ``finalize`` task per array.
    """
    done = task_key(stage, label, token)
    writes = []
    for k, (source, target) in enumerate(zip(sources, targets)):
        writes.append(source.map_blocks(_write_block, target, name=f"{done}-{k}", dtype=bool,
                                        chunks=tuple((1,) * len(c) for c in source.chunks),
                                        meta=np.empty((0,) * source.ndim, dtype=bool)))
    optimized = dask.optimize(*writes)  # the sources' element-wise steps fused into the writes
    keys = [key for w in optimized for key in _flat_keys(w.__dask_keys__())]
    layer = {done: (_all_written, keys)}
    graph = HighLevelGraph.merge(*[w.__dask_graph__() for w in optimized])
    graph = HighLevelGraph({**graph.layers, done: layer},
                           {**graph.dependencies, done: {w.name for w in optimized}})
    return Delayed(done, graph)


def _write_block(block: np.ndarray, target, block_info=None) -> np.ndarray:
    """Write one block where it belongs in ``target``; a one-element placeholder back."""
    location = block_info[0]["array-location"]
    target[tuple(slice(a, b) for a, b in location)] = block
    return np.ones((1,) * block.ndim, dtype=bool)


def _all_written(_placeholders) -> None:
    return None


def _flat_keys(keys) -> list:
    if isinstance(keys, list):
        return [k for item in keys for k in _flat_keys(item)]
    return [keys]
