"""A run's dask workers as SLURM batch jobs (dask-jobqueue), the scheduler in this process.

The jobs are the run's: submitted when the run first needs a cluster and cancelled when it ends,
whether it succeeds, fails or is interrupted (Ctrl-C), so that no job of it is left in
``squeue``. The job script is checked by ``sbatch --test-only`` before anything is submitted,
so a wrong partition or account ends the run with SLURM's own one-line reason.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from typing import Iterator

from distributed import Client

from zdask.config import Config
from zdask.clusterbase import ClusterError, SingleThreadedKernels, quietly_close, scheduler_dashboard_link

#: The name of every job (squeue, sacct): what a cluster user looks for.
JOB_NAME = "zdask-worker"

# How often the wait for the first worker looks at the jobs in the queue (seconds).
_POLL_S = 2.0
# An sbatch/squeue/scancel that does not answer in this long is a controller that is down.
_COMMAND_TIMEOUT_S = 60
# How long the end of a run waits for its cancelled jobs to leave the queue (seconds).
_CANCEL_WAIT_S = 30


def slurm_cluster_options(config: Config) -> dict:
    """The keyword arguments of ``dask_jobqueue.SLURMCluster`` for ``config`` (a pure function).

    Each job runs ``config.cluster.processes`` dask workers (with a nanny: a killed worker is
    restarted in its job) sharing the job's cores and memory, with the Python named by
    ``cluster.python`` (this interpreter by default, so a virtual environment on a shared file
    system works as it is).
    """
    c = config.cluster
    return dict(
        cores=c.cores, processes=c.processes, memory=c.memory, queue=c.queue, account=c.account,
        walltime=c.walltime, job_extra_directives=list(c.job_directives),
        python=c.python or sys.executable, log_directory=c.log_directory, interface=c.interface,
        job_name=JOB_NAME,
        scheduler_options={"dashboard_address": config.dashboard_address},
    )


def _slurm_command(args: list[str]) -> subprocess.CompletedProcess:
    """A SLURM client command, or :class:`ClusterError` when it is missing or hangs."""

    if shutil.which(args[0]) is None:
        raise ClusterError(f"cluster.kind = 'slurm': {args[0]} not found on PATH (run zdask on a "
                           "machine that submits SLURM jobs)")
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"cluster.kind = 'slurm': {' '.join(args[:2])} did not answer in "
                           f"{_COMMAND_TIMEOUT_S} s (is slurmctld up?)") from None


def check_job_script(script: str) -> None:
    """Ask SLURM whether it would accept the job script (``sbatch --test-only``), submitting
    nothing; raise :class:`ClusterError` with SLURM's reason otherwise."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="zdask-job-") as fh:
        fh.write(script)
        fh.flush()
        done = _slurm_command(["sbatch", "--test-only", fh.name])
    if done.returncode != 0:
        reason = "; ".join(line.removeprefix("sbatch: error: ") for line in done.stderr.splitlines()
                           if line.strip()) or f"exit status {done.returncode}"
        raise ClusterError(f"cluster.kind = 'slurm': sbatch refuses the job: {reason}")


def _queued(job_ids: set[str]) -> set[str]:
    """Those of ``job_ids`` still pending or running."""
    if not job_ids:
        return set()
    done = _slurm_command(["squeue", "--noheader", "--format=%i", "--jobs=" + ",".join(sorted(job_ids)),
                           "--states=PENDING,CONFIGURING,RUNNING,COMPLETING,SUSPENDED"])
    return set(done.stdout.split()) & job_ids if done.returncode == 0 else set()


def cancel_jobs(job_ids: set[str]) -> None:
    """scancel the jobs (ones that ended already are ignored) and wait, up to
    ``_CANCEL_WAIT_S``, until none of them is pending, running or completing: when the run's
    command returns, its jobs are gone from the queue."""
    if not (job_ids and shutil.which("scancel")):
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(["scancel", *sorted(job_ids)], capture_output=True, timeout=_COMMAND_TIMEOUT_S)
    deadline = time.monotonic() + _CANCEL_WAIT_S
    with contextlib.suppress(Exception):  # the run ends either way; squeue said what it could
        while _queued(job_ids) and time.monotonic() < deadline:
            time.sleep(_POLL_S / 4)


