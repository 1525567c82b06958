"""Task keys that the dashboard groups by their stage, and block writes named so."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from dask.utils import key_split

from zdask.graph.taskkeys import store_named, task_key

#: Every stage name the pipeline gives its tasks (zdask/graph: front, align_stage, tile_stage,
#: tiles, mosaic_stage).
STAGES = ("hot-pixel-candidates", "calibrate", "reference-catalogue", "align", "sky-fit", "local-background",
          "tile-spec", "stack-tile", "tile-image", "tile-count", "tile-rejected-low", "tile-rejected-high",
          "tile-footprints", "write-tile", "finish-tile", "tile-cutout", "write-mosaic")
LABELS = ("Light_M31_10.0s_IRCUT_20240921-002317.fit", "light-frame.fits", "frame", "my frame (2).fits", 3, "",
          None)
TOKEN = "b5977e5fe8295667360a2d18"


@pytest.mark.parametrize("stage", STAGES)
def test_the_dashboard_groups_each_stage_under_its_own_name_whatever_the_label(stage):
    for label in LABELS:
        key = task_key(stage, label, TOKEN)
        assert key_split(key) == stage, key
        assert key_split((key, 0, 1, 0)) == stage


def test_the_label_stays_readable_and_keys_of_different_labels_or_tokens_differ():
    assert task_key("calibrate", "Light_p00_f000.fits", TOKEN) == f"calibrate-Light_p00_f000.fits-{TOKEN}"
    assert task_key("calibrate", "light-frame.fits", TOKEN) == f"calibrate-light_frame.fits-{TOKEN}"
    assert task_key("stack-tile", 3, TOKEN) == f"stack-tile-3-{TOKEN}"
    assert task_key("write-mosaic", None, TOKEN) == f"write-mosaic-{TOKEN}"
    keys = {task_key("align", label, token) for label in ("a.fits", "b.fits") for token in (TOKEN, TOKEN[::-1])}
    assert len(keys) == 4


def test_store_named_writes_every_block_where_it_belongs_in_named_tasks(tmp_path):
    rng = np.random.default_rng(2)
    values = rng.normal(size=(50, 70, 3)).astype(np.float32)
    image = da.from_array(values, chunks=(16, 32, 3))
    coverage = (image[..., 0] > 0).astype(np.float32)  # an element-wise step, fused into its writes
    group = zarr.open_group(str(tmp_path / "store.zarr"), mode="w")
    targets = [group.create_array("image", shape=values.shape, chunks=(16, 32, 3), dtype="float32"),
               group.create_array("coverage", shape=values.shape[:2], chunks=(16, 32), dtype="float32")]
    done = store_named([image, coverage], targets, "write-tile", 7, TOKEN)
    assert done.key == f"write-tile-7-{TOKEN}"
    graph = dict(done.__dask_graph__())
    writes = [k for k in graph if isinstance(k, tuple) and k[0].startswith(f"write-tile-7-{TOKEN}-")]
    assert len(writes) == 2 * image.numblocks[0] * image.numblocks[1]   # one task per block and array
    assert not any(key_split(k) in ("store-map", "finalize") for k in graph)
    assert dask.compute(done, scheduler="threads") == (None,)
    np.testing.assert_array_equal(group["image"][:], values)
    np.testing.assert_array_equal(group["coverage"][:], (values[..., 0] > 0).astype(np.float32))
