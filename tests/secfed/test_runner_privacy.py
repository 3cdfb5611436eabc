"""Privacy in the runner: per-client ledger across rounds and resume, budget enforcement,
user-level DP with central and distributed noise."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest

import privacy
from secfed.runner import FederatedRunner
from tests.secfed.conftest import tiny_job

DP = {"sample": {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0}}


def test_epsilon_grows_every_round_and_matches_an_independent_accounting(tmp_path):
    cfg = tiny_job(privacy={**DP, "budget": 50.0}, federation={"optimizer": "sgd", "lr": 0.5})
    runner = FederatedRunner(cfg, tmp_path / "run")
    summary = runner.run()
    rows = runner.dir.read_metrics()
    for cid in ("0", "1", "2"):
        eps = [r["epsilon"][cid] for r in rows]
        assert all(b > a for a, b in pairwise(eps)), eps
        sched = runner.sample_dp.schedules[int(cid)]
        # Recompute from (q, sigma, total steps) with a fresh accountant.
        want = privacy.epsilon_for(
            noise_multiplier=1.0,
            sample_rate=sched.sample_rate,
            steps=sched.steps * len(rows),
            delta=cfg.privacy.delta,
        )
        assert eps[-1] == pytest.approx(want, rel=1e-6)
    report = summary["privacy"]
    assert report["delta"] == cfg.privacy.delta and report["accountant"] == "rdp"
    assert set(report["epsilon"]) == {"0", "1", "2"}
    assert json.loads((tmp_path / "run" / "privacy_report.json").read_text())["budget"] == 50.0


def test_target_epsilon_is_never_exceeded(tmp_path):
    dp = {"sample": {"enabled": True, "epsilon": 3.0, "max_grad_norm": 1.0}}
    runner = FederatedRunner(tiny_job(privacy=dp), tmp_path / "run")
    runner.run()
    final = runner.dir.read_metrics()[-1]["epsilon"]
    assert all(0 < e <= 3.0 for e in final.values())
    assert max(final.values()) > 2.5  # calibrated for the whole job, so nearly all is spent


def test_budget_exhaustion_skips_clients_and_ends_cleanly(tmp_path):
    probe = FederatedRunner(tiny_job(privacy=DP), tmp_path / "probe")
    probe.start()
    # A budget that fits two rounds but not three, for every client.
    budget = 1.001 * max(
        privacy.epsilon_for(
            noise_multiplier=1.0, sample_rate=s.sample_rate, steps=2 * s.steps, delta=1e-5
        )
        for s in probe.sample_dp.schedules.values()
    )
    cfg = tiny_job(privacy={**DP, "budget": budget}, federation={"rounds": 6})
    runner = FederatedRunner(cfg, tmp_path / "run")
    summary = runner.run()
    assert summary["stopped_early"] == "privacy budget exhausted after round 2"
    rows = runner.dir.read_metrics()
    assert [r["round"] for r in rows] == [1, 2]
    assert all(0 < e <= budget for e in rows[-1]["epsilon"].values())
    assert (tmp_path / "run" / "adapter").exists()


def test_budget_too_small_for_one_round_skips_with_reason(tmp_path):
    runner = FederatedRunner(tiny_job(privacy={**DP, "budget": 0.01}), tmp_path / "run")
    runner.start()
    assert runner.sample_dp.admit(1, [0, 1]) == []
    reasons = [s.reason for s in runner.sample_dp.ledger.skipped]
    assert len(reasons) == 2 and all("budget" in r for r in reasons)
    summary = runner.run()
    assert summary["stopped_early"] == "privacy budget exhausted after round 0"


def test_ledger_survives_resume(tmp_path):
    cfg = tiny_job(privacy={**DP, "deterministic_noise": True})
    full = FederatedRunner(cfg, tmp_path / "full")
    full.run()
    part = FederatedRunner(cfg, tmp_path / "part")
    part.start()
    part.run_round(1)
    part.run_round(2)
    resumed = FederatedRunner.resume(tmp_path / "part")
    assert resumed.sample_dp.epsilon() == part.sample_dp.epsilon()
    resumed.run()
    assert resumed.dir.read_metrics()[-1]["epsilon"] == full.dir.read_metrics()[-1]["epsilon"]
    np.testing.assert_array_equal(resumed.state.global_vector, full.state.global_vector)


def test_unsupported_adapter_is_refused_under_dp(tmp_path):
    cfg = tiny_job(privacy=DP, adapter={"method": "prompt_tuning", "options": {}})
    with pytest.raises(privacy.UnsupportedUnderDP, match="prompt"):
        FederatedRunner(cfg, tmp_path / "run")


@pytest.mark.parametrize("noise", ["central", "distributed"])
def test_user_level_dp_clips_and_accounts(tmp_path, noise):
    user = {"enabled": True, "clip_norm": 0.05, "noise_multiplier": 0.8, "noise": noise}
    cfg = tiny_job(privacy={"user": user}, federation={"sample_rate": 0.5, "clients": 4})
    runner = FederatedRunner(cfg, tmp_path / "run")
    summary = runner.run()
    rows = runner.dir.read_metrics()
    eps = [r["user_epsilon"] for r in rows]
    assert all(b > a for a, b in pairwise(eps))
    want = privacy.user_level_epsilon(
        noise_multiplier=0.8, sample_rate=0.5, rounds=len(rows), delta=cfg.privacy.delta
    )
    assert eps[-1] == pytest.approx(want, rel=1e-6)
    assert summary["privacy"]["level"] == ["user"]
    assert summary["privacy"]["threat_model"]["dp"]["user_noise"] == noise


def test_user_level_clip_bounds_each_update(tmp_path):
    user = {"enabled": True, "clip_norm": 0.01, "noise_multiplier": 0.0}
    runner = FederatedRunner(tiny_job(privacy={"user": user}), tmp_path / "run")
    runner.start()
    before = runner.state.global_vector.copy()
    runner.run_round(1)
    # Without noise, the global step is the mean of clipped updates: norm <= clip.
    assert np.linalg.norm(runner.state.global_vector - before) <= 0.01 + 1e-6


def test_distributed_skellam_noise_through_secagg(tmp_path):
    user = {"enabled": True, "clip_norm": 0.05, "noise_multiplier": 0.8, "noise": "distributed"}
    cfg = tiny_job(
        privacy={"user": user},
        aggregation={"protocol": "secagg+"},
        federation={"clients": 4, "rounds": 2},
    )
    runner = FederatedRunner(cfg, tmp_path / "run")
    # The quantisation range follows from the clip norm, with room for the noise tail.
    assert runner.protocol.options["clip"] == pytest.approx(0.05 * (1 + 8 * 0.8))
    runner.run()
    plan = runner.user_dp.plan
    assert plan is not None and plan.quantum == runner.protocol.quantum
    row = runner.dir.read_metrics()[-1]
    want = plan.epsilon(sample_rate=1.0, rounds=2, delta=cfg.privacy.delta)
    assert row["user_epsilon"] == pytest.approx(want)
    # Skellam accounting is at least as conservative as the Gaussian figure.
    gauss = privacy.user_level_epsilon(
        noise_multiplier=0.8, sample_rate=1.0, rounds=2, delta=cfg.privacy.delta
    )
    assert row["user_epsilon"] >= gauss * 0.99
