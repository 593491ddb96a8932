"""Config layer: strict YAML, unknown keys with suggestions, types, --set overrides."""

import pytest

from optical_cli.config.files import parse_yaml
from optical_cli.config.registry import COMMANDS, dump_config, load_config
from optical_cli.errors import ConfigError


def write(tmp_path, text, name="render.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_load_without_a_file():
    cfg = load_config("render")
    assert cfg.render.mode == "base"
    assert cfg.render.font_size == 10


def test_duplicate_key_names_file_line_and_first_occurrence(tmp_path):
    path = write(tmp_path, "render:\n  mode: base\n  font_size: 10\n  mode: tiny\n")
    with pytest.raises(ConfigError) as info:
        load_config("render", path)
    message = str(info.value)
    assert f"{path}:4" in message and "duplicate key 'mode'" in message and "line 2" in message


def test_unknown_key_suggests_closest(tmp_path):
    path = write(tmp_path, "render:\n  font_sise: 12\n")
    with pytest.raises(ConfigError) as info:
        load_config("render", path)
    message = str(info.value)
    assert f"{path}:2" in message
    assert "unknown key 'render.font_sise'" in message
    assert "did you mean 'render.font_size'" in message


def test_unknown_section_suggests_closest(tmp_path):
    path = write(tmp_path, "rendr:\n  mode: base\n")
    with pytest.raises(ConfigError, match="did you mean 'render'"):
        load_config("render", path)


def test_wrong_type_names_key_and_line(tmp_path):
    path = write(tmp_path, "render:\n  mode: base\n  font_size: large\n")
    with pytest.raises(ConfigError) as info:
        load_config("render", path)
    assert f"{path}:3" in str(info.value) and "render.font_size" in str(info.value)


def test_string_is_not_coerced_to_int(tmp_path):
    path = write(tmp_path, "render:\n  font_size: '12'\n")
    with pytest.raises(ConfigError, match="render.font_size"):
        load_config("render", path)


def test_literal_choice_is_checked(tmp_path):
    path = write(tmp_path, "render:\n  mode: huge\n")
    with pytest.raises(ConfigError, match="render.mode"):
        load_config("render", path)


def test_invalid_yaml_reports_line(tmp_path):
    path = write(tmp_path, "render:\n  mode: [base\n  font_size: 3\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config("render", path)


def test_top_level_must_be_mapping(tmp_path):
    path = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config("render", path)


def test_empty_file_gives_defaults(tmp_path):
    assert load_config("render", write(tmp_path, "")).render.mode == "base"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("render", tmp_path / "nope.yaml")


def test_set_parses_yaml_scalars():
    cfg = load_config("render", overrides=["render.font_size=14", "render.mode=tiny", "runtime.seed=7"])
    assert (cfg.render.font_size, cfg.render.mode, cfg.runtime.seed) == (14, "tiny", 7)


def test_set_float_and_string():
    cfg = load_config("render", overrides=["render.line_spacing=1.5", "render.font=/x/y.ttf"])
    assert cfg.render.line_spacing == 1.5 and cfg.render.font == "/x/y.ttf"


def test_set_unknown_key_suggests(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'render.margin'"):
        load_config("render", overrides=["render.margn=3"])


def test_set_misspelled_section_suggests_the_whole_key():
    """A misspelled section gets the closest valid key as much as a misspelled key does (issue 31.4)."""
    with pytest.raises(ConfigError, match="did you mean 'render.font_size'"):
        load_config("render", overrides=["rendr.font_size=12"])
    with pytest.raises(ConfigError, match="valid keys at the top level: render, runtime"):
        load_config("render", overrides=["zzzz=12"])


def test_set_without_equals():
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config("render", overrides=["render.margin"])


def test_set_wrong_type_is_reported_with_source():
    with pytest.raises(ConfigError, match=r"--set.*render.margin"):
        load_config("render", overrides=["render.margin=wide"])


def test_a_bad_set_value_blames_the_set_not_a_line_of_the_file(tmp_path):
    path = write(tmp_path, "render:\n  font_size: 12\n")
    with pytest.raises(ConfigError) as caught:
        load_config("render", path, ["render.font_size=abc"])
    assert str(caught.value).startswith("--set render.font_size=abc: key 'render.font_size'")
    assert str(path) not in str(caught.value)
    with pytest.raises(ConfigError, match=rf"^{path}:2: key 'render.font_size'"):  # a bad file value keeps its line
        load_config("render", write(tmp_path, "render:\n  font_size: abc\n"), ["render.margin=3"])


def test_set_overrides_file_value(tmp_path):
    path = write(tmp_path, "render:\n  font_size: 12\n")
    assert load_config("render", path, ["render.font_size=9"]).render.font_size == 9


def test_dump_round_trips(tmp_path):
    cfg = load_config("render", overrides=["render.mode=small"])
    path = write(tmp_path, dump_config(cfg))
    assert load_config("render", path) == cfg


def test_parse_yaml_keeps_line_numbers():
    data = parse_yaml("a:\n  b: 1\n  c: 2\n", "x")
    assert data.lines["a"] == 1 and data["a"].lines["c"] == 3


def test_every_command_has_a_schema_with_runtime():
    for name, spec in COMMANDS.items():
        assert "runtime" in spec.schema.model_fields, name
