"""The runner: the mode's front, the canvas, the mode's plan and build, then the one writer.

A run of a frame mode: scan → plan → hot pixels → calibrate → align (the frame front,
:mod:`zdask.graph.front`) → the canvas (:mod:`zdask.graph.canvas`) → the mode's pure ``plan``
and its ``build`` (:mod:`zdask.graph.modes`) → mosaic.fits, preview.png, report.json
(:mod:`zdask.graph.write`). The tiles mode starts from imported master tiles instead of frames.

Each stage names its outputs in the working Zarr store with a fingerprint of its inputs and
settings; a stage whose outputs carry the fingerprint it would compute now is skipped. That is
how a second run reuses finished tiles and how a crashed run resumes.

The caller owns the dask cluster: :func:`run` uses the Client it is given and leaves it open;
without one it opens the configured cluster for the run and closes it after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
import warnings
from typing import Sequence

from astropy.utils.exceptions import AstropyWarning

from zdask.cluster import open_client
from zdask.config import Config
from zdask.graph.canvas import frames_canvas
from zdask.graph.errors import RunError
from zdask.graph.front import build_frame_front, gather_frames
from zdask.graph.modes import mode_module
from zdask.graph.modes.base import Workspace
from zdask.graph.write import write_mosaic_outputs, write_report
from zdask.io import urls
from zdask.io.folderlock import LOCK_NAME, FolderInUse, FolderLock, ObjectLock, lock_folder, lock_store
from zdask.io.outputs import atomic_path
from zdask.io.store import StoreUnreachable, check_store, is_url, work_store_root
from zdask.ops.coadd import warm_up as coadd_warm_up
from zdask.ops.stacking import warm_up

__all__ = ["RunError", "run", "check_output_location", "claim_output_folder", "claim_work_store"]

#: dask's performance report of a run (``Config.performance_report``), in the output folder.
PERFORMANCE_REPORT = "performance-report.html"


def check_output_location(inputs: Sequence[str], out_dir: str, what: str = "input folder",
                          kind: str = "output folder", option: str = "--out") -> None:
    """Refuse a missing input, and an output folder (or a local working store: ``kind``,
    ``option``) inside an input folder: inputs are never written. Each may be a path or a URL."""
    for item in inputs:
        if not urls.exists(item):
            raise RunError(f"{item}: no such file or folder")
        folder = item if urls.isdir(item) else (os.path.dirname(item) or ".")
        if urls.inside(out_dir, folder):
            raise RunError(f"{kind} {out_dir} is inside {what} {item}; choose another {option}")


def claim_output_folder(out_dir: str, say=print) -> FolderLock | ObjectLock:
    """Lock ``out_dir`` (creating it; at a URL, its lock object) for the whole run: a second
    run into it is refused."""
    return _claim(lock_folder, out_dir, "output folder", "--out", say)


def claim_work_store(work_root: str, say=print) -> FolderLock | ObjectLock:
    """Lock the working store for the whole run, as the output folder is: two runs sharing one
    store (``--work``, or one run's ``--work`` naming another's default ``OUT/work.zarr``) would
    interleave their writes. A store at a URL is opened first, so that a missing bucket is said
    as such."""
    _check_work_store(work_root)
    return _claim(lock_store, work_root, "working store", "--work", say)


def _claim(lock, location: str, what: str, option: str, say) -> FolderLock | ObjectLock:
    """``lock(location, say)``, its refusal or failure as a one-line RunError naming ``what``."""
    try:
        return lock(location, say)
    except FolderInUse as exc:
        gone = f"; if that run was killed, delete {urls.join(location, LOCK_NAME)}" if urls.is_url(location) else ""
        raise RunError(f"{what} {location} is in use by another zdask run{exc.holder}; "
                       f"wait for it or choose another {option}{gone}") from None
    except OSError as exc:
        raise RunError(f"{what} {location}: {exc.strerror or exc}") from None


def run(inputs: Sequence[str], out_dir: str, config: Config, client=None, say=print, console=None) -> dict:
    """Build the mosaic of ``inputs`` into ``out_dir`` in ``config.mode``; returns the report
    (also report.json).

    ``inputs``: FITS files or folders of frames; for the ``tiles`` mode, one folder of master
    tiles. ``client``: a dask.distributed Client to run on (left open), or a callable that
    returns one when the run first needs it (:class:`zdask.cluster.ClientOnDemand`); None opens
    the configured cluster (``config.scheduler``, or an embedded LocalCluster) for this run.
    """
    mode = mode_module(config.mode)
    # file:// URLs are local paths from here on; other URLs are read and written through fsspec.
    inputs, out_dir = [urls.normalise(p) for p in inputs], urls.normalise(out_dir)
    if mode.INPUT == "tiles":
        if len(inputs) != 1 or not os.path.isdir(inputs[0]):
            shown = " ".join(inputs) or "nothing"
            raise RunError(f"mode tiles takes one folder of master tiles; got {shown}")
    # zdask silences astropy's header-fix notices where it reads headers, with catch_warnings
    # blocks; those are not thread-safe: one closing in another thread (a worker, numba's
    # compile in the warm-up thread) restores the filters while another block is still open,
    # and the notice leaks. One filter for the whole run, set before any thread starts, holds.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        what = "the tiles folder" if mode.INPUT == "tiles" else "input folder"
        check_output_location(inputs, out_dir, what)
        work_root = work_store_root(out_dir, config.work)
        if config.work is not None:
            check_output_location(inputs, work_root, what, "working store", "--work")
        # A store elsewhere is claimed first: a run refused for it has written nothing, not even
        # its --out; a store inside --out after the folder, which that claim creates.
        inside = urls.inside(work_root, out_dir)
        with contextlib.ExitStack() as claims:
            if not inside:
                claims.enter_context(claim_work_store(work_root, say))
            claims.enter_context(claim_output_folder(out_dir, say))
            if inside:
                claims.enter_context(claim_work_store(work_root, say))
            work = Workspace(out_dir, say, console, config.work)
            _check_work_store(work.root)
            if mode.INPUT == "tiles":
                return _run_tiles(mode, inputs[0], config, client, work)
            return _run_frames(mode, inputs, config, client, work)


def _check_work_store(root: str) -> None:
    """A working store at a URL is opened (created) before any work: a missing bucket or refused
    credentials fail in one line, not in the first worker's task."""
    if is_url(root):
        try:
            check_store(root)
        except StoreUnreachable as exc:
            raise RunError(str(exc)) from None


