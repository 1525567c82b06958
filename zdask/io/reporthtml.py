"""report.html: a run's report as one self-contained page, readable offline.

:func:`render_report_html` is a pure function of the report's values (what report.json holds)
and of the pictures the writer sampled while it streamed the mosaic (the stretched preview, the
coverage on the preview's pixels, the outline of each tile on them). Pictures are embedded as
``data:`` PNGs and the charts are inline SVG, so the page needs no network, no script and no
file beside it. Sections (each a ``<section id=...>``): ``summary``, ``preview`` (the tile
layout drawn over the mosaic), ``coverage`` (the coverage map, the same layout over it),
``tiles`` (per tile: frames, mount mode, cleanup, rejected fraction, gains), ``seams`` (the
seam metric before and after the photometric matching), ``timings`` (stage timings) and
``problems`` (the run's warnings, the frames excluded or rejected with their reasons).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: Largest side of a picture on the page (CSS pixels); the embedded PNGs are at most this wide
#: too, so a 4096-pixel preview does not make a page of tens of MB.
PICTURE_PX = 640

#: Colours of the channels in the charts (R, G, B; a single channel is grey).
_CHANNEL_COLOURS = ("#d62728", "#2ca02c", "#1f77b4")
_MONO_COLOUR = "#555555"

# A perceptually ordered colour map for the coverage (viridis' anchors, interpolated): dark
# where few frames cover the sky, yellow where most do.
_COVERAGE_MAP = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)],
                         dtype=np.float64)


@dataclass(frozen=True)
class TileOutline:
    """One tile (or lot, or cell) as drawn on the pictures: its id, its outline as (x, y)
    points in preview pixels (x right, y down from the top-left corner) and the short label
    drawn at its centre."""

    id: int
    points: tuple[tuple[float, float], ...]
    label: str


def render_report_html(report: dict, preview: np.ndarray | None, coverage: np.ndarray | None,
                       outlines: Sequence[TileOutline] = ()) -> str:
    """The page for ``report`` (a run's report.json values).

    ``preview``: the stretched 8-bit mosaic (rows, cols[, 3]), north up, or None; ``coverage``:
    frames per pixel on the same pixels (rows, cols), or None; ``outlines``: the tiles drawn
    over both, in their pixels.
    """
    mosaic = report.get("mosaic", {})
    parts = [_HEAD, "<body>", "<h1>zdask mosaic report</h1>",
             _section("summary", "Summary", _summary(report))]
    parts.append('<div class="pictures">')
    if preview is not None:
        parts.append(_section("preview", "Mosaic and tile layout", _picture(
            _png_data_uri(_rgb(preview)), preview.shape[:2], outlines, "the mosaic preview")))
    if coverage is not None:
        peak = float(np.nanmax(coverage)) if np.isfinite(coverage).any() else 0.0
        parts.append(_section("coverage", "Coverage (frames per pixel)", _picture(
            _png_data_uri(coverage_colours(coverage, peak)), coverage.shape[:2], outlines,
            "the coverage map") + _colour_bar(peak)))
    parts.append("</div>")
    parts.append(_section("tiles", "Tiles", _tiles_table(report.get("tiles", []))))
    parts.append(_section("seams", "Seam metric", _seam_chart(mosaic)))
    parts.append(_section("timings", "Stage timings", _timings_chart(report.get("stages", {}))))
    parts.append(_section("problems", "Warnings and excluded frames", _problems(report)))
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --- pictures -----------------------------------------------------------------------------------

def coverage_colours(coverage: np.ndarray, peak: float) -> np.ndarray:
    """(rows, cols, 3) uint8: the coverage map in colour, 0 → white (no frame), ``peak`` →
    the map's brightest colour."""
    values = np.nan_to_num(np.asarray(coverage, dtype=np.float64))
    scaled = np.clip(values / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(values)
    position = scaled * (len(_COVERAGE_MAP) - 1)
    low = np.minimum(position.astype(int), len(_COVERAGE_MAP) - 2)
    frac = (position - low)[..., None]
    rgb = _COVERAGE_MAP[low] * (1 - frac) + _COVERAGE_MAP[low + 1] * frac
    rgb[values <= 0] = 255.0
    return np.round(rgb).astype(np.uint8)


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.uint8)
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def _png_data_uri(rgb: np.ndarray) -> str:
    """A ``data:image/png`` URI of ``rgb`` (rows, cols, 3) uint8, at most PICTURE_PX wide."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    if picture.width > PICTURE_PX:
        height = max(1, round(picture.height * PICTURE_PX / picture.width))
        picture = picture.resize((PICTURE_PX, height), Image.Resampling.BOX)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _picture(uri: str, shape: tuple[int, int], outlines: Sequence[TileOutline], alt: str) -> str:
    """The image with the outlines over it, as one SVG in the image's own pixel units."""
    rows, cols = shape
    shown = PICTURE_PX / max(rows, cols)  # CSS pixels per picture pixel
    stroke, font = 1.5 / shown, 14 / shown  # as seen on the page
    shapes = []
    for outline in outlines:
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in outline.points)
        cx = float(np.mean([x for x, _ in outline.points]))
        cy = float(np.mean([y for _, y in outline.points]))
        shapes.append(f'<polygon class="tile" points="{points}" stroke-width="{stroke:.2f}"/>')
        shapes.append(f'<text class="tile-label" x="{cx:.1f}" y="{cy:.1f}" font-size="{font:.0f}" '
                      f'stroke-width="{stroke * 2:.1f}">{html.escape(outline.label)}</text>')
    return (f'<svg class="picture" viewBox="0 0 {cols} {rows}" width="{cols * shown:.0f}" '
            f'height="{rows * shown:.0f}" role="img" aria-label="{alt}">'
            f'<image href="{uri}" x="0" y="0" width="{cols}" height="{rows}" '
            f'preserveAspectRatio="none"/>{"".join(shapes)}</svg>')


