"""The dask layer of the stacking engine: blocks, chunks, bit-identity, graph size, memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import dask
import dask.array as da
import numpy as np
import pytest

from zdask.graph.stack import budget_bytes, parse_bytes, stack, stack_chunks
from zdask.ops.stacking import METHODS, StackResult

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_stack(n=12, h=40, w=50, c=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(100.0, 5.0, (n, h, w, c) if c else (n, h, w)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    o = rng.random(x.shape) < 0.03
    x[o] += rng.uniform(50, 300, o.sum()).astype(np.float32)
    return x


def compute(res: StackResult):
    with dask.config.set(scheduler="threads", num_workers=2):
        return StackResult(*dask.compute(*res))


def assert_same(a, b):
    for f in StackResult._fields:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


# --------------------------------------------------------------------------- chunks


def test_stack_chunks_are_a_regular_grid_so_no_two_blocks_share_a_zarr_chunk():
    """Tiles are stored with Zarr chunks of the first block's size: every block must start on a
    chunk boundary, or two tasks write one chunk at once and one write is lost (seen as rows
    of a tile whose counts disagree with its coverage)."""
    for h in (501, 1079, 1080, 97, 7):
        for budget in ("64MiB", "16MiB", "4MiB", 200_000):
            for shape in ((40, h, 1920, 3), (40, h, 300)):
                rows, cols = stack_chunks(shape, np.float32, budget)[1:3]
                for sizes in (rows, cols):
                    starts = np.cumsum((0,) + sizes[:-1])
                    assert np.all(starts % sizes[0] == 0), (shape, budget, sizes)


def test_stack_chunks_that_fill_the_budget_hold_the_same_bytes_whatever_the_frame_count():
    budget = budget_bytes("64MiB")
    for n in (7, 16, 40, 60, 144):
        for h in (97, 1080, 2250):
            rows, cols = stack_chunks((n, h, 1928, 3), np.float32, "64MiB", fill_budget=True)[1:3]
            row = n * 1928 * 3 * 4
            assert sum(rows) == h and cols == (1928,) and len(set(rows[:-1])) <= 1
            # the largest block is the budget less at most one row (or the whole tile)
            assert max(rows) * row <= budget and (max(rows) == h or max(rows) * row > budget - row)


def test_stack_chunks_fit_the_budget():
    shape = (50, 1080, 1920, 3)
    for budget in ("256MiB", "64MiB", 10_000_000, "1MiB"):
        ch = stack_chunks(shape, np.float32, budget)
        assert ch[0] == (50,) and ch[3] == (3,)
        assert sum(ch[1]) == 1080 and sum(ch[2]) == 1920
        block = 50 * max(ch[1]) * max(ch[2]) * 3 * 4
        assert block <= budget_bytes(budget)
    assert stack_chunks(shape, np.float32, "256MiB")[2] == (1920,)  # whole rows when they fit
    bands = stack_chunks(shape, np.float32, "64MiB")[1]
    assert len(set(bands[:-1])) <= 1 and bands[-1] <= bands[0] and len(bands) % (os.cpu_count() or 1) == 0
    assert len(stack_chunks(shape, np.float32, "64MiB", multiple_of=7)[1]) % 7 == 0
    tiny = stack_chunks(shape, np.float32, "64KiB")  # one row of all frames exceeds the budget
    assert tiny[1] == (1,) * 1080 and 50 * max(tiny[2]) * 3 * 4 <= 65536
    mono = stack_chunks((10, 100, 200), np.float32, 10 * 200 * 4 * 30)
    assert mono == ((10,), (25, 25, 25, 25), (200,))  # 30 rows fit: 4 bands
    assert len(stack_chunks((4, 100, 100, 3), np.float32, "1GiB", min_blocks=4)[1]) == 4
    # non-float32 sources count the float32 copy the kernels make
    assert stack_chunks((10, 100, 200), np.uint16, 10 * 200 * 6 * 30)[1] == (25, 25, 25, 25)
    assert budget_bytes("256MiB") == parse_bytes("256MiB") == 256 * 2**20
    with pytest.raises(ValueError):
        budget_bytes(0)
    with pytest.raises(TypeError):
        budget_bytes([1])


def test_frame_axis_must_be_one_chunk():
    x = da.from_array(make_stack(), chunks=(6, 20, 50, 3))
    with pytest.raises(ValueError, match="frame axis"):
        stack(x)


def test_result_chunks_and_plane_rechunk():
    x = make_stack(12, 40, 50, 3)
    src = da.from_array(x, chunks=(12, 10, 25, 3))
    res = stack(src, "winsorized", budget="1MiB")
    assert all(isinstance(a, da.Array) for a in res)
    assert res.image.chunks == src.chunks[1:] and res.count.chunks == src.chunks[1:]
    assert res.image.dtype == np.float32 and res.count.dtype == np.int32
    assert res.rejected_low.dtype == np.int32 and res.rejected_high.dtype == np.int32
    # plane chunks larger than the budget: only the plane axes are rechunked
    big = da.from_array(x, chunks=(12, 40, 50, 1))
    budget = 12 * 8 * 50 * 3 * 4
    res2 = stack(big, "winsorized", budget=budget)
    assert max(res2.image.chunks[0]) * 50 * 3 * 12 * 4 <= budget and res2.image.chunks[2] == (3,)
    assert_same(compute(res2), compute(res))


# --------------------------------------------------------------------------- bit-identical results


@pytest.mark.parametrize("method", list(METHODS))
def test_bit_identical_whatever_the_blocks(method):
    x = make_stack(12, 13, 17, 3, seed=1)
    rng = np.random.default_rng(2)
    kw = dict(weights=rng.uniform(0.5, 2, (12, 3)), scale=rng.uniform(0.9, 1.1, 12),
              offset=rng.uniform(-2, 2, (12, 3)))
    expected = METHODS[method](x, **kw)
    for budget in ("64MiB", 12 * 17 * 3 * 4 * 5, 12 * 3 * 4 * 7, 100):
        assert_same(compute(stack(x, method, budget=budget, **kw)), expected)
    for chunks in [(12, 5, 17, 3), (12, 13, 8, 3), (12, 1, 1, 3)]:
        assert_same(compute(stack(da.from_array(x, chunks=chunks), method, **kw)), expected)


def test_mono_stack_dask_weights_and_parameters():
    x = make_stack(9, 30, 20, c=0, seed=3)
    w = np.linspace(0.5, 1.5, 9)
    expected = METHODS["kappa_sigma"](x, weights=w, kappa=(2.0, 2.5), iterations=3)
    lazy_w = da.from_array(w, chunks=3)
    res = stack(da.from_array(x, chunks=(9, 7, 20)), weights=lazy_w, kappa=(2.0, 2.5), iterations=3)
    assert res.image.shape == (30, 20)
    assert_same(compute(res), expected)
    rgb = make_stack(9, 10, 10, 3)
    lazy_w3 = da.from_array(np.ones((9, 3)), chunks=(3, 1))
    assert_same(compute(stack(rgb, "mean", weights=lazy_w3)), METHODS["mean"](rgb))
    assert_same(compute(stack(rgb, "mean", weights=da.ones(9, chunks=3))), METHODS["mean"](rgb))


def test_errors_at_graph_construction():
    x = da.from_array(make_stack(), chunks=(12, 20, 50, 3))
    with pytest.raises(ValueError, match="kappa_sigma"):
        stack(x, "bogus")
    with pytest.raises(TypeError, match="bogus"):
        stack(x, "kappa_sigma", bogus=3)
    with pytest.raises(ValueError, match="weights"):
        stack(x, weights=np.ones(5))
    with pytest.raises(ValueError):
        stack(da.zeros((3, 4), chunks=(3, 4)))


# --------------------------------------------------------------------------- graph size


def _tasks(res):
    return len(dict(res.image.__dask_graph__()))


def test_task_count_grows_with_blocks_not_frames():
    def graph(n, rows):
        x = da.zeros((n, 64, 32, 3), chunks=(n, rows, 32, 3), dtype=np.float32)
        res = stack(x, "kappa_sigma", budget="1GiB")
        assert res.image.numblocks == (64 // rows, 1, 1)
        return _tasks(res)

    assert graph(4, 16) == graph(200, 16)  # independent of the number of frames
    small, large = graph(50, 32), graph(50, 4)
    assert large > small
    # per block: the source block, the kernel task and one getter per output read
    assert large <= 3 * (64 // 4) + 4


def test_numpy_input_is_wrapped_with_stack_chunks():
    x = make_stack(6, 64, 16, 3)
    res = stack(x, "median", budget=6 * 16 * 3 * 4 * 8)
    assert max(res.image.chunks[0]) <= 8
    assert_same(compute(res), METHODS["median"](x))


# --------------------------------------------------------------------------- memory


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, zarr, dask, dask.array as da
    from zdask.graph.stack import stack, stack_chunks

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    path, budget = sys.argv[1], int(sys.argv[2])
    shape = (48, 640, 768, 3)
    chunks = stack_chunks(shape, np.float32, budget)
    z = zarr.create_array(path, shape=shape, chunks=(1, chunks[1][0], shape[2], 3), dtype="float32",
                          compressors=None)
    rng = np.random.default_rng(0)
    for i in range(shape[0]):
        z[i] = rng.standard_normal(shape[1:], dtype=np.float32)
    arr = da.from_zarr(path, chunks=chunks)
    with dask.config.set(scheduler="threads", num_workers=2):
        dask.compute(*stack(arr[:, :16], "kappa_sigma", budget=budget))  # warm-up (JIT cache)
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS
        base = status("VmRSS")
        img = dask.compute(*stack(arr, "kappa_sigma", budget=budget))[0]
    print(json.dumps({"base": base, "peak": status("VmHWM"), "stack": arr.nbytes,
                      "finite": bool(np.isfinite(img).all())}))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_memory_bounded_for_a_stack_much_larger_than_the_budget(tmp_path):
    budget = 4 * 2**20
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "s.zarr"), str(budget)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    grown = r["peak"] - r["base"]
    outputs = 640 * 768 * 3 * 4 * 4  # the four assembled result arrays
    assert r["finite"]
    assert r["stack"] > 250e6
    # budget × 2 threads (+ one block in flight per thread) + the outputs + slack
    assert grown < 4 * budget + 2 * outputs + 40e6, (grown / 1e6, r)
