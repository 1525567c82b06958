"""stack_plan.csv: column aliases in any order, no header, Windows paths, missing files, bad rows."""

from __future__ import annotations

import os

import pytest

from zdask.io.stackplan import COLUMNS, expand_stack_plans, find_stack_plan, parse_stack_plan, read_stack_plan


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "lights").mkdir()
    for name in ("a.fits", "b.fits", "lights/c.fit"):
        (tmp_path / name).write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize("column", sorted(COLUMNS))
def test_every_alias_of_every_column_is_read_case_blind(folder, column):
    for alias in COLUMNS[column]:
        path_header = "FILE" if column != "path" else alias.upper()
        header = f"{path_header},{alias.title()}" if column != "path" else path_header
        value = {"exposure": "10.5"}.get(column, "x7")
        text = f"{header}\na.fits{',' + value if column != 'path' else ''}\n"
        plan = parse_stack_plan(text, str(folder))
        assert plan.paths == [str(folder / "a.fits")] and plan.problems == (), (alias, plan)
        row = plan.rows[0]
        if column == "exposure":
            assert row.exposure_s == 10.5
        elif column != "path":
            assert getattr(row, column) == "x7"


def test_columns_in_any_order_sorted_by_the_order_column(folder):
    text = "seq;Exposure;night;file_path\n3;10;n1;a.fits\n1;20;n2;b.fits\n2;10;n1;lights/c.fit\n"
    plan = parse_stack_plan(text, str(folder))
    assert plan.paths == [str(folder / "b.fits"), str(folder / "lights" / "c.fit"), str(folder / "a.fits")]
    assert [r.batch for r in plan.rows] == ["n2", "n1", "n1"] and plan.rows[0].exposure_s == 20.0


def test_no_header_takes_each_rows_fits_name(folder):
    plan = parse_stack_plan("1,a.fits,10\n2,lights/c.fit,10\n", str(folder))
    assert plan.paths == [str(folder / "a.fits"), str(folder / "lights" / "c.fit")]


def test_windows_paths_are_resolved_against_the_folder(folder):
    text = "path\nlights\\c.fit\nC:\\Users\\me\\Seestar\\b.fits\n\\\\server\\share\\a.fits\n"
    plan = parse_stack_plan(text, str(folder))
    assert plan.paths == [str(folder / "lights" / "c.fit"), str(folder / "b.fits"), str(folder / "a.fits")]


def test_missing_files_and_bad_rows_are_reported_with_their_line_not_fatal(folder):
    text = "file,exptime\na.fits,10\ngone.fits,10\n,10\nb.fits,ten\na.fits,10\n"
    plan = parse_stack_plan(text, str(folder), file="stack_plan.csv")
    assert plan.paths == [str(folder / "a.fits")]  # named twice: kept once
    where = [w for w, _ in plan.problems]
    assert where == ["stack_plan.csv:3", "stack_plan.csv:4", "stack_plan.csv:5"]
    reasons = [r for _, r in plan.problems]
    assert "gone.fits" in reasons[0] and "missing" in reasons[0]
    assert reasons[1] == "no frame path in this row" and "'ten' is not a number" in reasons[2]


def test_a_folder_with_a_plan_becomes_the_frames_it_names(folder):
    (folder / "Stack_Plan.CSV").write_text("file\nb.fits\n")
    assert find_stack_plan(str(folder)) == str(folder / "Stack_Plan.CSV")
    assert read_stack_plan(str(folder / "Stack_Plan.CSV")).paths == [str(folder / "b.fits")]
    other = folder / "lights"
    expanded, plans = expand_stack_plans([str(folder), str(other)])
    assert expanded == [str(folder / "b.fits"), str(other)] and len(plans) == 1
    assert os.path.isfile(expanded[0])
