"""The alignment stage: each group's frames registered to the group's reference frame.

Per group, one task catalogues the reference's stars and one task per frame matches its stars
against them (``zdask.graph.align``); the WCS a frame is placed by is its header WCS, or the
refined one when the header is off by more than ``align_threshold_px``. Frames that cannot be
aligned are excluded from their tile and listed in the report with the reason. Results are
kept in the working store and reused while the frame, its reference and the settings hold.
"""

from __future__ import annotations

import numpy as np
import zarr

from zdask.cluster import wait_with_progress
from zdask.graph.align import STATUS_EXCLUDED, AlignResult, AlignSource, align_frame, reference_catalogue
from zdask.graph.align_reference import reference_index
from zdask.io import store

ALIGN_VERSION = "align-v1"


def _stored(root: str, key: str, fp: str) -> AlignResult | None:
    try:
        attrs = zarr.open_group(root, path=f"align/{key}", mode="r").attrs
    except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError):
        return None
    if attrs.get("fingerprint") != fp:
        return None
    return AlignResult.from_json(attrs["result"])


def _store(root: str, key: str, fp: str, result: AlignResult) -> None:
    group = zarr.open_group(root, path=f"align/{key}", mode="a")
    group.attrs.update({"result": result.to_json(), "fingerprint": fp})


def align_and_keep(src: AlignSource, ref: AlignSource, catalogue: dict, fp: str,
                   threshold_px: float) -> AlignResult:
    """Worker task: align one frame and keep the result in the store (``align/<key>``)."""
    result = align_frame(src, ref, catalogue, wcs_threshold_px=threshold_px)
    _store(src.root, src.key, fp, result)
    return result


def run_align_stage(ctx, client, plan) -> None:
    """Fill ctx.aligned (refined WCS) and ctx.excluded (frames that could not be aligned)."""
    config = ctx.config
    if not config.align:
        return
    results: dict[str, AlignResult] = {}
    pending = []
    for group in plan.groups:
        # Frames already excluded (no usable signal) are neither aligned nor candidates for
        # the reference: one such frame chosen as reference would fail the whole group.
        frames = [ctx.frames[i] for i in group.frames if ctx.frames[i].path not in ctx.excluded]
        if not frames:
            continue
        sources = [AlignSource(f.path, ctx.root, *ctx.calibrated[f.path], f.wcs_header or None,
                               (f.height, f.width)) for f in frames]
        if not any(s.wcs_header for s in sources):
            for s in sources:
                results[s.path] = AlignResult(s.path, STATUS_EXCLUDED, None, None, 0,
                                              "no frame of its group has a celestial WCS")
            continue
        stats = [ctx.stats[f.path] for f in frames]
        n_stars = [st.n_stars for st in stats]
        ref = sources[reference_index(sources, [_mean_finite(st.noise) for st in stats],
                                      n_stars if min(n_stars) >= 0 else None,
                                      background=[_mean_finite(st.background) for st in stats])]
        todo = []
        for src in sources:
            fp = store.fingerprint(src.token, ref.token, config.align_threshold_px, ALIGN_VERSION)
            found = _stored(ctx.root, src.key, fp)
            if found is not None:
                results[src.path] = found
            else:
                todo.append((src, fp))
        if todo:
            catalogue = client.submit(reference_catalogue, ref, key=f"catalogue-{ref.token}")
            futures = [client.submit(align_and_keep, src, ref, catalogue, fp, config.align_threshold_px,
                                     key=f"align-{fp}") for src, fp in todo]
            pending.extend(zip(todo, futures))
    done = wait_with_progress([f for _, f in pending], "align", ctx.console)
    for ((src, _fp), _), result in zip(pending, done):
        results[src.path] = result
    counts: dict[str, int] = {}
    header_of = {f.path: f.wcs_header for f in ctx.frames}
    for path, result in results.items():
        counts[result.status] = counts.get(result.status, 0) + 1
        if result.status == STATUS_EXCLUDED:
            ctx.excluded[path] = result.reason or "alignment failed"
            ctx.say(f"excluded {path}: {ctx.excluded[path]}")
        elif result.wcs_header and result.wcs_header != header_of[path]:
            ctx.aligned[path] = result.wcs_header
    ctx.report["alignment"] = {
        "counts": counts,
        "frames": [r.to_json() for r in results.values() if r.status not in ("wcs", "reference")],
    }
    ctx.say("alignment: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))


def _mean_finite(values) -> float:
    """Mean of the finite per-channel values; NaN (no warning) when there are none."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else float("nan")

