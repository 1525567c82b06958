"""open_client and wait_with_progress: kernels single-threaded in the workers, a local cluster on
localhost only, clusters the machine cannot hold refused, failures raised with their cause."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import urllib.request

import cv2
import dask
import psutil
import pytest
from distributed import LocalCluster
from threadpoolctl import threadpool_info

from zdask.cluster import (MAX_THREADS_PER_CORE, ClusterError, check_local_resources, open_client,
                           wait_with_progress)
from zdask.config import Config


def _kernel_threads_here():
    import cv2 as cv  # noqa: PLC0415
    from threadpoolctl import threadpool_info as info  # noqa: PLC0415

    return cv.getNumThreads(), sorted({p["num_threads"] for p in info() if p["user_api"] == "blas"})


def test_workers_run_kernels_single_threaded_and_settings_come_back():
    before_cv2 = cv2.getNumThreads()
    before_blas = sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
    cv2.setNumThreads(2)  # as on a 2-core machine, whatever this one has
    try:
        with open_client(Config(workers=1, threads_per_worker=2), say=lambda *_: None) as client:
            cv_threads, blas_threads = client.submit(_kernel_threads_here, pure=False).result()
        assert cv_threads == 1
        assert blas_threads in ([1], [])  # [] when NumPy was built without a BLAS threadpool
        assert cv2.getNumThreads() == 2  # the in-process worker gave the settings back
        assert sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}) == before_blas
    finally:
        cv2.setNumThreads(before_cv2)


# --- failures keep their cause --------------------------------------------------------------------

def _fails_on_three(i: int) -> int:
    if i == 3:
        raise OSError(errno.ENOSPC, "No space left on device", f"frame-{i}.zarr")
    return i


def test_a_failed_task_raises_its_own_exception_not_a_cancellation():
    with open_client(Config(workers=1, threads_per_worker=2), say=lambda *_: None) as client:
        futures = client.map(_fails_on_three, range(8))
        with pytest.raises(OSError) as err:
            wait_with_progress(futures, "test")
        assert err.value.errno == errno.ENOSPC and err.value.filename == "frame-3.zarr"
        assert wait_with_progress(client.map(_fails_on_three, [20, 21]), "test") == [20, 21]  # still usable


# --- the embedded cluster listens on this machine only ----------------------------------------------

def _listening(process: psutil.Process) -> set[tuple[str, int]]:
    found = set()
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            found |= {(c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN}
    return found


@pytest.mark.parametrize("workers", [None, 2])
def test_default_cluster_listens_on_loopback_only_and_links_its_real_dashboard(workers):
    me = psutil.Process()
    before = _listening(me)
    said = []
    with open_client(Config().replace(workers=workers), say=said.append) as client:
        client.submit(sum, [1, 2]).result()  # workers up and serving
        opened = _listening(me) - before
    assert opened, "the cluster should listen somewhere (dashboard, worker HTTP servers)"
    assert {ip for ip, _ in opened} <= {"127.0.0.1", "::1"}, opened
    link = re.search(r"dashboard: http://([^/]+):(\d+)/status", said[0])
    assert link and (link.group(1), int(link.group(2))) in opened, (said, opened)
    if workers == 2:  # scheduler, nannies, workers and their HTTP servers: all on TCP here
        assert len(opened) >= 2 + 2 * 2


def test_dashboard_address_exposes_the_dashboard_when_asked():
    me = psutil.Process()
    before = _listening(me)
    said = []
    with open_client(Config().replace(dashboard_address="0.0.0.0:0"), say=said.append):
        opened = _listening(me) - before
    exposed = {port for ip, port in opened if ip == "0.0.0.0"}
    assert len(exposed) == 1 and f":{exposed.pop()}/status" in said[0] and "all interfaces" in said[0]
    assert {ip for ip, _ in opened} <= {"127.0.0.1", "::1", "0.0.0.0"}


def _served(link: str) -> tuple[int, str]:
    """HTTP status and body of what a printed dashboard link serves."""
    with urllib.request.urlopen(link, timeout=30) as response:
        return response.status, response.read().decode("utf-8", "replace")


@pytest.mark.parametrize("workers", [None, 2])
def test_the_printed_dashboard_link_of_the_embedded_cluster_serves_the_dashboard(workers):
    said = []
    with open_client(Config().replace(workers=workers), say=said.append):
        link = re.search(r"dashboard: (http://\S+/status)", said[0])
        assert link, said
        status, body = _served(link.group(1))
    assert status == 200 and "Dask" in body


def test_the_printed_dashboard_link_of_a_running_scheduler_is_the_schedulers():
    # a scheduler on TCP with its dashboard on a port of its own, as one started by hand
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster:
        said = []
        with open_client(Config().replace(scheduler=cluster.scheduler_address), say=said.append):
            link = re.search(r"dashboard: (http://\S+/status)", said[0])
            assert link, said
            status, body = _served(link.group(1))
        port = cluster.scheduler.http_server.port
    assert link.group(1) == f"http://127.0.0.1:{port}/status"
    assert status == 200 and "Dask" in body


# --- what the machine cannot hold, and schedulers that cannot be reached -------------------------

def test_more_threads_than_the_machine_can_run_are_refused_with_the_numbers():
    cores = os.cpu_count()
    assert check_local_resources(Config().replace(workers=cores, threads_per_worker=MAX_THREADS_PER_CORE)) \
        == (cores, MAX_THREADS_PER_CORE)
    with pytest.raises(ClusterError) as err:
        check_local_resources(Config().replace(workers=MAX_THREADS_PER_CORE * cores + 1, threads_per_worker=1))
    text = str(err.value)
    assert f"= {MAX_THREADS_PER_CORE * cores + 1} threads" in text and f"{cores} core(s)" in text
    assert f"at most {MAX_THREADS_PER_CORE * cores}" in text and "\n" not in text


@pytest.mark.parametrize("field", ["memory_limit", "budget"])
def test_memory_above_the_machine_is_refused(field):
    total = psutil.virtual_memory().total
    check_local_resources(Config().replace(**{field: str(total // 2)}))
    with pytest.raises(ClusterError, match=f"'{field}' = '{total + 1}'.*more than this machine's memory"):
        check_local_resources(Config().replace(**{field: str(total + 1)}))


def test_open_client_refuses_the_cluster_before_starting_it():
    before = len(psutil.Process().children(recursive=True))
    with pytest.raises(ClusterError, match="threads"):
        with open_client(Config().replace(workers=10000), say=lambda *_: None):
            pass
    assert len(psutil.Process().children(recursive=True)) == before


@pytest.mark.parametrize("address, words", [("tcp://127.0.0.1:1", "Timed out"), ("nonsense://x", "nonsense")])
def test_unreachable_or_malformed_scheduler_is_named_in_one_line(address, words):
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(ClusterError) as err:
            with open_client(Config().replace(scheduler=address), say=lambda *_: None):
                pass
    assert str(err.value).startswith(f"scheduler {address}: cannot connect") and words in str(err.value)
    assert "\n" not in str(err.value)
