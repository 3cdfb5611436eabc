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

A trigger set has two tests: hits (the label-only view: exact binomial) and, when the
model's scores are at hand, a keyed rank test (:func:`keyed_rank_test`) that also counts
how far each trigger leans towards its label, relative to the other triggers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
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
class RankTest:
    """Outcome of :func:`keyed_rank_test`: the rank sum and its exact null tail."""

    statistic: int
    p_value: float


def keyed_rank_test(scores: ArrayLike, labels: ArrayLike) -> RankTest:
    """How far the triggers lean to their own labels, ranked against each other.

    ``scores`` is ``[n, K]`` (logits), ``labels`` the key's ``[n]`` labels. Each class's
    centred score (logit minus the trigger's mean logit) is ranked over the n triggers
    (1 = lowest; ties by trigger order) and ``W = sum_i rank_i(label_i)``. Under the null
    the labels are iid uniform and independent of the scores (they are fresh randomness of
    the key, drawn apart from the inputs), so ``W`` is a sum of independent picks, one
    uniform column per row of the fixed rank matrix; its tail is computed exactly by
    convolution. The test ignores any shift or scale the model applies to every trigger
    alike (a fine-tuned model's new class bias), where counting hits does not.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if s.ndim != 2 or s.shape[1] < 2 or y.shape != (s.shape[0],) or s.shape[0] < 1:
        raise ValueError(f"scores {s.shape} must be [n, K >= 2] and labels [n], got {y.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or inf; rank the logits of a working model")
    if y.min() < 0 or y.max() >= s.shape[1]:
        raise ValueError(f"labels must lie in [0, {s.shape[1]}), got {y.min()}..{y.max()}")
    ranks = _column_ranks(s - s.mean(axis=1, keepdims=True))
    w = int(ranks[np.arange(len(y)), y].sum())
    return RankTest(w, _rank_sum_tail(ranks, w))


def _column_ranks(centred: np.ndarray) -> np.ndarray:
    n, k = centred.shape
    ranks = np.empty((n, k), dtype=np.int64)
    order_of_rows = np.arange(n)
    for c in range(k):
        ranks[np.lexsort((order_of_rows, centred[:, c])), c] = np.arange(1, n + 1)
    return ranks


def _rank_sum_tail(ranks: np.ndarray, w: int) -> float:
    """``P[sum_i ranks[i, Y_i] >= w]`` for iid uniform column picks ``Y_i``.

    The null distribution is built one row at a time, rescaled to a peak of 1 after each
    (the scale kept as a logarithm). Every term is non-negative, so each value carries a
    relative error below ``n (K + 1) 2^-52``: the tail is inflated by 1e-9 to cover it.
    Values that underflow are dropped; each held less than the smallest float of
    probability and convolution keeps mass, so the dropped total is below
    ``n (top + 1) tiny`` (about 1e-300), which is added back. The result is an upper bound
    of the exact tail, tight to 1e-9 relative above that floor.
    """
    n, k = ranks.shape
    top = int(ranks.max(axis=1).sum())
    dist = np.zeros(top + 1)
    dist[0] = 1.0
    log_scale = 0.0
    reach = 0
    for row in ranks:
        nxt = np.zeros_like(dist)
        for r in row:
            nxt[r : r + reach + 1] += dist[: reach + 1]
        reach += int(row.max())
        peak = float(nxt.max())
        dist = nxt / peak
        log_scale += float(np.log(peak)) - float(np.log(k))
    tail = float(dist[w:].sum())
    exact = float(np.exp(np.log(tail) + log_scale)) if tail > 0 else 0.0
    dropped = n * (top + 1) * float(np.finfo(np.float64).tiny)
    return min(1.0, (exact + dropped) * (1.0 + 1e-9))


@dataclass(frozen=True)
class TriggerTest:
    """Outcome of the black-box trigger test of one key.

    Each trigger's label is uniform random from the key, so under the null (the model never
    saw the key) every hit is an independent Bernoulli(``chance``) whatever the model's
    label biases, and the exact binomial p-value is valid as it stands. ``rank`` is the
    score-based :func:`keyed_rank_test` (None when only predicted labels are known); the
    two are tested together (Holm) with the key's signature.
    """

    triggers: int
    hits: int
    accuracy: float
    chance: float
    p_value: float
    ci_low: float
    ci_high: float
    rank_statistic: int | None = None
    rank_p_value: float | None = None


def trigger_test(
    *,
    hits: int,
    triggers: int,
    num_labels: int,
    confidence: float = 0.95,
    rank: RankTest | None = None,
) -> TriggerTest:
    """Trigger accuracy vs chance ``1/num_labels``: exact binomial p, Clopper-Pearson CI;
    with ``rank`` (from the model's scores) its rank statistic and p-value too."""
    chance = 1.0 / max(num_labels, 2)
    lo, hi = clopper_pearson(successes=hits, trials=triggers, confidence=confidence)
    p = binomial_p_value(matches=hits, trials=triggers, chance=chance)
    return TriggerTest(
        triggers,
        hits,
        hits / triggers,
        chance,
        p,
        lo,
        hi,
        None if rank is None else rank.statistic,
        None if rank is None else rank.p_value,
    )
