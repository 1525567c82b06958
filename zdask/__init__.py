"""zdask: astronomical mosaics from thousands of short exposures, as one dask task graph.

The stages as functions::

    table = zdask.scan(["frames/"])                      # headers only
    plan = zdask.plan_master_tiles(table.frames)          # pure function of the table
    result = zdask.stack(dask_stack, "kappa_sigma")       # lazy reduction along the frame axis
    frames = zdask.open_zarr_stack("stack.zarr")         # a Zarr stack on disk as such a dask array
    report = zdask.run(["frames/"], "mosaic/", zdask.Config())
"""

from zdask.config import Config, ConfigError, load_config
from zdask.graph.plan import Plan, TileGroup, plan_master_tiles
from zdask.graph.runner import RunError, run
from zdask.graph.stack import stack
from zdask.io.scan import Frame, FrameTable, scan
from zdask.io.zarrstack import open_zarr_stack
from zdask.ops.stacking import StackResult

__version__ = "0.1.0"

__all__ = [
    "Config", "ConfigError", "Frame", "FrameTable", "Plan", "RunError", "StackResult", "TileGroup",
    "load_config", "open_zarr_stack", "plan_master_tiles", "run", "scan", "stack",
]
