"""SDS chain on a planted survey in a real Zarr store: the sparse mega-tiles and global stack
equal dense in-memory references for several budgets, gains recover planted transparencies, a
satellite trail present in one lot only is rejected, failures raise SdsError."""

from __future__ import annotations

import dataclasses

import dask
import numpy as np
import pytest
import zarr

from zdask.config import Config
from zdask.graph.geometry import Grid, tan_header
from zdask.graph.sds_plan import Lot
from zdask.graph.sds import BlockGrid, megatile_regions
from zdask.graph.sds_run import SdsError, SdsSettings, run_sds
from zdask.graph.tiles import TileSource, release_worker_memory, stack_spec, stack_tile_block
from zdask.io import store
from zdask.io.scan import MOUNT_EQ
from zdask.ops.crop import autocrop_box
from zdask.ops.framestats import frame_statistics
from zdask.ops.pixelweights import stack_pixel_weighted

SCALE = 2.0  # arcsec / px
COLOUR = np.array([0.9, 1.0, 1.1], dtype=np.float32)
NOISE = 2.0


def _truth(shape, seed) -> np.ndarray:
    """Sky-free signal on the canvas: a faint glow and stars."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    image = 5.0 + 3.0 * np.exp(-((xx - shape[1] / 2) ** 2 + (yy - shape[0] / 2) ** 2) / (shape[1] ** 2 / 8))
    for _ in range(shape[0] * shape[1] // 150):
        x0, y0, flux = rng.uniform(0, shape[1]), rng.uniform(0, shape[0]), rng.uniform(300, 3000)
        image += flux / (2 * np.pi * 1.6 ** 2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.6 ** 2))
    return image[..., None] * COLOUR


def make_survey(root: str, canvas_shape, frame_shape, lot_shifts, transparency, skies, seed=0, trail=None):
    """Frames of each lot at integer shifts (dx, dy) of the canvas (the canvas's tangent point and
    scale, so a frame's pixel is a canvas pixel exactly): transparency × truth + sky + noise.
    ``trail`` = (lot, row, x0, x1, ADU): a satellite trail on that canvas row in every frame of
    one lot (the lot's own stack keeps it)."""
    truth = _truth(canvas_shape, seed)
    rng = np.random.default_rng(seed + 1)
    group = store.open_store(root)
    sources, stats, lots = [], [], []
    h, w = frame_shape
    for k, shifts in enumerate(lot_shifts):
        members = []
        for dx, dy in shifts:
            i = len(sources)
            image = transparency[k] * truth[dy:dy + h, dx:dx + w] + skies[k] + rng.normal(0, NOISE, (h, w, 3))
            if trail is not None and trail[0] == k:
                _, row, x0, x1, adu = trail
                image[row - dy, max(0, x0 - dx):max(0, x1 - dx)] += adu
            image = image.astype(np.float32)
            store.create_array(group, f"frames/f{i}", image.shape, "float32", (32, w, 3))[:] = image
            store.mark_complete(root, f"frames/f{i}", f"fp{i}")
            sources.append(TileSource(root, f"f{i}", f"fp{i}", tan_header(10.0, 40.0, SCALE, (0.5 - dx, 0.5 - dy)),
                                      (h, w)))
            stats.append(frame_statistics(image))
            members.append(i)
        lots.append(Lot(k, MOUNT_EQ, tuple(members), 1.0))
    canvas = Grid(tan_header(10.0, 40.0, SCALE, (0.5, 0.5)), tuple(canvas_shape))
    return sources, stats, [10.0] * len(sources), lots, canvas


# A sparse layout: four lots spread over a 72 × 200 canvas, one on its left part only, one on its
# right part only (so most blocks hold only some of the lots).
CANVAS, FRAME = (72, 200), (40, 64)
GRID_X, GRID_Y = (0, 45, 90, 136), (0, 32)
SPOTS = [(x, y) for y in GRID_Y for x in GRID_X]


def _jittered(spots, k):
    return [(min(CANVAS[1] - FRAME[1], max(0, x + (k * 7 + m * 3) % 5 - 2)),
             min(CANVAS[0] - FRAME[0], max(0, y + (k * 5 + m) % 3 - 1))) for m, (x, y) in enumerate(spots)]


LAYOUT = ([_jittered([SPOTS[(k + m) % 8] for m in range(5)], k) for k in range(4)]
          + [_jittered([(0, 0), (45, 0), (0, 32), (45, 32), (20, 16)], 4)]
          + [_jittered([(136, 0), (90, 32), (136, 32), (110, 16), (136, 16)], 5)])
TRANSPARENCY = [1.0, 0.8, 0.9, 0.7, 0.95, 0.85]
SKIES = [100.0, 130.0, 90.0, 160.0, 110.0, 120.0]


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sds") / "work.zarr")
    return root, make_survey(root, CANVAS, FRAME, LAYOUT, TRANSPARENCY, SKIES)


def sds_settings(**changes) -> SdsSettings:
    base = SdsSettings.from_config(Config(), global_method="kappa_sigma", gain_method="sources",
                                   gain_min_fraction=0.01, min_coverage_keep=0.4)
    return dataclasses.replace(base, **changes)


def _read(root, path):
    return np.asarray(zarr.open_array(root, path=path, mode="r")[:])


def test_sparse_chain_equals_dense_references_for_several_budgets(survey):
    root, (sources, stats, exptimes, lots, canvas) = survey
    finals = []
    for budget, side in (("64KiB", 16), ("256KiB", 40), ("2MiB", 120)):
        settings = sds_settings(budget=budget)
        with dask.config.set(scheduler="sync"):
            result = run_sds(sources, stats, exptimes, lots, canvas, 3, root, settings, say=lambda _: None)
            image, coverage, alpha = dask.compute(result.image, result.coverage, result.alpha)
        report = result.report
        assert report["block_side"] == side
        names = [entry["zarr"] for entry in report["lots"]]
        # Each mega-tile: the lot's frames warped and stacked on the WHOLE canvas in one block.
        tiles, covs = [], []
        for lot, name in zip(lots, names):
            spec = stack_spec([sources[i] for i in lot.frames], [stats[i] for i in lot.frames],
                              [exptimes[i] for i in lot.frames], canvas.wcs_header, settings.warp_grid_step, 3,
                              settings.method, settings.params, settings.normalization, settings.weights)
            dense, count, low, high = stack_tile_block(spec, (0, CANVAS[0]), (0, CANVAS[1]))
            dense_cov = (count[..., 0] + low[..., 0] + high[..., 0]).astype(np.float32)
            stored, stored_cov = _read(root, f"{name}/image"), _read(root, f"{name}/coverage")
            np.testing.assert_array_equal(stored_cov, dense_cov)
            np.testing.assert_allclose(stored, dense, rtol=1e-6, atol=1e-4)
            assert np.isnan(stored[dense_cov == 0]).all()
            tiles.append(stored)
            covs.append(stored_cov)
        release_worker_memory()
        # The global stack: every lot at every pixel (NaN where a lot has no sample) in one call.
        gains = np.array([e["gain"] for e in report["lots"]])
        offsets = np.array([e["offset"] for e in report["lots"]])
        reference = stack_pixel_weighted(np.stack(tiles), np.stack(covs), "kappa_sigma", scale=gains,
                                         offset=offsets, kappa=(3.0, 3.0), iterations=1)
        stack_name = report["zarr"]
        np.testing.assert_array_equal(_read(root, f"{stack_name}/image"), reference.image)
        total = np.stack(covs).sum(axis=0, dtype=np.float32)
        np.testing.assert_array_equal(_read(root, f"{stack_name}/coverage"), total)
        # Polish: the cut at 0.4 × the peak, the box of what is kept, alpha from coverage.
        threshold = np.float32(0.4 * total.max())
        y0, y1, x0, x1 = autocrop_box(total, min_coverage=float(threshold))
        assert report["crop_box"] == [y0, y1, x0, x1] and list(result.grid.shape) == [y1 - y0, x1 - x0]
        kept = total[y0:y1, x0:x1] >= threshold
        np.testing.assert_array_equal(coverage, np.where(kept, total[y0:y1, x0:x1], 0))
        np.testing.assert_array_equal(image, np.where(kept[..., None], reference.image[y0:y1, x0:x1], np.nan))
        np.testing.assert_array_equal(alpha, np.where(kept, 255, 0))
        assert result.grid.wcs_header["CRPIX1"] == canvas.wcs_header["CRPIX1"] - x0
        finals.append(image)
    # Different blocks, the same mosaic (to the warp's rounding).
    for other in finals[1:]:
        np.testing.assert_allclose(other, finals[0], rtol=1e-5, atol=1e-3)


def test_gains_recover_the_lots_planted_transparency_on_a_local_cluster(survey):
    """On a real LocalCluster: every lot's gain is t_ref / t_lot from its stars (noisy frames), its
    offset brings its sky to the reference's, and the mega-tiles' medians agree after the match."""
    from distributed import Client, LocalCluster

    root, (sources, stats, exptimes, lots, canvas) = survey
    lines = []
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=2, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        result = run_sds(sources, stats, exptimes, lots, canvas, 3, root, sds_settings(budget="256KiB", bin_factor=2),
                         client=client, say=lines.append)
    report = result.report
    ref = report["reference"]
    for entry in report["lots"]:
        truth = TRANSPARENCY[ref] / TRANSPARENCY[entry["id"]]
        np.testing.assert_allclose(entry["gain"], truth, rtol=0.02)
        # (pixels of exactly 3 frames keep their median: 2 of their 3 samples count as rejected)
        assert all(entry["gain_fitted"]) and 0 <= entry["rejected_fraction"] < 0.25
    assert report["gain_fallbacks"] == []
    spread_before, spread_after = np.array(report["median_spread_before"]), np.array(report["median_spread_after"])
    assert (spread_before > 15).all() and (spread_after < 0.1 * spread_before).all()
    assert sum(line.startswith("SDS lot ") for line in lines) == len(lots)
    assert any(line.startswith(f"SDS reference lot {ref}") for line in lines)


def test_a_satellite_trail_in_one_lot_only_is_rejected(tmp_path):
    """Six lots over the whole field; every frame of lot 3 carries the same trail, so its own
    stack keeps it: the global stack rejects it."""
    canvas_shape, frame_shape = (48, 96), (44, 92)
    layout = [[((k + m) % 5, (k * 2 + m) % 5) for m in range(5)] for k in range(6)]
    trail = (3, 24, 8, 88, 400.0)
    root = str(tmp_path / "work.zarr")
    sources, stats, exptimes, lots, canvas = make_survey(root, canvas_shape, frame_shape, layout, [1.0] * 6,
                                                         [100.0] * 6, seed=3, trail=trail)
    with dask.config.set(scheduler="sync"):
        result = run_sds(sources, stats, exptimes, lots, canvas, 3, root, sds_settings(budget="1MiB", bin_factor=2),
                         say=lambda _: None)
        image = result.image.compute()
    report = result.report
    y0, _, x0, _ = report["crop_box"]
    on_trail = (slice(24 - y0, 25 - y0), slice(12 - x0, 84 - x0))
    lot3 = _read(root, f"{report['lots'][3]['zarr']}/image")
    truth = 100.0 + _truth(canvas_shape, 3)
    # The lot's mega-tile holds the trail; the mosaic is the sky there, to the lots' noise.
    assert (lot3[24, 12:84] - truth[24, 12:84] > 300).all()
    assert np.abs(image[on_trail] - truth[24, 12:84]).max() < 10 * NOISE
    assert report["global_rejected_fraction"] > 0


def test_sds_without_a_mosaic_raises_its_reason(tmp_path, survey):
    _, (sources, stats, exptimes, lots, canvas) = survey
    root = str(tmp_path / "work.zarr")
    with pytest.raises(SdsError, match="no SDS lot"):
        run_sds(sources, stats, exptimes, [], canvas, 3, root, sds_settings(), say=lambda _: None)
    # Frames that all lie beside the canvas: every mega-tile is empty.
    far = [dataclasses.replace(s, wcs_header=tan_header(10.0, 40.0, SCALE, (0.5 - 5000, 0.5))) for s in sources]
    with dask.config.set(scheduler="sync"), pytest.raises(SdsError, match="every mega-tile is empty"):
        run_sds(far, stats, exptimes, lots, canvas, 3, root, sds_settings(), say=lambda _: None)


def test_a_second_run_reuses_the_mega_tiles_and_the_stack(tmp_path):
    root = str(tmp_path / "work.zarr")
    sources, stats, exptimes, lots, canvas = make_survey(root, CANVAS, FRAME, LAYOUT[:4], TRANSPARENCY, SKIES)
    settings = sds_settings(budget="256KiB")
    with dask.config.set(scheduler="sync"):
        first = run_sds(sources, stats, exptimes, lots, canvas, 3, root, settings, say=lambda _: None)
        image = first.image.compute()
        stack_mtime = _mtimes(root, first.report["zarr"])
        second = run_sds(sources, stats, exptimes, lots, canvas, 3, root, settings, say=lambda _: None)
        np.testing.assert_array_equal(second.image.compute(), image)
    assert [e["reused"] for e in first.report["lots"]] == [False] * 4
    assert [e["reused"] for e in second.report["lots"]] == [True] * 4
    assert _mtimes(root, second.report["zarr"]) == stack_mtime


def _mtimes(root, name):
    import os

    folder = os.path.join(root, name)
    return sorted((os.path.relpath(os.path.join(d, f), folder), os.stat(os.path.join(d, f)).st_mtime_ns)
                  for d, _, files in os.walk(folder) for f in files)


# --- polish: alt-az cleanup of ALT_AZ lots, two-pass coverage renormalisation ------------------------

# Three lots dithered by a few pixels over the middle of the canvas, and two lots (3 and 4) whose
# frames wander 24 px: a well covered core with thinly covered corners, as field rotation leaves.
# Lot 3 is ALT_AZ, lot 4 EQ; both have the same layout.
POLISH_CANVAS, POLISH_FRAME = (72, 136), (40, 72)
WANDER = [(24, 8), (36, 14), (48, 20), (42, 26), (30, 20), (36, 8)]
POLISH_LAYOUT = ([[(30 + (k + m) % 4, 14 + (2 * k + m) % 4) for m in range(5)] for k in range(3)]
                 + [WANDER, [(x + 1, y + 1) for x, y in WANDER]])


def test_an_altaz_lots_corners_do_not_reach_the_mosaic_where_classic_cuts_them_an_eq_lots_do(tmp_path):
    from zdask.graph.tile_stage import cleanup_decisions
    from zdask.ops.masks import altaz_alpha

    root = str(tmp_path / "work.zarr")
    sources, stats, exptimes, lots, canvas = make_survey(root, POLISH_CANVAS, POLISH_FRAME, POLISH_LAYOUT,
                                                         [1.0] * 5, [100.0] * 5, seed=7)
    lots[3] = dataclasses.replace(lots[3], mode="ALT_AZ")
    decisions, warnings = cleanup_decisions([lot.mode for lot in lots], True)  # the mode's gating
    assert decisions == [False, False, False, True, False] and warnings == []
    asked = [lot.id for lot, cleanup in zip(lots, decisions) if cleanup]
    for budget in ("64KiB", "2MiB"):  # blocks of 16 px (under the mask's reach of 15 px + block) and 136 px
        with dask.config.set(scheduler="sync"):
            result = run_sds(sources, stats, exptimes, lots, canvas, 3, root, sds_settings(budget=budget),
                             altaz_lots=asked, say=lambda _: None)
        report = result.report
        assert [e["altaz_cleanup"] for e in report["lots"]] == decisions
        assert [e["altaz_applied"] for e in report["lots"]] == decisions
        covs = [_read(root, f"{e['zarr']}/coverage") for e in report["lots"]]
        tiles = [_read(root, f"{e['zarr']}/image") for e in report["lots"]]
        # Classic's alpha of the lot's coverage, on the whole canvas at once.
        alpha = altaz_alpha(covs[3], n_frames=len(WANDER)).alpha
        corners = (covs[3] > 0) & (alpha == 0)
        assert corners.sum() > 500 and ((covs[4] > 0) & (altaz_alpha(covs[4], n_frames=6).alpha == 0)).sum() > 500
        gains = np.array([e["gain"] for e in report["lots"]])
        offsets = np.array([e["offset"] for e in report["lots"]])
        stack_name = report["zarr"]
        image, coverage = _read(root, f"{stack_name}/image"), _read(root, f"{stack_name}/coverage")
        # The ALT_AZ lot's corners: the mosaic is the other lots' stack there, bit for bit.
        others = [0, 1, 2, 4]
        without = stack_pixel_weighted(np.stack([tiles[k] for k in others]), np.stack([covs[k] for k in others]),
                                       "kappa_sigma", scale=gains[others], offset=offsets[others],
                                       kappa=(3.0, 3.0), iterations=1)
        np.testing.assert_array_equal(image[corners], without.image[corners])
        np.testing.assert_array_equal(coverage[corners], np.sum([covs[k] for k in others], axis=0)[corners])
        # The EQ lot's samples in the same corners (its layout is lot 3's) do reach it.
        in_eq = corners & (covs[4] > 0)
        assert in_eq.sum() > 500
        assert (coverage[in_eq] >= covs[4][in_eq]).all()
        alone = stack_pixel_weighted(np.stack(tiles[:3]), np.stack(covs[:3]), "kappa_sigma", scale=gains[:3],
                                     offset=offsets[:3], kappa=(3.0, 3.0), iterations=1)
        assert np.isfinite(image[in_eq]).all() and np.mean(image[in_eq] != alone.image[in_eq]) > 0.9
        # Everywhere: the dense reference, lot 3 weighted by coverage × alpha, absent where alpha is 0.
        weights = np.stack(covs)
        weights[3] *= alpha
        masked = np.stack(tiles)
        masked[3][alpha == 0] = np.nan
        reference = stack_pixel_weighted(masked, weights, "kappa_sigma", scale=gains, offset=offsets,
                                         kappa=(3.0, 3.0), iterations=1)
        np.testing.assert_array_equal(image, reference.image)
        np.testing.assert_array_equal(coverage, weights.sum(axis=0, dtype=np.float32))
        # The stored alpha, made block by block, is classic's on the whole canvas.
        assert [e["altaz_zarr"] is not None for e in report["lots"]] == decisions
        np.testing.assert_array_equal(_read(root, report["lots"][3]["altaz_zarr"]), alpha)


def test_the_renormalisation_equals_the_dense_reference_on_the_cut_coverage(survey):
    from zdask.ops.masks import coverage_renormalisation_gain

    root, (sources, stats, exptimes, lots, canvas) = survey
    for budget in ("64KiB", "2MiB"):  # blocks of 16 px (a quarter of the Gaussian's reach) and 120 px
        with dask.config.set(scheduler="sync"):
            result = run_sds(sources, stats, exptimes, lots, canvas, 3, root,
                             sds_settings(budget=budget, coverage_renorm=True), say=lambda _: None)
            image, coverage = dask.compute(result.image, result.coverage)
        report = result.report
        assert report["coverage_renorm"] is True
        stacked, total = _read(root, f"{report['zarr']}/image"), _read(root, f"{report['zarr']}/coverage")
        threshold = np.float32(report["coverage_threshold"])
        cut = np.where(total >= threshold, total, np.float32(0))
        gain = coverage_renormalisation_gain(cut)  # on the whole canvas, in memory
        y0, y1, x0, x1 = report["crop_box"]
        kept = cut[y0:y1, x0:x1] > 0
        expected = np.where(kept[..., None], (stacked * gain[..., None])[y0:y1, x0:x1], np.nan)
        # (to float32 rounding: OpenCV's Gaussian rounds a pixel by its place in the window's
        # row, a few ulps of the gain; rtol 1e-6 is 8 ulps, the gain's deviations are 0.05+)
        np.testing.assert_allclose(image, expected, rtol=1e-6, atol=0)
        assert (np.isnan(image) == np.isnan(expected)).all()
        np.testing.assert_array_equal(coverage, cut[y0:y1, x0:x1])
        # (the gain does change the mosaic: coverage steps inside what the cut keeps)
        assert np.abs(gain[y0:y1, x0:x1][kept] - 1).max() > 0.05


def test_megatile_regions_cover_the_touched_blocks_once_within_the_budget():
    blocks = BlockGrid((1000, 1000), 100)   # 10 × 10 blocks of 100 px
    touched = [(i, j) for i in range(2, 7) for j in range(1, 9)] + [(9, 9)]
    per_block = (5 * 3 * 4 + 3 * 16 + 4) * 100 ** 2  # 5 frames, 3 channels: stack and outputs
    # A budget of 12 blocks: rows of 9 blocks (the box's width), one row per task; rows 7 and 8
    # hold no touched block and get no task.
    regions = megatile_regions(touched, blocks, 5, 3, 12 * per_block)
    assert regions == [((i, i + 1), (1, 10)) for i in (2, 3, 4, 5, 6, 9)]
    # Budget of 3 blocks: 3 blocks wide, 1 tall; budget under one block: one block per task.
    assert megatile_regions(touched, blocks, 5, 3, 3 * per_block)[0] == ((2, 3), (1, 4))
    assert megatile_regions(touched, blocks, 5, 3, per_block - 1)[0] == ((2, 3), (1, 2))
    for budget in (per_block - 1, 3 * per_block, 12 * per_block, 17 * per_block, 10 ** 12):
        regions = megatile_regions(touched, blocks, 5, 3, budget)
        held = [(i, j) for (i0, i1), (j0, j1) in regions for i in range(i0, i1) for j in range(j0, j1)]
        assert len(held) == len(set(held)) and set(touched) <= set(held)  # every touched block, once
        for (i0, i1), (j0, j1) in regions:
            assert (i1 - i0) * (j1 - j0) * per_block <= max(budget, per_block)
            assert any(i0 <= i < i1 and j0 <= j < j1 for i, j in touched)  # none without work
    assert megatile_regions([], blocks, 5, 3, 10 ** 9) == []
    # The canvas's last column of blocks is 50 px: its pixels, not a whole block, are counted.
    edge = BlockGrid((1000, 1050), 100)
    assert megatile_regions([(0, j) for j in range(11)], edge, 5, 3, 105 * per_block // 10) == [((0, 1), (0, 11))]
