"""Where a run executes: an embedded LocalCluster by default, or an existing scheduler."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

from distributed import Client, LocalCluster, as_completed

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


@contextlib.contextmanager
def open_client(config: Config, say=print) -> Iterator[Client]:
    """A dask Client on the configured scheduler or on a fresh LocalCluster, closed on exit."""
    if config.scheduler:
        client = Client(config.scheduler, timeout="30s")
        say(f"scheduler {config.scheduler}; dashboard: {client.dashboard_link}")
        try:
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