@contextlib.contextmanager
def slurm_client(config: Config, say=print) -> Iterator[Client]:
    """A Client on a SLURMCluster started for this run; its jobs are cancelled on exit.

    Returns once the first worker has joined: pending jobs are waited for without limit (a busy
    queue), but jobs that all end before any worker joins (a wrong ``cluster.python``, a node
    that cannot reach the scheduler) end the run with :class:`ClusterError` naming them.
    """

    SLURMCluster = _slurm_cluster_class()

    c = config.cluster
    _slurm_command(["sbatch", "--version"])  # a missing sbatch in one line, before any thread starts
    cluster = SLURMCluster(**slurm_cluster_options(config))
    submitted: set[str] = set()
    try:
        check_job_script(cluster.job_script())
        if c.adaptive_max:
            cluster.adapt(minimum_jobs=c.adaptive_min, maximum_jobs=c.adaptive_max)
            shown = f"adaptive, {c.adaptive_min}..{c.adaptive_max} job(s)"
        else:
            cluster.scale(jobs=c.jobs)
            shown = f"{c.jobs} job(s)"
        client = Client(cluster)
        try:
            # Before any worker joins, so that no broadcast to workers is in flight when the
            # run is interrupted and its jobs cancelled; each worker gets it as it joins. The
            # run's own workers, closed with it: nothing to unregister.
            client.register_plugin(SingleThreadedKernels())
            say(f"SLURM cluster: {shown} of {c.cores} core(s), {c.memory}, {c.walltime} "
                f"(job name {JOB_NAME}); dashboard: {scheduler_dashboard_link(client)}")
            _wait_for_first_worker(cluster, client, submitted, say)
            yield client
        finally:
            submitted |= _job_ids(cluster)
            quietly_close(client)
    finally:
        submitted |= _job_ids(cluster)
        quietly_close(cluster)  # cancels the jobs it knows
        cancel_jobs(submitted)  # and any it lost track of, should its close have timed out


def _slurm_cluster_class():
    """``dask_jobqueue.SLURMCluster``, imported without the SIGINT handler that dask-jobqueue
    installs when imported (0.9, ``dask_jobqueue/runner.py``: Ctrl-C becomes ``sys.exit()``,
    and an interrupted run would end with status 0 as if it had finished)."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:

        raise ClusterError("cluster.kind = 'slurm' needs dask-jobqueue: pip install 'zdask[slurm]'") from None
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)
    return SLURMCluster


def _job_ids(cluster) -> set[str]:
    return {job.job_id for job in list(cluster.workers.values()) if getattr(job, "job_id", None)}


def _wait_for_first_worker(cluster, client: Client, submitted: set[str], say) -> None:

    shown_ids: set[str] = set()
    while not client.scheduler_info(n_workers=-1)["workers"]:
        ids = _job_ids(cluster)
        submitted |= ids
        if ids and ids != shown_ids:
            say(f"SLURM jobs {', '.join(sorted(ids, key=int))} submitted; waiting for the first worker")
            shown_ids = ids
        if ids and not _queued(ids) and not client.scheduler_info(n_workers=-1)["workers"]:
            raise ClusterError(f"SLURM jobs {', '.join(sorted(ids, key=int))} ended before a dask "
                               f"worker joined the scheduler; see their output in {job_logs(cluster)}")
        time.sleep(_POLL_S)
    say(f"SLURM jobs running: {', '.join(sorted(_job_ids(cluster), key=int))}")


def job_logs(cluster) -> str:
    """Where the jobs' output files are, as the job script says."""
    for line in cluster.job_script().splitlines():
        if line.startswith("#SBATCH -e "):
            return line.removeprefix("#SBATCH -e ").replace("%J", "JOBID")
    return "slurm-JOBID.out in the folder zdask runs from"
