import dataclasses
import re

import pytest
from typer.testing import CliRunner

from zdask.cli import app
from zdask.config import Config, ConfigError, describe_fields, load_config


def test_defaults_are_valid_and_every_field_is_documented():
    Config().validate()
    for name, _default, doc in describe_fields():
        assert len(doc) > 20, name


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("reject", "sigma", "kappa_sigma, winsorized"),
        ("normalization", "scale", "none, additive"),
        ("weights", "snr", "none, exposure, noise_variance"),
        ("iterations", 0, ">= 1"),
        ("budget", "lots", "byte size"),
        ("max_group_size", 0, ">= 1"),
        ("hot_pixel_min_fraction", 1.5, "(0, 1]"),
        ("hot_pixel_frames", 2, "integer >= 3"),
        ("max_saturated_fraction", 1.5, "[0, 1]"),
        ("min_frame_stars", -1, ">= 0"),
        ("max_canvas_pixels", 0, ">= 1"),
        ("background_mesh", 16, "0 (off) or an integer >= 32"),
        ("background_mesh", -64, "0 (off) or an integer >= 32"),
        ("performance_report", "yes", "true or false"),
    ],
)
def test_bad_values_name_the_field_and_the_allowed_values(field, value, words):
    with pytest.raises(ConfigError) as err:
        Config().replace(**{field: value})
    assert f"'{field}'" in str(err.value) and words in str(err.value)


def test_kappa_spellings():
    assert Config().replace(kappa="2.5,3").kappa == (2.5, 3.0)
    assert Config().replace(kappa=2).kappa == (2.0, 2.0)
    assert Config().replace(kappa=[1, 4]).kappa == (1.0, 4.0)
    with pytest.raises(ConfigError, match="'kappa'"):
        Config().replace(kappa="a,b")


def test_toml_file_then_command_line_overrides(tmp_path):
    path = tmp_path / "zdask.toml"
    path.write_text('[stacking]\nreject = "winsorized"\nkappa = [2.0, 3.5]\n\nmax_group_size = 12\n')
    cfg = load_config(path)
    assert (cfg.reject, cfg.kappa, cfg.max_group_size) == ("winsorized", (2.0, 3.5), 12)
    cfg = load_config(path, reject="median", max_group_size=None)
    assert (cfg.reject, cfg.max_group_size) == ("median", 12)


