"""Experiment-file validation: errors name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from secfed.config import load_config, parse_config
from secfed.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_examples_are_valid():
    for path in sorted(EXAMPLES.glob("*.toml")):
        cfg = load_config(path)
        assert cfg.federation.rounds >= 1, path


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'federation.clinets'"):
        parse_config({"federation": {"clinets": 3}})


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'modle'"):
        parse_config({"modle": {"family": "bert"}})


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError) as err:
        parse_config({"federation": {"rounds": "five"}})
    assert "federation.rounds" in str(err.value) and "'five'" in str(err.value)


def test_impossible_value_names_bound():
    with pytest.raises(ConfigError, match=r"federation.sample_rate = 1.5.*less than or equal to 1"):
        parse_config({"federation": {"sample_rate": 1.5}})


def test_unknown_strategy_lists_choices():
    with pytest.raises(ConfigError, match="fedadam"):
        parse_config({"federation": {"strategy": "fedsgd"}})


def test_file_source_needs_path():
    with pytest.raises(ConfigError, match=r"data\.path"):
        parse_config({"data": {"source": "csv"}})


def test_sample_dp_needs_exactly_one_of_epsilon_or_noise():
    with pytest.raises(ConfigError, match="exactly one of epsilon"):
        parse_config({"privacy": {"sample": {"enabled": True}}})
    with pytest.raises(ConfigError, match="exactly one of epsilon"):
        parse_config(
            {"privacy": {"sample": {"enabled": True, "epsilon": 3.0, "noise_multiplier": 1.0}}}
        )


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation\nclients = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(EXAMPLES / "noniid_fedadam.toml")
    path = tmp_path / "resolved.toml"
    path.write_text(cfg.to_toml())
    assert load_config(path) == cfg
