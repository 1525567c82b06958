"""The master-tile stage's memory is bounded by the budget and the threads, whatever the frames.

A fresh child process builds the tiles of nine groups on a prepared store and computes them on a
real in-process dask cluster (one future per tile, all in flight at once, as the tile stage does)
while a thread samples its resident memory. Its growth over the RSS sampled just before the
compute is checked against the stated bound (:func:`tile_stage_bound`), at N and at 4 N frames
per group. The old graph (warp tasks apart from the stacking tasks, which also waited for small
coefficient tasks that distributed queued) exceeded it: 133 and 135 MiB at 8 frames per group.
"""

import json
import os
import pickle
import subprocess
import sys

import dask
import numpy as np
import pytest
from dask.core import get_dependencies

from zdask.config import Config
from zdask.graph.geometry import Grid, tan_header
from zdask.graph.stack import budget_bytes
from zdask.graph.tiles import TileSource, master_tile, store_tile
from zdask.io import store
from zdask.ops.framestats import frame_statistics

SCALE = 2.0          # arcsec / px
FRAME = (256, 384)   # frame (height, width): 1.2 MB as calibrated RGB float32
TILE = (290, 420)    # tile grid holding every shifted frame
THREADS = 2
GROUPS = 9        # with 5 groups or more, distributed no longer queued the old graph's warp tasks
BUDGET = "8MiB"

CHILD = r"""
import json, pickle, sys, threading, time
from dataclasses import replace
import psutil
from distributed import Client, LocalCluster, wait
from zdask.config import Config
from zdask.graph.tiles import master_tile, store_tile

root, n_groups, n_frames, threads, budget = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
with open(root + ".pkl", "rb") as f:
    grid, sources, stats = pickle.load(f)
sources, stats = sources[:n_frames], stats[:n_frames]
config = Config().replace(budget=budget, sky_surface_order=-1)
proc = psutil.Process()
with LocalCluster(n_workers=1, processes=False, threads_per_worker=threads, dashboard_address=None) as cluster, \
        Client(cluster) as client:
    # Each group its own tokens (as its own frames would have), so that no task is shared.
    writes = [store_tile(master_tile([replace(s, token=f"{s.token}-{g}") for s in sources], stats,
                                     [10.0] * n_frames, grid, 3, config), root, f"tiles/t{g}")
              for g in range(n_groups)]
    peak, done = [proc.memory_info().rss], []
    def sample():
        while not done:
            peak.append(proc.memory_info().rss)
            time.sleep(0.01)
    sampler = threading.Thread(target=sample)
    sampler.start()
    start = peak[0]
    wait([client.compute(w) for w in writes])  # one future per tile, as the tile stage makes
    done.append(True)
    sampler.join()
print(json.dumps({"growth": max(peak) - start}))
"""


def _prepare(root: str, n_frames: int):
    """n_frames noisy RGB frames, shifted by up to 30 px, with headers placing them on TILE."""
    rng = np.random.default_rng(5)
    group = store.open_store(root)
    sources, stats = [], []
    for k in range(n_frames):
        dx, dy = int(rng.integers(0, 30)), int(rng.integers(0, 30))
        image = (100 + 5 * rng.standard_normal(FRAME + (3,))).astype(np.float32)
        store.create_array(group, f"frames/f{k}", image.shape, "float32", (64, FRAME[1], 3))[:] = image
        header = tan_header(10.0, 40.0, SCALE, (TILE[1] / 2 + 0.5 - dx, TILE[0] / 2 + 0.5 - dy))
        sources.append(TileSource(root, f"f{k}", f"fp{k}", header, FRAME))
        stats.append(frame_statistics(image))
    grid = Grid(tan_header(10.0, 40.0, SCALE, (TILE[1] / 2 + 0.5, TILE[0] / 2 + 0.5)), TILE)
    with open(root + ".pkl", "wb") as f:
        pickle.dump((grid, sources, stats), f)