def _colour_bar(peak: float) -> str:
    stops = "".join(f'<stop offset="{k / (len(_COVERAGE_MAP) - 1):.2f}" stop-color="rgb{tuple(int(v) for v in c)}"/>'
                    for k, c in enumerate(_COVERAGE_MAP))
    return ('<svg class="colour-bar" viewBox="0 0 420 40" role="img" aria-label="coverage scale">'
            f'<defs><linearGradient id="coverage-scale">{stops}</linearGradient></defs>'
            '<rect x="10" y="4" width="400" height="14" fill="url(#coverage-scale)"/>'
            '<text x="10" y="34">0 (white: no frame)</text>'
            f'<text x="410" y="34" text-anchor="end">{_number(peak)} frames</text></svg>')


# --- charts -------------------------------------------------------------------------------------

def _seam_chart(mosaic: dict) -> str:
    """Grouped bars per channel: the seam metric (spread of the tiles' medians) before and after
    matching, and the mean step across overlapping tile pairs before and after."""
    metrics = [(label, mosaic.get(before), mosaic.get(after)) for label, before, after in (
        ("spread of tile medians", "seam_before", "seam_after"),
        ("step between overlapping tiles", "pair_seam_before", "pair_seam_after"))]
    # (NaN where no two tiles overlap: nothing to measure)
    metrics = [(label, np.atleast_1d(b).astype(float), np.atleast_1d(a).astype(float))
               for label, b, a in metrics if b is not None and a is not None]
    metrics = [(label, b, a) for label, b, a in metrics if np.isfinite(np.concatenate([b, a])).any()]
    if not metrics:
        return "<p>No seam metric: no two tiles of the mosaic overlap.</p>"
    charts = []
    for label, before, after in metrics:
        both = np.concatenate([before, after])
        top = max(float(both[np.isfinite(both)].max()), 1e-12)
        colours = _CHANNEL_COLOURS if len(before) == 3 else (_MONO_COLOUR,) * len(before)
        width, height, base = 420, 190, 160
        bars, x = [], 20
        for c, (b, a) in enumerate(zip(before, after)):
            for kind, value, opacity in (("before", b, 0.35), ("after", a, 1.0)):
                h = (base - 20) * (value / top if np.isfinite(value) else 0.0)
                bars.append(f'<rect class="bar {kind}" x="{x}" y="{base - h:.1f}" width="40" height="{h:.1f}" '
                            f'fill="{colours[c]}" fill-opacity="{opacity}"><title>{kind}: {_number(value)}</title></rect>'
                            f'<text x="{x + 20}" y="{base - h - 4:.1f}" text-anchor="middle" font-size="11">'
                            f'{_number(value)}</text>'
                            f'<text x="{x + 20}" y="{base + 14}" text-anchor="middle" font-size="11">{kind}</text>')
                x += 44
            x += 30
        charts.append(f'<figure><svg class="chart" viewBox="0 0 {width} {height}" role="img" '
                      f'aria-label="{label}">{"".join(bars)}'
                      f'<line x1="10" y1="{base}" x2="{width - 10}" y2="{base}" stroke="#333"/></svg>'
                      f'<figcaption>{html.escape(label)} per channel (ADU), before (pale) and after '
                      f'(solid) the photometric matching</figcaption></figure>')
    return '<div class="charts">' + "".join(charts) + "</div>"


def _timings_chart(stages: dict) -> str:
    """Horizontal bars of the stage timings (seconds), total below."""
    items = [(name, float(seconds)) for name, seconds in stages.items() if name != "total"]
    if not items:
        return "<p>No stage timings.</p>"
    top = max(max(s for _, s in items), 1e-9)
    row, label_w, bar_w = 24, 110, 560
    bars = []
    for k, (name, seconds) in enumerate(items):
        y = 6 + k * row
        w = bar_w * seconds / top
        bars.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{html.escape(name)}</text>'
                    f'<rect class="bar timing" x="{label_w}" y="{y}" width="{w:.1f}" height="{row - 6}" '
                    f'fill="#4c72b0"><title>{html.escape(name)}: {seconds:.2f} s</title></rect>'
                    f'<text x="{label_w + w + 6:.1f}" y="{y + 15}">{seconds:.2f} s</text>')
    height = 12 + len(items) * row
    total = stages.get("total", sum(s for _, s in items))
    return (f'<svg class="chart" viewBox="0 0 {label_w + bar_w + 80} {height}" role="img" '
            f'aria-label="stage timings">{"".join(bars)}</svg><p>Total {float(total):.2f} s.</p>')