def test_unknown_field_and_bad_file_are_reported(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("rejekt = 'median'\n")
    with pytest.raises(ConfigError, match="rejekt"):
        load_config(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("reject = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")


def test_conflicting_scheduler_and_workers_are_named():
    with pytest.raises(ConfigError, match="'scheduler' and 'workers'"):
        Config().replace(scheduler="tcp://127.0.0.1:8786", workers=2)


# --- types, checked from each field's annotation ------------------------------------------------

@pytest.mark.parametrize(
    "field, value, words",
    [
        ("kappa", ["a", 3], "one or two numbers"),
        ("kappa", "inf", "2 finite numbers"),
        ("kappa", float("nan"), "2 finite numbers"),
        ("hot_pixel_min_fraction", "high", "a finite number"),
        ("link_fov_fraction", float("inf"), "a finite number"),
        ("rgb_gain_range", 5, "two numbers low, high"),
        ("rgb_gain_range", [0.9, 1.0, 1.1], "2 finite numbers"),
        ("scheduler", 5, "a string or unset"),
        ("workers", True, "an integer or unset"),  # bool is an int in Python, not here
        ("max_group_size", 12.5, "an integer"),
        ("align", 1, "true or false"),
        ("memory_limit", 4, "a string"),
        ("dashboard_address", "localhost", "HOST:PORT"),
        ("dashboard_address", "127.0.0.1:70000", "0..65535"),
    ],
)
def test_values_of_the_wrong_type_are_refused_with_the_field_and_the_allowed_values(field, value, words):
    with pytest.raises(ConfigError) as err:
        Config().replace(**{field: value})
    assert f"'{field}'" in str(err.value) and words in str(err.value)


def test_every_field_has_its_type_checked():
    """Generic check from the annotations: a value no field accepts is refused for each field,
    and True (an int to Python) for each numeric one."""
    for f in dataclasses.fields(Config):
        with pytest.raises(ConfigError, match=f"'{f.name}'"):
            Config().replace(**{f.name: {"not": "a value"}})
        if f.type in ("int", "float", "int | None"):
            with pytest.raises(ConfigError, match=f"'{f.name}'"):
                Config().replace(**{f.name: True})


def test_dashboard_address_defaults_to_this_machine_only():
    assert Config().dashboard_address == "127.0.0.1:0"
    assert Config().replace(dashboard_address="0.0.0.0:8787").dashboard_address == "0.0.0.0:8787"
    assert Config().replace(dashboard_address="[::1]:0").dashboard_address == "[::1]:0"


BAD_TOML = [
    ('kappa = ["a", 3]', "kappa"),
    ('hot_pixel_min_fraction = "high"', "hot_pixel_min_fraction"),
    ("rgb_gain_range = 5", "rgb_gain_range"),
    ("scheduler = 5", "scheduler"),
    ("workers = true", "workers"),
    ("kappa = inf", "kappa"),
    ("[stacking]\nbudget = 256", "budget"),
    ("background_mesh = 8", "background_mesh"),
    ("background_mesh = 64.5", "background_mesh"),
]


@pytest.mark.parametrize("toml, field", BAD_TOML)
def test_bad_toml_values_end_the_run_with_one_line_and_status_2(toml, field, tmp_path):
    path = tmp_path / "zdask.toml"
    path.write_text(toml + "\n")
    result = CliRunner().invoke(app, ["run", str(tmp_path), "--out", str(tmp_path / "out"), "--config", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"'{field}'" in lines[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kappa", ["inf", "nan", "3,inf"])
def test_kappa_that_is_not_finite_is_refused_on_the_command_line(kappa, tmp_path):
    result = CliRunner().invoke(app, ["run", str(tmp_path), "--out", str(tmp_path / "out"), "--kappa", kappa])
    assert result.exit_code == 2 and "'kappa'" in result.output and "finite" in result.output, result.output


def test_background_mesh_from_the_command_line_and_toml(tmp_path):
    path = tmp_path / "zdask.toml"
    path.write_text("[sky]\nbackground_mesh = 128\n")
    assert load_config(path).background_mesh == 128
    assert load_config(path, background_mesh=64).background_mesh == 64
    assert Config().background_mesh == 0  # off by default: extended emission is kept
    result = CliRunner().invoke(app, ["run", str(tmp_path), "--out", str(tmp_path / "out"),
                                      "--background-mesh", "31"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "'background_mesh'" in lines[0] and ">= 32" in lines[0], result.output


def test_zdask_config_says_what_each_sky_model_does():
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0
    text = result.output[result.output.index("background_mesh = 0"):]
    doc = text.split("\n", 2)[1]
    assert "keeps extended emission" in doc and "flattest" in doc.lower()
    assert "galaxy halos, nebulae" in doc


def test_the_sds_section_from_toml_and_the_command_line(tmp_path):
    path = tmp_path / "zdask.toml"
    path.write_text('mode = "classic"\n[sds]\nmin_lot_size = 4\nlot_coverage = 0.8\n[stacking]\nkappa = 2.5\n')
    config = load_config(path)
    assert (config.sds.min_lot_size, config.sds.lot_coverage, config.sds.target_lot_size) == (4, 0.8, 10)
    assert config.kappa == (2.5, 2.5)  # other tables still only group top-level fields
    assert load_config(path, **{"sds.min_lot_size": 6}).sds.min_lot_size == 6
    assert Config().sds.min_coverage_keep == 0.4
    for name, value, words in [("target_lot_size", 3, ">= min_lot_size (5)"), ("lot_coverage", 0.0, "(0, 1]"),
                               ("min_coverage_keep", 1.5, "[0, 1]"), ("min_lot_size", 0, ">= 1"),
                               ("min_lot_size", 2.5, "an integer")]:
        with pytest.raises(ConfigError) as err:
            Config().replace(**{f"sds.{name}": value})
        assert f"'sds.{name}'" in str(err.value) and words in str(err.value), str(err.value)
    path.write_text("[sds]\nlot_size = 3\n")
    with pytest.raises(ConfigError, match="sds.lot_size"):
        load_config(path)
    result = CliRunner().invoke(app, ["run", str(tmp_path), "--out", str(tmp_path / "o"), "--sds-lot-coverage", "2"])
    assert result.exit_code == 2 and "'sds.lot_coverage'" in result.output, result.output
    shown = CliRunner().invoke(app, ["config"]).output
    assert "[sds]\nsds.min_lot_size = 5\n" in shown and "sds.min_coverage_keep = 0.4" in shown


def test_the_grid_section_is_checked_and_listed(tmp_path):
    config = Config().replace(**{"grid.cell_fov_factor": 2.5, "grid.max_cells": 10})
    assert (config.grid.cell_fov_factor, config.grid.max_cells, config.grid.cell_overlap) == (2.5, 10, 0.4)
    assert Config.stage_fields("grid") == ("grid.cell_fov_factor", "grid.cell_overlap", "grid.max_cells",
                                           "grid.overlap_min_coverage", "grid.overlap_erosion_px")
    for name, value, words in (("cell_overlap", 0.95, "[0.05, 0.9]"), ("max_cells", 0, ">= 1"),
                               ("cell_fov_factor", 0.0, "> 0"), ("overlap_erosion_px", 9, "0..8")):
        with pytest.raises(ConfigError, match=f"'grid.{name}' = .*{re.escape(words)}"):
            Config().replace(**{f"grid.{name}": value})
    toml = tmp_path / "grid.toml"
    toml.write_text("mode = 'grid'\n[grid]\ncell_overlap = 0.3\n")
    assert load_config(toml).grid.cell_overlap == 0.3
    result = CliRunner().invoke(app, ["run", str(tmp_path), "--out", str(tmp_path / "o"), "--grid-cell-overlap", "2"])
    assert result.exit_code == 2 and "'grid.cell_overlap'" in result.output, result.output
    shown = CliRunner().invoke(app, ["config"]).output
    assert "[grid]\ngrid.cell_fov_factor = 4.0\n" in shown and "grid.max_cells = 50000" in shown


def test_an_unknown_mode_is_one_line_naming_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="'mode' = 'survey': allowed values are classic, grid, tiles"):
        Config().replace(mode="survey")
    result = CliRunner().invoke(app, ["run", str(tmp_path), "--out", str(tmp_path / "o"), "--mode", "survey"])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0
    assert "allowed values are classic, grid, tiles" in result.output
    both = CliRunner().invoke(app, ["run", "--tiles", str(tmp_path), "--mode", "classic", "--out", str(tmp_path / "o")])
    assert both.exit_code == 2 and "--tiles DIR" in both.output and "tiles mode" in both.output


def test_every_setting_declares_the_stages_it_changes():
    """The stage fingerprints are made of the fields that declare the stage: a setting changes
    the digest of exactly the stages it declares."""
    from zdask.config import STAGES, _all_fields

    for name, f in _all_fields():
        assert set(f.metadata["stages"]) <= set(STAGES), name
    base = Config()
    changed = base.replace(kappa=(2.0, 2.0), **{"sds.min_lot_size": 3})
    for stage in STAGES:
        declared = {"kappa", "sds.min_lot_size"} & set(Config.stage_fields(stage))
        assert (base.stage_digest(stage) != changed.stage_digest(stage)) == bool(declared), stage
    assert "kappa" in Config.stage_fields("tiles") and "budget" not in Config.stage_fields("tiles")
    assert Config.stage_fields("hotpixels") == ("hot_pixel_sigma", "hot_pixel_min_fraction", "hot_pixel_frames")
    with pytest.raises(ValueError, match="unknown stage"):
        Config.stage_fields("nothing")


def test_the_cluster_section_from_toml_keeps_top_level_cluster_fields_grouped_under_it(tmp_path):
    path = tmp_path / "zdask.toml"
    path.write_text('[cluster]\nkind = "slurm"\njobs = 4\ncores = 8\nmemory = "32GiB"\nqueue = "astro"\n'
                    'job_directives = ["--gres=gpu:1"]\nmemory_limit = "4GiB"\n')
    config = load_config(path)
    assert (config.cluster.kind, config.cluster.jobs, config.cluster.cores, config.cluster.memory,
            config.cluster.queue, config.cluster.job_directives) == ("slurm", 4, 8, "32GiB", "astro", ("--gres=gpu:1",))
    assert config.memory_limit == "4GiB"  # a top-level field grouped under [cluster], as before
    assert load_config(path, **{"cluster.kind": "local"}).cluster.kind == "local"  # --cluster local
    path.write_text("[cluster]\nnodes = 3\n")
    with pytest.raises(ConfigError, match="cluster.nodes"):
        load_config(path)


@pytest.mark.parametrize("name, value, words", [
    ("kind", "pbs", "local, slurm, kubernetes"),
    ("no_workers_timeout", 0, "> 0"),
    ("jobs", 0, ">= 1"),
    ("processes", 3, "at most cluster.cores (1)"),
    ("adaptive_max", -1, "0 (no adaptive scaling)"),
    ("memory", "lots", "byte size"),
    ("walltime", "2h", "[D-]HH:MM:SS"),
    ("job_directives", ["gres=gpu:1"], "each starting with '-'"),
    ("job_directives", "--gres=gpu:1", "a list of strings"),
    ("volume_path", "data", "absolute path"),
])
def test_bad_cluster_values_name_the_field(name, value, words):
    with pytest.raises(ConfigError) as err:
        Config().replace(**{f"cluster.{name}": value})
    assert f"'cluster.{name}'" in str(err.value) and words in str(err.value), str(err.value)


@pytest.mark.parametrize("field, value", [("scheduler", "tcp://h:8786"), ("workers", 2), ("threads_per_worker", 2)])
def test_a_started_cluster_conflicts_with_the_embedded_clusters_fields(field, value):
    with pytest.raises(ConfigError, match=f"'cluster.kind' = 'slurm' and '{field}' conflict"):
        Config().replace(**{"cluster.kind": "slurm", field: value})
