"""The package's public names: all reachable from ``import zdask``, imported on first use."""

import subprocess
import sys

import pytest

import zdask


def test_every_public_name_resolves_to_its_module_object():
    from zdask.graph.stack import stack
    from zdask.graph.zarrstack import open_zarr_stack
    from zdask.ops.stacking import StackResult

    assert zdask.stack is stack
    assert zdask.open_zarr_stack is open_zarr_stack
    assert zdask.StackResult is StackResult
    for name in zdask.__all__:
        assert getattr(zdask, name) is not None, name
    assert set(zdask.__all__) <= set(dir(zdask))


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        zdask.no_such_thing  # noqa: B018


def test_import_loads_no_pipeline_dependency():
    # a fresh interpreter: this one has imported everything already
    code = ("import sys, zdask; heavy = ['astropy', 'cv2', 'distributed', 'numba', 'dask']; "
            "print(','.join(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_importing_the_kernels_changes_no_numba_setting():
    # zdask must not retarget every other numba user of the process: numba's CPU target
    # settings are the same before and after its kernels are imported (on any CPU).
    code = ("import numba\n"
            "def settings(): return {k: repr(v) for k, v in vars(numba.config).items() if k.isupper()}\n"
            "before = settings()\n"
            "import zdask.ops.stacking, zdask.ops._stacking_numba, zdask.ops.warp\n"
            "print(before == settings() and 'CPU_FEATURES' in before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
