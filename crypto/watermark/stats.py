"""Verification statistics: exact binomial tests, Clopper-Pearson intervals, Holm.

Two levels. ``alpha`` (default 1e-6, at most 0.01) is the statistical level: the
family-wise error across the keys and tests checked together (Holm). The security floor
``SECURITY_LEVEL = 2**-64`` is what makes a verdict hard to forge: every key's message
bits and trigger labels are fresh randomness of its seed, so for ANY fixed adapter a seed
passes a test with probability exactly its p-value threshold. A family is tested at level
``min(alpha, SECURITY_LEVEL)``, so a claimant searching seeds needs at least 2**64
expected tries per success, and the false-positive rate per family is at most 2**-64
(5.4e-20). With 256 bits the floor asks for >= 200 matching bits of 256 (78%); with 256
binary-label triggers, >= 200 hits (fewer when the task has more classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _st

DEFAULT_ALPHA = 1e-6
MAX_ALPHA = 0.01
SECURITY_BITS = 64
SECURITY_LEVEL = 2.0**-SECURITY_BITS


def effective_level(alpha: float) -> float:
    """The family-wise level a verdict uses: ``min(alpha, 2**-64)``; alpha in (0, 0.01]."""
    if not 0.0 < alpha <= MAX_ALPHA:
        raise ValueError(
            f"alpha={alpha} out of range; an ownership verdict needs 0 < alpha <= {MAX_ALPHA}"
        )
    return min(alpha, SECURITY_LEVEL)


def min_matches(*, trials: int, chance: float, level: float = SECURITY_LEVEL) -> int:
    """Fewest successes whose exact one-sided p-value is at most ``level``."""
    for k in range(trials + 1):
        if binomial_p_value(matches=k, trials=trials, chance=chance) <= level:
            return k
    return trials + 1


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


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values: ``max_{j<=i} min(1, (m - j) p_(j))`` in rank order.

    Rejecting where the adjusted value is <= alpha is the same as :func:`holm`.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


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
