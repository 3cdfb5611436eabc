"""Verification statistics: exact binomial tests, Clopper-Pearson intervals, Holm.

Choice of significance level: ``DEFAULT_ALPHA = 1e-6`` per family of keys tested
together (Holm-corrected). An ownership claim accuses someone of taking a model, so a
false positive is far costlier than a miss. With 64 bits a freshly marked adapter matches
all bits (p = 5.4e-20), and 1e-6 still tolerates 13 of 64 bit errors after an attack
(51/64 matches: p = 9.4e-7; 50/64: p = 3.5e-6), while a key that was never embedded is
declared "marked" at most once in a million tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _st

DEFAULT_ALPHA = 1e-6


def binomial_p_value(*, matches: int, trials: int, chance: float = 0.5) -> float:
    """Exact one-sided ``P[X >= matches]`` for ``X ~ Binomial(trials, chance)``."""
    if not 0 <= matches <= trials:
        raise ValueError(f"matches={matches} must lie in [0, trials={trials}]")
    if not 0.0 < chance < 1.0:
        raise ValueError(f"chance={chance} must lie in (0, 1)")
    return float(_st.binom.sf(matches - 1, trials, chance))


def clopper_pearson(
    *, successes: int, trials: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Exact two-sided Clopper-Pearson interval for a binomial proportion."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes={successes} <= trials={trials}, trials >= 1")
    a = 1.0 - confidence
    lo = 0.0 if successes == 0 else float(_st.beta.ppf(a / 2, successes, trials - successes + 1))
    hi = (
        1.0
        if successes == trials
        else float(_st.beta.ppf(1 - a / 2, successes + 1, trials - successes))
    )
    return lo, hi


def holm(p_values: Sequence[float], *, alpha: float) -> list[bool]:
    """Holm step-down rejections (family-wise error <= alpha); one value = plain test."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    reject = [False] * len(p_values)
    m = len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (m - rank):
            break
        reject[i] = True
    return reject


@dataclass(frozen=True)
class BitTest:
    """Outcome of the white-box bit test of one key."""

    bits: int
    matches: int
    bit_accuracy: float
    p_value: float


def bit_test(*, matches: int, bits: int) -> BitTest:
    """Bit accuracy and exact p-value under the null of fair coin bits."""
    return BitTest(bits, matches, matches / bits, binomial_p_value(matches=matches, trials=bits))


@dataclass(frozen=True)
class TriggerTest:
    """Outcome of the black-box trigger test of one key.

    Each trigger's label is uniform random from the key, so under the null (the model never
    saw the key) every hit is an independent Bernoulli(``chance``) whatever the model's
    label biases, and the exact binomial p-value is valid as it stands.
    """

    triggers: int
    hits: int
    accuracy: float
    chance: float
    p_value: float
    ci_low: float
    ci_high: float


def trigger_test(
    *, hits: int, triggers: int, num_labels: int, confidence: float = 0.95
) -> TriggerTest:
    """Trigger accuracy vs chance ``1/num_labels``: exact binomial p, Clopper-Pearson CI."""
    chance = 1.0 / max(num_labels, 2)
    lo, hi = clopper_pearson(successes=hits, trials=triggers, confidence=confidence)
    p = binomial_p_value(matches=hits, trials=triggers, chance=chance)
    return TriggerTest(triggers, hits, hits / triggers, chance, p, lo, hi)
