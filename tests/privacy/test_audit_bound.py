"""The one-run audit bound (Steinke, Nasr, Jagielski 2023) against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

import privacy


def _binomial_tail(r: int, v: int, q: float) -> float:
    """Independent: P[Binomial(r, q) >= v] by exact summation."""
    return sum(math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(v, r + 1))


def _pure_dp_bound(r: int, v: int, alpha: float) -> float:
    """Independent: with delta = 0 the bound is the randomized-response binomial tail; the
    largest eps whose tail is below alpha, by bisection on exact sums."""
    lo, hi = 0.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        q = math.exp(mid) / (1 + math.exp(mid))
        if _binomial_tail(r, v, q) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


@pytest.mark.parametrize(("r", "v"), [(100, 100), (100, 90), (40, 30), (200, 150)])
def test_pure_dp_bound_matches_exact_binomial(r, v):
    got = privacy.epsilon_lower_bound(m=1000, r=r, v=v, delta=0.0)
    assert got == pytest.approx(_pure_dp_bound(r, v, 0.05), abs=1e-6)


def test_hand_computed_case():
    """r = v = 10, delta = 0: q^10 = 0.05 gives q = 0.05^(1/10), eps = log(q / (1 - q))."""
    q = 0.05 ** (1 / 10)
    assert privacy.epsilon_lower_bound(m=10, r=10, v=10, delta=0.0) == pytest.approx(
        math.log(q / (1 - q)), abs=1e-6
    )


def test_delta_term_by_direct_enumeration():
    """The delta slack 2 m delta max_i P[v-i <= Bin < v] / i, enumerated with exact sums."""
    m, r, v, eps, delta = 500, 60, 50, 1.0, 1e-4
    q = math.exp(eps) / (1 + math.exp(eps))
    pmf = [math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(r + 1)]
    slack = max(sum(pmf[v - i : v]) / i for i in range(1, v + 1))
    want = _binomial_tail(r, v, q) + 2 * m * delta * slack
    assert privacy.p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) == pytest.approx(want)
    assert privacy.epsilon_lower_bound(m=m, r=r, v=v, delta=delta) < privacy.epsilon_lower_bound(
        m=m, r=r, v=v, delta=0.0
    )


@pytest.mark.parametrize(
    "runs", [30, pytest.param(300, marks=pytest.mark.slow)], ids=["quick", "thorough"]
)
def test_bound_holds_for_randomized_response(runs):
    """Coverage: a mechanism that is exactly eps0-DP (randomized response on each canary's
    bit) must give a lower bound above eps0 in at most ~5% of runs, with Bonferroni over the
    guess counts making it rarer still."""
    rng = np.random.default_rng(7)
    eps0, m = 1.0, 400
    keep = math.exp(eps0) / (1 + math.exp(eps0))
    over = 0
    bounds = []
    for _ in range(runs):
        included = rng.random(m) < 0.5
        reported = np.where(rng.random(m) < keep, included, ~included)
        scores = reported + rng.random(m) * 1e-3  # ties broken at random
        res = privacy.audit_scores(scores, included, delta=0.0)
        over += res.epsilon_lower_bound > eps0
        bounds.append(res.epsilon_lower_bound)
    assert over <= 0.05 * runs
    assert np.median(bounds) > 0.6  # and the audit has power: close to eps0 = 1


def test_perfect_guesses_give_the_largest_bound():
    included = np.arange(200) % 2 == 0
    res = privacy.audit_scores(included.astype(float), included, delta=1e-5)
    assert res.correct == res.guesses == 200
    assert res.epsilon_lower_bound > 3.0


def test_bad_input_is_named():
    with pytest.raises(privacy.PrivacyConfigError, match="v <= r <= m"):
        privacy.p_value(m=5, r=10, v=3, epsilon=1.0, delta=0.0)
    with pytest.raises(privacy.PrivacyConfigError, match="even"):
        privacy.audit_scores([0.1, 0.2, 0.3], [True, False, True], delta=0.0, guess_counts=[3])