# --- tables and lists -----------------------------------------------------------------------------

def _summary(report: dict) -> str:
    mosaic = report.get("mosaic", {})
    shape = mosaic.get("shape")
    rows = [
        ("mode", report.get("mode")),
        ("inputs", ", ".join(report.get("inputs", []))),
        ("frames in the mosaic", report.get("frames_used")),
        ("tiles", len(report.get("tiles", []))),
        ("mosaic size", f"{shape[1]} × {shape[0]} px, {mosaic.get('channels', '?')} channel(s)" if shape else None),
        ("scale", f"{_number(mosaic['scale_arcsec'])} arcsec/px" if "scale_arcsec" in mosaic else None),
        ("covered", f"{mosaic['covered_fraction']:.1%}" if "covered_fraction" in mosaic else None),
        ("sky model", (mosaic.get("sky_model") or {}).get("description")),
        ("total time", f"{report['stages']['total']:.2f} s" if "total" in report.get("stages", {}) else None),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows if v is not None)
    return f'<table class="summary">{body}</table>'


def _tiles_table(tiles: list) -> str:
    if not tiles:
        return "<p>No tiles.</p>"
    head = ("tile", "frames", "excluded", "mount mode", "cleanup", "rejected", "RGB gains", "gains",
            "offsets", "status")
    rows = []
    for t in tiles:
        cleanup = "on" if t.get("altaz_cleanup") else "off"
        if t.get("altaz_cleanup"):
            cleanup += ", applied" if t.get("alpha_applied") else f", not applied ({t.get('alpha_note') or '-'})"
        rejected = t.get("rejected_fraction")
        status = "reused" if t.get("reused") else "computed"
        if not t.get("healthy", True):
            status = f"left out: {t.get('health_reason') or 'unhealthy'}"
        cells = (t.get("id"), t.get("n_frames", len(t.get("frames", []))), len(t.get("frames_excluded", [])),
                 t.get("mode"), cleanup, f"{rejected:.2%}" if rejected is not None else "-",
                 _numbers(t.get("rgb_gains")), _numbers(t.get("gains")), _numbers(t.get("offsets")), status)
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in head)
    return f'<table class="tiles"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _problems(report: dict) -> str:
    warnings = report.get("warnings", [])
    excluded = list(report.get("frames_excluded", []))
    for tile in report.get("tiles", []):
        excluded += [{**e, "reason": f"{e['reason']} (tile {tile.get('id')})"}
                     for e in tile.get("frames_excluded", []) if e not in excluded]
    rejected = report.get("frames_rejected", [])
    parts = ["<h3>Warnings</h3>"]
    parts.append(_list([html.escape(w) for w in warnings]) if warnings else "<p>None.</p>")
    parts.append(f"<h3>Frames excluded from the mosaic ({len(excluded)})</h3>")
    parts.append(_list([f"<code>{html.escape(e['path'])}</code>: {html.escape(e['reason'])}" for e in excluded])
                 if excluded else "<p>None.</p>")
    parts.append(f"<h3>Files rejected when reading ({len(rejected)})</h3>")
    parts.append(_list([f"<code>{html.escape(r['path'])}</code>: {html.escape(r['reason'])}" for r in rejected])
                 if rejected else "<p>None.</p>")
    return "".join(parts)


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'


def _number(value) -> str:
    value = float(value)
    if not np.isfinite(value):
        return str(value)
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _numbers(values) -> str:
    return "-" if not values else ", ".join(_number(v) for v in values)


_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>zdask mosaic report</title>
<style>
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; background: #fff; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: left; vertical-align: top; }
thead th, table.summary th { background: #f2f2f2; }
div.pictures { display: flex; flex-wrap: wrap; gap: 0 2em; }
svg.picture { display: block; background: #000; }
svg.colour-bar { width: 420px; height: 40px; font-size: 12px; }
svg.chart { width: 100%; max-width: 760px; height: auto; font-size: 12px; }
div.charts { display: flex; flex-wrap: wrap; gap: 1em; } div.charts figure { width: 420px; margin: 0; }
polygon.tile { fill: none; stroke: #ffdd00; stroke-opacity: .9; }
text.tile-label { fill: #ffdd00; stroke: #000; paint-order: stroke; text-anchor: middle; dominant-baseline: middle; font-weight: bold; }
code { font-size: .85em; }
</style></head>"""
