"""Where a run executes: an embedded LocalCluster by default, an existing scheduler, or a
cluster started for the run on SLURM (:mod:`zdask.cluster_slurm`) or Kubernetes
(:mod:`zdask.cluster_kubernetes`)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Iterator, Sequence

import dask
from distributed import Client, LocalCluster, WorkerPlugin, as_completed
from distributed.scheduler import NoWorkerError

from zdask.config import Config
from zdask.clusterbase import ClusterError, SingleThreadedKernels, quietly_close, scheduler_dashboard_link

#: The embedded cluster runs at most this many task threads per core: beyond it more threads only
#: add memory, file handles and contention (``workers = 10000`` on a laptop fails with "Too many
#: open files" while starting processes, long before any work).
MAX_THREADS_PER_CORE = 4



def default_local_layout(config: Config) -> tuple[int, int]:
    """(workers, threads per worker): one process using every core unless told otherwise.

    The kernels (OpenCV, numba) release the GIL, so threads in one process share frames and
    tiles without pickling them between processes.
    """
    cores = os.cpu_count() or 1
    workers = config.workers or 1
    threads = config.threads_per_worker or max(1, cores // workers)
    return workers, threads


def check_local_resources(config: Config) -> tuple[int, int]:
    """The embedded cluster's (workers, threads per worker), refused with :class:`ClusterError`
    when this machine cannot hold it: more threads than ``MAX_THREADS_PER_CORE`` per core, or a
    worker memory limit or stacking budget above the machine's memory.

    Only the embedded cluster is checked here (``Config.validate`` stays free of machine facts):
    a remote scheduler's machines are others.
    """
    import psutil
    from dask.utils import format_bytes, parse_bytes

    workers, threads = default_local_layout(config)
    cores = os.cpu_count() or 1
    if workers * threads > MAX_THREADS_PER_CORE * cores:
        raise ClusterError(
            f"config fields 'workers' × 'threads_per_worker' = {workers} × {threads} = "
            f"{workers * threads} threads, but this machine has {cores} core(s); the embedded "
            f"cluster allows at most {MAX_THREADS_PER_CORE * cores} ({MAX_THREADS_PER_CORE} per core)"
        )
    total = psutil.virtual_memory().total
    for name in ("memory_limit", "budget"):
        value = getattr(config, name)
        if value != "auto" and parse_bytes(value) > total:
            raise ClusterError(
                f"config field '{name}' = {value!r} ({format_bytes(parse_bytes(value))}) is more "
                f"than this machine's memory ({format_bytes(total)})"
            )
    return workers, threads


class _NotReportedElsewhere(logging.Filter):
    """Drops a worker's log of a failed task and of tasks cancelled after it."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith("Compute Failed")
                    or (text.startswith("Async instruction") and "CancelledError" in record.getMessage()))


class QuietTaskFailures(WorkerPlugin):
    """Keep a failed task's exception and traceback out of the worker's log ("Compute Failed"),
    and the notices of the tasks cancelled after it. zdask raises that exception where the run
    waits for the task, and the command line ends the run with one line naming the file (the
    whole traceback with ``--debug``); the log would print it first, on the same console.
    Used on the embedded cluster only: a shared scheduler's workers keep their logging."""

    name = "zdask-quiet-task-failures"
    loggers = ("distributed.worker", "distributed.worker.state_machine")

    def setup(self, worker=None):
        self._filter = _NotReportedElsewhere()
        for name in self.loggers:
            logging.getLogger(name).addFilter(self._filter)

    def teardown(self, worker=None):
        if hasattr(self, "_filter"):
            for name in self.loggers:
                logging.getLogger(name).removeFilter(self._filter)
            del self._filter


@contextlib.contextmanager
def _worker_plugins(client: Client, *plugins: WorkerPlugin) -> Iterator[None]:
    """Plugins on the workers of a running scheduler, removed on exit (the workers live on)."""
    for plugin in plugins:
        client.register_plugin(plugin)
    try:
        yield
    finally:
        for plugin in plugins:
            with contextlib.suppress(Exception):  # the workers may be gone already
                client.unregister_worker_plugin(plugin.name)


def connect_scheduler(address: str) -> Client:
    """A Client on a running scheduler, or :class:`ClusterError` naming the address and the cause.

    The connection timeout is dask's ``distributed.comm.timeouts.connect`` (30 s by default).
    """
    try:
        return Client(address)
    except (OSError, ValueError, TypeError) as exc:  # unreachable, timed out, malformed address
        raise ClusterError(f"scheduler {address}: cannot connect ({exc})") from None


def dashboard_link(cluster: LocalCluster) -> str:
    """The link of the address the embedded scheduler's dashboard really listens on.

    dask builds its own link from the scheduler's address, which names another interface than
    the dashboard's when the scheduler runs in-process (``inproc://<machine address>``).
    """
    server = cluster.scheduler.http_server
    host, port = server.address, server.port
    listening_on_all = host in ("0.0.0.0", "::", "")
    shown = socket.gethostname() if listening_on_all else host
    shown = f"[{shown}]" if ":" in shown else shown
    link = f"http://{shown}:{port}/status"
    return f"{link} (listening on all interfaces, port {port})" if listening_on_all else link


class _NotTimedOutTasks(logging.Filter):
    """Drops the scheduler's log line for each task failed by its no-workers timeout (and its
    failed gather of results lost with the workers): the run ends with one line saying that
    the cluster had no worker."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not ("timed out waiting without any running workers" in text
                    or text.startswith("Couldn't gather keys"))


class _NotInterruptedSyncCancel(logging.Filter):
    """Drops the traceback that distributed's ``sync`` logs when Ctrl-C comes before the
    future it waits for exists: its cancel callback then fails with a NameError (distributed
    2026.8, ``utils.sync.<locals>.cancel``). Nothing was left running; the user sees the
    run's own "interrupted" line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "sync.<locals>.cancel" not in record.getMessage()


