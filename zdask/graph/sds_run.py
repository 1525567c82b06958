"""The whole SDS chain on calibrated, aligned frames and a canvas: lots → mega-tiles → gain match
→ global stack → polish. What the SDS mode's build calls (the graph pieces are in
:mod:`zdask.graph.sds`, the lots come from :mod:`zdask.graph.sds_plan`).

Each finished mega-tile and global stack is marked complete in the store with its fingerprint
(its frames, the canvas, the settings), so a second run reuses them as the master-tile stage
reuses tiles.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import dask
import numpy as np

from zdask.graph import sds
from zdask.graph.geometry import Grid
from zdask.graph.sds_plan import Lot
from zdask.graph.sds_polish import ALTAZ_PARAMS, altaz_outcome, altaz_tasks, create_alpha_store
from zdask.graph.tiles import TileSource, release_worker_memory, stack_spec
from zdask.io import store
from zdask.ops.framestats import FrameStats
from zdask.ops.lotgain import GAIN_METHODS, reference_lot
from zdask.ops.seams import seam_metric

__all__ = ["SdsError", "SdsSettings", "SdsResult", "run_sds"]

GLOBAL_METHODS = ("kappa_sigma", "winsorized")


class SdsError(Exception):
    """SDS cannot make a mosaic of these frames (the message is the one-line reason); the mode
    falls back to classic and names this reason in the report."""


@dataclass(frozen=True)
class SdsSettings:
    """Every number the chain uses (the SDS mode fills it from the run's configuration).

    Frames inside a lot: ``method`` (a :data:`zdask.ops.stacking.METHODS` name) with ``params``,
    ``normalization``, ``weights`` and ``warp_grid_step`` as for master tiles. Mega-tiles:
    ``global_method`` (``kappa_sigma`` | ``winsorized``) with ``global_params``; the gain from
    ``gain_method`` (``sources`` | ``medians``, :mod:`zdask.ops.lotgain`) over pixels both
    cover above ``gain_min_fraction`` of their peaks. Polish: the lots that the caller names
    get the alt-az cleanup with ``altaz`` (``min_abs``, ``min_frac``, ``opening_px``,
    ``ramp_px``: :func:`zdask.ops.masks.altaz_alpha`'s) before the global stack; after it,
    pixels below ``min_coverage_keep`` × the peak coverage are cut, the image renormalised with
    ``coverage_renorm``, then ``autocrop``. ``budget`` (bytes or
    "256MiB") bounds one block task; ``bin_factor`` (px) bins the mega-tiles for the gain match
    and the crop; ``max_block`` (px) caps the blocks' side.
    """

    method: str
    params: dict
    normalization: str
    weights: str
    warp_grid_step: int
    global_method: str
    global_params: dict
    gain_method: str
    gain_min_fraction: float
    min_coverage_keep: float
    autocrop: bool
    budget: str | int
    bin_factor: int
    max_block: int
    altaz: dict
    coverage_renorm: bool

    @classmethod
    def from_config(cls, config, *, global_method: str, gain_method: str, gain_min_fraction: float,
                    min_coverage_keep: float) -> SdsSettings:
        """The frames' stacking, budget, binning and crop as the run's :class:`zdask.config.Config`
        has them (as for master tiles), with the SDS knobs given (they will live in ``[sds]``)."""
        from zdask.graph.tiles import method_parameters

        global_params = {"kappa": config.kappa, "iterations": config.iterations} \
            if global_method == "kappa_sigma" else {"kappa": config.kappa}
        return cls(config.reject, method_parameters(config), config.normalization, config.weights,
                   config.warp_grid_step, global_method, global_params, gain_method, gain_min_fraction,
                   min_coverage_keep, config.autocrop, config.budget, config.match_bin, config.canvas_block,
                   {"min_abs": config.altaz_min_abs, "min_frac": config.altaz_min_frac,
                    "opening_px": config.altaz_opening_px, "ramp_px": config.altaz_ramp_px}, config.coverage_renorm)

    def check(self) -> None:
        """ValueError naming the setting when one is out of range."""
        if self.global_method not in GLOBAL_METHODS:
            raise ValueError(f"global_method must be one of {', '.join(GLOBAL_METHODS)}; got {self.global_method!r}")
        if self.gain_method not in GAIN_METHODS:
            raise ValueError(f"gain_method must be one of {', '.join(GAIN_METHODS)}; got {self.gain_method!r}")
        if not 0.0 <= self.min_coverage_keep <= 1.0:
            raise ValueError(f"min_coverage_keep must be in [0, 1]; got {self.min_coverage_keep!r}")
        if int(self.bin_factor) != self.bin_factor or self.bin_factor < 1:
            raise ValueError(f"bin_factor must be an integer >= 1; got {self.bin_factor!r}")
        if self.max_block < self.bin_factor:
            raise ValueError(f"max_block must be >= bin_factor ({self.bin_factor}); got {self.max_block!r}")
        if set(self.altaz) != set(ALTAZ_PARAMS):
            raise ValueError(f"altaz must give {', '.join(ALTAZ_PARAMS)}; got {', '.join(self.altaz)}")


@dataclass(frozen=True)
class SdsResult:
    """The polished mosaic as lazy arrays on ``grid`` (the cropped canvas), and the report."""

    image: object      # dask array (h, w, C) float32, NaN where cut or uncovered
    coverage: object   # dask array (h, w) float32
    alpha: object      # dask array (h, w) uint8
    grid: Grid
    report: dict


def _compute(tasks: list, client) -> list:
    if client is not None:
        return client.gather(client.compute(tasks))
    return list(dask.compute(*tasks)) if tasks else []


def run_sds(
    sources: Sequence[TileSource], stats: Sequence[FrameStats], exptimes: Sequence[float | None],
    lots: Sequence[Lot], canvas: Grid, channels: int, root: str, settings: SdsSettings, *,
    paths: Sequence[str] | None = None, altaz_lots: Collection[int] = (), client=None,
    say: Callable[[str], None] = print,
) -> SdsResult:
    """Mega-tile per lot, gain match, global stack, polish; raises :class:`SdsError` when no
    mosaic comes out (no lot, no frame on the canvas, every pixel cut).

    Parameters
    ----------
    sources, stats, exptimes : sequences, one entry per frame
        The calibrated, aligned frames (their Zarr arrays under ``root``), their statistics and
        exposure times; ``lots`` index into them.
    lots : sequence of Lot
        From :func:`zdask.graph.sds_plan.plan_lots`.
    canvas : Grid
        The global canvas (every mega-tile is warped straight onto it).
    channels : int
        Channels of the calibrated frames.
    root : str
        The run's working Zarr store.
    settings : SdsSettings
    paths : sequence of str, optional
        The frames' file names, for the report (else their indices).
    altaz_lots : collection of int
        Ids of the lots whose mega-tile gets the alt-az cleanup (the mode's per-lot decision:
        ALT_AZ lots, when asked).
    client : dask.distributed.Client, optional
        Computes on it; else on dask's configured scheduler.
    say : callable
        Receives the log lines (one per lot, the reference, the gains' range).

    Returns
    -------
    SdsResult
        Report keys: ``lots`` (per lot ``id``, ``mode``, ``frames``, ``seconds``, ``gain``,
        ``offset``, ``gain_fitted``, ``rejected_fraction``, ``coverage_sum``, ``reused``,
        ``altaz_cleanup``, ``altaz_applied``, ``altaz_note``, ``altaz_zarr``: its alpha array),
        ``coverage_renorm``,
        ``reference`` and ``reference_median``, ``gain_method`` and why, ``median_spread_before``
        / ``_after`` (per channel), ``block_side``, ``global_rejected_fraction``,
        ``coverage_threshold``, ``crop_box``, ``shape``, ``zarr`` (the global stack's group; each
        lot's ``zarr`` is its mega-tile's).
    """
    settings.check()
    lots = [lot for lot in lots if lot.frames]
    if not lots:
        raise SdsError("no SDS lot: no usable frame")
    factor = int(settings.bin_factor)
    side = sds.block_side(settings.budget, max(len(lot.frames) for lot in lots), len(lots), channels, factor,
                          settings.max_block)
    blocks = sds.BlockGrid(tuple(canvas.shape), side)
    frame_settings = (settings.method, settings.params, settings.normalization, settings.weights,
                      settings.warp_grid_step)

    # 1. One mega-tile per lot (all lots' blocks in flight at once on a client).
    pending, megatiles, reused = [], [None] * len(lots), set()

    def log(k: int) -> None:
        lot, tile = lots[k], megatiles[k]
        say(f"SDS lot {k + 1}/{len(lots)} (id {lot.id}, {lot.mode}): {len(lot.frames)} frames, "
            f"{len(tile.blocks)} canvas blocks, {tile.seconds:.1f} s{' (reused)' if k in reused else ''}")

    for k, lot in enumerate(lots):
        lot_sources = [sources[i] for i in lot.frames]
        touched = sds.lot_blocks(lot_sources, canvas, blocks)
        backgrounds = [None if s.background is None else s.background.digest() for s in lot_sources]
        fp = store.fingerprint([s.token for s in lot_sources], [s.sky for s in lot_sources], backgrounds,
                               [s.wcs_header for s in lot_sources], canvas.to_json(), channels, frame_settings,
                               side, factor)
        name = f"sds/lots/{fp}"
        if store.is_complete(root, name, fp):
            megatiles[k] = sds.MegaTile(**_tile_fields(store.open_group(root, name).attrs["megatile"]))
            reused.add(k)
            log(k)
            continue
        spec = stack_spec(lot_sources, [stats[i] for i in lot.frames], [exptimes[i] for i in lot.frames],
                          canvas.wcs_header, settings.warp_grid_step, channels, settings.method, settings.params,
                          settings.normalization, settings.weights)
        store.begin_entry(root, name)
        sds.create_megatile_store(root, name, blocks, channels, factor)
        pending.append((k, name, fp, touched, sds.megatile_tasks(spec, root, name, blocks, touched, factor,
                                                                         settings.budget)))
    futures = [client.compute(tasks) for *_, tasks in pending] if client is not None else None
    for n, (k, name, fp, touched, tasks) in enumerate(pending):  # (logged in lot order as they finish)
        results = client.gather(futures[n]) if client is not None else _compute(tasks, None)
        megatiles[k] = sds.summarise_megatile(name, touched, results)
        store.mark_complete(root, name, fp, megatile=_tile_json(megatiles[k]))
        log(k)
    if client is not None:
        client.run(release_worker_memory)
    release_worker_memory()

    # 1b. The alt-az alpha of each mega-tile that gets the cleanup (None: the lot's coverage as is).
    alphas, altaz = _altaz_alphas(lots, megatiles, set(altaz_lots), root, blocks, settings.altaz, client, say)

    # 2. Gain match against the mega-tile with the largest summed coverage.
    try:
        ref = reference_lot([t.coverage_sum for t in megatiles])
    except ValueError:
        raise SdsError("no lot's frames cover the canvas: every mega-tile is empty") from None
    gain_tasks = [dask.delayed(sds.lot_gain, pure=True)(root, megatiles[ref], tile,
                                                        "medians" if k == ref else settings.gain_method,
                                                        settings.gain_min_fraction)
                  for k, tile in enumerate(megatiles)]
    gains = _compute(gain_tasks, client)
    gain = [np.ones(channels, np.float32) if k == ref else g.gain for k, g in enumerate(gains)]
    offset = [np.zeros(channels, np.float32) if k == ref else g.offset for k, g in enumerate(gains)]
    fallbacks = [k for k, g in enumerate(gains) if k != ref and not g.fitted.all()]
    for k in fallbacks:
        say(f"SDS lot {lots[k].id}: gain 1.0 kept on channel(s) "
            f"{np.flatnonzero(~gains[k].fitted).tolist()}: {gains[k].reason}")
    ref_median = gains[ref].median_reference
    before = seam_metric([g.median for g in gains])
    after = seam_metric([g.median * gn + o for g, gn, o in zip(gains, gain, offset)])
    stacked_gains = np.array(gain)
    say(f"SDS reference lot {lots[ref].id} (median {np.round(ref_median, 3).tolist()}); gains "
        f"min {np.round(stacked_gains.min(axis=0), 4).tolist()} max {np.round(stacked_gains.max(axis=0), 4).tolist()}")

    # 3. The global stack, block by block, each block holding only the lots that touch it.
    stack_fp = store.fingerprint([t.name for t in megatiles], [g.tolist() for g in gain], [o.tolist() for o in offset],
                                 alphas, settings.global_method, settings.global_params, side, factor)
    stack_name = f"sds/stack/{stack_fp}"
    if store.is_complete(root, stack_name, stack_fp):
        summary = dict(store.open_group(root, stack_name).attrs["summary"])
    else:
        store.begin_entry(root, stack_name)
        sds.create_stack_store(root, stack_name, blocks, channels, factor)
        parts = _compute(sds.global_stack_tasks(list(zip(megatiles, gain, offset, alphas)), root, stack_name, blocks,
                                                settings.global_method, settings.global_params, channels, factor),
                         client)
        summary = {"peak": max((p["peak"] for p in parts), default=0.0), "kept": sum(p["kept"] for p in parts),
                   "rejected": sum(p["rejected"] for p in parts), "seconds": sum(p["seconds"] for p in parts)}
        store.mark_complete(root, stack_name, stack_fp, summary=summary)
    if not summary["peak"] > 0:
        raise SdsError("the global stack of the mega-tiles covers no pixel")

    # 4. Polish: coverage cut, coverage renormalisation, autocrop, alpha.
    threshold = float(np.float32(settings.min_coverage_keep * summary["peak"]))
    box = sds.crop_box(root, stack_name, threshold, tuple(canvas.shape), factor, settings.autocrop)
    if box is None:
        raise SdsError(f"no pixel reaches the coverage cut ({settings.min_coverage_keep} x the peak "
                       f"{summary['peak']:.3g})")
    polished = sds.polished_arrays(root, stack_name, canvas, box, threshold, settings.coverage_renorm)

    total = summary["kept"] + summary["rejected"]
    report = {
        "lots": [{"id": lot.id, "mode": lot.mode,
                  "frames": [paths[i] for i in lot.frames] if paths is not None else list(lot.frames),
                  "seconds": round(tile.seconds, 3), "gain": [float(v) for v in gain[k]],
                  "offset": [float(v) for v in offset[k]], "gain_fitted": [bool(v) for v in gains[k].fitted] if k != ref
                  else [True] * channels, "rejected_fraction": tile.rejected / max(1, tile.kept + tile.rejected),
                  "coverage_sum": tile.coverage_sum, "blocks": len(tile.blocks), "zarr": tile.name,
                  "reused": k in reused, **altaz[k]}
                 for k, (lot, tile) in enumerate(zip(lots, megatiles))],
        "reference": lots[ref].id, "reference_median": ref_median.tolist(),
        "gain_method": settings.gain_method, "gain_method_reason": _GAIN_REASONS[settings.gain_method],
        "gain_fallbacks": [lots[k].id for k in fallbacks],
        "median_spread_before": before.tolist(), "median_spread_after": after.tolist(),
        "block_side": side, "global_method": settings.global_method,
        "global_rejected_fraction": summary["rejected"] / total if total else 0.0,
        "coverage_peak": summary["peak"], "coverage_threshold": threshold,
        "coverage_renorm": settings.coverage_renorm, "crop_box": list(box),
        "shape": list(polished["grid"].shape), "zarr": stack_name,
    }
    return SdsResult(polished["image"], polished["coverage"], polished["alpha"], polished["grid"], report)


def _altaz_alphas(lots, megatiles, asked: set[int], root: str, blocks, params: dict, client, say):
    """Per lot: its alt-az alpha array (None: no cleanup, or the guard kept its coverage) and
    its report entries. Each alpha is stored once under ``sds/altaz/<fp>`` (the mega-tile, the
    lot's frame count, the mask's settings, the blocks) and reused by a re-run."""
    paths = [None] * len(lots)
    notes = [{"altaz_cleanup": lot.id in asked, "altaz_applied": False, "altaz_note": None, "altaz_zarr": None}
             for lot in lots]
    counts, pending = {}, []
    for k, (lot, tile) in enumerate(zip(lots, megatiles)):
        if lot.id not in asked:
            continue
        fp = store.fingerprint(tile.name, len(lot.frames), params, blocks.side)
        name = f"sds/altaz/{fp}"
        if store.is_complete(root, name, fp):
            counts[k] = (name, dict(store.open_group(root, name).attrs["counts"]))
            continue
        store.begin_entry(root, name)
        create_alpha_store(root, name, blocks.shape, blocks.side)
        pending.append((k, name, fp, altaz_tasks(root, tile.name, name, blocks, tile.blocks, len(lot.frames),
                                                 tile.coverage_peak, params)))
    results = iter(_compute([t for *_, tasks in pending for t in tasks], client))
    for k, name, fp, tasks in pending:
        parts = [next(results) for _ in tasks]
        total = {"kept": sum(p["kept"] for p in parts), "covered": sum(p["covered"] for p in parts)}
        store.mark_complete(root, name, fp, counts=total)
        counts[k] = (name, total)
    for k, (name, total) in sorted(counts.items()):
        applied, note = altaz_outcome([total])
        paths[k] = f"{name}/alpha" if applied else None
        notes[k].update(altaz_applied=applied, altaz_note=note, altaz_zarr=paths[k])
        say(f"SDS lot {lots[k].id}: alt-az cleanup {'applied' if applied else 'not applied'}: {note}")
    return paths, notes


_GAIN_REASONS = {
    "sources": "gains from compact sources (classic's tile photometry) and offsets from the sky: transparency "
               "scales the signal, not the sky glow, which dominates a median ratio",
    "medians": "gain = median_ref / median over the common coverage (the ancestor's rule; no offset)",
}


def _tile_json(tile: sds.MegaTile) -> dict:
    return {"name": tile.name, "blocks": [list(b) for b in tile.blocks], "coverage_sum": tile.coverage_sum,
            "coverage_peak": tile.coverage_peak, "kept": tile.kept, "rejected": tile.rejected,
            "seconds": tile.seconds}


def _tile_fields(data: dict) -> dict:
    return {**data, "blocks": tuple(tuple(int(v) for v in b) for b in data["blocks"])}

