"""The SDS chain's memory is bounded by the budget and the threads, not by the frames or lots.

A fresh child process runs the whole chain (:func:`zdask.graph.sds_run.run_sds`: every lot's
mega-tile blocks in flight at once, the gain match, the global stack) on a prepared store, on a
real in-process dask cluster, while a thread samples its resident memory; the growth over the
RSS just before (after one warm-up chain on another lot) is checked against the bound stated in :mod:`zdask.graph.modes.sds`, at 6 lots
and at 24 lots (4 times the frames) with a small budget.
"""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from zdask.graph.geometry import Grid, tan_header
from zdask.graph.sds_plan import Lot
from zdask.graph.stack import budget_bytes
from zdask.graph.tiles import TileSource
from zdask.io import store
from zdask.ops.framestats import frame_statistics

pytestmark = pytest.mark.slow

SCALE = 2.0
FRAME = (440, 600)     # 3.2 MB as calibrated RGB float32
CANVAS = (480, 640)    # a mega-tile (image and coverage) 4.9 MB: 24 of them held exceed the bound
PER_LOT = 2
THREADS = 2
BUDGET = "4MiB"

CHILD = r"""
import json, os, pickle, sys, tempfile, threading, time
import psutil
from distributed import Client, LocalCluster
from zdask.config import Config
from zdask.graph.modes.sds import settings_of
from zdask.graph.sds_run import run_sds

root, n_lots, threads, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with open(root + ".pkl", "rb") as f:
    canvas, sources, stats, lots = pickle.load(f)
settings = settings_of(Config().replace(budget=budget))
proc = psutil.Process()
with LocalCluster(n_workers=1, processes=False, threads_per_worker=threads, dashboard_address=None) as cluster, \
        Client(cluster) as client:
    # Warm-up on the last four lots (imports, compiled kernels, the cluster's first tasks: ~100 MB
    # once, whatever the lots), then the measured chain on the first n_lots.
    # Each chain writes its mega-tiles into a store of its own (the frames stay in root): nothing reused.
    scratch = tempfile.mkdtemp(dir=os.path.dirname(root))
    run_sds(sources, stats, [10.0] * len(sources), lots[-4:], canvas, 3, os.path.join(scratch, "warm.zarr"),
            settings, client=client, say=lambda _: None)
    lots = lots[:n_lots]
    peak, done = [proc.memory_info().rss], []
    def sample():
        while not done:
            peak.append(proc.memory_info().rss)
            time.sleep(0.01)
    sampler = threading.Thread(target=sample)
    sampler.start()
    start = peak[0]
    result = run_sds(sources, stats, [10.0] * len(sources), lots, canvas, 3, os.path.join(scratch, "out.zarr"),
                     settings, client=client, say=lambda _: None)
    done.append(True)
    sampler.join()
print(json.dumps({"growth": max(peak) - start, "lots": len(result.report["lots"])}))
"""


def _prepare(root: str, n_lots: int) -> None:
    """n_lots × PER_LOT noisy frames dithered over CANVAS (each lot covers the field)."""
    rng = np.random.default_rng(3)
    group = store.open_store(root)
    sources, stats, lots = [], [], []
    for k in range(n_lots):
        members = []
        for _ in range(PER_LOT):
            i = len(sources)
            dx, dy = int(rng.integers(0, CANVAS[1] - FRAME[1])), int(rng.integers(0, CANVAS[0] - FRAME[0]))
            image = (100 + 5 * rng.standard_normal(FRAME + (3,))).astype(np.float32)
            store.create_array(group, f"frames/f{i}", image.shape, "float32", (110, FRAME[1], 3))[:] = image
            store.mark_complete(root, f"frames/f{i}", f"fp{i}")
            sources.append(TileSource(root, f"f{i}", f"fp{i}", tan_header(10.0, 40.0, SCALE, (0.5 - dx, 0.5 - dy)),
                                      FRAME))
            stats.append(frame_statistics(image))
            members.append(i)
        lots.append(Lot(k, "EQ", tuple(members), 1.0))
    canvas = Grid(tan_header(10.0, 40.0, SCALE, (0.5, 0.5)), CANVAS)
    with open(root + ".pkl", "wb") as f:
        pickle.dump((canvas, sources, stats, lots), f)


def sds_bound(budget: str, threads: int, frame_bytes: int) -> int:
    """The bound of zdask.graph.modes.sds: threads × (2 × budget + 2 × one frame) + 64 MiB."""
    return threads * (2 * budget_bytes(budget) + 2 * frame_bytes) + (64 << 20)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sdsmem") / "work.zarr")
    _prepare(root, 28)  # (the last four for the warm-up)
    return root


def _growth(root: str, n_lots: int) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, root, str(n_lots), str(THREADS), BUDGET],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["lots"] == n_lots
    return found["growth"]


def test_sds_memory_is_bounded_by_budget_and_threads_not_lots(prepared):
    bound = sds_bound(BUDGET, THREADS, FRAME[0] * FRAME[1] * 3 * 4)
    small, large = _growth(prepared, 6), _growth(prepared, 24)
    # (the 24 lots' mega-tiles together: 118 MB; their frames 154 MB)
    assert small <= bound, f"6 lots: {small / 2**20:.0f} MiB > bound {bound / 2**20:.0f} MiB"
    assert large <= bound, f"24 lots: {large / 2**20:.0f} MiB > bound {bound / 2**20:.0f} MiB"
