"""The sections of the configuration that one mode or one kind of cluster uses: ``[sds]``,
``[grid]`` and ``[cluster]`` in TOML (fields by name, documented and validated as the rest of
:class:`zdask.config.Config`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from zdask.config_base import _doc, checked_types


@dataclass(frozen=True)
class SdsConfig:
    """Settings that only the ``sds`` mode uses (TOML table ``[sds]``, options ``--sds-*``)."""

    min_lot_size: int = _doc(
        "A lot of frames closes only once it holds at least this many frames; a last lot "
        "smaller than this joins the previous one (frames, >= 1).",
        default=5, stages=("sds",),
    )
    lot_coverage: float = _doc(
        "A lot closes (with at least min_lot_size frames) once its frames cover this fraction "
        "of the canvas cells that the whole survey covers (fraction in (0, 1]).",
        default=0.92, stages=("sds",),
    )
    target_lot_size: int = _doc(
        "A lot closes when it reaches this many frames, whatever it covers (frames, "
        ">= min_lot_size).",
        default=10, stages=("sds",),
    )
    min_coverage_keep: float = _doc(
        "Polish: mosaic pixels covered by less than this fraction of the maximum coverage "
        "become NaN with coverage 0 (fraction in [0, 1]).",
        default=0.4, stages=("sds",),
    )
    min_field_kept: float = _doc(
        "When the coverage cut keeps less than this fraction of the pixels the frames cover "
        "(lots that do not each cover the field, as in a survey of panels), SDS gives up and "
        "the run builds the classic mosaic, saying why (fraction in [0, 1]; 0 never falls back).",
        default=0.5,
    )

    def validate(self) -> "SdsConfig":
        bad = checked_types(self, "sds")
        if self.min_lot_size < 1:
            raise bad("min_lot_size", "must be an integer >= 1")
        if not 0 < self.lot_coverage <= 1:
            raise bad("lot_coverage", "must be in (0, 1]")
        if self.target_lot_size < self.min_lot_size:
            raise bad("target_lot_size", f"must be an integer >= min_lot_size ({self.min_lot_size})")
        if not 0 <= self.min_coverage_keep <= 1:
            raise bad("min_coverage_keep", "must be in [0, 1]")
        if not 0 <= self.min_field_kept <= 1:
            raise bad("min_field_kept", "must be in [0, 1]")
        return self


@dataclass(frozen=True)
class GridConfig:
    """Settings that only the ``grid`` mode uses (TOML table ``[grid]``, options ``--grid-*``)."""

    cell_fov_factor: float = _doc(
        "Side of a grid cell as a multiple of the median frame field of view (the larger side "
        "of a frame's footprint, in canvas pixels); a cell is at least 32 px (unitless, > 0).",
        default=4.0, stages=("grid",),
    )
    cell_overlap: float = _doc(
        "Overlap of neighbouring cells as a fraction of the cell side; cells are matched "
        "photometrically and blended on it (fraction in [0.05, 0.9]).",
        default=0.4, stages=("grid",),
    )
    max_cells: int = _doc(
        "Largest number of cells a grid plan may have (cells, >= 1); a larger plan is refused "
        "before any cell is stacked (zdask plan --mode grid counts them from the headers).",
        default=50_000, stages=("grid",),
    )
    overlap_min_coverage: float = _doc(
        "Pixels of two cells' overlap enter their photometric fit where each cell's coverage "
        "reaches this fraction of its peak coverage in that overlap (fraction in (0, 1]).",
        default=0.5, stages=("grid",),
    )
    overlap_erosion_px: int = _doc(
        "The overlap mask is eroded by this many pixels of the binned cells (match_bin) so "
        "that noisy coverage edges stay out of the fit (binned pixels, 0..8).",
        default=1, stages=("grid",),
    )

    def validate(self) -> "GridConfig":
        bad = checked_types(self, "grid")
        if not self.cell_fov_factor > 0:
            raise bad("cell_fov_factor", "must be a number > 0")
        if not 0.05 <= self.cell_overlap <= 0.9:
            raise bad("cell_overlap", "must be in [0.05, 0.9]")
        if self.max_cells < 1:
            raise bad("max_cells", "must be an integer >= 1")
        if not 0 < self.overlap_min_coverage <= 1:
            raise bad("overlap_min_coverage", "must be in (0, 1]")
        if not 0 <= self.overlap_erosion_px <= 8:
            raise bad("overlap_erosion_px", "must be an integer in 0..8")
        return self


CLUSTER_KINDS = ("local", "slurm", "kubernetes")


@dataclass(frozen=True)
class ClusterConfig:
    """Where a run starts its dask cluster (TOML table ``[cluster]``, option ``--cluster``): an
    embedded LocalCluster, SLURM jobs (dask-jobqueue) or worker pods (dask-kubernetes). Not
    used with ``scheduler`` (a running scheduler brings its own workers)."""

    kind: str = _doc(
        "The cluster a run starts: local (an embedded LocalCluster on this machine), slurm "
        "(dask workers in SLURM batch jobs, the scheduler in this process) or kubernetes (a "
        "DaskCluster of the dask-kubernetes operator) (one of " + ", ".join(CLUSTER_KINDS) + ").",
        default="local",
    )
    no_workers_timeout: float = _doc(
        "A run whose cluster has had no worker for this long while work waits fails with one "
        "line saying so; what is stored is kept and a re-run resumes from it (seconds, > 0). "
        "Applies to the clusters zdask starts; SLURM's first jobs are awaited without limit, "
        "but an adaptive cluster's new jobs must start within it. A running scheduler "
        "(scheduler) keeps its own distributed.scheduler.no-workers-timeout.",
        default=300.0,
    )
    jobs: int = _doc(
        "SLURM jobs (or Kubernetes worker pods) started for the run when adaptive_max is 0 "
        "(jobs, >= 1).",
        default=1,
    )
    adaptive_min: int = _doc(
        "Adaptive scaling, SLURM: the fewest jobs kept while the run lasts (jobs, >= 0).",
        default=0,
    )
    adaptive_max: int = _doc(
        "Adaptive scaling, SLURM: the most jobs submitted at once, more while tasks wait "
        "(jobs, >= adaptive_min; 0 = no adaptive scaling, start `jobs` jobs).",
        default=0,
    )
    cores: int = _doc(
        "Cores of each SLURM job (sbatch --cpus-per-task) or Kubernetes worker pod, all "
        "used as dask threads (cores, >= 1).",
        default=1,
    )
    memory: str = _doc(
        "Memory of each SLURM job (sbatch --mem) or Kubernetes worker pod, a byte size such "
        "as '4GiB' (bytes); the job's dask workers share it.",
        default="4GiB",
    )
    processes: int = _doc(
        "Dask worker processes in each SLURM job, sharing its cores and memory (processes, "
        "1..cores).",
        default=1,
    )
    queue: str | None = _doc(
        "SLURM partition the jobs are submitted to (sbatch -p; a name); None: the cluster's "
        "default partition.",
        default=None,
    )
    account: str | None = _doc(
        "SLURM account the jobs are charged to (sbatch -A; a name); None: the user's default.",
        default=None,
    )
    walltime: str = _doc(
        "Time limit of each SLURM job, [D-]HH:MM:SS (duration); a run outliving its jobs loses "
        "its workers (see no_workers_timeout), so size it to the run or use adaptive scaling.",
        default="01:00:00",
    )
    job_directives: tuple[str, ...] = _doc(
        "Further sbatch options written as '#SBATCH' lines in each job script, e.g. "
        "['--gres=gpu:1', '--constraint=ib'] (list of sbatch options).",
        default=(),
    )
    python: str | None = _doc(
        "The Python interpreter the SLURM jobs run their dask workers with; it must import "
        "zdask (path on the compute nodes); None: the interpreter running zdask now.",
        default=None,
    )
    log_directory: str | None = _doc(
        "Folder for the SLURM jobs' stdout/stderr files, zdask-worker-JOBID.out/.err "
        "(path, on a file system the nodes share); None: SLURM's default, slurm-JOBID.out in "
        "the folder zdask runs from.",
        default=None,
    )
    interface: str | None = _doc(
        "Network interface the scheduler and the SLURM workers listen on, e.g. 'ib0' or 'eth0' "
        "(interface name; 'lo' keeps a one-machine cluster on localhost); None: the address "
        "this machine's name resolves to.",
        default=None,
    )
    image: str = _doc(
        "Kubernetes: the container image of the scheduler and worker pods, built from "
        "deploy/kubernetes/Containerfile (image reference).",
        default="zdask:0.1.0",
    )
    namespace: str | None = _doc(
        "Kubernetes namespace the DaskCluster is created in (a name); None: the current "
        "context's.",
        default=None,
    )
    volume_claim: str = _doc(
        "Kubernetes: the PersistentVolumeClaim mounted in every pod, holding the frames and "
        "the output folder (work store included) (a claim name; ReadWriteMany).",
        default="zdask-data",
    )
    volume_path: str = _doc(
        "Kubernetes: where the volume is mounted in every pod; inputs and --out must lie under "
        "it (absolute path).",
        default="/data",
    )

    def validate(self) -> "ClusterConfig":
        from dask.utils import parse_bytes

        bad = checked_types(self, "cluster")
        if self.kind not in CLUSTER_KINDS:
            raise bad("kind", "allowed values are " + ", ".join(CLUSTER_KINDS))
        if not self.no_workers_timeout > 0:
            raise bad("no_workers_timeout", "must be a number of seconds > 0")
        for name in ("jobs", "cores", "processes"):
            if getattr(self, name) < 1:
                raise bad(name, "must be an integer >= 1")
        if self.processes > self.cores:
            raise bad("processes", f"must be at most cluster.cores ({self.cores})")
        if self.adaptive_min < 0:
            raise bad("adaptive_min", "must be an integer >= 0")
        if self.adaptive_max and self.adaptive_max < max(1, self.adaptive_min):
            raise bad("adaptive_max", f"must be 0 (no adaptive scaling) or an integer >= "
                                      f"max(1, cluster.adaptive_min) ({max(1, self.adaptive_min)})")
        try:
            if parse_bytes(self.memory) < 1 << 20:
                raise ValueError
        except (ValueError, TypeError):
            raise bad("memory", "must be a byte size of at least 1MiB, e.g. '4GiB'") from None
        if not _WALLTIME.fullmatch(self.walltime):
            raise bad("walltime", "must be [D-]HH:MM:SS, e.g. '01:00:00' or '2-00:00:00'")
        if any(not d.startswith("-") or "\n" in d for d in self.job_directives):
            raise bad("job_directives", "must be sbatch options, each starting with '-', e.g. "
                                        "['--gres=gpu:1']")
        if not self.volume_path.startswith("/"):
            raise bad("volume_path", "must be an absolute path, e.g. '/data'")
        return self


_WALLTIME = re.compile(r"(\d+-)?\d{1,2}:\d{2}:\d{2}")
