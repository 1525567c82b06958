"""Master-tile planner: grouping, mode separation, size caps, determinism."""

from __future__ import annotations

import itertools
import json
import math
import time

import numpy as np
import pytest

from zdask.graph.plan import Plan, infer_group_mode, plan_master_tiles, summarize
from zdask.io.scan import MOUNT_ALTAZ, MOUNT_EQ, MOUNT_UNKNOWN, Frame

FOV = (1.28, 0.72)  # deg, Seestar-like (short side 0.72 -> default link radius 0.216 deg)


def make_frame(i, ra, dec, mode=MOUNT_EQ, t=None, fov=FOV):
    return Frame(
        path=f"/frames/f{i:05d}.fit", hdu=0, height=1080, width=1920, layout="bayer", bayer="GRBG",
        dtype="uint16", wcs_header={}, scale_arcsec=2.4, ra_deg=float(ra) % 360.0, dec_deg=float(dec),
        fov_deg=fov, time_mjd=None if t is None else 60000.0 + t / 86400.0, exptime_s=10.0,
        mount=mode, size_bytes=1, mtime_ns=1,
    )


def sep_deg(ra1, dec1, ra2, dec2):
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    c = math.sin(d1) * math.sin(d2) + math.cos(d1) * math.cos(d2) * math.cos(r1 - r2)
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def survey(seed=0):
    """3x3 panels 1 deg apart, 30 jittered frames each, shot panel by panel.

    Panel (1, 1) is shot twice: once in EQ and once in ALT_AZ; panel (2, 2)
    has UNKNOWN mount frames; everything else is EQ.
    """
    rng = np.random.default_rng(seed)
    frames, truth, t = [], [], 0.0
    panels = [(p, MOUNT_EQ) for p in itertools.product(range(3), range(3))] + [((1, 1), MOUNT_ALTAZ)]
    for (px, py), mode in panels:
        if (px, py) == (2, 2):
            mode = MOUNT_UNKNOWN
        for _ in range(30):
            ra = 100.0 + px * 1.0 / math.cos(math.radians(40.0)) + rng.normal(0, 0.01)
            dec = 40.0 + py * 1.0 + rng.normal(0, 0.01)
            frames.append(make_frame(len(frames), ra, dec, mode, t))
            truth.append(((px, py), mode))
            t += 12.0
    return frames, truth


def check_partition(plan, frames, max_size):
    seen = sorted(i for g in plan.groups for i in g.frames)
    assert seen == list(range(len(frames)))  # every frame in exactly one group
    assert [g.id for g in plan.groups] == list(range(len(plan.groups)))
    for g in plan.groups:
        assert {frames[i].mount for i in g.frames} == {g.mode}
        assert 1 <= len(g.frames) <= max_size
        times = [frames[i].time_mjd for i in g.frames]
        assert times == sorted(times)


def test_groups_follow_panels_and_modes():
    frames, truth = survey()
    plan = plan_master_tiles(frames)
    check_partition(plan, frames, 64)
    assert plan.link_radius_deg == pytest.approx(0.3 * 0.72)
    assert len(plan.groups) == 10  # 9 panels + the ALT_AZ pass over panel (1, 1)
    for g in plan.groups:
        assert len({truth[i] for i in g.frames}) == 1
        panel, mode = truth[g.frames[0]]
        assert len(g.frames) == 30
        members = [frames[i] for i in g.frames]
        assert sep_deg(g.ra_deg, g.dec_deg, np.mean([f.ra_deg for f in members]),
                       np.mean([f.dec_deg for f in members])) < 1e-3
    centre = [g for g in plan.groups if truth[g.frames[0]][0] == (1, 1)]
    assert sorted(g.mode for g in centre) == [MOUNT_ALTAZ, MOUNT_EQ]
    assert [g.mode for g in plan.groups if truth[g.frames[0]][0] == (2, 2)] == [MOUNT_UNKNOWN]
    # ordered by earliest frame time
    firsts = [frames[g.frames[0]].time_mjd for g in plan.groups]
    assert firsts == sorted(firsts)


