"""`secfed privacy estimate`: budget warnings with the rounds that fit, both observers,
the real Skellam percentage; early stop recorded in `skipped`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import privacy
from secfed.cli import app
from secfed.estimate import estimate
from secfed.runner import FederatedRunner
from tests.secfed.conftest import tiny_job


def test_estimate_warns_past_the_budget_and_counts_the_rounds_that_fit():
    cfg = tiny_job(
        federation={"rounds": 20},
        privacy={"budget": 5.0, "sample": {"enabled": True, "noise_multiplier": 0.9}},
    )
    out = estimate(cfg)
    row = out["sample"]["clients"]["0"]
    assert row["epsilon"] > 5.0
    fit = row["rounds_within_budget"]
    steps = row["steps"] // 20

    def eps(r):  # independent of the estimate's own search
        return privacy.epsilon_for(
            noise_multiplier=0.9, sample_rate=row["sample_rate"], steps=r * steps, delta=1e-5
        )

    assert eps(fit) <= 5.0 < eps(fit + 1)
    assert any(f"only {fit} of 20 rounds fit" in w for w in out["warnings"])


def test_estimate_cli_prints_the_warning(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(
        tiny_job(
            federation={"rounds": 20},
            privacy={"budget": 5.0, "sample": {"enabled": True, "noise_multiplier": 0.9}},
        ).to_toml()
    )
    res = CliRunner().invoke(app, ["privacy", "estimate", str(path)])
    assert res.exit_code == 0 and "passes the budget" in res.output and "rounds fit" in res.output


def test_estimate_gives_both_observers_and_the_real_skellam_excess():
    user = {"enabled": True, "clip_norm": 0.05, "noise_multiplier": 1.0, "noise": "distributed"}
    cfg = tiny_job(
        federation={"clients": 10, "rounds": 40, "sample_rate": 0.2},
        aggregation={"protocol": "secagg+"},
        privacy={"user": user},
    )
    u = estimate(cfg)["user"]
    rel, agg = u["observers"]["released_models"], u["observers"]["aggregator"]
    assert agg["protected"] and agg["participations_expected"] == pytest.approx(8.0)
    assert agg["epsilon_expected"] > rel["epsilon"]  # no amplification against it
    gauss = privacy.user_level_epsilon(noise_multiplier=1.0, sample_rate=0.2, rounds=40, delta=1e-5)
    pct = 100 * (u["skellam_epsilon"] / gauss - 1)
    assert f"{pct:.1f}% above the Gaussian figure" in u["note"]
    assert "slightly" not in u["note"]


def test_early_stop_is_recorded_in_skipped(tmp_path):
    probe = FederatedRunner(
        tiny_job(privacy={"sample": {"enabled": True, "noise_multiplier": 1.0}}), tmp_path / "p"
    )
    probe.start()
    budget = 1.001 * max(
        privacy.epsilon_for(
            noise_multiplier=1.0, sample_rate=s.sample_rate, steps=s.steps, delta=1e-5
        )
        for s in probe.sample_dp.schedules.values()
    )  # one round fits, two do not
    cfg = tiny_job(
        federation={"rounds": 3},
        privacy={"budget": budget, "sample": {"enabled": True, "noise_multiplier": 1.0}},
    )
    runner = FederatedRunner(cfg, tmp_path / "run")
    summary = runner.run()
    assert "stopped_early" in summary
    report = json.loads((tmp_path / "run" / "privacy_report.json").read_text())
    stopped = [s for s in report["skipped"] if "ended early" in s["reason"]]
    assert {s["client"] for s in stopped} == {"0", "1", "2"}
    assert all(s["round"] == 2 and "rounds 2-3 not run" in s["reason"] for s in stopped)
