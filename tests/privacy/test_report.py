"""Privacy report dict and text table."""

from __future__ import annotations

import json

from privacy import (
    PrivacyLedger,
    UserLevelDP,
    format_report,
    plan_skellam,
    sample_level_report,
    user_level_report,
)


def test_sample_level_report():
    ledger = PrivacyLedger(budget_epsilon=3.0, delta=1e-5)
    ledger.spend("c1", round=0, noise_multiplier=1.1, sample_rate=0.05, steps=20)
    ledger.spend("c2", round=0, noise_multiplier=1.1, sample_rate=0.1, steps=10)
    ledger.skip("c3", round=0, reason="budget")
    rep = sample_level_report(ledger, max_grad_norm=1.0)
    json.dumps(rep)
    assert rep["accountant"] == "rdp" and rep["delta"] == 1e-5 and rep["budget_epsilon"] == 3.0
    assert rep["clients"]["c1"]["epsilon"] == ledger.spent()["c1"]
    assert rep["clients"]["c2"]["sample_rates"] == [0.1]
    assert rep["clients"]["c1"]["steps"] == 20 and rep["clients"]["c1"]["rounds"] == [0]
    assert rep["max_epsilon"] == max(ledger.spent().values())
    assert rep["skipped"] == [{"round": 0, "client": "c3", "reason": "budget"}]
    text = format_report(rep)
    assert "c1" in text and f"{rep['clients']['c2']['epsilon']:.3f}" in text and "c3" in text


def test_user_level_reports():
    dp = UserLevelDP(clip_norm=1.0, noise_multiplier=1.0, tolerated_dropouts=1)
    central = user_level_report(dp, noise="central", sample_rate=0.1, rounds=20, delta=1e-5)
    plan = plan_skellam(noise_multiplier=1.0, clip_norm=1.0, quantum=2**-16, dim=1000,
                        clients=5, tolerated_dropouts=1)  # fmt: skip
    sk = user_level_report(dp, noise="distributed", sample_rate=0.1, rounds=20, delta=1e-5,
                           skellam=plan)  # fmt: skip
    json.dumps(central), json.dumps(sk)
    assert central["accountant"] == "rdp" and sk["accountant"] == "skellam-rdp"
    assert 0 < central["epsilon"] <= sk["epsilon"]
    assert "epsilon" in format_report(sk)
