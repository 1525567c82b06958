"""One typed configuration for a zdask run.

Every field has a default, a unit and a doc string; ``Config.validate`` checks each field and the
cross-field rules and names the bad field with the allowed values. A TOML file (``--config``) sets
fields by their names (top level, or grouped under any table name, which is ignored); command-line
options override the file. There are no hidden defaults elsewhere: stages read this object only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any

REJECT_METHODS = ("kappa_sigma", "winsorized", "linear_fit_clip", "median", "mean", "sum")
NORMALIZATIONS = ("none", "additive", "multiplicative", "linear_fit")
WEIGHTINGS = ("none", "exposure", "noise_variance")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the allowed values."""


#: The stages whose stored outputs depend on settings. Each field names, in ``stages``, the
#: stages whose outputs it changes; a stage's fingerprint takes exactly those fields
#: (:meth:`Config.stage_digest`), so a new field cannot be left out of a stage's list.
STAGES = ("hotpixels", "align", "stack", "tiles", "mosaic", "import", "sds", "grid")


def _doc(text: str, stages: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """A field with its doc string and the stages (:data:`STAGES`) whose outputs it changes."""
    return field(metadata={"doc": text, "stages": stages}, **kwargs)


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
        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"config field 'sds.{name}' = {getattr(self, name)!r}: {allowed}")

        for f, expected in typing.get_type_hints(SdsConfig).items():
            if not _has_type(getattr(self, f), expected):
                raise bad(f, f"must be {_type_words(expected)}")
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
        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"config field 'grid.{name}' = {getattr(self, name)!r}: {allowed}")

        for f, expected in typing.get_type_hints(GridConfig).items():
            if not _has_type(getattr(self, f), expected):
                raise bad(f, f"must be {_type_words(expected)}")
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

        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"config field 'cluster.{name}' = {getattr(self, name)!r}: {allowed}")

        for f, expected in typing.get_type_hints(ClusterConfig).items():
            if not _has_type(getattr(self, f), expected):
                raise bad(f, f"must be {_type_words(expected)}")
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


#: The sections of the configuration: name → the dataclass of its fields.
SECTIONS = {"sds": SdsConfig, "grid": GridConfig, "cluster": ClusterConfig}


