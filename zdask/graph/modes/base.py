"""Values that modes share: where a run writes, a master tile, and what a mode returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

from zdask.graph.geometry import Grid
from zdask.io.store import work_store_root


@dataclass(frozen=True)
class Workspace:
    """Where a run writes and how it talks: the output folder, the one-line logger, the console
    for progress bars, and where the working Zarr store is (``Config.work``: a path or an fsspec
    URL; None is ``work.zarr`` in the output folder)."""

    out_dir: str
    say: Callable[[str], None]
    console: object = None
    work_url: str | None = None

    @property
    def root(self) -> str:
        """The working store's root, as every function of :mod:`zdask.io.store` takes it."""
        return work_store_root(self.out_dir, self.work_url)


@dataclass(frozen=True)
class MasterTile:
    """A master tile in the working store, as the mosaic's assembly and the report see it.

    ``zarr`` holds its finished ``image``, ``coverage``, ``alpha`` and ``weight``; ``grid`` is
    None for a group that had no usable frame (nothing stored). ``details`` are what the report
    shows of its making and nothing reads back (alpha decision, RGB gains, rejected fraction).
    """

    id: int
    mode: str                                # mount mode: EQ, ALT_AZ, UNKNOWN
    file: str                                # its FITS file, relative to the output folder or absolute
    grid: Grid | None
    zarr: str | None
    fingerprint: str | None
    frames: tuple[str, ...]                  # paths of the frames stacked into it
    frames_excluded: tuple[tuple[str, str], ...] = ()  # (path, reason) of its group's others
    altaz_cleanup: bool = False
    healthy: bool = True
    health_reason: str | None = None
    reused: bool = False
    details: Mapping = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def in_mosaic(self) -> bool:
        """Whether the mosaic assembles it: stored and healthy."""
        return self.grid is not None and self.healthy

    def to_report(self) -> dict:
        entry = {"id": self.id, "mode": self.mode, "altaz_cleanup": self.altaz_cleanup,
                 "frames": list(self.frames),
                 "frames_excluded": [{"path": p, "reason": r} for p, r in self.frames_excluded],
                 "n_frames": self.n_frames, "file": self.file}
        if self.grid is not None:
            entry.update(shape=list(self.grid.shape), zarr=self.zarr)
        entry.update(self.details)
        entry.update(healthy=self.healthy, health_reason=self.health_reason, reused=self.reused)
        return entry


@dataclass(frozen=True)
class ModeResult:
    """What a mode built: the mosaic's arrays in the working store and what the report says.

    ``group`` (in ``Workspace.root``) holds ``image`` (H, W, C) float32 and ``coverage`` (H, W)
    float32 (the writer makes ALPHA from the coverage). ``canvas_header`` is the WCS of those
    arrays (the canvas, cropped).
    """

    group: str
    canvas_header: dict
    n_tiles: int                          # NTILES of mosaic.fits
    frames_used: int                      # frames in the mosaic (NFRAMES)
    report: Mapping                       # the mode's part of report.json (merged at top level)
    warnings: tuple[str, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)
