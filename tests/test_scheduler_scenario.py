"""Scenario files: the shipped ones load; bad ones give one clear line naming the key."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from engine.scheduler.cli import main
from engine.scheduler.scenario import ScenarioError, load_scenario
from tests.scheduler_fixtures import SCENARIO_TOML

SCENARIOS = Path(__file__).resolve().parents[1] / "resources" / "scenarios"


def args(path, policies=None, as_json=False, plot=None):
    return argparse.Namespace(scenario=str(path), policies=policies, json=as_json, plot=plot)


def write(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_scenarios_load(path):
    scenario = load_scenario(path)
    assert scenario.initial_nodes()


def test_shipped_scenarios_cover_the_required_swarms():
    names = {load_scenario(p).name: load_scenario(p) for p in SCENARIOS.glob("*.toml")}
    lan = names["homogeneous-lan"]
    assert len(lan.initial_nodes()) == 8 and {n.memory_bytes for n in lan.initial_nodes()} == {22e9}
    het = names["heterogeneous-3-region"]
    assert 25 <= len(het.initial_nodes()) <= 35 and len({n.region for n in het.initial_nodes()}) == 3
    vol = names["volunteer-1000"]
    assert len(vol.initial_nodes()) == 1000 and vol.mean_node_lifetime_s > 0
    assert "too-small" in names


@pytest.mark.parametrize("old, new, expected", [
    ("num_layers = 16\n", "", "[model]: missing key 'num_layers'"),
    ("memory_gb = 6\n", "memory_gb = -6\n", "[[nodes]] #1: 'memory_gb' must be > 0, got -6"),
    ('region = "us"', 'region = "mars"', "[[nodes]] #2: unknown region 'mars'"),
    (', "eu-us" = 80', "", "no round-trip time between 'eu' and 'us'"),
    ("arrival_rate_per_s = 2\n", "arrival_rate_per_s = \"fast\"\n", "'arrival_rate_per_s' must be a number"),
    ("[slo]\nttft_p99_s = 10\n", "[slo]\n", "[slo]: missing key 'ttft_p99_s'"),
    ("duration_s = 40\n", "", "top level: missing key 'duration_s'"),
    ("num_layers = 16\n", 'num_layers = 16\nwire = "zip"\n', "[model]: 'wire' must be one of exact, q8_0, got 'zip'"),
])
def test_bad_scenario_names_the_key(tmp_path, capsys, old, new, expected):
    assert old in SCENARIO_TOML
    path = write(tmp_path, SCENARIO_TOML.replace(old, new, 1))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert expected in str(err.value)
    assert main(args(path)) == 2
    out, errors = capsys.readouterr()
    assert out == "" and expected in errors and len(errors.strip().splitlines()) == 1
    assert "Traceback" not in errors


def test_unreadable_or_invalid_toml(tmp_path, capsys):
    assert main(args(tmp_path / "missing.toml")) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(args(write(tmp_path, "name = [unclosed"))) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_too_small_swarm_reports_what_is_missing(capsys):
    assert main(args(SCENARIOS / "too_small.toml", as_json=True)) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["upper_bound_tok_s"] == 0
    assert "swarm too small for this model: needs" in report["error"] and "GB more" in report["error"]
    assert all(p["capacity_tok_s"] == 0 for p in report["policies"].values())


def test_simulate_json_contract_and_plot(tmp_path, capsys):
    path = write(tmp_path, SCENARIO_TOML)
    plot = tmp_path / "p.png"
    assert main(args(path, policies=["potluck", "exo"], as_json=True, plot=str(plot))) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"scenario", "upper_bound_tok_s", "policies"}
    assert set(report["policies"]) == {"potluck", "exo"}
    keys = {"capacity_tok_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "completed", "failed",
            "alloc_ms", "route_ms_p50"}
    for p in report["policies"].values():
        assert set(p) == keys
        assert 0 <= p["capacity_tok_s"] <= report["upper_bound_tok_s"]
    assert plot.stat().st_size > 1000


def test_simulate_table_and_unknown_policy(tmp_path, capsys):
    path = write(tmp_path, SCENARIO_TOML)
    assert main(args(path, policies=["parallax"])) == 0
    out = capsys.readouterr().out
    assert "parallax" in out and "upper bound" in out
    assert main(args(path, policies=["nope"])) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
