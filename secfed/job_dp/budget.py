"""User-level DP's budget (``privacy.user.budget``): how many rounds fit, a warning when the
plan passes it (``secfed privacy estimate`` and job start), and the stop before a round that
would pass it.

The budget limits the epsilon against the released models (amplified by secret client
sampling), which grows with every round, empty or not, so it is the same for every client
and decides how many rounds the job may run. The aggregator's figure (no amplification) is
reported beside it, not enforced.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import privacy

from ..config import ExperimentConfig

log = logging.getLogger(__name__)


def released_epsilon(
    cfg: ExperimentConfig, rounds: int, plan: privacy.SkellamPlan | None = None
) -> float:
    """Epsilon against the released models after ``rounds`` rounds: Skellam RDP under
    ``plan`` (distributed integer noise), else the Poisson-sampled Gaussian."""
    p, u = cfg.privacy, cfg.privacy.user
    if u.noise_multiplier == 0:
        return math.inf
    if rounds == 0:
        return 0.0
    rate = cfg.federation.sample_rate
    if plan is not None:
        return plan.epsilon(sample_rate=rate, rounds=rounds, delta=p.delta)
    return privacy.user_level_epsilon(
        noise_multiplier=u.noise_multiplier, sample_rate=rate, rounds=rounds, delta=p.delta,
        accountant=p.sample.accountant,
    )  # fmt: skip


def rounds_within(budget: float, rounds: int, epsilon: Callable[[int], float]) -> int:
    """Most rounds ``r <= rounds`` with ``epsilon(r) <= budget`` (``epsilon`` non-decreasing)."""
    lo, hi = 0, rounds
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if epsilon(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def budget_warning(*, budget: float, rounds: int, fit: int, epsilon: float) -> str:
    """The user-level warning: the planned epsilon passes the budget; ``fit`` rounds fit."""
    return (
        f"user-level epsilon {epsilon:.3f} against the released models over {rounds} rounds "
        f"passes privacy.user.budget {budget:g}: only {fit} of {rounds} rounds fit; the job "
        f"ends after round {fit}"
    )


class UserBudget:
    """The job's user-level budget, planned at job start from the submitted vector's length.

    ``plan`` is the Skellam plan the first round will use (distributed noise through a
    fixed-point protocol); the run-time accountant may only tighten it (adaptive clipping
    lowers the norm), so :meth:`allows` checks the larger of both figures.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        *,
        plan: privacy.SkellamPlan | None,
        accounted: Callable[[int], float],
    ) -> None:
        self.cfg = cfg
        self.budget = cfg.privacy.user.budget
        self.plan = plan
        self.accounted = accounted
        rounds = cfg.federation.rounds
        self.fit = (
            rounds if self.budget is None else rounds_within(self.budget, rounds, self.epsilon)
        )
        if self.budget is not None and self.fit < rounds:
            log.warning(
                "%s",
                budget_warning(
                    budget=self.budget, rounds=rounds, fit=self.fit, epsilon=self.epsilon(rounds)
                ),
            )

    def epsilon(self, rounds: int) -> float:
        """Released-models epsilon after ``rounds``: the start plan or the run-time figure."""
        return max(released_epsilon(self.cfg, rounds, self.plan), self.accounted(rounds))

    def allows(self, round_: int) -> bool:
        """True when running ``round_`` keeps the released-models epsilon within budget."""
        return self.budget is None or self.epsilon(round_) <= self.budget

    def stop_reason(self, round_: int) -> str:
        return (
            f"user-level privacy budget: round {round_} would take the released-models epsilon "
            f"to {self.epsilon(round_):.3f}, past privacy.user.budget {self.budget:g}; rounds "
            f"{round_}-{self.cfg.federation.rounds} not run"
        )
