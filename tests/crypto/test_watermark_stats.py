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


def test_security_threshold_for_256_bits():
    # The documented floor: 200/256 matches passes 2^-64, 199/256 does not.
    assert wm.binomial_p_value(matches=200, trials=256) <= wm.SECURITY_LEVEL
    assert wm.binomial_p_value(matches=199, trials=256) > wm.SECURITY_LEVEL
    assert wm.min_matches(trials=256, chance=0.5) == 200
    assert wm.effective_level(1e-6) == wm.SECURITY_LEVEL == 2.0**-64


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


def test_holm_adjusted_p_values_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04)
    assert wm.holm_adjusted([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert wm.holm_adjusted([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    for ps in ([0.01, 0.04, 0.03], [0.001, 0.02, 0.03, 0.5], [0.2]):
        for alpha in (0.01, 0.05, 0.1):
            assert [p <= alpha for p in wm.holm_adjusted(ps)] == wm.holm(ps, alpha=alpha)


def test_decide_reports_adjusted_p_and_refuses_bad_alpha():
    bits = [wm.bit_test(matches=m, bits=256) for m in (256, 199, 130)]
    v = wm.decide([0, 1, 2], bits, [None] * 3, alpha=1e-6)
    raw = [b.p_value for b in bits]
    assert [x.p_value for x in v] == pytest.approx(
        [3 * raw[0], 2 * raw[1], max(2 * raw[1], raw[2])]
    )
    assert [x.marked for x in v] == [True, False, False]  # 2 * P[>=199] > 2^-64
    for alpha in (0.0, 0.02, 1.0):
        with pytest.raises(ValueError, match="alpha"):
            wm.decide([0], bits[:1], [None], alpha=alpha)


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
