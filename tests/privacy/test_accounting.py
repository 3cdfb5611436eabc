"""Accounting: epsilon against an independent RDP computation, calibration, the accountant."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from privacy import (
    DEFAULT_ORDERS,
    OPACUS_ORDERS,
    ClientAccountant,
    PrivacyBudgetExceeded,
    PrivacyConfigError,
    calibrate_noise,
    epsilon_for,
    history_epsilon,
)
from privacy.rdp import rdp_to_epsilon, sampled_gaussian_rdp

# ---- independent implementation (Mironov, Talwar, Zhang 2019, integer orders) -------------


def _log_add(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi if lo == -math.inf else hi + math.log1p(math.exp(lo - hi))


def independent_rdp(q: float, sigma: float, alpha: int) -> float:
    """log(sum_k C(a,k) (1-q)^(a-k) q^k exp((k^2-k)/(2 sigma^2))) / (a-1)."""
    total = -math.inf
    for k in range(alpha + 1):
        log_binom = math.lgamma(alpha + 1) - math.lgamma(k + 1) - math.lgamma(alpha - k + 1)
        log_q = k * math.log(q) if k else 0.0
        if alpha - k and q == 1.0:
            continue  # (1 - q)^(a - k) = 0
        log_1q = (alpha - k) * math.log1p(-q) if alpha - k else 0.0
        total = _log_add(total, log_binom + log_q + log_1q + (k * k - k) / (2 * sigma**2))
    return total / (alpha - 1)


def independent_epsilon(q: float, sigma: float, steps: int, delta: float, orders) -> float:
    best = math.inf
    for a in orders:
        r = steps * independent_rdp(q, sigma, a)
        eps = r + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    return best


CASES = [
    (0.01, 1.0, 1000, 1e-5),
    (0.004, 1.1, 15000, 1e-5),
    (0.05, 2.0, 300, 1e-6),
    (0.1, 0.8, 100, 1e-5),
    (1.0, 5.0, 10, 1e-5),
]


@pytest.mark.parametrize(("q", "sigma", "steps", "delta"), CASES)
def test_epsilon_matches_independent_rdp(q, sigma, steps, delta):
    orders = list(range(2, 129))
    ours = epsilon_for(
        noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, orders=orders
    )
    theirs = independent_epsilon(q, sigma, steps, delta, orders)
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_unsampled_gaussian_rdp_is_closed_form():
    orders = [2, 5, 17, 100]
    rdp = sampled_gaussian_rdp(sample_rate=1.0, noise_multiplier=3.0, steps=7, orders=orders)
    np.testing.assert_allclose(rdp, [7 * a / (2 * 9.0) for a in orders], rtol=1e-9)


def test_default_grid_beats_opacus_grid_for_large_noise():
    kw: dict[str, Any] = {"sample_rate": 0.01, "steps": 1000, "delta": 1e-5}
    for sigma in (0.7, 1.0, 3.0):
        ours = epsilon_for(noise_multiplier=sigma, **kw)
        opacus = epsilon_for(noise_multiplier=sigma, orders=OPACUS_ORDERS, **kw)
        assert ours <= opacus + 1e-12
    big_ours = epsilon_for(noise_multiplier=10.0, **kw)
    big_opacus = epsilon_for(noise_multiplier=10.0, orders=OPACUS_ORDERS, **kw)
    assert big_ours < 0.85 * big_opacus
    _, best_order = rdp_to_epsilon(
        rdp=sampled_gaussian_rdp(sample_rate=0.01, noise_multiplier=10.0, steps=1000),
        orders=DEFAULT_ORDERS,
        delta=1e-5,
    )
    assert best_order > 63


def test_matches_opacus_rdp_accountant_on_its_grid():
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(1.3, 0.02, 700), (0.9, 0.05, 40)]
    ref = acc.get_epsilon(delta=1e-5)
    ours = history_epsilon(acc.history, delta=1e-5, orders=OPACUS_ORDERS)
    assert ours == pytest.approx(ref, rel=1e-9)


def test_prv_is_close_to_and_not_above_rdp():
    kw: dict[str, Any] = {
        "noise_multiplier": 1.0,
        "sample_rate": 0.01,
        "steps": 1000,
        "delta": 1e-5,
    }
    rdp = epsilon_for(**kw)
    prv = epsilon_for(accountant="prv", **kw)
    assert 0.6 * rdp < prv <= rdp


def test_prv_failure_falls_back_to_rdp(monkeypatch, caplog):
    from opacus.accountants import PRVAccountant

    def broken(self, delta, **kwargs):
        raise ValueError("domain too small")

    monkeypatch.setattr(PRVAccountant, "get_epsilon", broken)
    kw: dict[str, Any] = {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 100, "delta": 1e-5}
    with caplog.at_level("WARNING"):
        got = epsilon_for(accountant="prv", **kw)
    assert got == pytest.approx(epsilon_for(**kw))
    assert "falling back to RDP" in caplog.text


def test_epsilon_edge_cases_and_validation():
    assert epsilon_for(noise_multiplier=1.0, sample_rate=0.1, steps=0, delta=1e-5) == 0.0
    assert epsilon_for(noise_multiplier=0.0, sample_rate=0.1, steps=3, delta=1e-5) == math.inf
    with pytest.raises(PrivacyConfigError, match="delta"):
        epsilon_for(noise_multiplier=1.0, sample_rate=0.1, steps=3, delta=0.0)
    with pytest.raises(PrivacyConfigError, match="sample_rate"):
        epsilon_for(noise_multiplier=1.0, sample_rate=1.5, steps=3, delta=1e-5)
    with pytest.raises(PrivacyConfigError, match="gdp"):
        epsilon_for(noise_multiplier=1.0, sample_rate=0.1, steps=3, delta=1e-5, accountant="gdp")


@pytest.mark.parametrize(("eps", "q", "steps"), [(1.0, 0.01, 2000), (8.0, 0.05, 400)])
def test_calibration_inverts_epsilon_for(eps, q, steps):
    sigma = calibrate_noise(target_epsilon=eps, delta=1e-5, sample_rate=q, steps=steps)
    kw: dict[str, Any] = {"sample_rate": q, "steps": steps, "delta": 1e-5}
    assert epsilon_for(noise_multiplier=sigma, **kw) <= eps
    assert epsilon_for(noise_multiplier=sigma * (1 - 3e-3), **kw) > eps


def test_calibration_rejects_unreachable_budget():
    with pytest.raises(PrivacyConfigError, match="out of reach"):
        calibrate_noise(target_epsilon=1e-9, delta=1e-5, sample_rate=1.0, steps=10**6)


def test_client_accountant_grows_and_survives_json_round_trip():
    acc = ClientAccountant(kind="rdp", delta=1e-5, budget_epsilon=50.0)
    acc.step(noise_multiplier=1.0, sample_rate=0.02, steps=100)
    acc.step(noise_multiplier=1.0, sample_rate=0.02, steps=50)
    assert acc.history == [(1.0, 0.02, 150)]
    eps1 = acc.epsilon()
    assert eps1 == pytest.approx(
        epsilon_for(noise_multiplier=1.0, sample_rate=0.02, steps=150, delta=1e-5)
    )
    restored = ClientAccountant.from_state_dict(json.loads(json.dumps(acc.state_dict())))
    assert restored.history == acc.history
    assert restored.epsilon() == pytest.approx(eps1)
    restored.step(noise_multiplier=1.5, sample_rate=0.02, steps=100)
    assert restored.steps == 250
    assert restored.epsilon() > eps1
    with pytest.raises(PrivacyConfigError, match="accountant"):
        ClientAccountant(kind="prv", delta=1e-5).load_state_dict(acc.state_dict())


def test_optimizer_hook_steps_the_same_history():
    acc = ClientAccountant(delta=1e-5)
    hook = acc.optimizer_hook(sample_rate=0.1)

    class FakeOptimizer:
        noise_multiplier = 1.2
        accumulated_iterations = 1

    for _ in range(5):
        hook(FakeOptimizer())
    assert acc.history == [(1.2, 0.1, 5)]


def test_client_accountant_budget():
    acc = ClientAccountant(delta=1e-5, budget_epsilon=2.0)
    plan: dict[str, Any] = {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 100}
    assert not acc.would_exceed(**plan)
    acc.check_budget(**plan)
    big: dict[str, Any] = {"noise_multiplier": 0.8, "sample_rate": 0.1, "steps": 1000}
    assert acc.would_exceed(**big)
    with pytest.raises(PrivacyBudgetExceeded, match="budget"):
        acc.check_budget(**big)
    assert ClientAccountant(delta=1e-5).would_exceed(**big) is False
