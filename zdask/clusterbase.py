"""What every cluster zdask runs on shares: its one-line error, the worker plugin its kernels
need, a quiet close, and the dashboard link a user can open. Kept apart from
:mod:`zdask.cluster` so that the SLURM and Kubernetes starters use them without importing it."""

from __future__ import annotations

import contextlib
import logging

from distributed import Client, WorkerPlugin

# Shorter than dask's defaults: an interrupted or failed run must give the terminal back
# promptly; work left in a worker is lost either way.
_CLOSE_TIMEOUT_S = 10


class ClusterError(Exception):
    """The cluster cannot be started or reached; the message is one line for the user (exit status 2)."""


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


def quietly_close(closable) -> None:
    """Close a Client or cluster without waiting long, and without the shutdown chatter that
    dask logs when it stops running tasks (an interrupted or failed run ends with its own
    one-line message)."""
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.suppress(Exception):
            closable.close(timeout=_CLOSE_TIMEOUT_S)
    finally:
        logger.setLevel(level)


def scheduler_dashboard_link(client: Client) -> str:
    """The link of the dashboard a running scheduler serves, on the host this client reached
    the scheduler at (its address as given: the name the user's machine resolves), or a note
    that it serves none (no HTTP server advertised).

    Not ``client.dashboard_link``: it cuts an IPv6 address at its first colon
    (``http://[:8787/status`` for ``tcp://[::1]:8786``) and raises KeyError for a scheduler that
    advertises no dashboard.
    """
    from distributed.comm import get_address_host
    from distributed.utils import format_dashboard_link

    port = client.scheduler_info().get("services", {}).get("dashboard")
    if port is None:
        return "none (the scheduler serves no dashboard)"
    host = get_address_host(client.scheduler.address)
    return format_dashboard_link(f"[{host}]" if ":" in host else host, port)
