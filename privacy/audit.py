"""Empirical lower bounds on epsilon from one training run (Steinke, Nasr, Jagielski,
NeurIPS 2023, "Privacy auditing with one (1) training run").

The auditor inserts ``m`` canaries, each independently included with probability 1/2, trains
once, scores every canary, and guesses "included" for the highest scores and "excluded" for
the lowest, abstaining on the rest: ``r`` guesses, ``v`` of them right. If the training is
``(eps, delta)``-DP (add/remove one canary), then (their Theorem 5.2, with
``q = e^eps / (1 + e^eps)``, the accuracy of eps-randomized response)::

    P[W >= v] <= P[Binomial(r, q) >= v]
                 + 2 m delta * max_{1 <= i <= v} (1/i) P[v - i <= Binomial(r, q) < v]

So the largest ``eps`` whose bound is still below ``1 - confidence`` is a lower bound on the
true epsilon at that confidence (:func:`epsilon_lower_bound`). Choosing the number of guesses
after seeing the results would invalidate the bound: :func:`audit_scores` tries a fixed list
of guess counts and pays for the choice with a Bonferroni correction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import binom

from .errors import PrivacyConfigError


def p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Upper bound on P[at least ``v`` of ``r`` guesses right] under (epsilon, delta)-DP."""
    if not 0 <= v <= r <= m:
        raise PrivacyConfigError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise PrivacyConfigError(f"need epsilon >= 0 and 0 <= delta <= 1, got {epsilon}, {delta}")
    if v == 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, q))
    slack = 0.0
    if delta > 0:
        # P[v - i <= Bin < v] for i = 1..v, each divided by i; the largest counts.
        below = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))
        slack = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, tail + 2 * m * delta * slack)


def epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """Largest epsilon rejected at ``confidence`` (0 if even epsilon = 0 is not rejected)."""
    if not 0 < confidence < 1:
        raise PrivacyConfigError(f"confidence must lie in (0, 1), got {confidence}")
    alpha = 1 - confidence

    def rejected(eps: float) -> bool:
        return p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) < alpha

    if not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejected(hi):
        lo, hi = hi, 2 * hi
        if hi > 1e3:
            return lo
    while hi - lo > 1e-7:
        mid = (lo + hi) / 2
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class AuditResult:
    """The best bound over the pre-declared guess counts, and how it was reached."""

    epsilon_lower_bound: float
    confidence: float
    canaries: int
    guesses: int
    correct: int
    guess_counts_tried: tuple[int, ...]

    def as_dict(self) -> dict[str, float | int | list[int]]:
        return {
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "confidence": self.confidence,
            "canaries": self.canaries,
            "guesses": self.guesses,
            "correct": self.correct,
            "guess_counts_tried": list(self.guess_counts_tried),
        }


def default_guess_counts(m: int) -> tuple[int, ...]:
    """Guess counts tried (decided before the scores are seen): 2.5% ... 100% of ``m``."""
    fractions = (0.025, 0.05, 0.1, 0.2, 0.4, 1.0)
    return tuple(sorted({max(2, round(f * m)) // 2 * 2 for f in fractions if f * m >= 2}))


def audit_scores(
    scores: Sequence[float] | NDArray[np.float64],
    included: Sequence[bool] | NDArray[np.bool_],
    *,
    delta: float,
    confidence: float = 0.95,
    guess_counts: Sequence[int] | None = None,
) -> AuditResult:
    """Guess membership from ``scores`` (higher: more likely included) and bound epsilon.

    For each count ``r`` in ``guess_counts`` the top ``r/2`` scores are guessed included and
    the bottom ``r/2`` excluded; each bound is taken at confidence
    ``1 - (1 - confidence) / len(guess_counts)`` so that their maximum holds at ``confidence``.
    """
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=bool)
    m = len(s)
    if m < 2 or len(inc) != m or not np.all(np.isfinite(s)):
        raise PrivacyConfigError(f"need >= 2 finite scores and one flag each, got {m}")
    counts = tuple(guess_counts) if guess_counts is not None else default_guess_counts(m)
    if not counts or any(r < 2 or r > m or r % 2 for r in counts):
        raise PrivacyConfigError(f"guess counts must be even and within [2, {m}], got {counts}")
    each = 1 - (1 - confidence) / len(counts)
    order = np.argsort(s, kind="stable")
    best = AuditResult(0.0, confidence, m, 0, 0, counts)
    for r in counts:
        low, high = order[: r // 2], order[m - r // 2 :]
        v = int(inc[high].sum() + (~inc[low]).sum())
        eps = epsilon_lower_bound(m=m, r=r, v=v, delta=delta, confidence=each)
        if eps > best.epsilon_lower_bound:
            best = AuditResult(eps, confidence, m, r, v, counts)
    return best
