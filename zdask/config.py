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
import os
import tomllib
import typing
from dataclasses import dataclass, fields
from typing import Any

from zdask.config_base import STAGES, ConfigError, _doc, _has_type, _type_words
from zdask.config_sections import ClusterConfig, GridConfig, SdsConfig

REJECT_METHODS = ("kappa_sigma", "winsorized", "linear_fit_clip", "median", "mean", "sum")
NORMALIZATIONS = ("none", "additive", "multiplicative", "linear_fit")
WEIGHTINGS = ("none", "exposure", "noise_variance")


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
