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
from dataclasses import dataclass, fields
from typing import Any

from zdask.config_base import STAGES, ConfigError, _doc
from zdask.config_rules import NORMALIZATIONS, REJECT_METHODS, WEIGHTINGS, check_fields
from zdask.config_sections import ClusterConfig, GridConfig, SdsConfig



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
        "the others covering the same sky, so emission fixed on the sky is kept. With 1 "
        "(default), each tile also carries the curvature of its horizon glow along its own "
        "gradient: the overlaps fix how the tiles' glows differ (each is the mean of its "
        "frames'), the tiles' own skies (sources masked, median over tiles) its level; what all "
        "tiles share and the overlaps cannot see is fitted on the mosaic with sources masked as "
        "if the sky were flat: a plane, and the curvature along the mosaic's glow gradient (an "
        "object larger than the mosaic loses its curvature along that one direction). With 2, "
        "the median of the tiles' own curvatures is taken out of every tile and three free "
        "curvature terms per tile are matched. The report says what the data fixed and what "
        "was assumed. Not used when background_mesh > 0.",
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
        """Check every field; raise ConfigError naming the field and the allowed values
        (the rules: :func:`zdask.config_rules.check_fields`)."""
        check_fields(self)
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
