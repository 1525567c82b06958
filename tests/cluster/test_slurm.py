"""`zdask run --cluster slurm` on a real one-node SLURM cluster (tests/cluster/conftest.py): the
workers are SLURM jobs, the mosaic is the embedded cluster's bit for bit, and the run's jobs are
cancelled when it ends, whether it succeeds, fails or is interrupted."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from typer.testing import CliRunner

from zdask.cli import app
from zdask.cluster_slurm import JOB_NAME, slurm_cluster_options
from zdask.config import Config, load_config
from zdask.graph.runner import run
from zdask.io.errors import FrameReadError

pytestmark = pytest.mark.slow


def _job_ids(text: str) -> list[str]:
    found = re.search(r"SLURM jobs running: ([\d, ]+)", text)
    assert found, text
    return found.group(1).replace(",", " ").split()


def test_slurm_options_come_from_the_cluster_section():
    config = Config().replace(**{"cluster.kind": "slurm", "cluster.cores": 8, "cluster.processes": 2,
                                 "cluster.memory": "32GiB", "cluster.queue": "gpu", "cluster.account": "astro",
                                 "cluster.walltime": "2-00:00:00", "cluster.job_directives": ["--gres=gpu:1"],
                                 "cluster.python": "/opt/zdask/bin/python", "cluster.log_directory": "/scratch/logs"})
    options = slurm_cluster_options(config)
    assert {k: options[k] for k in ("cores", "processes", "memory", "queue", "account", "walltime",
                                    "job_extra_directives", "python", "log_directory", "job_name")} == {
        "cores": 8, "processes": 2, "memory": "32GiB", "queue": "gpu", "account": "astro",
        "walltime": "2-00:00:00", "job_extra_directives": ["--gres=gpu:1"], "python": "/opt/zdask/bin/python",
        "log_directory": "/scratch/logs", "job_name": JOB_NAME}
    assert slurm_cluster_options(Config().replace(**{"cluster.kind": "slurm"}))["python"] == sys.executable


def test_a_run_on_slurm_makes_the_embedded_mosaic_in_slurm_jobs_and_cancels_them(
        small_survey, embedded_mosaic, local_slurm, slurm_toml, tmp_path):
    survey, _ = small_survey
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(survey / "frames"), "--out", str(out),
                                      "--config", str(slurm_toml(jobs=2))])
    assert result.exit_code == 0, result.output
    jobs = _job_ids(result.output)
    assert len(jobs) == 2
    # The jobs ran on the node as zdask-worker and were cancelled by the run's end: none is left.
    assert not set(jobs) & set(local_slurm.queued())
    records = local_slurm.accounting(jobs)
    assert {j: (r["JobName"], r["Partition"], r["NodeList"], r["State"]) for j, r in records.items()} == {
        j: (JOB_NAME, "zdask", local_slurm.node, "CANCELLED") for j in jobs}
    for job in jobs:  # each job's dask worker joined this run's scheduler, on localhost
        log = (local_slurm.root / "jobs" / f"{JOB_NAME}-{job}.err").read_text()
        assert re.search(r"Registered to:\s+tcp://127\.0\.0\.1:\d+", log), log
    np.testing.assert_array_equal(fits.getdata(out / "mosaic.fits"), embedded_mosaic)


def test_a_failed_run_on_slurm_cancels_its_jobs(small_survey, local_slurm, slurm_toml, tmp_path):
    """A frame is replaced by a folder once the plan is announced: the hot-pixel task that reads
    it fails in a SLURM job, the run raises that error, and its jobs are cancelled."""
    survey, _ = small_survey
    frames = tmp_path / "frames"
    shutil.copytree(survey / "frames", frames)
    victim = sorted(frames.iterdir())[5]
    said = []

    def say(text: str) -> None:
        said.append(text)
        if "master-tile group(s)" in text:
            victim.unlink()
            victim.mkdir()

    with pytest.raises(FrameReadError) as err:
        run([str(frames)], str(tmp_path / "out"), load_config(slurm_toml()), say=say)
    assert err.value.path == str(victim)
    jobs = _job_ids("\n".join(said))
    assert not set(jobs) & set(local_slurm.queued())
    assert {r["State"] for r in local_slurm.accounting(jobs).values()} == {"CANCELLED"}


def test_ctrl_c_cancels_the_slurm_jobs(small_survey, local_slurm, slurm_toml, tmp_path):
    survey, _ = small_survey
    cmd = [sys.executable, "-m", "zdask.cli", "run", str(survey / "frames"), "--out", str(tmp_path / "out"),
           "--config", str(slurm_toml())]
    # SIGINT at its default in the child (see tests/test_cli.py)
    child = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen = []
        for line in child.stderr:  # interrupted while its workers calibrate frames
            seen.append(line)
            if line.startswith("hot pixels"):
                break
        jobs = _job_ids("".join(seen))
        assert {local_slurm.queued().get(j) for j in jobs} == {"R"}  # running now
        child.send_signal(signal.SIGINT)
        rest = child.stderr.read()
        assert child.wait(timeout=60) == 130, rest
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert rest.rstrip().splitlines()[-1] == "interrupted" and "Traceback" not in rest, rest
    assert not set(jobs) & set(local_slurm.queued())


def test_a_partition_slurm_refuses_is_named_before_any_job(small_survey, local_slurm, slurm_toml, tmp_path):
    survey, _ = small_survey
    before = local_slurm.queued()
    result = CliRunner().invoke(app, ["run", str(survey / "frames"), "--out", str(tmp_path / "out"),
                                      "--config", str(slurm_toml(queue="nowhere"))])
    assert result.exit_code == 2, result.output
    last = result.output.rstrip().splitlines()[-1]
    assert last.startswith("error: cluster.kind = 'slurm': sbatch refuses the job: invalid partition "
                           "specified: nowhere;"), result.output
    assert local_slurm.queued() == before