@contextlib.contextmanager
def open_client(config: Config, say=print) -> Iterator[Client]:
    """A dask Client on the configured scheduler or on a fresh LocalCluster, closed on exit.

    The LocalCluster listens on localhost only (scheduler, workers, their HTTP servers) and
    serves its dashboard on ``config.dashboard_address``; anything else on the network must
    be asked for. Raises :class:`ClusterError` when the scheduler cannot be reached or the
    machine cannot hold the requested cluster.
    """
    quiet, timed_out = _NotInterruptedSyncCancel(), _NotTimedOutTasks()
    logging.getLogger("tornado.application").addFilter(quiet)
    logging.getLogger("distributed.scheduler").addFilter(timed_out)
    try:
        # A scheduler zdask starts fails the tasks that wait with no worker for this long
        # (read when the scheduler starts); a running one keeps its own setting.
        with dask.config.set({"distributed.scheduler.no-workers-timeout":
                              f"{config.cluster.no_workers_timeout}s"}):
            with _open_client(config, say) as client:
                yield client
    except NoWorkerError as exc:
        setting = ("its distributed.scheduler.no-workers-timeout" if config.scheduler
                   else "cluster.no_workers_timeout")
        raise ClusterError(
            f"the cluster had no worker for {exc.timeout:g} s ({setting}) while work waited; "
            "the finished work is stored: run again to resume from it") from None
    finally:
        logging.getLogger("tornado.application").removeFilter(quiet)
        logging.getLogger("distributed.scheduler").removeFilter(timed_out)


@contextlib.contextmanager
def _open_client(config: Config, say) -> Iterator[Client]:
    if config.cluster.kind != "local":
        with _batch_client(config, say) as client:  # SingleThreadedKernels registered
            yield client
        return
    if config.scheduler:
        client = connect_scheduler(config.scheduler)
        try:
            say(f"scheduler {config.scheduler}; dashboard: {scheduler_dashboard_link(client)}")
            with _worker_plugins(client, SingleThreadedKernels()):
                yield client
        finally:
            quietly_close(client)
        return
    workers, threads = check_local_resources(config)
    # One worker (the default) runs in this process: its threads already share one address
    # space, and a separate process would only add its own imports (~400 MB with the kernels)
    # and copies of every result sent back. Several workers get processes of their own.
    processes = workers > 1
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=threads, memory_limit=config.memory_limit,
        processes=processes,
        # In-process workers talk over inproc:// (no socket), and an inproc address takes no
        # host; worker processes listen on TCP, on this host only.
        host=None if not processes else "127.0.0.1",
        dashboard_address=config.dashboard_address,
        # Without an address a worker's HTTP server (/metrics, /health) binds the host of its
        # own address: 127.0.0.1 for a worker process, every interface for an in-process one.
        worker_dashboard_address=None if processes else "127.0.0.1:0",
    )
    try:
        client = Client(cluster)
    except BaseException:
        quietly_close(cluster)
        raise
    say(f"local cluster: {workers} worker(s) × {threads} thread(s); dashboard: {dashboard_link(cluster)}")
    try:
        # Not unregistered on exit: closing the cluster tears the plugins down in its workers,
        # and asking busy workers first would delay an interrupted run by seconds.
        for plugin in (SingleThreadedKernels(), QuietTaskFailures()):
            client.register_plugin(plugin)
        yield client
    finally:
        quietly_close(client)
        quietly_close(cluster)


def _batch_client(config: Config, say):
    """The Client of a cluster started through a batch system (cluster.kind slurm or kubernetes)."""
    if config.cluster.kind == "slurm":
        from zdask.cluster_slurm import slurm_client

        return slurm_client(config, say)
    from zdask.cluster_kubernetes import kubernetes_client

    return kubernetes_client(config, say)


class ClientOnDemand:
    """The configured cluster's Client, opened at the first call and closed when this context
    exits: a caller (the command line) owns the cluster of a run, yet a run refused before it
    needs one (bad inputs, a held output folder, a canvas too large) starts none."""

    def __init__(self, config: Config, say=print):
        self._config, self._say = config, say
        self._client: Client | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "ClientOnDemand":
        return self

    def __call__(self) -> Client:
        if self._client is None:
            self._client = self._stack.enter_context(open_client(self._config, self._say))
        return self._client

    def __exit__(self, *exc) -> bool:
        # The run's exception goes through open_client, which tells a cluster left without
        # workers in one line.
        return self._stack.__exit__(*exc)


def wait_with_progress(futures: Sequence, description: str, console=None, on_result=None) -> list:
    """Wait for futures, showing a progress bar; return their results in the given order.
    ``on_result(index, result)``, if given, is called as each future finishes (e.g. to submit
    the work that needs it while the others still run).

    The first failure is raised as the worker raised it (with its remote traceback), after
    cancelling the futures still pending: the failed one must not be cancelled before its
    exception is fetched, or dask reports only "cancelled for reason: unknown".
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    futures = list(futures)
    if not futures:
        return []
    index_of = {f.key: k for k, f in enumerate(futures)}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False, disable=console is None) as progress:
        task = progress.add_task(description, total=len(futures))
        for future in as_completed(futures):
            if future.status == "error":
                error, traceback = future.exception(), future.traceback()
                for other in futures:
                    if other.key != future.key:
                        other.cancel()
                raise error.with_traceback(traceback)
            if on_result is not None:
                on_result(index_of[future.key], future.result())
            progress.advance(task)
    return [f.result() for f in futures]
