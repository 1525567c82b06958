"""A real single-node SLURM cluster (munged, slurmctld, slurmd from Debian's slurm-wlm and munge)
started once per test session on this machine and stopped at its end, and the embedded
cluster's mosaic of the small survey that runs elsewhere must reproduce bit for bit."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from astropy.io import fits
from typer.testing import CliRunner

from zdask.cli import app

SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sacct", "sinfo")
PARTITION = "zdask"
# Each worker job: one core and this much memory (RealMemory is set from the machine).
JOB_MEMORY = "2GiB"
#: The options every run of these tests uses on the embedded cluster (the reference mosaic).
EMBEDDED = ["--workers", "1", "--threads-per-worker", "2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_conf(root: Path, node: str, munge_socket: Path) -> str:
    memory_mb = psutil.virtual_memory().total // 2**20 - 1024
    return f"""\
ClusterName=zdasktest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
# No slurmdbd: `sacct --completion` reads the job completion records of jobcomp/filetxt.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
NodeName={node} NodeAddr=127.0.0.1 CPUs=2 RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


class LocalSlurm:
    """The daemons of a one-node SLURM cluster under ``root``; ``env`` points SLURM's client
    commands at its slurm.conf."""

    def __init__(self, root: Path):
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemons: list[subprocess.Popen] = []

    def start(self) -> None:
        for sub in ("munge", "state", "spool", "log", "jobs"):
            (self.root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        key, munge_socket = self.root / "munge" / "munge.key", self.root / "munge" / "munge.socket"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        self.conf.write_text(_slurm_conf(self.root, self.node, munge_socket))
        logs = open(self.root / "log" / "daemons.log", "ab")
        spawn = dict(stdout=logs, stderr=subprocess.STDOUT, start_new_session=True, env=self.env)
        self.daemons.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
             f"--pid-file={self.root}/munge/munged.pid", f"--log-file={self.root}/log/munged.log",
             f"--seed-file={self.root}/munge/seed"], **spawn))
        _wait(lambda: munge_socket.exists(), 30, "munged to open its socket", self)
        # -i: ignore state left by another cluster; -D: stay in the foreground (our child)
        self.daemons.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(self.conf)], **spawn))
        self.daemons.append(subprocess.Popen(["slurmd", "-D", "-f", str(self.conf)], **spawn))
        _wait(lambda: self.command("sinfo", "--noheader", "--format=%t").stdout.split() == ["idle"],
              60, "the node to be idle in sinfo", self)

    def command(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)

    def queued(self) -> dict[str, str]:
        """The jobs in squeue that have not ended: id → state (squeue's short code)."""
        out = self.command("squeue", "--noheader", "--format=%i %t").stdout
        return dict(line.split() for line in out.splitlines() if line.split()[1] not in ("CA", "CD", "F"))

    def accounting(self, job_ids) -> dict[str, dict[str, str]]:
        """sacct's job completion records of the jobs: id → {JobName, State, NodeList, ...}."""
        fields = "JobID,JobName,Partition,NodeList,State,Start,End"
        out = self.command("sacct", "--completion", "--noheader", "--parsable2",
                           f"--format={fields}", "--jobs=" + ",".join(job_ids)).stdout
        rows = [dict(zip(fields.split(","), line.split("|"))) for line in out.splitlines()]
        return {row["JobID"]: row for row in rows}

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.command("scancel", f"--partition={PARTITION}")  # a failed test's leftovers
        for daemon in reversed(self.daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted((self.root / "log").glob("*.log")))


def _wait(condition, timeout_s: float, what: str, slurm: LocalSlurm) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}\n{slurm.logs()}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory):
    """A running one-node SLURM cluster (partition ``zdask``, 2 CPUs), SLURM_CONF set for this
    process and its children; skipped where slurm-wlm and munge are not installed."""
    missing = [p for p in SLURM_PROGRAMS if shutil.which(p) is None]
    if missing:
        pytest.skip(f"SLURM tests need Debian's slurm-wlm and munge ({', '.join(missing)} not on "
                    "PATH; .ci/run installs them with apt-get as root)")
    if os.geteuid() != 0:
        pytest.skip("SLURM tests start slurmd and slurmctld with SlurmUser=root: run them as root")
    slurm = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    before = os.environ.get("SLURM_CONF")
    try:
        slurm.start()
        os.environ["SLURM_CONF"] = str(slurm.conf)
        yield slurm
    finally:
        slurm.stop()
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before


@pytest.fixture
def slurm_toml(local_slurm, tmp_path):
    """Writes a config file whose [cluster] section runs on the local SLURM cluster (jobs of
    one core; keyword arguments set other cluster fields) and returns its path."""

    def write(**fields) -> Path:
        values = {"kind": "slurm", "jobs": 1, "cores": 1, "memory": JOB_MEMORY, "walltime": "00:20:00",
                  "queue": PARTITION, "interface": "lo", "log_directory": str(local_slurm.root / "jobs"),
                  **fields}
        path = tmp_path / "slurm.toml"
        path.write_text("[cluster]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items()))
        return path

    return write


def _toml(value) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


@pytest.fixture(scope="session")
def embedded_mosaic(small_survey, tmp_path_factory):
    """The small survey's mosaic made on the embedded cluster (1 worker × 2 threads)."""
    survey, _ = small_survey
    out = tmp_path_factory.mktemp("embedded") / "out"
    result = CliRunner().invoke(app, ["run", str(survey / "frames"), "--out", str(out), *EMBEDDED])
    assert result.exit_code == 0, result.output
    return fits.getdata(out / "mosaic.fits")