def test_link_radius_controls_merging():
    frames, _ = survey()
    # 1 deg panel spacing: a radius above ~1.02 deg links neighbours (per mode)
    plan = plan_master_tiles(frames, link_fov_fraction=1.5 / 0.72, max_group_size=10_000)
    check_partition(plan, frames, 10_000)
    assert sorted((g.mode, len(g.frames)) for g in plan.groups) == [
        (MOUNT_ALTAZ, 30), (MOUNT_EQ, 240), (MOUNT_UNKNOWN, 30)]


def test_single_linkage_chains_and_separates():
    # a chain of frames 0.2 deg apart along the equator is one group at radius 0.216,
    # and a gap of 0.25 deg splits it
    ras = [0.0, 0.2, 0.4, 0.6, 0.85, 1.05]
    frames = [make_frame(i, ra, 0.0, t=i) for i, ra in enumerate(ras)]
    plan = plan_master_tiles(frames)
    assert [g.frames for g in plan.groups] == [(0, 1, 2, 3), (4, 5)]
    # across RA = 0/360 and over the pole distances are on the sphere
    wrap = [make_frame(0, 359.95, 10.0, t=0), make_frame(1, 0.05, 10.0, t=1),
            make_frame(2, 0.0, 89.95, t=2), make_frame(3, 180.0, 89.95, t=3)]
    assert [g.frames for g in plan_master_tiles(wrap).groups] == [(0, 1), (2, 3)]


def test_size_cap_splits_into_consecutive_time_runs():
    rng = np.random.default_rng(3)
    order = rng.permutation(150)  # frame list order differs from time order
    frames = [make_frame(i, 50 + rng.normal(0, 0.01), 20 + rng.normal(0, 0.01), t=float(order[i]))
              for i in range(150)]
    plan = plan_master_tiles(frames, max_group_size=64)
    check_partition(plan, frames, 64)
    assert [len(g.frames) for g in plan.groups] == [50, 50, 50]  # ceil(150/64) = 3 near-equal parts
    runs = [sorted(int(order[i]) for i in g.frames) for g in plan.groups]
    assert runs == [list(range(0, 50)), list(range(50, 100)), list(range(100, 150))]
    assert {g.mode for g in plan.groups} == {MOUNT_EQ}
    sizes = [len(g.frames) for g in plan_master_tiles(frames, max_group_size=7).groups]
    assert len(sizes) == math.ceil(150 / 7) and max(sizes) - min(sizes) <= 1 and max(sizes) <= 7
    assert [len(g.frames) for g in plan_master_tiles(frames, max_group_size=1).groups] == [1] * 150


def test_frames_without_time_are_last_within_a_group():
    frames = [make_frame(0, 10, 10, t=None), make_frame(1, 10, 10, t=5), make_frame(2, 10, 10, t=1)]
    (group,) = plan_master_tiles(frames).groups
    assert group.frames == (2, 1, 0)


def test_deterministic_and_json():
    frames, _ = survey(seed=7)
    a = plan_master_tiles(frames)
    b = plan_master_tiles(list(frames))
    assert a == b
    doc = json.loads(json.dumps(a.to_json(frames)))
    assert doc["n_groups"] == len(a.groups) and doc["n_frames"] == len(frames)
    g0 = doc["groups"][0]
    assert set(g0) >= {"id", "mode", "n_frames", "ra_deg", "dec_deg", "paths"}
    assert g0["paths"] == [frames[i].path for i in a.groups[0].frames]
    assert Plan.from_json(doc) == a


