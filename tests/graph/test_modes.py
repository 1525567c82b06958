"""Modes: the classic planner on a frame front (pure, no cluster), the canvas planned up front,
and a run on a dask client that the caller made and owns."""

from __future__ import annotations

import os
import shutil
from types import MappingProxyType

import pytest

import zdask
from zdask.config import Config
from zdask.graph.canvas import frames_canvas
from zdask.graph.front import FrameFront, gather_frames
from zdask.graph.geometry import footprint_outline
from zdask.graph.modes import MODES, classic, mode_module
from zdask.graph.tiles import tile_grid


def _front(small_survey, excluded: dict[str, str]) -> FrameFront:
    """The survey's frame front as the headers give it (no pixel read: nothing calibrated)."""
    survey, _ = small_survey
    gathered = gather_frames([str(survey / "frames")], Config(), say=lambda text: None)
    empty = MappingProxyType({})
    return FrameFront(gathered.frames, gathered.groups, empty, empty, empty, MappingProxyType(excluded), 3,
                      empty, 0, None, gathered.rejected, gathered.off_field)


def test_the_classic_plan_is_one_tile_per_group_without_the_excluded_frames(small_survey):
    gathered = _front(small_survey, {})
    victim = gathered.frames[gathered.groups[2].frames[0]].path
    front = _front(small_survey, {victim: "no signal"})
    config = Config(altaz_cleanup=True)
    canvas = frames_canvas(front, config)
    plan = classic.plan(front, canvas, config)
    assert plan == classic.plan(front, canvas, config)  # a value: the same inputs, the same plan
    assert [job.id for job in plan.tiles] == [g.id for g in front.groups] == [0, 1, 2, 3]
    for job, group in zip(plan.tiles, front.groups):
        assert job.mode == group.mode and job.cleanup == (group.mode == "ALT_AZ")
        kept = [i for i in group.frames if front.frames[i].path != victim]
        assert list(job.frames) == kept
        assert job.excluded == (((victim, "no signal"),) if group.id == 2 else ())
        frames = [front.frames[i] for i in kept]
        assert job.grid == tile_grid(frames, config.tile_margin)
        # every tile lies whole on the canvas planned before any stacking (its footprint's
        # corners inside the canvas, not clipped by it)
        ra, dec = footprint_outline(job.grid.wcs(), job.grid.shape)
        x, y = canvas.grid.wcs().all_world2pix(ra, dec, 0)
        h, w = canvas.grid.shape
        assert x.min() >= -0.5 and y.min() >= -0.5 and x.max() <= w - 0.5 and y.max() <= h - 0.5
    assert plan.warnings == ()
    eq_only = classic.plan(front, canvas, Config(altaz_cleanup=False))
    assert not any(job.cleanup for job in eq_only.tiles)


def test_a_group_left_without_frames_is_planned_without_a_grid(small_survey):
    gathered = _front(small_survey, {})
    group = gathered.groups[1]
    front = _front(small_survey, {gathered.frames[i].path: "blank" for i in group.frames})
    plan = classic.plan(front, frames_canvas(front, Config()), Config())
    assert plan.tiles[1].grid is None and plan.tiles[1].frames == ()
    assert len(plan.tiles[1].excluded) == len(group.frames)


def test_every_mode_module_has_the_interface():
    for name in MODES:
        module = mode_module(name)
        assert module.INPUT in ("frames", "tiles") and callable(module.plan) and callable(module.build)


@pytest.fixture(scope="module")
def one_panel(small_survey, tmp_path_factory):
    survey, manifest = small_survey
    frames = tmp_path_factory.mktemp("panel")
    for f in manifest["frames"]:
        if f["panel"] == 2:
            shutil.copy2(survey / f["file"], frames / os.path.basename(f["file"]))
    return frames


def test_a_run_uses_the_client_its_caller_gives_and_leaves_it_open(one_panel, tmp_path):
    from distributed import Client, LocalCluster

    lines: list[str] = []
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        report = zdask.run([str(one_panel)], str(tmp_path / "o"), Config(), client=client, say=lines.append)
        assert client.status == "running" and client.submit(sum, [1, 2]).result() == 3
        # the run's tasks went through this scheduler, and the run opened no cluster of its own
        prefixes = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
        assert any("calibrate" in str(k) for k in prefixes)
    assert not any(line.startswith(("local cluster", "scheduler ")) for line in lines), lines
    assert report["mode"] == "classic" and (tmp_path / "o" / "mosaic.fits").exists()
