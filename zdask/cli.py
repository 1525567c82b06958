"""The ``zdask`` command: simulate, scan, plan, run, config.

Errors a user can fix (bad options, unusable inputs, a full disk, an unreachable scheduler) print
one line naming the file, option or address and exit with status 2; an unexpected exception (a bug)
prints one line and exits with status 1; Ctrl-C exits with status 130. ``--debug`` adds the traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from zdask.config import ConfigError, describe_fields, load_config

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
console = Console(stderr=True)


def _error_line(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def _fail(message: str) -> None:
    _error_line(message)
    raise typer.Exit(code=2)


DEBUG_HELP = "On an error, print its traceback too."


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def describe_failure(exc: BaseException) -> tuple[str, int]:
    """(one-line message, exit status) for an exception that ended a command: 2 for what the
    user can change (settings, inputs, disk, scheduler address), 1 for a bug."""
    from zdask.cluster import ClusterError
    from zdask.graph.runner import RunError
    from zdask.io.errors import FileError, WriteError

    if isinstance(exc, (ConfigError, RunError, ClusterError, FileError)):
        return _one_line(exc), 2
    if isinstance(exc, OSError):  # a file or the disk, named by the OS where it can
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _one_line(WriteError(exc.filename or "an output", exc.strerror, exc.errno)), 2
        where = f"{exc.filename}: " if exc.filename else ""
        return _one_line(f"{where}{exc.strerror or exc}"), 2
    return (f"internal error: {type(exc).__name__}: {_one_line(exc)} (a bug in zdask: run again "
            "with --debug to see the traceback, and report it)"), 1


@contextlib.contextmanager
def _failures_reported(debug: bool):
    """End a command that failed with one line (and the traceback with ``--debug``)."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        console.print("interrupted", highlight=False)
        raise typer.Exit(code=130) from None
    except Exception as exc:
        message, code = describe_failure(exc)
        if debug:
            traceback.print_exception(exc, file=sys.stderr)
        _error_line(message)
        raise typer.Exit(code=code) from None


def _pair(text: str, option: str, sep: str = "x") -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.lower().split(sep))
    except ValueError:
        _fail(f"{option} {text!r}: expected two integers like 2{sep}3")
    return a, b


# --- simulate --------------------------------------------------------------------------------------

