"""``stack_plan.csv``: the ancestor's list of the frames to stack, in an input folder.

A folder holding a file of this name (any case) is read as the frames its rows name, in grid
mode. Columns come in any order, with or without a header row; header names are read
case-blind, each by any of its aliases (:data:`COLUMNS`). Without a header, a row's path is its
first field named like a FITS file. Paths relative to the folder and Windows-style ones
(``lights\\f001.fits``, ``C:\\data\\f001.fits``: an absolute Windows path is looked for by its
file name in the folder) are resolved against the folder. A row naming a missing file, or a
row that cannot be read (no path, an exposure that is not a number), is reported with its line
number and left out; the others are kept.
"""

from __future__ import annotations

import csv
import io
import ntpath
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from zdask.io.listing import is_frame_name

__all__ = ["STACK_PLAN_NAME", "COLUMNS", "StackPlanRow", "StackPlan", "find_stack_plan", "read_stack_plan",
           "parse_stack_plan"]

STACK_PLAN_NAME = "stack_plan.csv"

#: column → the header names accepted for it (case-blind)
COLUMNS = {
    "path": ("file_path", "filepath", "file", "path", "filename", "fits", "raw"),
    "exposure": ("exposure", "exp", "exptime", "exposure_s"),
    "bortle": ("bortle",),
    "filter": ("filter", "band", "channel"),
    "batch": ("batch_id", "batch", "session", "night"),
    "order": ("order", "seq", "sequence", "index"),
    "mount": ("mount", "eqmode", "mount_mode"),
}
_ALIAS = {alias: column for column, aliases in COLUMNS.items() for alias in aliases}
_WINDOWS_ABSOLUTE = re.compile(r"^([A-Za-z]:[\\/]|\\\\)")


@dataclass(frozen=True)
class StackPlanRow:
    """One frame the plan names: its resolved path and the optional columns, as written."""

    line: int
    path: str
    exposure_s: float | None = None
    bortle: str | None = None
    filter: str | None = None
    batch: str | None = None
    order: str | None = None
    mount: str | None = None


@dataclass(frozen=True)
class StackPlan:
    """The rows of a ``stack_plan.csv`` whose files exist (in plan order), and the problems:
    (the CSV's path with the line, the reason)."""

    file: str
    rows: tuple[StackPlanRow, ...]
    problems: tuple[tuple[str, str], ...]

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.rows]


def find_stack_plan(folder: str) -> str | None:
    """The ``stack_plan.csv`` of ``folder`` (name compared case-blind), or None."""
    if not os.path.isdir(folder):
        return None
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    for name in names:
        if name.lower() == STACK_PLAN_NAME and os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def resolve_path(text: str, folder: str) -> str:
    """A path as written in the plan, resolved against ``folder`` (module doc)."""
    text = text.strip().strip('"').strip()
    if _WINDOWS_ABSOLUTE.match(text):
        return os.path.join(folder, ntpath.basename(text))
    text = text.replace("\\", "/")
    return os.path.normpath(text if os.path.isabs(text) else os.path.join(folder, text))


def _header(fields: list[str]) -> dict[str, int] | None:
    """Column → index when ``fields`` is a header row naming the path column, else None."""
    found: dict[str, int] = {}
    for k, name in enumerate(fields):
        column = _ALIAS.get(name.strip().lower())
        if column is not None and column not in found:
            found[column] = k
    return found if "path" in found else None


def parse_stack_plan(text: str, folder: str, file: str = STACK_PLAN_NAME,
                     exists=os.path.isfile) -> StackPlan:
    """The plan in ``text`` (the CSV's content), paths resolved against ``folder``; ``exists``
    tells whether a resolved path is a file. Rows are in ``order`` when that column is given
    (numerically where it holds numbers), else as written; a file named twice is kept once."""
    sample = text[:4096]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t") if sample.strip() else csv.excel
    except csv.Error:
        dialect = csv.excel
    records = [(n, [f.strip() for f in fields]) for n, fields in enumerate(csv.reader(io.StringIO(text), dialect), 1)
               if any(f.strip() for f in fields)]
    header = _header(records[0][1]) if records else None
    if header is not None:
        records = records[1:]
    rows, problems, seen = [], [], set()
    for line, fields in records:
        where = f"{file}:{line}"
        if header is not None:
            values = {c: fields[k] if k < len(fields) and fields[k] else None for c, k in header.items()}
        else:
            named = [f for f in fields if is_frame_name(f.strip('"').replace("\\", "/").rsplit("/", 1)[-1])]
            values = {"path": named[0] if named else None}
        if not values.get("path"):
            problems.append((where, "no frame path in this row"))
            continue
        exposure = values.get("exposure")
        try:
            exposure_s = None if exposure is None else float(exposure)
        except ValueError:
            problems.append((where, f"exposure {exposure!r} is not a number"))
            continue
        path = resolve_path(values["path"], folder)
        if not exists(path):
            problems.append((where, f"names {values['path']!r}, which is missing ({path})"))
            continue
        if path in seen:
            continue
        seen.add(path)
        rows.append(StackPlanRow(line, path, exposure_s, values.get("bortle"), values.get("filter"),
                                 values.get("batch"), values.get("order"), values.get("mount")))
    if header is not None and "order" in header:
        rows.sort(key=_order_key)
    return StackPlan(file, tuple(rows), tuple(problems))


def _order_key(row: StackPlanRow):
    try:
        return (0, float(row.order), row.line) if row.order is not None else (2, 0.0, row.line)
    except ValueError:
        return (1, 0.0, row.line)


def read_stack_plan(path: str) -> StackPlan:
    """:func:`parse_stack_plan` of the file at ``path`` (its folder resolves the rows).
    OSError / UnicodeDecodeError propagate: the caller names the file."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        text = fh.read()
    return parse_stack_plan(text, os.path.dirname(os.path.abspath(path)), path)


def expand_stack_plans(inputs: Sequence[str]) -> tuple[list[str], list[StackPlan]]:
    """The inputs with each folder that holds a ``stack_plan.csv`` replaced by the files its
    rows name; and the plans read."""
    out, plans = [], []
    for item in inputs:
        found = find_stack_plan(item)
        if found is None:
            out.append(item)
            continue
        plan = read_stack_plan(found)
        plans.append(plan)
        out.extend(plan.paths)
    return out, plans