@contextlib.contextmanager
def _client(client, config: Config, work: Workspace):
    """The caller's client as it is (or as its callable gives it), or the configured
    cluster's for the run; with ``config.performance_report``, dask's performance report of
    what runs on it meanwhile is written to the output folder."""
    with contextlib.ExitStack() as stack:
        if client is not None:
            client = client() if callable(client) else client
        else:
            client = stack.enter_context(open_client(config, work.say))
        if config.performance_report:
            stack.enter_context(_performance_report(client, os.path.join(work.out_dir, PERFORMANCE_REPORT)))
        yield client


@contextlib.contextmanager
def _performance_report(client, path: str):
    """distributed's performance report of ``client``'s scheduler while the block runs, written
    to ``path`` (atomically: a failed run leaves none). ``as_current``: the report asks
    ``get_client()``, which is another client where the caller has several."""
    from distributed import performance_report

    with atomic_path(path) as tmp, client.as_current(), performance_report(filename=tmp):
        yield


def _run_frames(mode, inputs: Sequence[str], config: Config, client, work: Workspace) -> dict:
    # Compile the stacking kernel while the first stages run: in a fresh environment the
    # compile takes seconds of one core, and the tile stage would otherwise wait for it.
    threading.Thread(target=warm_up, args=(config.reject,), name="zdask-kernel-warm-up", daemon=True).start()
    threading.Thread(target=coadd_warm_up, name="zdask-coadd-warm-up", daemon=True).start()
    # A mode may name its frames another way (grid: a folder's stack_plan.csv); what it leaves out is reported.
    named, left_out = mode.resolve_inputs(inputs, work.say) if hasattr(mode, "resolve_inputs") else (inputs, [])
    gathered = gather_frames(named, config, work.say)
    gathered = dataclasses.replace(gathered, rejected=gathered.rejected + tuple(left_out))
    timings = dict(gathered.timings)
    urls.makedirs(work.out_dir)
    with _client(client, config, work) as client:
        front = build_frame_front(gathered, config, client, work, timings)
        canvas = frames_canvas(front, config)
        plan = mode.plan(front, canvas, config)
        result = mode.build(plan, front, canvas, config, client, work)
    report = {
        "inputs": [urls.absolute(p) for p in inputs],
        "mode": config.mode,
        "config": config.to_dict(),
        "frames_rejected": [{"path": r.path, "reason": r.reason} for r in front.rejected],
        "stages": timings,
        "hot_pixels": dict(front.hot_pixels),
        "frames_calibrated": front.frames_calibrated,
    }
    if front.alignment is not None:
        report["alignment"] = dict(front.alignment)
    # Every accepted frame that is not in the mosaic, with its reason (main field, no usable
    # signal, alignment); the tiles list their own group's exclusions as well.
    report["frames_excluded"] = front.exclusions()
    return _write(result, config, work, report, timings)


def _run_tiles(mode, folder: str, config: Config, client, work: Workspace) -> dict:
    timings: dict[str, float] = {}
    t = time.perf_counter()
    front = mode.import_tiles(folder, config, work)
    timings["import"] = time.perf_counter() - t
    canvas = mode.front_canvas(front, config)
    plan = mode.plan(front, canvas, config)
    with _client(client, config, work) as client:
        result = mode.build(plan, front, canvas, config, client, work)
    report = {"inputs": [os.path.abspath(folder)], "mode": config.mode, "config": config.to_dict(),
              "frames_rejected": [], "stages": timings}
    return _write(result, config, work, report, timings)


def _write(result, config: Config, work: Workspace, report: dict, timings: dict[str, float]) -> dict:
    """The outputs of every mode: mosaic.fits, preview.png, then report.json and report.html."""
    timings.update(result.timings)
    report.update(result.report)
    report["warnings"] = list(result.warnings)
    report["frames_used"] = result.frames_used
    t = time.perf_counter()
    written = write_mosaic_outputs(result, config, work)
    report["mosaic"] = {**report["mosaic"], "covered_fraction": written.covered_fraction}
    timings["write"] = time.perf_counter() - t
    timings["total"] = sum(v for k, v in timings.items() if k != "total")
    write_report(report, work, written)
    return report