@dataclass(frozen=True)
class Config:
    """Settings of a zdask run (planning, calibration, stacking, mosaic, cluster); the fields
    that only one mode uses are in that mode's section (``sds``, ``grid``)."""

    # --- mode -----------------------------------------------------------------------------------
    mode: str = _doc(
        "How the mosaic is built: classic (master tiles by sky position, then their coadd), sds "
        "(lots of frames each stacked onto the canvas, then gain-matched and stacked again; for "
        "many frames of one field), grid (a regular raster of overlapping cells, each stacked "
        "from the frames that touch it, matched and blended; a stack_plan.csv in an input "
        "folder selects it) or tiles (assemble master tiles that already exist: the input is one folder of tile FITS "
        "files). The modes are zdask.graph.modes.MODES.",
        default="classic",
    )

    # --- planning -------------------------------------------------------------------------------
    link_fov_fraction: float = _doc(
        "Frames whose centres lie within this fraction of the frames' short field-of-view side "
        "(unitless, > 0) are linked into one master-tile group.",
        default=0.3,
    )
    max_group_size: int = _doc(
        "Largest number of frames in one master-tile group (frames, >= 1); larger groups are "
        "split in time order.",
        default=64,
    )

    # --- calibration ----------------------------------------------------------------------------
    hot_pixel_sigma: float = _doc(
        "A raw pixel is a hot-pixel candidate in a frame when it exceeds the median of its "
        "same-colour neighbours by this many noise sigmas (sigma, > 0).",
        default=6.0,
        stages=("hotpixels",),
    )
    hot_pixel_min_fraction: float = _doc(
        "A sensor pixel is hot when it is a candidate in at least this fraction of the frames "
        "taken with that sensor (fraction in (0, 1]). Stars move between frames, hot pixels "
        "do not.",
        default=0.5,
        stages=("hotpixels",),
    )
    hot_pixel_frames: int = _doc(
        "Hot pixels of a sensor are found from at most this many of its frames, spread evenly "
        "over them in time order (frames, >= 3; 0 = all). A hot pixel sits in every frame, so a "
        "few dozen find it as well as hundreds do, in a time that does not grow with the run.",
        default=32,
        stages=("hotpixels",),
    )

    max_saturated_fraction: float = _doc(
        "A frame with more than this fraction of its pixels at or above the saturation level of "
        "its data type (65535 for unsigned 16-bit; none for float data) is excluded before "
        "alignment, with that reason (fraction in [0, 1]).",
        default=0.25,
    )
    min_frame_stars: int = _doc(
        "A frame in which fewer stars are detected (green channel) is excluded before "
        "alignment, with that reason: clouds, a closed cap, a lost focus (stars, >= 0; 0 "
        "disables). Frames with no finite pixel or a constant image are always excluded.",
        default=5,
    )

    # --- stacking -------------------------------------------------------------------------------
    reject: str = _doc(
        "Combination along the frame axis: one of " + ", ".join(REJECT_METHODS) + ".",
        default="kappa_sigma",
        stages=("stack", "tiles"),

    )
    kappa: tuple[float, float] = _doc(
        "Rejection thresholds (low, high) in Gaussian sigmas, the same default in every kernel "
        "(sigma, > 0). kappa_sigma: a sample is rejected when, judged against the mean and "
        "standard deviation of the pixel's other samples, it is as unlikely as a kappa-sigma "
        "deviation of a Gaussian (Student's t with N-2 degrees of freedom), so clean noise "
        "loses 1 - Phi(kappa) per side (0.135 % at 3) at every N >= 4, and at kappa = 3 a trail "
        "of 50 / 20 / 10 sigma is rejected in >= 99 % of pixels at N = 4 / 5 / 8; a pixel of "
        "exactly 3 samples keeps their median (two samples cannot judge the third: any single "
        "outlier goes, for 16 % more noise there). "
        "winsorized: kappa times the winsorized (Huber) sigma about the Huber mean. "
        "linear_fit_clip: kappa times the robust sigma 1.4826*MAD of the samples, measured from "
        "the line fitted to the sorted samples within that band of the median.",
        default=(3.0, 3.0),
        stages=("stack", "tiles"),

    )
    iterations: int = _doc(
        "Rejection passes for kappa_sigma (passes, >= 1); each further pass repeats the test on "
        "the survivors (1: the Gaussian rejection rate of the kappa doc).",
        default=1,
        stages=("stack", "tiles"),

    )
    normalization: str = _doc(
        "Per-frame normalisation before rejection: one of " + ", ".join(NORMALIZATIONS) + ".",
        default="additive",
        stages=("stack", "tiles"),

    )
    weights: str = _doc(
        "Per-frame weights of the combination: one of " + ", ".join(WEIGHTINGS) + ".",
        default="noise_variance",
        stages=("stack", "tiles"),

    )
    budget: str = _doc(
        "Memory budget of one stacking task, a dask byte size such as '256MiB' (bytes); blocks "
        "holding the whole frame axis are sized to fit it, and the bands of rows the final "
        "write streams the canvas in to a quarter of it.",
        default="256MiB",
        stages=("stack",),
    )
    warp_grid_step: int = _doc(
        "Spacing of the exact WCS evaluations from which warp pixel maps are interpolated "
        "(pixels, 4..256); the interpolation error of a TAN-to-TAN map at 32 px is far below "
        "0.01 px.",
        default=32,
        stages=("stack", "tiles", "mosaic"),

    )

    # --- alignment ------------------------------------------------------------------------------
    align: bool = _doc(
        "Register each frame to its group's reference frame by star matching (astroalign, "
        "gated by the WCS prediction; phase correlation as fallback) (bool).",
        default=True,
    )
    align_threshold_px: float = _doc(
        "Keep a frame's header WCS when its median residual against the matched stars is at "
        "most this; refine it otherwise (pixels, > 0).",
        default=0.15,
        stages=("align",),
    )

    # --- clean tiles ----------------------------------------------------------------------------
    altaz_cleanup: bool = _doc(
        "Mask the low-coverage corners that field rotation leaves in ALT_AZ master tiles "
        "(sds mode: mega-tiles) (bool); applied per tile (lot), only to ALT_AZ groups (lots).",
        default=False,
    )
    altaz_min_abs: float = _doc(
        "Alt-az mask: keep pixels covered by at least this many frames (frames, >= 1; bounded "
        "by the frames the tile used).",
        default=3.0,
        stages=("tiles", "sds"),
    )
    altaz_min_frac: float = _doc(
        "Alt-az mask: keep pixels covered by at least this fraction of the tile's maximum "
        "coverage (fraction in [0, 1]).",
        default=0.5,
        stages=("tiles", "sds"),
    )
    altaz_opening_px: int = _doc(
        "Alt-az mask: radius of the morphological opening that removes thin slivers "
        "(pixels, >= 0).",
        default=3,
        stages=("tiles", "sds"),
    )
    altaz_ramp_px: int = _doc(
        "Alt-az mask: width of the soft alpha ramp inside the mask edge (pixels, >= 0).",
        default=8,
        stages=("tiles", "sds"),
    )
    rgb_equalize: bool = _doc(
        "Equalise the medians of the R, G, B channels of each master tile after stacking "
        "(bool); skipped for mono.",
        default=True,
        stages=("tiles",),
    )
    rgb_gain_range: tuple[float, float] = _doc(
        "Smallest and largest per-channel gain the RGB equalisation may apply (unitless, "
        "0 < low <= 1 <= high).",
        default=(0.95, 1.05),
        stages=("tiles",),
    )
    sky_surface_order: int = _doc(
        "Order of the sky surfaces matched between overlapping frames (inside a tile) and "
        "tiles (in the mosaic): -1 off, 0 offset, 1 plane, 2 quadratic. Each is fitted against "
        "the others covering the same sky, so emission fixed on the sky is kept. With 1 or 2, "
        "the curvature every tile's own sky shows (the median over tiles, sources masked: a "
        "horizon glow curves every frame alike) is taken out of every tile before the tiles "
        "are matched, instead of becoming a bowl as wide as the mosaic; the plane all tiles "
        "share is fitted on the mosaic with sources masked. Not used when background_mesh > 0.",
        default=1,
        stages=("tiles", "mosaic"),

    )
    background_mesh: int = _doc(
        "Sky model. 0 (default) keeps extended emission: the matched surfaces of "
        "sky_surface_order. N > 0 gives SWarp-like flatness instead: each frame's own "
        "background, SExtractor/SWarp-style (the frame cut into cells of N raw-frame pixels, a "
        "clipped median/mode per cell, a 3 x 3 median filter of the cell grid, bicubic "
        "interpolation), is subtracted from it before stacking, and no matched surface (frames "
        "or tiles) is used. The flattest sky, but extended emission larger than about N pixels "
        "goes with the background: galaxy halos, nebulae, the faint light between them (pixels "
        "of the raw frame; 0 off, or >= 32; 64-256 are usual, SWarp's default is 128 on its "
        "input's pixels).",
        default=0,
        stages=("tiles", "mosaic"),

    )
    harmonize: bool = _doc(
        "Match gain and offset per channel between overlapping master tiles before the "
        "coadd (bool).",
        default=True,
        stages=("mosaic",),
    )
    match_bin: int = _doc(
        "Binning of the low-resolution images on which sky surfaces and tile photometry are "
        "fitted (pixels per side, 1..64).",
        default=8,
        stages=("tiles", "mosaic"),

    )

    # --- mosaic ---------------------------------------------------------------------------------
    feather_px: int = _doc(
        "Width of the edge feather in the coadd weights (coverage × alpha × feather) (pixels, "
        ">= 0; 0 disables).",
        default=32,
        stages=("tiles", "import"),

    )
    coverage_renorm: bool = _doc(
        "Two-pass coverage renormalisation of each master tile (sds mode: of the mosaic, after "
        "the coverage cut): a per-pixel gain from the ratio of smoothed to raw coverage, "
        "clipped to [0.5, 2] (bool).",
        default=False,
        stages=("tiles", "sds"),
    )
    autocrop: bool = _doc(
        "Crop the canvas to the covered area, adjusting the WCS (bool).",
        default=True,
        stages=("mosaic",),
    )
    canvas_block: int = _doc(
        "Side of the square canvas blocks that the mosaic is assembled in (pixels, 256..8192).",
        default=1024,
        stages=("mosaic",),
    )
    max_canvas_pixels: int = _doc(
        "Largest mosaic canvas a run may plan (pixels, height × width, >= 1); a larger one is "
        "refused before any frame is read. The final write streams the canvas in bands of rows "
        "(of at most ``budget`` bytes), so this bounds disk and time, not memory.",
        default=500_000_000,
    )
    tile_margin: int = _doc(
        "Margin added around each master tile's footprint (pixels, >= 0).",
        default=8,
        stages=("tiles",),
    )

    # --- cluster --------------------------------------------------------------------------------
    scheduler: str | None = _doc(
        "Address of a running dask scheduler (e.g. 'tcp://host:8786'); None starts an embedded "
        "LocalCluster.",
        default=None,
    )
    workers: int | None = _doc(
        "Worker processes of the embedded LocalCluster (processes, >= 1); None sizes it from "
        "the machine.",
        default=None,
    )
    threads_per_worker: int | None = _doc(
        "Threads per worker of the embedded LocalCluster (threads, >= 1); None sizes it from "
        "the machine.",
        default=None,
    )
    memory_limit: str = _doc(
        "Memory limit per worker of the embedded LocalCluster: 'auto' or a byte size such as "
        "'4GiB' (bytes).",
        default="auto",
    )
    dashboard_address: str = _doc(
        "Where the embedded LocalCluster serves the dask dashboard, HOST:PORT (address; port 0 "
        "picks a free one). The default listens on this machine only; '0.0.0.0:8787' exposes it "
        "to the network. The scheduler and workers always listen on localhost only; a running "
        "scheduler (--scheduler) serves its own dashboard.",
        default="127.0.0.1:0",
    )
    work: str | None = _doc(
        "Where the working Zarr store lives (its finished frames and tiles, reused by the next "
        "run): a folder, or an fsspec URL every worker can reach, e.g. 's3://bucket/run1' "
        "(credentials and endpoint from the environment: AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL), 'file:///shared/run1.zarr', 'gs://...' "
        "(path or URL); None is work.zarr in the output folder.",
        default=None,
    )
    performance_report: bool = _doc(
        "Write dask's HTML performance report of the run's computations (task stream, worker "
        "profiles, bandwidth: distributed.performance_report) as performance-report.html in the "
        "output folder (bool).",
        default=False,
    )

    # --- sections -------------------------------------------------------------------------------
    sds: SdsConfig = _doc(
        "The sds mode's settings (TOML table [sds]).",
        default_factory=SdsConfig,
    )
    grid: GridConfig = _doc(
        "The grid mode's settings (TOML table [grid]).",
        default_factory=GridConfig,
    )
    cluster: ClusterConfig = _doc(
        "The cluster a run starts (TOML table [cluster]): local, SLURM or Kubernetes.",
        default_factory=ClusterConfig,
    )

    # ---------------------------------------------------------------------------------------------
    def validate(self) -> "Config":
        """Check every field; raise ConfigError naming the field and the allowed values."""
        from dask.utils import parse_bytes

        from zdask.graph.modes import MODES

        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"config field '{name}' = {getattr(self, name)!r}: {allowed}")

        # Types first, from the annotations, so that no field escapes and the range rules
        # below compare numbers with numbers.
        for f, expected in _field_types().items():
            if not _has_type(getattr(self, f), expected):
                raise bad(f, f"must be {_type_words(expected)}")

        if self.mode not in MODES:
            raise bad("mode", "allowed values are " + ", ".join(MODES))
        self.sds.validate()
        self.grid.validate()
        self.cluster.validate()
        if not (isinstance(self.link_fov_fraction, (int, float)) and self.link_fov_fraction > 0):
            raise bad("link_fov_fraction", "must be a number > 0")
        if not (isinstance(self.max_group_size, int) and self.max_group_size >= 1):
            raise bad("max_group_size", "must be an integer >= 1")
        if not (isinstance(self.hot_pixel_sigma, (int, float)) and self.hot_pixel_sigma > 0):
            raise bad("hot_pixel_sigma", "must be a number > 0")
        if not (0 < self.hot_pixel_min_fraction <= 1):
            raise bad("hot_pixel_min_fraction", "must be in (0, 1]")
        if not (self.hot_pixel_frames == 0 or self.hot_pixel_frames >= 3):
            raise bad("hot_pixel_frames", "must be 0 (all frames) or an integer >= 3")
        if not (isinstance(self.max_saturated_fraction, (int, float)) and 0 <= self.max_saturated_fraction <= 1):
            raise bad("max_saturated_fraction", "must be in [0, 1]")
        if not (isinstance(self.min_frame_stars, int) and self.min_frame_stars >= 0):
            raise bad("min_frame_stars", "must be an integer >= 0 (0 disables)")
        if self.reject not in REJECT_METHODS:
            raise bad("reject", "allowed values are " + ", ".join(REJECT_METHODS))
        if (
            not isinstance(self.kappa, tuple)
            or len(self.kappa) != 2
            or not all(isinstance(k, (int, float)) and k > 0 for k in self.kappa)
        ):
            raise bad("kappa", "must be two numbers > 0 (low, high), e.g. 3,3")
        if not (isinstance(self.iterations, int) and self.iterations >= 1):
            raise bad("iterations", "must be an integer >= 1")
        if self.normalization not in NORMALIZATIONS:
            raise bad("normalization", "allowed values are " + ", ".join(NORMALIZATIONS))
        if self.weights not in WEIGHTINGS:
            raise bad("weights", "allowed values are " + ", ".join(WEIGHTINGS))
        try:
            if parse_bytes(self.budget) < 1 << 20:
                raise ValueError
        except (ValueError, TypeError):
            raise bad("budget", "must be a byte size of at least 1MiB, e.g. '256MiB'") from None
        if not (isinstance(self.warp_grid_step, int) and 4 <= self.warp_grid_step <= 256):
            raise bad("warp_grid_step", "must be an integer in 4..256")
        if not (isinstance(self.align_threshold_px, (int, float)) and self.align_threshold_px > 0):
            raise bad("align_threshold_px", "must be a number > 0")
        for name in ("align", "altaz_cleanup", "rgb_equalize", "harmonize", "coverage_renorm", "autocrop"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false")
        if not (isinstance(self.altaz_min_abs, (int, float)) and self.altaz_min_abs >= 1):
            raise bad("altaz_min_abs", "must be a number >= 1")
        if not (isinstance(self.altaz_min_frac, (int, float)) and 0 <= self.altaz_min_frac <= 1):
            raise bad("altaz_min_frac", "must be in [0, 1]")
        for name in ("altaz_opening_px", "altaz_ramp_px", "feather_px"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                raise bad(name, "must be an integer >= 0")
        lo, hi = self.rgb_gain_range if len(self.rgb_gain_range) == 2 else (0, 0)
        if not (0 < lo <= 1 <= hi):
            raise bad("rgb_gain_range", "must be two numbers low, high with 0 < low <= 1 <= high")
        if self.sky_surface_order not in (-1, 0, 1, 2):
            raise bad("sky_surface_order", "allowed values are -1 (off), 0, 1, 2")
        if not (self.background_mesh == 0 or self.background_mesh >= 32):  # zdask.ops.bgmesh.MIN_MESH
            raise bad("background_mesh", "must be 0 (off) or an integer >= 32 (pixels of the raw frame)")
        if not (isinstance(self.match_bin, int) and 1 <= self.match_bin <= 64):
            raise bad("match_bin", "must be an integer in 1..64")
        if not (isinstance(self.canvas_block, int) and 256 <= self.canvas_block <= 8192):
            raise bad("canvas_block", "must be an integer in 256..8192")
        if not (isinstance(self.max_canvas_pixels, int) and self.max_canvas_pixels >= 1):
            raise bad("max_canvas_pixels", "must be an integer >= 1 (pixels)")
        if not (isinstance(self.tile_margin, int) and self.tile_margin >= 0):
            raise bad("tile_margin", "must be an integer >= 0")
        for name in ("workers", "threads_per_worker"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise bad(name, "must be an integer >= 1 or unset")
        if self.memory_limit != "auto":
            try:
                parse_bytes(self.memory_limit)
            except (ValueError, TypeError):
                raise bad("memory_limit", "must be 'auto' or a byte size such as '4GiB'") from None
        _host, colon, port = self.dashboard_address.rpartition(":")
        if not (colon and port.isdigit() and int(port) <= 65535):
            raise bad("dashboard_address", "must be HOST:PORT with a port in 0..65535, e.g. 127.0.0.1:8787")
        if not isinstance(self.performance_report, bool):
            raise bad("performance_report", "must be true or false")
        if self.work is not None:
            from zdask.io.store import is_url, url_problem

            if not self.work.strip():
                raise bad("work", "must be a folder or an fsspec URL such as s3://bucket/run1, or unset")
            problem = url_problem(self.work) if is_url(self.work) else None
            if problem:
                raise bad("work", problem)
        if self.cluster.kind != "local":
            for name in ("scheduler", "workers", "threads_per_worker"):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"config fields 'cluster.kind' = {self.cluster.kind!r} and '{name}' conflict: "
                        f"'{name}' is for the embedded cluster or a running scheduler; size the "
                        f"{self.cluster.kind} cluster with cluster.jobs, cluster.cores, cluster.memory"
                    )
        if self.scheduler is not None and self.workers is not None:
            raise ConfigError(
                "config fields 'scheduler' and 'workers' conflict: an existing scheduler brings "
                "its own workers; set one of them"
            )
        return self

    # ---------------------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> "Config":
        """A copy with the given fields changed (None values are ignored), validated. A
        section's field is named ``section.field`` (``sds.min_lot_size``)."""
        top = {f.name for f in fields(self)}
        nested = {f"{s}.{f.name}" for s, kind in SECTIONS.items() for f in fields(kind)}
        unknown = set(changes) - top - nested
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        kept = {k: _coerce(k, v) for k, v in changes.items() if v is not None and k in top}
        for section in SECTIONS:
            inner = {k.split(".", 1)[1]: _coerce(k, v) for k, v in changes.items()
                     if v is not None and k.startswith(section + ".")}
            if inner:
                kept[section] = dataclasses.replace(kept.get(section, getattr(self, section)), **inner)
        return dataclasses.replace(self, **kept).validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def value(self, name: str) -> Any:
        """A field's value by its name, ``section.field`` for a section's field."""
        owner = self
        for part in name.split(".")[:-1]:
            owner = getattr(owner, part)
        return getattr(owner, name.rsplit(".", 1)[-1])

    def digest(self, *names: str) -> str:
        """A short stable hash of the named fields (what a stage's outputs depend on)."""
        payload = json.dumps({n: self.value(n) for n in names}, sort_keys=True, default=list)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @staticmethod
    def stage_fields(stage: str) -> tuple[str, ...]:
        """The fields that declare ``stage`` among the stages their value changes."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        return tuple(name for name, f in _all_fields() if stage in f.metadata["stages"])

    def stage_digest(self, stage: str) -> str:
        """The digest of the fields ``stage`` declares: the settings part of its fingerprint."""
        return self.digest(*self.stage_fields(stage))


def _all_fields() -> list[tuple[str, dataclasses.Field]]:
    """(qualified name, field) of every setting, a section's fields after the section's name."""
    found = []
    for f in fields(Config):
        if f.name in SECTIONS:
            found.extend((f"{f.name}.{g.name}", g) for g in fields(SECTIONS[f.name]))
        else:
            found.append((f.name, f))
    return found


def _field_types() -> dict[str, Any]:
    """Each field's annotation, resolved (the module's annotations are strings)."""
    return typing.get_type_hints(Config)


def _has_type(value: Any, expected: Any) -> bool:
    """Whether ``value`` is of the annotated type: bool is not an int here, a float must be
    finite, a tuple must have the annotated length."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if origin is tuple and args[-1:] == (Ellipsis,):
        return isinstance(value, tuple) and all(_has_type(v, args[0]) for v in value)
    if origin is tuple:
        return (isinstance(value, tuple) and len(value) == len(args)
                and all(_has_type(v, a) for v, a in zip(value, args)))
    return isinstance(value, expected)


_TYPE_WORDS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"),
               float: ("a finite number", "finite numbers"), str: ("a string", "strings"),
               type(None): ("unset", "unset")}


