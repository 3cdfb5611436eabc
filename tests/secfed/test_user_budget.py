"""User-level budget (`privacy.user.budget`): the estimate and the job start warn when the
planned rounds pass it and say how many fit; the job ends before a round that would pass it."""

from __future__ import annotations

import json
import logging

import pytest
from typer.testing import CliRunner

import privacy
from secfed.cli import app
from secfed.config import ExperimentConfig
from secfed.errors import ConfigError
from secfed.estimate import estimate
from secfed.runner import FederatedRunner
from tests.secfed.conftest import tiny_job

USER = {"enabled": True, "clip_norm": 0.01, "noise_multiplier": 1.0}


def _released(rounds: int, *, rate: float, z: float = 1.0) -> float:
    """The accounted released-models epsilon (the sampled Gaussian's RDP accountant)."""
    return privacy.user_level_epsilon(
        noise_multiplier=z, sample_rate=rate, rounds=rounds, delta=1e-5
    )


def _job(budget: float, *, rounds: int = 40, rate: float = 0.2, **user) -> ExperimentConfig:
    return tiny_job(
        federation={"clients": 10, "rounds": rounds, "sample_rate": rate},
        privacy={"user": {**USER, **user, "budget": budget}},
    )


def test_estimate_warns_and_counts_the_rounds_that_fit():
    budget = 0.6 * _released(40, rate=0.2)
    out = estimate(_job(budget))
    u = out["user"]
    fit = u["rounds_within_budget"]
    assert 0 < fit < 40
    # The largest round count whose accounted epsilon stays within the budget, found here
    # by a linear scan independent of the estimate's bisection.
    want = max(r for r in range(41) if _released(r, rate=0.2) <= budget)
    assert fit == want
    assert any(
        f"only {fit} of 40 rounds fit" in w and "privacy.user.budget" in w for w in out["warnings"]
    )


def test_estimate_is_quiet_when_the_plan_fits():
    out = estimate(_job(1.01 * _released(40, rate=0.2)))
    assert out["user"]["rounds_within_budget"] == 40 and out["warnings"] == []


def test_estimate_counts_skellam_rounds_for_distributed_noise():
    """Through a masking protocol the job accounts Skellam noise: the budget uses that figure."""

    def job(budget: float | None) -> ExperimentConfig:
        return tiny_job(
            federation={"clients": 10, "rounds": 40, "sample_rate": 0.2},
            aggregation={"protocol": "secagg+"},
            privacy={"user": {**USER, "clip_norm": 0.05, "noise": "distributed", "budget": budget}},
        )

    skellam = estimate(job(None))["user"]["skellam_epsilon"]
    gauss = _released(40, rate=0.2)
    assert skellam > gauss
    budget = 0.5 * (skellam + gauss)  # the Gaussian figure fits, the Skellam one does not
    out = estimate(job(budget))
    assert out["user"]["rounds_within_budget"] < 40
    assert any(f"epsilon {skellam:.3f} against the released" in w for w in out["warnings"])


def test_estimate_cli_prints_the_user_warning(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(_job(0.6 * _released(40, rate=0.2)).to_toml())
    res = CliRunner().invoke(app, ["privacy", "estimate", str(path)])
    assert res.exit_code == 0, res.output
    assert "passes privacy.user.budget" in res.output and "rounds fit" in res.output


def test_job_warns_at_start_and_stops_before_passing_the_budget(tmp_path, caplog):
    rate, rounds = 0.5, 5
    budget = 0.5 * (_released(2, rate=rate) + _released(3, rate=rate))  # 2 rounds fit, not 3
    cfg = tiny_job(
        federation={"clients": 3, "rounds": rounds, "sample_rate": rate},
        privacy={"user": {**USER, "budget": budget}},
    )
    runner = FederatedRunner(cfg, tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        summary = runner.run()
    assert any("only 2 of 5 rounds fit" in r.getMessage() for r in caplog.records)
    rows = [r for r in runner.dir.read_metrics() if "round" in r]
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[-1]["user_epsilon"] <= budget < _released(3, rate=rate)
    assert "rounds 3-5 not run" in summary["stopped_early"]
    report = json.loads((tmp_path / "run" / "privacy_report.json").read_text())
    assert report["user_level"]["budget"] == budget
    assert report["user_level"]["epsilon"] <= budget


def test_budget_without_sample_level_names_the_user_budget():
    with pytest.raises(ConfigError, match=r"privacy\.user\.budget"):
        tiny_job(privacy={"budget": 3.0, "user": USER})
