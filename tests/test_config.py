import pytest

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
        ("max_saturated_fraction", 1.5, "[0, 1]"),
        ("min_frame_stars", -1, ">= 0"),
        ("max_canvas_pixels", 0, ">= 1"),
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
