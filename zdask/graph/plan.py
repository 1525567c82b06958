"""Master-tile planner: a pure function of the frame table and parameters.

Frames are grouped into master tiles by the positions of their centres on the
sky: a group is a connected component of the graph linking two frames whose
centres lie within ``link_radius_deg`` of each other (single linkage), built
separately for each mount mode so no group mixes EQ, ALT_AZ and UNKNOWN
frames.  Components larger than ``max_group_size`` are cut into consecutive
runs in time of near-equal size.

No I/O and no dask here; only the ``Frame`` attributes ``ra_deg``,
``dec_deg``, ``fov_deg``, ``time_mjd``, ``mount`` and ``path`` are used.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from zdask.io.scan import MOUNT_ALTAZ, MOUNT_EQ, MOUNT_UNKNOWN, Frame
from zdask.ops.unionfind import UnionFind

__all__ = ["TileGroup", "Plan", "plan_master_tiles", "infer_group_mode", "summarize", "spread_evenly"]

_MODES = (MOUNT_EQ, MOUNT_ALTAZ, MOUNT_UNKNOWN)
#: cell pairs with at most this many cross point pairs are tested vectorised
_LIGHT_PAIR_WORK = 64


def spread_evenly(count: int, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` of ``count`` items, spread evenly from the first to the
    last (all of them when ``limit`` is 0 or not smaller than ``count``). Pure."""
    if limit <= 0 or count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(int))


@dataclass(frozen=True)
class TileGroup:
    id: int
    mode: str
    frames: tuple[int, ...]  # indices into the frame sequence, sorted by time
    ra_deg: float
    dec_deg: float

    def to_json(self, frames: Sequence[Frame]) -> dict:
        return {
            "id": self.id,
            "mode": self.mode,
            "n_frames": len(self.frames),
            "ra_deg": self.ra_deg,
            "dec_deg": self.dec_deg,
            "frames": list(self.frames),
            "paths": [frames[i].path for i in self.frames],
        }


@dataclass(frozen=True)
class Plan:
    groups: tuple[TileGroup, ...]
    link_radius_deg: float

    def to_json(self, frames: Sequence[Frame]) -> dict:
        return {
            "link_radius_deg": self.link_radius_deg,
            "n_groups": len(self.groups),
            "n_frames": sum(len(g.frames) for g in self.groups),
            "groups": [g.to_json(frames) for g in self.groups],
        }

    @classmethod
    def from_json(cls, data: dict) -> Plan:
        groups = tuple(
            TileGroup(int(g["id"]), str(g["mode"]), tuple(int(i) for i in g["frames"]),
                      float(g["ra_deg"]), float(g["dec_deg"]))
            for g in data["groups"]
        )
        return cls(groups=groups, link_radius_deg=float(data["link_radius_deg"]))


def infer_group_mode(frames: Sequence[Frame]) -> str:
    """EQ if all frames are EQ, ALT_AZ if all are ALT_AZ, else (or empty) UNKNOWN."""
    modes = {f.mount for f in frames}
    if modes == {MOUNT_EQ}:
        return MOUNT_EQ
    if modes == {MOUNT_ALTAZ}:
        return MOUNT_ALTAZ
    return MOUNT_UNKNOWN


def unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    cd = np.cos(dec)
    return np.column_stack([cd * np.cos(ra), cd * np.sin(ra), np.sin(dec)])