def tile_stage_bound(budget: str, threads: int, frame_bytes: int, tile_bytes: int) -> int:
    """The stated bound on the tile stage's memory above its start:

    threads × (2 × budget + 2 × one frame) + 8 × one tile's RGB float32 image + 64 MiB.

    Per running block task: the warped block (≤ budget), its four outputs (≤ budget for 4+
    frames), one frame's window and its decompressed Zarr chunks (≤ 2 frames); the finishing
    pass holds a few tile-sized arrays; 64 MiB for the allocator's and the cluster's slack.
    """
    return threads * (2 * budget_bytes(budget) + 2 * frame_bytes) + 8 * tile_bytes + (64 << 20)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tilemem") / "work.zarr")
    _prepare(root, 32)
    return root


def _growth(root: str, n_frames: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, root, str(GROUPS), str(n_frames), str(THREADS), BUDGET],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["growth"]


def test_tile_stage_memory_is_bounded_by_budget_and_threads_not_frames(prepared):
    bound = tile_stage_bound(BUDGET, THREADS, FRAME[0] * FRAME[1] * 3 * 4, TILE[0] * TILE[1] * 3 * 4)
    # 8 and 32 frames per group: the warped stacks of the groups in flight are 9 × 12 MB and
    # 9 × 47 MB, the bound about 110 MB.
    small, large = _growth(prepared, 8), _growth(prepared, 32)
    assert small <= bound, f"8 frames/group: {small / 2**20:.0f} MiB > bound {bound / 2**20:.0f} MiB"
    assert large <= bound, f"32 frames/group: {large / 2**20:.0f} MiB > bound {bound / 2**20:.0f} MiB"


def _graph(root: str, budget: str) -> tuple[dict, int]:
    """The master tile's optimised graph and its number of blocks, for 40 frames on TILE."""
    rng = np.random.default_rng(1)
    sources = [TileSource(root, f"f{k}", f"fp{k}", tan_header(10.0, 40.0, SCALE, (200.5 - k, 140.5)), FRAME)
               for k in range(40)]
    stats = [frame_statistics((100 + rng.standard_normal((16, 16, 3))).astype(np.float32)) for _ in sources]
    grid = Grid(tan_header(10.0, 40.0, SCALE, (TILE[1] / 2 + 0.5, TILE[0] / 2 + 0.5)), TILE)
    config = Config().replace(budget=budget, sky_surface_order=-1)
    arrays = master_tile(sources, stats, [10.0] * len(sources), grid, 3, config)
    writes = store_tile(arrays, root, "tiles/g")
    (optimised,) = dask.optimize(writes)
    graph = {}
    for item in (optimised if isinstance(optimised, (tuple, list)) else [optimised]):
        graph.update(dict(item.__dask_graph__()))
    return graph, arrays["image"].numblocks[0] * arrays["image"].numblocks[1]


def test_block_tasks_depend_on_no_per_frame_result_and_the_graph_grows_with_the_blocks_only(tmp_path):
    root = str(tmp_path / "work.zarr")
    (g1, b1), (g4, b4) = _graph(root, "16MiB"), _graph(root, "4MiB")
    assert b4 >= 3 * b1 >= 6
    for graph, blocks in ((g1, b1), (g4, b4)):
        deps = {k: get_dependencies(graph, k) for k in graph}
        (spec,) = [k for k in graph if "tile-spec" in str(k)]
        # The block tasks (warp + reduce) depend on the tile's description only: no per-frame
        # task, no warped block made by another task; one per block, none folded into the
        # tasks of its outputs (which would warp the block once per output).
        block_tasks = [k for k, d in deps.items() if d == {spec}]
        assert len(block_tasks) == blocks
        assert all(len(deps[k]) >= 2 for k, d in deps.items() if spec in d and k not in block_tasks)
        # The only task without dependencies is the description: nothing is computed per frame.
        assert [k for k, d in deps.items() if not d] == [spec]
    # Tasks per block are the same at 3× the blocks: the graph grows with the blocks only.
    # (the two tasks beside them are the description and the one that waits for every write).
    assert (len(g1) - 2) % b1 == 0 and (len(g1) - 2) // b1 == (len(g4) - 2) // b4 and (len(g4) - 2) % b4 == 0
    # What each block task depends on is the same single description, of the same size.
    spec1 = next(v for k, v in g1.items() if "tile-spec" in str(k))
    spec4 = next(v for k, v in g4.items() if "tile-spec" in str(k))
    assert len(str(spec1)) == len(str(spec4))