def test_infer_group_mode():
    eq, az, un = (make_frame(0, 0, 0, m) for m in (MOUNT_EQ, MOUNT_ALTAZ, MOUNT_UNKNOWN))
    assert infer_group_mode([eq, eq]) == MOUNT_EQ
    assert infer_group_mode([az]) == MOUNT_ALTAZ
    assert infer_group_mode([eq, az]) == MOUNT_UNKNOWN
    assert infer_group_mode([eq, un]) == MOUNT_UNKNOWN
    assert infer_group_mode([]) == MOUNT_UNKNOWN


@pytest.mark.parametrize("kwargs, name", [
    ({"link_fov_fraction": 0}, "link_fov_fraction"), ({"link_fov_fraction": -1.0}, "link_fov_fraction"),
    ({"link_fov_fraction": float("nan")}, "link_fov_fraction"),
    ({"max_group_size": 0}, "max_group_size"), ({"max_group_size": 2.5}, "max_group_size"),
])
def test_parameter_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        plan_master_tiles([make_frame(0, 0, 0)], **kwargs)


def test_empty_and_summary():
    assert plan_master_tiles([]).groups == ()
    frames, _ = survey()
    plan = plan_master_tiles(frames)
    text = summarize(plan, frames)
    assert text.splitlines()[0].startswith("300 frames -> 10 master tiles")
    assert "ALT_AZ" in text and "UNKNOWN" in text and len(text.splitlines()) == 1 + 3 + 10


def test_ten_thousand_frames_fast():
    rng = np.random.default_rng(5)
    n = 10_000
    panel = rng.integers(0, 4, n)  # 4 panels, thousands of frames on each spot
    ra = 200 + (panel % 2) * 1.0 + rng.normal(0, 0.02, n)
    dec = -10 + (panel // 2) * 0.6 + rng.normal(0, 0.02, n)
    modes = [MOUNT_EQ if i % 3 else MOUNT_ALTAZ for i in range(n)]
    frames = [make_frame(i, ra[i], dec[i], mode=modes[i], t=float(i)) for i in range(n)]
    start = time.perf_counter()
    plan = plan_master_tiles(frames, max_group_size=64)
    elapsed = time.perf_counter() - start
    check_partition(plan, frames, 64)
    assert elapsed < 1.0, elapsed
    for g in plan.groups:
        assert len({int(panel[i]) for i in g.frames}) == 1
    # scattered all over the sky: thousands of one-frame groups
    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    frames = [make_frame(i, ra[i], dec[i], t=float(i)) for i in range(n)]
    start = time.perf_counter()
    plan = plan_master_tiles(frames)
    elapsed = time.perf_counter() - start
    check_partition(plan, frames, 64)
    assert len(plan.groups) > 9000 and elapsed < 1.0, elapsed


@pytest.mark.parametrize("seed", range(6))
def test_groups_equal_brute_force_single_linkage(seed):
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial.distance import pdist, squareform

    rng = np.random.default_rng(seed)
    n = 600
    centres = rng.uniform([0, -60], [360, 60], (5, 2))
    spread = rng.choice([0.002, 0.05, 0.2, 1.0], 5)  # crowded spots and loose chains
    k = rng.integers(0, 5, n)
    ra, dec = centres[k, 0] + rng.normal(0, spread[k]), centres[k, 1] + rng.normal(0, spread[k])
    frames = [make_frame(i, ra[i], dec[i], t=float(i)) for i in range(n)]
    plan = plan_master_tiles(frames, max_group_size=n)
    r, d = np.radians([f.ra_deg for f in frames]), np.radians([f.dec_deg for f in frames])
    xyz = np.column_stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)])
    chord = 2 * math.sin(math.radians(plan.link_radius_deg) / 2)
    _, labels = connected_components(squareform(pdist(xyz)) <= chord, directed=False)
    assert sorted(g.frames for g in plan.groups) == sorted(
        tuple(np.flatnonzero(labels == lab).tolist()) for lab in np.unique(labels))


def test_non_finite_centre_is_rejected():
    with pytest.raises(ValueError, match="f00001"):
        plan_master_tiles([make_frame(0, 1.0, 2.0), make_frame(1, float("nan"), 2.0)])