def _to_radec(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) in degrees of (n, 3) vectors (need not be unit length)."""
    x, y, z = vec[:, 0], vec[:, 1], vec[:, 2]
    return np.degrees(np.arctan2(y, x)) % 360.0, np.degrees(np.arctan2(z, np.hypot(x, y)))


def _split_even(members: list[int], max_size: int) -> list[list[int]]:
    """ceil(n / max_size) consecutive runs whose sizes differ by at most one."""
    n_parts = -(-len(members) // max_size)
    base, extra = divmod(len(members), n_parts)
    out, start = [], 0
    for k in range(n_parts):
        stop = start + base + (1 if k < extra else 0)
        out.append(members[start:stop])
        start = stop
    return out


def linked_components(xyz: np.ndarray, chord: float) -> np.ndarray:
    """Labels of the connected components of points linked within ``chord``.

    Exact single linkage in O(n log n) even for thousands of frames on one
    spot: points are binned into cubes of diagonal < chord (points sharing a
    cube are linked for free), then only pairs of nearby cubes are tested,
    vectorised for small cubes and with a KD-tree for crowded ones.
    """
    n = len(xyz)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    limit = chord * (1.0 + 1e-12)
    side = chord / math.sqrt(3.0) * (1.0 - 1e-9)
    cells, cell_of = np.unique(np.floor(xyz / side).astype(np.int64), axis=0, return_inverse=True)
    cell_of = cell_of.ravel()
    m = len(cells)
    order = np.argsort(cell_of, kind="stable")
    pts = xyz[order]  # grouped by cell
    counts = np.bincount(cell_of, minlength=m)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # linked points differ by < 2 cells per axis (chord < 2 * side)
    pairs = cKDTree(cells.astype(float)).query_pairs(r=2.0, p=np.inf, output_type="ndarray")
    pairs = pairs.reshape(-1, 2).astype(np.int64)
    work = counts[pairs[:, 0]] * counts[pairs[:, 1]]
    light, heavy = pairs[work <= _LIGHT_PAIR_WORK], pairs[work > _LIGHT_PAIR_WORK]

    edges = np.zeros((0, 2), dtype=np.int64)
    if len(light):
        a, b = light[:, 0], light[:, 1]
        nb = counts[b]
        w = counts[a] * nb
        pid = np.repeat(np.arange(len(light)), w)
        off = np.arange(int(w.sum())) - np.repeat(np.cumsum(w) - w, w)
        i = starts[a][pid] + off // nb[pid]
        j = starts[b][pid] + off % nb[pid]
        hit = np.einsum("ij,ij->i", pts[i] - pts[j], pts[i] - pts[j]) <= limit * limit
        edges = light[np.unique(pid[hit])]
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(m, m))
    _, cell_label = connected_components(graph, directed=False)

    if len(heavy):  # few crowded cells: union-find on labels, test only unlinked pairs
        links = UnionFind(int(cell_label.max()) + 1)
        trees: dict[int, cKDTree] = {}
        for a, b in heavy[np.argsort(work[work > _LIGHT_PAIR_WORK], kind="stable")]:
            la, lb = int(cell_label[a]), int(cell_label[b])
            if links.find(la) == links.find(lb):
                continue
            if counts[a] < counts[b]:
                a, b = b, a
            tree = trees.get(int(a))
            if tree is None:
                tree = trees[int(a)] = cKDTree(pts[starts[a]:starts[a] + counts[a]])
            dist, _ = tree.query(pts[starts[b]:starts[b] + counts[b]], k=1, distance_upper_bound=limit)
            if np.any(np.isfinite(dist)):
                links.union(la, lb)
        cell_label = np.array([links.find(int(c)) for c in cell_label], dtype=np.int64)
    return cell_label[cell_of]


def _time_key(frames: Sequence[Frame], i: int):
    t = frames[i].time_mjd
    return (t is None, t if t is not None else 0.0, i)


def plan_master_tiles(
    frames: Sequence[Frame], *, link_fov_fraction: float = 0.3, max_group_size: int = 64
) -> Plan:
    """Group frames into master tiles (see module docstring).

    ``link_radius_deg = link_fov_fraction * median short side of the frames'
    FOV`` (median over all frames, all modes).  Groups are ordered by earliest
    frame time (frames without time last), then RA, Dec, mode.
    """
    ok_fraction = isinstance(link_fov_fraction, numbers.Real) and not isinstance(link_fov_fraction, bool)
    if not (ok_fraction and math.isfinite(link_fov_fraction) and link_fov_fraction > 0):
        raise ValueError(f"link_fov_fraction must be a finite number > 0, got {link_fov_fraction!r}")
    ok_size = isinstance(max_group_size, numbers.Integral) and not isinstance(max_group_size, bool)
    if not (ok_size and max_group_size >= 1):
        raise ValueError(f"max_group_size must be an integer >= 1, got {max_group_size!r}")
    if len(frames) == 0:
        return Plan(groups=(), link_radius_deg=0.0)

    short = np.array([min(f.fov_deg) for f in frames], dtype=float)
    radius = float(link_fov_fraction * np.median(short))
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"frames have no usable field of view (median short side {np.median(short)!r} deg)")
    chord = 2.0 * math.sin(math.radians(min(radius, 180.0)) / 2.0)
    ra = np.array([f.ra_deg for f in frames], dtype=float)
    dec = np.array([f.dec_deg for f in frames], dtype=float)
    bad = np.flatnonzero(~(np.isfinite(ra) & np.isfinite(dec)))
    if len(bad):
        raise ValueError(f"frame {frames[int(bad[0])].path} has a non-finite centre")
    xyz = unit_vectors(ra, dec)
    modes = np.array([f.mount if f.mount in _MODES else MOUNT_UNKNOWN for f in frames])

    parts: list[tuple[str, list[int]]] = []
    for mode in _MODES:
        idx = np.flatnonzero(modes == mode)
        if not len(idx):
            continue
        labels = linked_components(xyz[idx], chord)
        order = np.argsort(labels, kind="stable")
        cuts = np.flatnonzero(np.diff(labels[order])) + 1
        for component in np.split(idx[order], cuts):
            members = sorted(component.tolist(), key=lambda i: _time_key(frames, i))
            parts.extend((mode, chunk) for chunk in _split_even(members, max_group_size))

    # mean centre of every part, vectorised (thousands of parts must stay cheap)
    sizes = np.array([len(members) for _, members in parts])
    flat = np.concatenate([members for _, members in parts])
    owner = np.repeat(np.arange(len(parts)), sizes)
    mean = np.column_stack([np.bincount(owner, weights=xyz[flat, k], minlength=len(parts)) for k in range(3)])
    degenerate = np.linalg.norm(mean, axis=1) <= 1e-12 * sizes  # antipodal frames only
    mean[degenerate] = xyz[[members[0] for _, members in parts]][degenerate]
    centre_ra, centre_dec = _to_radec(mean)

    built = []
    for (mode, members), ra, dec in zip(parts, centre_ra.tolist(), centre_dec.tolist()):
        first = _time_key(frames, members[0])
        key = (first[0], first[1], round(ra, 9), round(dec, 9), mode, members[0])
        built.append((key, mode, members, ra, dec))
    built.sort(key=lambda item: item[0])
    groups = tuple(
        TileGroup(id=k, mode=mode, frames=tuple(members), ra_deg=ra, dec_deg=dec)
        for k, (_, mode, members, ra, dec) in enumerate(built)
    )
    return Plan(groups=groups, link_radius_deg=radius)


def _fmt_deg(value: float) -> str:
    return f"{value * 60:.1f}′" if value < 1 else f"{value:.2f}°"


def summarize(plan: Plan, frames: Sequence[Frame], *, max_lines: int = 40) -> str:
    """Short human-readable multi-line summary of a plan (used by ``zdask plan``)."""
    n_frames = sum(len(g.frames) for g in plan.groups)
    lines = [
        f"{n_frames} frames -> {len(plan.groups)} master tiles "
        f"(link radius {_fmt_deg(plan.link_radius_deg)})"
    ]
    for mode in _MODES:
        gs = [g for g in plan.groups if g.mode == mode]
        if gs:
            sizes = [len(g.frames) for g in gs]
            lines.append(
                f"  {mode:<7} {len(gs):>5} tiles  {sum(sizes):>7} frames  "
                f"(min {min(sizes)}, median {int(np.median(sizes))}, max {max(sizes)} per tile)"
            )
    for g in plan.groups[:max_lines]:
        exposure = sum(frames[i].exptime_s or 0.0 for i in g.frames)
        lines.append(
            f"  tile {g.id:>4}  {g.mode:<7} {len(g.frames):>4} frames  "
            f"RA {g.ra_deg:9.4f}  Dec {g.dec_deg:+8.4f}  exposure {exposure:8.1f} s"
        )
    if len(plan.groups) > max_lines:
        lines.append(f"  ... {len(plan.groups) - max_lines} more tiles")
    return "\n".join(lines)