@app.command()
def simulate(
    out: Path = typer.Argument(..., help="Folder to write frames/, truth.fits and manifest.json into."),
    panels: str = typer.Option("2x2", help="Panel grid as ROWSxCOLS."),
    frames_per_panel: int = typer.Option(8, help="Frames shot per panel."),
    frame_size: str = typer.Option("1080x1920", help="Frame size as WIDTHxHEIGHT in pixels."),
    altaz_panels: str = typer.Option("none", help="Panels shot alt-az: 'none', 'all' or indices like 0,3."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same survey."),
    wcs_error_px: float = typer.Option(0.0, help="RMS error put into the header WCS (pixels)."),
) -> None:
    """Write a simulated Seestar-like survey with its ground truth."""
    from zdask.sim import SurveySpec, simulate_survey

    rows, cols = _pair(panels, "--panels")
    width, height = _pair(frame_size, "--frame-size")
    if altaz_panels == "none":
        altaz = None
    elif altaz_panels == "all":
        altaz = tuple(range(rows * cols))
    else:
        try:
            altaz = tuple(int(v) for v in altaz_panels.split(","))
        except ValueError:
            _fail(f"--altaz-panels {altaz_panels!r}: expected 'none', 'all' or indices like 0,3")
    try:
        spec = SurveySpec(panels=(rows, cols), frames_per_panel=frames_per_panel,
                          frame_size=(width, height), altaz_panels=altaz, seed=seed,
                          wcs_error_px=wcs_error_px)
    except ValueError as exc:
        _fail(str(exc))
    t = time.perf_counter()
    manifest = simulate_survey(out, spec)
    console.print(f"wrote {len(manifest['frames'])} frames, truth.fits and manifest.json to {out} "
                  f"in {time.perf_counter() - t:.1f} s")


# --- scan and plan -----------------------------------------------------------------------------------

def _locations(given: list[str]) -> list[str]:
    """Inputs and output folders as given on the command line: paths as pathlib spells them (as
    when these arguments were paths), fsspec URLs (``s3://bucket/frames``) as they are."""
    from zdask.io.urls import is_url

    return [p if is_url(p) else str(Path(p)) for p in given]


@app.command()
def scan(
    inputs: list[str] = typer.Argument(..., help="FITS files or folders (paths or fsspec URLs)."),
    as_json: bool = typer.Option(False, "--json", help="Print the frame table as JSON."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Read FITS headers (no pixels) into a frame table; list every rejected file and why."""
    from zdask.io.scan import scan as scan_inputs

    with _failures_reported(debug):
        table = scan_inputs(_locations(inputs))
    if as_json:
        print(json.dumps(table.to_json(), indent=2))
    else:
        for f in table.frames:
            print(f"{f.path}  {f.layout:5s} {f.bayer or '-':4s} {f.width}x{f.height}  "
                  f"{f.scale_arcsec:.2f}\"/px  ra={f.ra_deg:.4f} dec={f.dec_deg:+.4f}  {f.mount}")
        print(f"{len(table.frames)} frame(s) usable, {len(table.rejected)} rejected")
    for bad in table.rejected:
        console.print(f"rejected {bad.path}: {bad.reason}", highlight=False, soft_wrap=True)
    if not table.frames:
        raise typer.Exit(code=2)


@app.command()
def plan(
    inputs: list[str] = typer.Argument(..., help="FITS files or folders (paths or fsspec URLs)."),
    config: Optional[Path] = typer.Option(None, help="TOML configuration file."),
    max_group_size: Optional[int] = typer.Option(None, help="Largest master-tile group (frames)."),
    link_fov_fraction: Optional[float] = typer.Option(None, help="Linking distance / short FOV side."),
    mode: Optional[str] = typer.Option(None, "--mode", help="classic (master-tile groups, default), sds (lots) or grid (cells)."),
    grid_cell_fov_factor: Optional[float] = typer.Option(None, help="grid: cell side / median frame field of view."),
    grid_cell_overlap: Optional[float] = typer.Option(None, help="grid: overlap of neighbouring cells (fraction)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Group frames into master tiles by sky position and mount mode (--mode sds: into SDS lots;
    --mode grid: into the cells of a grid, with their count, frames per cell and empty cells)."""
    from zdask.graph.field import OFF_FIELD_REASON, split_main_field
    from zdask.graph.plan import plan_master_tiles, summarize
    from zdask.io.scan import scan as scan_inputs

    try:
        cfg = load_config(config, max_group_size=max_group_size, link_fov_fraction=link_fov_fraction, mode=mode,
                          **{"grid.cell_fov_factor": grid_cell_fov_factor, "grid.cell_overlap": grid_cell_overlap})
    except ConfigError as exc:
        _fail(str(exc))
    if cfg.mode == "grid":
        with _failures_reported(debug):
            print(_grid_plan_text(_locations(inputs), cfg, as_json))
        return
    if cfg.mode not in ("classic", "sds"):
        _fail(f"--mode {cfg.mode}: zdask plan shows the classic mode's groups, the sds mode's lots or the grid's cells")
    with _failures_reported(debug):
        table = scan_inputs(_locations(inputs))
    for bad in table.rejected:
        console.print(f"rejected {bad.path}: {bad.reason}", highlight=False, soft_wrap=True)
    if not table.frames:
        _fail("no usable frame")
    with _failures_reported(debug):
        # as `zdask run` plans: the main field only, each frame outside it named
        frames, off_field = split_main_field(table.frames)
        for f in off_field:
            console.print(f"excluded {f.path}: {OFF_FIELD_REASON}", highlight=False, soft_wrap=True)
        result = plan_master_tiles(frames, link_fov_fraction=cfg.link_fov_fraction,
                                   max_group_size=cfg.max_group_size)
        if cfg.mode == "sds":
            from zdask.graph.modes.sds import header_lots
            from zdask.graph.sds_plan import lots_json, summarize_lots

            lots = header_lots(frames, result.groups, cfg)
            print(json.dumps(lots_json(lots, frames), indent=2) if as_json else summarize_lots(lots, frames))
            return
    print(json.dumps(result.to_json(frames), indent=2) if as_json else summarize(result, frames))


def _grid_plan_text(inputs: list[str], cfg, as_json: bool) -> str:
    """`zdask plan --mode grid`: the cells from the headers (no pixel read)."""
    from types import MappingProxyType

    from zdask.graph.canvas import frames_canvas
    from zdask.graph.front import FrameFront, gather_frames
    from zdask.graph.modes import grid

    say = lambda text: console.print(text, highlight=False, soft_wrap=True)  # noqa: E731
    named, _ = grid.resolve_inputs(inputs, say)
    gathered = gather_frames(named, cfg, say)
    empty = MappingProxyType({})
    front = FrameFront(gathered.frames, gathered.groups, empty, empty, empty, empty, 3, empty, 0, None,
                       gathered.rejected, gathered.off_field)
    result = grid.plan(front, frames_canvas(front, cfg), cfg)
    if not as_json:
        return grid.summarize(result)
    layout = result.layout
    return json.dumps({**layout.summary(), "cells_detail": [
        {"id": c.id, "row": c.row, "col": c.col, "box": list(c.box), "frames": [front.frames[i].path for i in c.frames]}
        for c in layout.cells], "excluded": [{"path": p, "reason": r} for p, r in result.excluded]}, indent=2)


# --- run -----------------------------------------------------------------------------------------------

@app.command()
def run(
    inputs: Optional[list[str]] = typer.Argument(None, help="FITS files or folders of frames (paths or fsspec "
                                                           "URLs: s3://bucket/frames/)."),
    out: str = typer.Option(..., "--out", help="Output folder (mosaic.fits, preview.png, report.json): a path "
                                              "or an fsspec URL (s3://bucket/run1)."),
    config: Optional[Path] = typer.Option(None, help="TOML configuration file; options below override it."),
    scheduler: Optional[str] = typer.Option(None, help="Address of a running dask scheduler."),
    cluster: Optional[str] = typer.Option(
        None, "--cluster", help="Cluster to start: local (default), slurm or kubernetes; sized in "
                                "the TOML table [cluster] (zdask config lists its fields)."),
    workers: Optional[int] = typer.Option(None, help="Worker processes of the embedded cluster."),
    threads_per_worker: Optional[int] = typer.Option(None, help="Threads per worker."),
    memory_limit: Optional[str] = typer.Option(None, help="Memory per worker, e.g. 4GiB, or auto."),
    dashboard_address: Optional[str] = typer.Option(
        None, help="HOST:PORT of the embedded cluster's dashboard (default 127.0.0.1:0, this machine "
                   "only; 0.0.0.0:8787 exposes it to the network)."),
    work: Optional[str] = typer.Option(
        None, "--work", help="Working Zarr store: a folder or an fsspec URL every worker reaches "
                             "(s3://bucket/run1; credentials and endpoint from AWS_* variables); "
                             "default OUT/work.zarr."),
    performance_report: Optional[bool] = typer.Option(
        None, "--performance-report/--no-performance-report",
        help="Write dask's HTML performance report (performance-report.html) next to the outputs."),
    reject: Optional[str] = typer.Option(None, help="kappa_sigma, winsorized, linear_fit_clip, median, mean or sum."),
    kappa: Optional[str] = typer.Option(None, help="Rejection thresholds LOW,HIGH in sigmas (or one value)."),
    iterations: Optional[int] = typer.Option(None, help="kappa_sigma passes."),
    normalization: Optional[str] = typer.Option(None, help="none, additive, multiplicative or linear_fit."),
    weights: Optional[str] = typer.Option(None, help="none, exposure or noise_variance."),
    budget: Optional[str] = typer.Option(None, help="Memory budget of one stacking task, e.g. 256MiB."),
    max_group_size: Optional[int] = typer.Option(None, help="Largest master-tile group (frames)."),
    link_fov_fraction: Optional[float] = typer.Option(None, help="Linking distance / short FOV side."),
    altaz_cleanup: Optional[bool] = typer.Option(None, "--altaz-cleanup/--no-altaz-cleanup",
                                                 help="Mask low-coverage corners of ALT_AZ tiles."),
    harmonize: Optional[bool] = typer.Option(None, "--harmonize/--no-harmonize",
                                             help="Match gains and offsets between tiles."),
    sky_surface_order: Optional[int] = typer.Option(None, help="Sky surfaces: -1 off, 0, 1 or 2."),
    background_mesh: Optional[int] = typer.Option(
        None, help="Flattest sky: subtract each frame's local background on cells of N pixels "
                   "(removes extended emission larger than ~N px; 0 keeps it, the default)."),
    autocrop: Optional[bool] = typer.Option(None, "--autocrop/--no-autocrop", help="Crop to the covered area."),
    tiles: Optional[Path] = typer.Option(None, "--tiles",
                                         help="Assemble existing master tiles (FITS with WCS) from this "
                                              "folder (the tiles mode)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="How the mosaic is built: classic (default), sds, grid "
                                                           "or tiles; a stack_plan.csv in an input folder picks grid."),
    sds_min_lot_size: Optional[int] = typer.Option(None, help="sds: frames a lot holds at least."),
    sds_lot_coverage: Optional[float] = typer.Option(None, help="sds: fraction of the survey's cells a lot covers."),
    sds_target_lot_size: Optional[int] = typer.Option(None, help="sds: frames at which a lot closes."),
    sds_min_coverage_keep: Optional[float] = typer.Option(
        None, help="sds: pixels below this fraction of the maximum coverage become NaN."),
    grid_cell_fov_factor: Optional[float] = typer.Option(None, help="grid: cell side / median frame field of view."),
    grid_cell_overlap: Optional[float] = typer.Option(None, help="grid: overlap of neighbouring cells (fraction)."),
    grid_max_cells: Optional[int] = typer.Option(None, help="grid: largest number of cells a plan may have."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Build the mosaic: calibrate, stack master tiles, assemble, write outputs."""
    from zdask.cluster import ClientOnDemand, check_local_resources
    from zdask.graph.runner import run as run_pipeline
    from zdask.io.urls import join, normalise

    try:
        cfg = load_config(
            config, scheduler=scheduler, workers=workers, threads_per_worker=threads_per_worker,
            memory_limit=memory_limit, dashboard_address=dashboard_address,
            performance_report=performance_report, work=work, reject=reject,
            kappa=kappa, iterations=iterations, normalization=normalization, weights=weights, budget=budget,
            max_group_size=max_group_size, link_fov_fraction=link_fov_fraction,
            altaz_cleanup=altaz_cleanup, harmonize=harmonize, sky_surface_order=sky_surface_order,
            autocrop=autocrop, background_mesh=background_mesh,
            mode="tiles" if tiles is not None and mode is None else mode,
            **{"sds.min_lot_size": sds_min_lot_size, "sds.lot_coverage": sds_lot_coverage,
               "sds.target_lot_size": sds_target_lot_size, "sds.min_coverage_keep": sds_min_coverage_keep,
               "grid.cell_fov_factor": grid_cell_fov_factor, "grid.cell_overlap": grid_cell_overlap,
               "grid.max_cells": grid_max_cells, "cluster.kind": cluster},
        )
    except ConfigError as exc:
        _fail(str(exc))
    plan_csv = _stack_plan_in(inputs) if mode is None and cfg.mode == "classic" else None
    if plan_csv:  # the ancestor's convention: a folder with a stack plan is stacked in grid mode
        cfg = cfg.replace(mode="grid")
        console.print(f"{plan_csv}: stack plan found, grid mode", highlight=False, soft_wrap=True)
    say = lambda text: console.print(text, highlight=False, soft_wrap=True)  # noqa: E731
    if tiles is not None and inputs:
        _fail("give either frames (INPUT...) or --tiles DIR, not both")
    if tiles is not None and cfg.mode != "tiles":
        _fail(f"--tiles DIR assembles existing master tiles: it is the tiles mode, not --mode {cfg.mode}")
    if tiles is not None and not tiles.is_dir():
        _fail(f"--tiles {tiles}: no such folder")
    if tiles is None and not inputs:
        _fail("no input: give frames (INPUT...) or --tiles DIR")
    # Paths as pathlib spells them (as before these options took URLs); URLs as given.
    inputs = _locations(inputs or [])
    (out,) = _locations([out])
    sources = [str(tiles)] if tiles is not None else inputs
    with _failures_reported(debug):
        if cfg.scheduler is None and cfg.cluster.kind == "local":
            check_local_resources(cfg)  # before scanning: refuse a cluster this machine cannot hold
        # The command owns the cluster: opened for this run when the run first needs it (a run
        # refused before that starts none), closed after it.
        with ClientOnDemand(cfg, say) as client:
            report = run_pipeline(sources, out, cfg, client=client, say=say, console=console)
    stages = report["stages"]
    say(f"mosaic {join(normalise(out), 'mosaic.fits')} ({report['mosaic']['shape'][1]}x{report['mosaic']['shape'][0]}, "
        f"{report['mosaic']['covered_fraction']:.0%} covered) in {stages['total']:.1f} s")


def _stack_plan_in(inputs) -> str | None:
    """The first input folder's stack_plan.csv, if one holds it."""
    from zdask.io.stackplan import find_stack_plan

    return next((found for p in inputs or [] if (found := find_stack_plan(str(p)))), None)


@app.command()
def compare(
    mosaic: Path = typer.Argument(..., help="mosaic.fits written by zdask run."),
    truth: Path = typer.Argument(..., help="truth.fits written by zdask simulate (or by the survey kit)."),
    manifest: Optional[Path] = typer.Option(None, help="manifest.json of the survey (trails, seams, coverage)."),
) -> None:
    """Measure a mosaic against a survey's truth: residual, large-scale residual, seams by panel,
    extended light kept, coverage, trails. A table of the scores on stderr, all figures as JSON
    on stdout."""
    from zdask.compare import compare as compare_mosaic, format_scores
    from zdask.io.errors import FileError

    for path in (mosaic, truth, manifest):
        if path is not None and not path.exists():
            _fail(f"{path}: no such file")
    try:
        result = compare_mosaic(str(mosaic), str(truth), str(manifest) if manifest else None)
    except FileError as exc:  # e.g. a truth that cannot tell its stars from its extended light
        _fail(_one_line(exc))
    console.print(format_scores(result["scores"]), highlight=False, markup=False, soft_wrap=True)
    print(json.dumps(result, indent=2))


@app.command("config")
def show_config() -> None:
    """List every configuration field with its default and meaning; a section's fields (TOML
    table ``[sds]``) under its heading, named ``section.field``."""
    section = None
    for name, default, doc in describe_fields():
        if "." in name and name.split(".")[0] != section:
            section = name.split(".")[0]
            print(f"[{section}]")
        print(f"{name} = {default}\n    {doc}")


def main() -> None:
    """The ``zdask`` command: the app, then a quick exit.

    When a command has finished, its files are written and closed, its cluster and folder lock
    released: what is left is the interpreter's teardown of numba/LLVM, dask, zarr and astropy,
    about 0.8 s after every run. The process leaves without it (streams flushed first).
    In-process callers (tests, notebooks) use ``app`` and keep their interpreter.
    """
    try:
        app()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if not isinstance(done.code, (int, type(None))):
            print(done.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
