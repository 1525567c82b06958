"""The range and cross-field rules of :class:`zdask.config.Config` (its types come from its
annotations), and the allowed values of its choice fields."""

from __future__ import annotations

from zdask.config_base import ConfigError, checked_types

REJECT_METHODS = ("kappa_sigma", "winsorized", "linear_fit_clip", "median", "mean", "sum")
NORMALIZATIONS = ("none", "additive", "multiplicative", "linear_fit")
WEIGHTINGS = ("none", "exposure", "noise_variance")


def check_fields(config) -> None:
    """Raise ConfigError naming the first field of ``config`` out of its type or range."""
    from dask.utils import parse_bytes

    from zdask.graph.modes import MODES

    bad = checked_types(config)

    if config.mode not in MODES:
        raise bad("mode", "allowed values are " + ", ".join(MODES))
    config.sds.validate()
    config.grid.validate()
    config.cluster.validate()
    if not (isinstance(config.link_fov_fraction, (int, float)) and config.link_fov_fraction > 0):
        raise bad("link_fov_fraction", "must be a number > 0")
    if not (isinstance(config.max_group_size, int) and config.max_group_size >= 1):
        raise bad("max_group_size", "must be an integer >= 1")
    if not (isinstance(config.hot_pixel_sigma, (int, float)) and config.hot_pixel_sigma > 0):
        raise bad("hot_pixel_sigma", "must be a number > 0")
    if not (0 < config.hot_pixel_min_fraction <= 1):
        raise bad("hot_pixel_min_fraction", "must be in (0, 1]")
    if not (config.hot_pixel_frames == 0 or config.hot_pixel_frames >= 3):
        raise bad("hot_pixel_frames", "must be 0 (all frames) or an integer >= 3")
    if not (isinstance(config.max_saturated_fraction, (int, float)) and 0 <= config.max_saturated_fraction <= 1):
        raise bad("max_saturated_fraction", "must be in [0, 1]")
    if not (isinstance(config.min_frame_stars, int) and config.min_frame_stars >= 0):
        raise bad("min_frame_stars", "must be an integer >= 0 (0 disables)")
    if config.reject not in REJECT_METHODS:
        raise bad("reject", "allowed values are " + ", ".join(REJECT_METHODS))
    if (
        not isinstance(config.kappa, tuple)
        or len(config.kappa) != 2
        or not all(isinstance(k, (int, float)) and k > 0 for k in config.kappa)
    ):
        raise bad("kappa", "must be two numbers > 0 (low, high), e.g. 3,3")
    if not (isinstance(config.iterations, int) and config.iterations >= 1):
        raise bad("iterations", "must be an integer >= 1")
    if config.normalization not in NORMALIZATIONS:
        raise bad("normalization", "allowed values are " + ", ".join(NORMALIZATIONS))
    if config.weights not in WEIGHTINGS:
        raise bad("weights", "allowed values are " + ", ".join(WEIGHTINGS))
    try:
        if parse_bytes(config.budget) < 1 << 20:
            raise ValueError
    except (ValueError, TypeError):
        raise bad("budget", "must be a byte size of at least 1MiB, e.g. '256MiB'") from None
    if not (isinstance(config.warp_grid_step, int) and 4 <= config.warp_grid_step <= 256):
        raise bad("warp_grid_step", "must be an integer in 4..256")
    if not (isinstance(config.align_threshold_px, (int, float)) and config.align_threshold_px > 0):
        raise bad("align_threshold_px", "must be a number > 0")
    for name in ("align", "altaz_cleanup", "rgb_equalize", "harmonize", "coverage_renorm", "autocrop"):
        if not isinstance(getattr(config, name), bool):
            raise bad(name, "must be true or false")
    if not (isinstance(config.altaz_min_abs, (int, float)) and config.altaz_min_abs >= 1):
        raise bad("altaz_min_abs", "must be a number >= 1")
    if not (isinstance(config.altaz_min_frac, (int, float)) and 0 <= config.altaz_min_frac <= 1):
        raise bad("altaz_min_frac", "must be in [0, 1]")
    for name in ("altaz_opening_px", "altaz_ramp_px", "feather_px"):
        if not (isinstance(getattr(config, name), int) and getattr(config, name) >= 0):
            raise bad(name, "must be an integer >= 0")
    lo, hi = config.rgb_gain_range if len(config.rgb_gain_range) == 2 else (0, 0)
    if not (0 < lo <= 1 <= hi):
        raise bad("rgb_gain_range", "must be two numbers low, high with 0 < low <= 1 <= high")
    if config.sky_surface_order not in (-1, 0, 1, 2):
        raise bad("sky_surface_order", "allowed values are -1 (off), 0, 1, 2")
    if not (config.background_mesh == 0 or config.background_mesh >= 32):  # zdask.ops.bgmesh.MIN_MESH
        raise bad("background_mesh", "must be 0 (off) or an integer >= 32 (pixels of the raw frame)")
    if not (isinstance(config.match_bin, int) and 1 <= config.match_bin <= 64):
        raise bad("match_bin", "must be an integer in 1..64")
    if not (isinstance(config.canvas_block, int) and 256 <= config.canvas_block <= 8192):
        raise bad("canvas_block", "must be an integer in 256..8192")
    if not (isinstance(config.max_canvas_pixels, int) and config.max_canvas_pixels >= 1):
        raise bad("max_canvas_pixels", "must be an integer >= 1 (pixels)")
    if not (isinstance(config.tile_margin, int) and config.tile_margin >= 0):
        raise bad("tile_margin", "must be an integer >= 0")
    for name in ("workers", "threads_per_worker"):
        value = getattr(config, name)
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise bad(name, "must be an integer >= 1 or unset")
    if config.memory_limit != "auto":
        try:
            parse_bytes(config.memory_limit)
        except (ValueError, TypeError):
            raise bad("memory_limit", "must be 'auto' or a byte size such as '4GiB'") from None
    _host, colon, port = config.dashboard_address.rpartition(":")
    if not (colon and port.isdigit() and int(port) <= 65535):
        raise bad("dashboard_address", "must be HOST:PORT with a port in 0..65535, e.g. 127.0.0.1:8787")
    if not isinstance(config.performance_report, bool):
        raise bad("performance_report", "must be true or false")
    if config.work is not None:
        from zdask.io.store import is_url, url_problem

        if not config.work.strip():
            raise bad("work", "must be a folder or an fsspec URL such as s3://bucket/run1, or unset")
        problem = url_problem(config.work) if is_url(config.work) else None
        if problem:
            raise bad("work", problem)
    if config.cluster.kind != "local":
        for name in ("scheduler", "workers", "threads_per_worker"):
            if getattr(config, name) is not None:
                raise ConfigError(
                    f"config fields 'cluster.kind' = {config.cluster.kind!r} and '{name}' conflict: "
                    f"'{name}' is for the embedded cluster or a running scheduler; size the "
                    f"{config.cluster.kind} cluster with cluster.jobs, cluster.cores, cluster.memory"
                )
    if config.scheduler is not None and config.workers is not None:
        raise ConfigError(
            "config fields 'scheduler' and 'workers' conflict: an existing scheduler brings "
            "its own workers; set one of them"
        )
