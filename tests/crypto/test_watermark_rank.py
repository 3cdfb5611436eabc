"""The keyed rank test of trigger scores: exact null tail, validity, what it ignores."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest

from crypto import watermark as wm


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Ranks written out plainly: 1 + how many triggers lie strictly below (or tie earlier)."""
    c = scores - scores.mean(axis=1, keepdims=True)
    n, k = c.shape
    return np.array(
        [[1 + sum(c[j, m] < c[i, m] or (c[j, m] == c[i, m] and j < i) for j in range(n))
          for m in range(k)] for i in range(n)]
    )  # fmt: skip


def _enumerated_tail(scores: np.ndarray, w: int) -> Fraction:
    r = _ranks(scores)
    n, k = r.shape
    hits = sum(
        1
        for ys in itertools.product(range(k), repeat=n)
        if sum(r[i, y] for i, y in enumerate(ys)) >= w
    )
    return Fraction(hits, k**n)


def _polynomial_tail(scores: np.ndarray, w: int) -> Fraction:
    """Exact integer generating function prod_i sum_c x^rank(i, c), packed in one big
    integer (``bits`` bits per coefficient, enough for k**n ways)."""
    r = _fast_ranks(scores)
    n, k = r.shape
    bits = n * k.bit_length() + 1
    poly = 1
    for row in r:
        poly = sum(poly << (int(v) * bits) for v in row)
    tail, ways, mask = poly >> (w * bits), 0, (1 << bits) - 1
    while tail:
        ways, tail = ways + (tail & mask), tail >> bits
    return Fraction(ways, k**n)


def _fast_ranks(scores: np.ndarray) -> np.ndarray:
    c = scores - scores.mean(axis=1, keepdims=True)
    from scipy.stats import rankdata

    return np.stack([rankdata(c[:, m], method="ordinal") for m in range(c.shape[1])], 1)


@pytest.mark.parametrize(("n", "k", "seed"), [(7, 2, 0), (6, 3, 1), (5, 4, 2)])
def test_tail_equals_enumeration_over_every_labelling(n, k, seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, k))
    labels = rng.integers(0, k, n)
    t = wm.keyed_rank_test(scores, labels)
    assert t.statistic == int(_ranks(scores)[np.arange(n), labels].sum())
    assert t.p_value == pytest.approx(float(_enumerated_tail(scores, t.statistic)), rel=1e-8)


@pytest.mark.parametrize("k", [2, 3])
def test_tail_at_scheme_size_equals_exact_integer_count(k):
    """256 triggers, labels leaning to their class: far in the tail, still exact."""
    rng = np.random.default_rng(k)
    labels = rng.integers(0, k, 256)
    scores = rng.normal(size=(256, k))
    scores[np.arange(256), labels] += 1.2
    t = wm.keyed_rank_test(scores, labels)
    exact = float(_polynomial_tail(scores, t.statistic))
    assert exact < 2.0**-64  # the regime verdicts are made in
    assert exact <= t.p_value <= exact * (1 + 1e-8)  # never below the exact value


def test_null_p_values_are_valid_for_any_fixed_model():
    """Labels drawn independently of fixed scores: P[p <= a] <= a (the null the key gives)."""
    rng = np.random.default_rng(7)
    scores = rng.standard_t(2, size=(64, 2)) * 5 + np.array([3.0, -1.0])  # biased, heavy-tailed
    ps = np.array([wm.keyed_rank_test(scores, rng.integers(0, 2, 64)).p_value for _ in range(2000)])
    for a in (0.01, 0.05, 0.2, 0.5):
        # 3-sigma binomial slack over 2000 draws
        assert (ps <= a).mean() <= a + 3 * np.sqrt(a * (1 - a) / 2000), a
    assert (ps <= 0.5).mean() > 0.4  # and not trivially conservative


def test_blind_to_a_shift_every_trigger_shares_but_not_to_lean():
    """A fine-tuned model's new class bias drives hits to chance; the rank test still sees
    the lean, and a model whose scores ignore the labels stays at chance in both."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 256)
    scores = rng.normal(size=(256, 2))
    scores[np.arange(256), labels] += 1.5
    shifted = scores + np.array([4.0, 0.0])  # every trigger now predicted as class 0
    before, after = wm.keyed_rank_test(scores, labels), wm.keyed_rank_test(shifted, labels)
    assert before == after and after.p_value < 2.0**-64
    assert wm.keyed_rank_test(3.0 * shifted - 7.0, labels) == before  # and a shared scale
    hits = int((shifted.argmax(1) == labels).sum())
    assert wm.binomial_p_value(matches=hits, trials=256) > 0.01
    unrelated = wm.keyed_rank_test(rng.normal(size=(256, 2)), labels)
    assert unrelated.p_value > 1e-4


def test_bad_scores_and_labels_refused():
    with pytest.raises(ValueError, match=r"\[n, K >= 2\]"):
        wm.keyed_rank_test(np.zeros((4, 1)), np.zeros(4, int))
    with pytest.raises(ValueError, match="labels must lie"):
        wm.keyed_rank_test(np.zeros((4, 2)), np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="NaN"):
        wm.keyed_rank_test(np.array([[0.0, np.nan], [1.0, 0.0]]), np.array([0, 1]))


def test_tail_below_the_float_range_is_bounded_not_zero():
    """Twenty classes, every trigger ranked high on its label: the exact tail is about
    20^-256, below float64; the test reports a positive upper bound at its floor."""
    labels = np.arange(256) % 20
    scores = np.zeros((256, 20))
    scores[np.arange(256), labels] = 1.0 + np.arange(256) / 256
    t = wm.keyed_rank_test(scores, labels)
    exact = _polynomial_tail(scores, t.statistic)
    assert exact < Fraction(1, 10**300)  # no float holds it
    assert 0.0 < t.p_value < 1e-290
