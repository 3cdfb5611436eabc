"""The privacy ledger: per-client spend, budget enforcement, resume."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from privacy import (
    PrivacyBudgetExceeded,
    PrivacyConfigError,
    PrivacyLedger,
    epsilon_for,
    train_private,
)

PLAN: dict[str, Any] = {"noise_multiplier": 1.0, "sample_rate": 0.05, "steps": 40}


def test_spend_records_and_grows_per_client():
    ledger = PrivacyLedger(budget_epsilon=10.0, delta=1e-5)
    r0 = ledger.spend("a", round=0, **PLAN)
    ledger.spend(3, round=0, **PLAN)
    r1 = ledger.spend("a", round=1, **PLAN)
    assert r0.steps == r1.steps == 40
    assert r1.epsilon > r0.epsilon
    assert r1.epsilon == pytest.approx(
        epsilon_for(noise_multiplier=1.0, sample_rate=0.05, steps=80, delta=1e-5)
    )
    spent = ledger.spent()
    assert set(spent) == {"a", "3"}
    assert spent["a"] == pytest.approx(r1.epsilon)
    assert spent["3"] == pytest.approx(r0.epsilon)
    assert ledger.remaining("a") == pytest.approx(10.0 - r1.epsilon)


def test_budget_enforced_and_skips_recorded():
    ledger = PrivacyLedger(budget_epsilon=5.0, delta=1e-5)
    rounds_done = 0
    for r in range(20):
        if ledger.would_exceed("c", **PLAN):
            ledger.skip("c", round=r, reason="privacy budget exhausted")
            continue
        ledger.spend("c", round=r, **PLAN)
        rounds_done += 1
    assert 0 < rounds_done < 20
    assert ledger.spent()["c"] <= 5.0
    assert len(ledger.skipped) == 20 - rounds_done
    with pytest.raises(PrivacyBudgetExceeded, match="budget"):
        ledger.spend("c", round=99, **PLAN)
    assert ledger.spent()["c"] <= 5.0  # the refused spend was not accounted


def test_state_dict_round_trip_keeps_growing():
    ledger = PrivacyLedger(budget_epsilon=20.0, delta=1e-5, accountant="rdp")
    ledger.spend("a", round=0, **PLAN)
    ledger.skip("b", round=0, reason="dropped")
    state = json.loads(json.dumps(ledger.state_dict()))
    resumed = PrivacyLedger(budget_epsilon=20.0, delta=1e-5, accountant="rdp")
    resumed.load_state_dict(state)
    assert resumed.spent() == pytest.approx(ledger.spent())
    assert resumed.records == ledger.records and resumed.skipped == ledger.skipped
    before = resumed.spent()["a"]
    resumed.spend("a", round=1, **PLAN)
    assert resumed.spent()["a"] > before
    assert resumed.accountant("a").steps == 80
    assert PrivacyLedger.from_state_dict(state).spent() == pytest.approx(ledger.spent())
    with pytest.raises(PrivacyConfigError, match="delta"):
        PrivacyLedger(budget_epsilon=20.0, delta=1e-6).load_state_dict(state)


def test_record_after_private_training():
    ledger = PrivacyLedger(budget_epsilon=None, delta=1e-5)
    model = torch.nn.Linear(4, 2)
    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))

    def loss(m, b):
        return torch.nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")

    for r in range(2):
        train_private(
            model, data, loss_fn=loss, epochs=1, batch_size=8, lr=0.1, noise_multiplier=1.2,
            max_grad_norm=1.0, accountant=ledger.accountant("x"),
        )  # fmt: skip
        entry = ledger.record("x", round=r)
        assert entry.steps == 5 and entry.noise_multiplier == 1.2 and entry.sample_rate == 0.2
    assert ledger.accountant("x").steps == 10
    assert ledger.records[-1].epsilon == pytest.approx(
        epsilon_for(noise_multiplier=1.2, sample_rate=0.2, steps=10, delta=1e-5)
    )


def test_record_past_budget_raises():
    ledger = PrivacyLedger(budget_epsilon=0.5, delta=1e-5)
    ledger.accountant("z").step(noise_multiplier=0.5, sample_rate=0.5, steps=100)
    with pytest.raises(PrivacyBudgetExceeded, match="discard"):
        ledger.record("z", round=0)


def test_bad_settings_rejected():
    with pytest.raises(PrivacyConfigError, match="accountant"):
        PrivacyLedger(budget_epsilon=1.0, delta=1e-5, accountant="gdp")
    with pytest.raises(PrivacyConfigError, match="delta"):
        PrivacyLedger(budget_epsilon=1.0, delta=2.0)
