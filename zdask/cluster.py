"""Where a run executes: an embedded LocalCluster by default, or an existing scheduler."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

from distributed import Client, LocalCluster, WorkerPlugin, as_completed

from zdask.config import Config


def default_local_layout(config: Config) -> tuple[int, int]:
    """(workers, threads per worker): one process using every core unless told otherwise.

    The kernels (OpenCV, numba) release the GIL, so threads in one process share frames and
    tiles without pickling them between processes.
    """
    cores = os.cpu_count() or 1
    workers = config.workers or 1
    threads = config.threads_per_worker or max(1, cores // workers)
    return workers, threads


class SingleThreadedKernels(WorkerPlugin):
    """Run BLAS, OpenMP and OpenCV single-threaded in a worker: its dask threads are the
    parallelism.  Otherwise each of them fans out into a pool sized to the machine, and the
    pools fight over the cores (measured on 2 cores: warps with sky surfaces 1.75× faster).
    Dask's nanny does the same for BLAS in the worker processes it spawns, but not in a worker
    that runs inside the client's process (zdask's default) and never for OpenCV.
    The previous settings come back when the plugin is removed or the worker closes."""

    name = "zdask-single-threaded-kernels"

    def setup(self, worker=None):
        import cv2  # noqa: PLC0415
        from threadpoolctl import threadpool_limits  # noqa: PLC0415

        self._cv2_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        self._limits = threadpool_limits(limits=1)

    def teardown(self, worker=None):
        import cv2  # noqa: PLC0415

        if hasattr(self, "_limits"):
            cv2.setNumThreads(self._cv2_threads)
            self._limits.restore_original_limits()
            del self._limits


@contextlib.contextmanager
def _kernel_threads(client: Client) -> Iterator[None]:
    client.register_plugin(SingleThreadedKernels())
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # the workers may be gone already
            client.unregister_worker_plugin(SingleThreadedKernels.name)


@contextlib.contextmanager
def open_client(config: Config, say=print) -> Iterator[Client]:
    """A dask Client on the configured scheduler or on a fresh LocalCluster, closed on exit."""
    if config.scheduler:
        client = Client(config.scheduler, timeout="30s")
        say(f"scheduler {config.scheduler}; dashboard: {client.dashboard_link}")
        try:
            with _kernel_threads(client):
                yield client
        finally:
            client.close()
        return
    workers, threads = default_local_layout(config)
    # One worker (the default) runs in this process: its threads already share one address
    # space, and a separate process would only add its own imports (~400 MB with the kernels)
    # and copies of every result sent back. Several workers get processes of their own.
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=threads, memory_limit=config.memory_limit,
        processes=workers > 1, dashboard_address=":0",
    )
    client = Client(cluster)
    say(f"local cluster: {workers} worker(s) × {threads} thread(s); dashboard: {client.dashboard_link}")
    try:
        with _kernel_threads(client):
            yield client
    finally:
        client.close()
        cluster.close()


def wait_with_progress(futures: Sequence, description: str, console=None) -> list:
    """Wait for futures, showing a progress bar; return their results in the given order.

    The first failure is raised (with the remote traceback) after cancelling the rest.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    futures = list(futures)
    if not futures:
        return []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False, disable=console is None) as progress:
        task = progress.add_task(description, total=len(futures))
        for future in as_completed(futures):
            if future.status == "error":
                for other in futures:
                    other.cancel()
                future.result()  # raises the worker's exception here
            progress.advance(task)
    return [f.result() for f in futures]
