"""Faults at scale: a worker killed mid-run is replaced and the mosaic does not change (on the
embedded cluster with two workers, and in a SLURM job); a cluster that loses every worker for
longer than cluster.no_workers_timeout ends the run in one line, and a re-run resumes from the
store."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from astropy.io import fits

pytestmark = pytest.mark.slow

# The stage after which the faults strike: its bar is printed when it ends, and the sky
# surfaces and master tiles (most of the run's work) are still to come, so the workers are busy
# and hold results the run still needs (the alignment's).
STRIKE_AFTER = "align "


def _start_run(args: list[str]) -> tuple[subprocess.Popen, list[str]]:
    """`zdask run ARGS` in a child process, returned once the STRIKE_AFTER stage has ended."""
    child = subprocess.Popen([sys.executable, "-m", "zdask.cli", "run", *args], stderr=subprocess.PIPE,
                             text=True)
    seen = []
    for line in child.stderr:
        seen.append(line)
        if line.startswith(STRIKE_AFTER):
            return child, seen
    child.wait()
    raise AssertionError("the run ended before its calibrate stage did:\n" + "".join(seen))


def _finish(child: subprocess.Popen, seen: list[str]) -> tuple[int, str]:
    try:
        rest = child.stderr.read()
        return child.wait(timeout=300), "".join(seen) + rest
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _worker_processes(nanny_marker=None) -> dict[int, int]:
    """Dask worker processes (pid → pid of the nanny that spawned it); with ``nanny_marker``
    only those whose nanny's command line contains it."""
    found = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "spawn_main" not in " ".join(p.info["cmdline"] or ()):
                continue
            parent = p.parent()
            if parent is not None and (nanny_marker is None or nanny_marker in " ".join(parent.cmdline())):
                found[p.pid] = parent.pid
        except psutil.Error:
            continue
    return found


def _kill_one_and_see_it_replaced(workers: dict[int, int]) -> None:
    """SIGKILL the busiest worker (most CPU time over a short look) and wait for its nanny to
    start another."""
    processes = [psutil.Process(pid) for pid in workers]
    for p in processes:
        p.cpu_percent()
    time.sleep(0.3)
    victim = max(processes, key=lambda p: p.cpu_percent()).pid
    nanny = workers[victim]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        respawned = {pid for pid, parent in _worker_processes().items() if parent == nanny and pid != victim}
        if respawned:
            return
        time.sleep(0.2)
    raise AssertionError(f"the nanny {nanny} did not start a worker in place of {victim}")


def test_a_worker_killed_mid_run_on_the_embedded_cluster_is_replaced(small_survey, embedded_mosaic, tmp_path):
    survey, _ = small_survey
    out = tmp_path / "out"
    child, seen = _start_run([str(survey / "frames"), "--out", str(out), "--workers", "2",
                              "--threads-per-worker", "1"])
    try:
        mine = {p.pid for p in psutil.Process(child.pid).children(recursive=True)}
        workers = {pid: nanny for pid, nanny in _worker_processes().items() if pid in mine}
        assert len(workers) == 2 and not (out / "mosaic.fits").exists()
        _kill_one_and_see_it_replaced(workers)
    finally:
        status, output = _finish(child, seen)
    assert status == 0, output
    np.testing.assert_array_equal(fits.getdata(out / "mosaic.fits"), embedded_mosaic)


def test_a_worker_killed_mid_run_in_a_slurm_job_is_replaced(small_survey, embedded_mosaic, local_slurm,
                                                            slurm_toml, tmp_path):
    survey, _ = small_survey
    out = tmp_path / "out"
    child, seen = _start_run([str(survey / "frames"), "--out", str(out), "--config", str(slurm_toml(jobs=2))])
    try:
        jobs = re.search(r"SLURM jobs running: ([\d, ]+)", "".join(seen)).group(1).replace(",", " ").split()
        workers = _worker_processes(nanny_marker="distributed.cli.dask_worker")
        in_jobs = {pid for pid in workers if psutil.Process(pid).environ().get("SLURM_JOB_ID") in jobs}
        assert len(in_jobs) == 2 and not (out / "mosaic.fits").exists(), (workers, jobs)
        _kill_one_and_see_it_replaced({pid: workers[pid] for pid in in_jobs})
    finally:
        status, output = _finish(child, seen)
    assert status == 0, output
    np.testing.assert_array_equal(fits.getdata(out / "mosaic.fits"), embedded_mosaic)
    assert not set(jobs) & set(local_slurm.queued())


def test_a_cluster_without_workers_past_the_timeout_ends_the_run_and_a_rerun_resumes(
        small_survey, embedded_mosaic, local_slurm, slurm_toml, tmp_path):
    """Every SLURM job of the run is cancelled after calibration (as when the jobs reach their
    walltime): the run fails in one line after cluster.no_workers_timeout; a re-run (on the
    embedded cluster) calibrates nothing again and gives the same mosaic."""
    survey, _ = small_survey
    out = tmp_path / "out"
    child, seen = _start_run([str(survey / "frames"), "--out", str(out),
                              "--config", str(slurm_toml(jobs=2, no_workers_timeout=3.0))])
    try:
        jobs = re.search(r"SLURM jobs running: ([\d, ]+)", "".join(seen)).group(1).replace(",", " ").split()
        local_slurm.command("scancel", *jobs)
    finally:
        status, output = _finish(child, seen)
    assert status == 2, output
    assert output.rstrip().splitlines()[-1] == (
        "error: the cluster had no worker for 3 s (cluster.no_workers_timeout) while work waited; the "
        "finished work is stored: run again to resume from it"), output
    assert not (out / "mosaic.fits").exists()

    rerun = subprocess.run([sys.executable, "-m", "zdask.cli", "run", str(survey / "frames"), "--out", str(out),
                            "--workers", "1", "--threads-per-worker", "2"], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["frames_calibrated"] == 0  # all 64 came from the store
    np.testing.assert_array_equal(fits.getdata(out / "mosaic.fits"), embedded_mosaic)
