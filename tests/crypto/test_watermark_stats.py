"""Verification statistics against explicit sums and defining properties."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from scipy import stats as st

from crypto import watermark as wm


def _tail(k: int, n: int, p: Fraction) -> float:
    return float(
        sum(Fraction(math.comb(n, i)) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
    )


@pytest.mark.parametrize(("k", "n"), [(0, 64), (32, 64), (51, 64), (64, 64), (200, 256), (7, 10)])
def test_binomial_p_value_matches_exact_sum(k, n):
    assert wm.binomial_p_value(matches=k, trials=n) == pytest.approx(
        _tail(k, n, Fraction(1, 2)), rel=1e-9
    )


def test_binomial_p_value_other_chance():
    assert wm.binomial_p_value(matches=9, trials=20, chance=0.25) == pytest.approx(
        _tail(9, 20, Fraction(1, 4)), rel=1e-9
    )


def test_alpha_threshold_for_64_bits():
    # The documented default: 51/64 matches passes 1e-6, 50/64 does not.
    assert wm.binomial_p_value(matches=51, trials=64) < wm.DEFAULT_ALPHA
    assert wm.binomial_p_value(matches=50, trials=64) > wm.DEFAULT_ALPHA


@pytest.mark.parametrize(("x", "n"), [(0, 20), (3, 20), (20, 20), (13, 16)])
def test_clopper_pearson_inverts_binomial_tails(x, n):
    lo, hi = wm.clopper_pearson(successes=x, trials=n, confidence=0.95)
    if x > 0:
        assert st.binom.sf(x - 1, n, lo) == pytest.approx(0.025, rel=1e-6)
    else:
        assert lo == 0.0
    if x < n:
        assert st.binom.cdf(x, n, hi) == pytest.approx(0.025, rel=1e-6)
    else:
        assert hi == 1.0
    assert lo <= x / n <= hi


def test_holm_step_down():
    assert wm.holm([0.01, 0.04, 0.03], alpha=0.05) == [True, False, False]
    assert wm.holm([0.01, 0.02, 0.03], alpha=0.06) == [True, True, True]
    assert wm.holm([0.5], alpha=0.05) == [False]


def test_trigger_test_against_chance():
    t = wm.trigger_test(hits=18, triggers=20, num_labels=4)
    assert t.chance == 0.25 and t.accuracy == 0.9
    assert t.p_value == pytest.approx(_tail(18, 20, Fraction(1, 4)), rel=1e-9)
    assert t.ci_low < 0.9 < t.ci_high


def test_bad_arguments_rejected():
    with pytest.raises(ValueError, match="matches"):
        wm.binomial_p_value(matches=65, trials=64)
    with pytest.raises(ValueError, match="chance"):
        wm.binomial_p_value(matches=1, trials=2, chance=1.0)
