"""The modes a mosaic is built in: each is one module of this package, named in :data:`MODES`.

A mode turns what every mode shares into the mosaic's arrays on the run's canvas. What it
receives (all plain frozen values, built by :mod:`zdask.graph.runner` before the mode runs):

- ``front`` — for a mode that starts from frames (``INPUT = "frames"``), the
  :class:`zdask.graph.front.FrameFront`: the frames in the main field, their alignment groups,
  their calibrated Zarr entries (key, fingerprint) and statistics, the WCS that places each
  (aligned where alignment refined it: :meth:`FrameFront.wcs_of`), the frames excluded with
  their reasons, the channel count. For a mode that starts from master tiles
  (``INPUT = "tiles"``), the :class:`zdask.graph.modes.tiles.TileFront` of the imported tiles.
- ``canvas`` — the :class:`zdask.graph.canvas.Canvas`, planned up front from the footprints
  (north-up TAN at the frames' median scale): every mode builds its image on it (and may crop it).
- ``config`` — the run's :class:`zdask.config.Config`; a mode's own fields are in its section
  (``config.sds``); the fingerprint of what a stage stores comes from
  ``config.stage_digest(stage)``.

What a mode module defines:

``INPUT``
    ``"frames"`` or ``"tiles"``: which front the runner builds for it.
``plan(front, canvas, config) -> plan``
    Pure (no dask, no I/O): a frozen value saying what will be computed (master-tile jobs,
    lots, cells, ...). Tested without a cluster.
``build(plan, front, canvas, config, client, work) -> zdask.graph.modes.base.ModeResult``
    Submits the work to the dask ``client`` (the caller's; never closed here) and writes the
    mosaic's ``image`` (H, W, C) float32 and ``coverage`` (H, W) float32 (effective frames per
    pixel; the writer derives ALPHA from it) under ``ModeResult.group`` in the working Zarr
    store ``work.root``, each marked complete with its fingerprint so that a re-run reuses it.
    ``work`` (:class:`zdask.graph.modes.base.Workspace`) says where to write and how to talk.
    The result names the cropped canvas's WCS and what the report says; the one writer
    (:mod:`zdask.graph.write`) then makes mosaic.fits, preview.png and report.json from it.

A new mode (``sds``, ``grid``) is one module here and one line in :data:`MODES`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: Mode name → its module. The default mode is ``Config.mode``'s default.
MODES = {
    "classic": "zdask.graph.modes.classic",
    "grid": "zdask.graph.modes.grid",
    "tiles": "zdask.graph.modes.tiles",
    "sds": "zdask.graph.modes.sds",
}


def mode_module(name: str) -> ModuleType:
    """The module of mode ``name`` (a name of :data:`MODES`; the config validated it)."""
    return importlib.import_module(MODES[name])