def _type_words(expected: Any) -> str:
    """How the allowed values of an annotation read in an error message."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_words(a) for a in args)
    if origin is tuple and args[-1:] == (Ellipsis,):
        return f"a list of {_TYPE_WORDS[args[0]][1]}"
    if origin is tuple and len(set(args)) == 1:
        return f"{len(args)} {_TYPE_WORDS[args[0]][1]}"
    return _TYPE_WORDS.get(expected, (getattr(expected, "__name__", str(expected)),))[0]


def _number_pair(name: str, value: Any, example: str, single_ok: bool) -> Any:
    """A pair of floats from '2.5,3', [2.5, 3] (or one number when ``single_ok``)."""
    parts = value.split(",") if isinstance(value, str) else value
    if single_ok and isinstance(parts, (int, float)) and not isinstance(parts, bool):
        parts = [parts]
    try:
        if isinstance(parts, (str, bytes)) or any(isinstance(p, bool) for p in parts):
            raise TypeError
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise ConfigError(f"config field '{name}' = {value!r}: must be {example}") from None
    return tuple(numbers * 2 if single_ok and len(numbers) == 1 else numbers)


def _coerce(name: str, value: Any) -> Any:
    """Turn TOML/CLI spellings into the field's type (kappa as '2.5,3', a list or a number)."""
    if name == "rgb_gain_range":
        return _number_pair(name, value, "two numbers low, high, e.g. 0.95,1.05", single_ok=False)
    if name == "kappa":
        return _number_pair(name, value, "one or two numbers, e.g. 3 or 2.5,3", single_ok=True)
    if name == "cluster.job_directives" and isinstance(value, list):  # a TOML array
        return tuple(value)
    return value


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> Config:
    """Read a TOML file (optional), apply overrides (None = not given) and validate."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {os.fspath(path)}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {os.fspath(path)}: not valid TOML ({exc})") from None
        except OSError as exc:  # a folder, no permission, ...
            raise ConfigError(f"config file {os.fspath(path)}: cannot read ({exc.strerror or exc})") from None
        top = {f.name for f in fields(Config)}
        for key, value in data.items():
            # A section's table ([sds], [cluster]) holds that section's fields, and may group
            # top-level fields too ([cluster] scheduler, workers: files written before the
            # section existed); other tables ([stacking], ...) only group top-level fields.
            if isinstance(value, dict) and key in SECTIONS:
                own = {f.name for f in fields(SECTIONS[key])}
                values.update({k if k in top and k not in own else f"{key}.{k}": v
                               for k, v in value.items()})
            elif isinstance(value, dict):
                values.update(value)
            else:
                values[key] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config().replace(**values)


def describe_fields() -> list[tuple[str, str, str]]:
    """(name, default, doc) of every setting, for `zdask config` and the README; a section's
    fields are named ``section.field``."""
    return [(name, repr(f.default), f.metadata["doc"]) for name, f in _all_fields()]
