"""zdask: astronomical mosaics from thousands of short exposures, as one dask task graph.

The stages as functions::

    table = zdask.scan(["frames/"])                      # headers only
    plan = zdask.plan_master_tiles(table.frames)          # pure function of the table
    result = zdask.stack(dask_stack, "kappa_sigma")       # lazy reduction along the frame axis
    frames = zdask.open_zarr_stack("stack.zarr")         # a Zarr stack on disk as such a dask array
    report = zdask.run(["frames/"], "mosaic/", zdask.Config())
    mosaic = zdask.open_mosaic("mosaic/mosaic.fits")       # xarray Dataset, lazy (dask)
"""

import importlib

# The public names, imported on first use (PEP 562): ``import zdask`` stays light, and a
# process that only stacks (or the CLI printing its help) does not load astropy, OpenCV,
# distributed, xarray and SciPy.
_EXPORTS = {
    "Config": "zdask.config",
    "ConfigError": "zdask.config",
    "load_config": "zdask.config",
    "Plan": "zdask.graph.plan",
    "TileGroup": "zdask.graph.plan",
    "plan_master_tiles": "zdask.graph.plan",
    "RunError": "zdask.graph.runner",
    "run": "zdask.graph.runner",
    "stack": "zdask.graph.stack",
    "Frame": "zdask.io.scan",
    "FrameTable": "zdask.io.scan",
    "scan": "zdask.io.scan",
    "open_zarr_stack": "zdask.graph.zarrstack",
    "open_mosaic": "zdask.io.mosaicdata",
    "StackResult": "zdask.ops.stacking",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zdask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__version__ = "0.1.0"

__all__ = [
    "Config", "ConfigError", "Frame", "FrameTable", "Plan", "RunError", "StackResult", "TileGroup",
    "load_config", "open_mosaic", "open_zarr_stack", "plan_master_tiles", "run", "scan", "stack",
]
