"""The alignment stage: each group's frames registered to the group's reference frame.

Per group, one task catalogues the reference's stars and one task per frame matches its stars
against them (``zdask.graph.align``); the WCS a frame is placed by is its header WCS, or the
refined one when the header is off by more than ``align_threshold_px``. Frames that cannot be
aligned are excluded from their tile and listed in the report with the reason. Results are
kept in the working store and reused while the frame, its reference and the settings hold.
"""

from __future__ import annotations

import os

import numpy as np
import zarr

from zdask.cluster import wait_with_progress
from zdask.graph.align import STATUS_EXCLUDED, AlignResult, AlignSource, align_frame, reference_catalogue
from zdask.graph.align_reference import reference_index
from zdask.graph.taskkeys import task_key
from zdask.io import store

ALIGN_VERSION = "align-v1"


def _stored(root: str, key: str, fp: str) -> AlignResult | None:
    try:
        attrs = store.open_group(root, f"align/{key}").attrs
    except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError):
        return None
    if attrs.get("fingerprint") != fp:
        return None
    return AlignResult.from_json(attrs["result"])


def _store(root: str, key: str, fp: str, result: AlignResult) -> None:
    group = store.open_group(root, f"align/{key}", "a")
    group.attrs.update({"result": result.to_json(), "fingerprint": fp})


def align_and_keep(src: AlignSource, ref: AlignSource, catalogue: dict, fp: str,
                   threshold_px: float) -> AlignResult:
    """Worker task: align one frame and keep the result in the store (``align/<key>``)."""
    result = align_frame(src, ref, catalogue, wcs_threshold_px=threshold_px)
    _store(src.root, src.key, fp, result)
    return result


def align_frames(frames: list, groups, calibrated: dict, stats: dict, excluded: dict, config, client, work
                 ) -> tuple[dict[str, dict], dict[str, str], dict]:
    """Each group's frames registered to its reference. Returns (path → refined WCS cards, path
    → why the frame could not be aligned, the alignment's report)."""
    results: dict[str, AlignResult] = {}
    pending = []
    settings = config.stage_digest("align")
    for group in groups:
        # Frames already excluded (no usable signal) are neither aligned nor candidates for
        # the reference: one such frame chosen as reference would fail the whole group.
        members = [frames[i] for i in group.frames if frames[i].path not in excluded]
        if not members:
            continue
        sources = [AlignSource(f.path, work.root, *calibrated[f.path], f.wcs_header or None,
                               (f.height, f.width)) for f in members]
        if not any(s.wcs_header for s in sources):
            for s in sources:
                results[s.path] = AlignResult(s.path, STATUS_EXCLUDED, None, None, 0,
                                              "no frame of its group has a celestial WCS")
            continue
        group_stats = [stats[f.path] for f in members]
        n_stars = [st.n_stars for st in group_stats]
        ref = sources[reference_index(sources, [_mean_finite(st.noise) for st in group_stats],
                                      n_stars if min(n_stars) >= 0 else None,
                                      background=[_mean_finite(st.background) for st in group_stats])]
        todo = []
        for src in sources:
            fp = store.fingerprint(src.token, ref.token, settings, ALIGN_VERSION)
            found = _stored(work.root, src.key, fp)
            if found is not None:
                results[src.path] = found
            else:
                todo.append((src, fp))
        if todo:
            catalogue = client.submit(reference_catalogue, ref, key=task_key("reference-catalogue", os.path.basename(ref.path),
                                                                                  ref.token))
            futures = [client.submit(align_and_keep, src, ref, catalogue, fp, config.align_threshold_px,
                                     key=task_key("align", os.path.basename(src.path), fp)) for src, fp in todo]
            pending.extend(zip(todo, futures))
    done = wait_with_progress([f for _, f in pending], "align", work.console)
    for ((src, _fp), _), result in zip(pending, done):
        results[src.path] = result
    counts: dict[str, int] = {}
    header_of = {f.path: f.wcs_header for f in frames}
    aligned, failed = {}, {}
    for path, result in results.items():
        counts[result.status] = counts.get(result.status, 0) + 1
        if result.status == STATUS_EXCLUDED:
            failed[path] = result.reason or "alignment failed"
            work.say(f"excluded {path}: {failed[path]}")
        elif result.wcs_header and result.wcs_header != header_of[path]:
            aligned[path] = result.wcs_header
    report = {
        "counts": counts,
        "frames": [r.to_json() for r in results.values() if r.status not in ("wcs", "reference")],
    }
    work.say("alignment: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return aligned, failed, report


def _mean_finite(values) -> float:
    """Mean of the finite per-channel values; NaN (no warning) when there are none."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else float("nan")

