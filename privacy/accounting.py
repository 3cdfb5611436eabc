"""Privacy accounting for DP-SGD: epsilon of a schedule, noise calibration, and the
per-client accountant that lives for the whole job.

Two accountants, chosen by name:

- ``"rdp"``: Rényi DP of the Poisson-sampled Gaussian (Opacus' RDP analysis) on the
  extended order grid :data:`privacy.rdp.DEFAULT_ORDERS`, converted with Balle et al. 2020.
- ``"prv"``: Opacus' PRV accountant (Gopi et al. 2021), usually tighter. It can fail for
  extreme parameters (very small noise or rates, huge step counts); it then falls back to
  ``"rdp"`` for that computation and logs a warning. Both are upper bounds on epsilon.
  Its grid is sized before it is built (:func:`privacy.prv_budget.plan_prv`): a grid above
  :data:`~privacy.prv_budget.MAX_GRID_POINTS` would exhaust memory or time, so RDP is used
  instead (logged; :func:`prv_fallback` says so for the report).

Opacus' GDP accountant is deliberately absent: it is an approximation, not an upper bound.

>>> sigma = calibrate_noise(target_epsilon=2.0, delta=1e-5, sample_rate=0.02, steps=500)
>>> epsilon_for(noise_multiplier=sigma, sample_rate=0.02, steps=500, delta=1e-5) <= 2.0
True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import PrivacyBudgetExceeded, PrivacyConfigError
from .prv_budget import plan_prv
from .rdp import DEFAULT_ORDERS, check_delta, check_rate, rdp_to_epsilon, sampled_gaussian_rdp

logger = logging.getLogger(__name__)

#: One composed run of the sampled Gaussian: (noise_multiplier, sample_rate, steps).
History = list[tuple[float, float, int]]

_MAX_SIGMA = 1e6


def _rdp_epsilon(history: History, *, delta: float, orders: Sequence[float]) -> float:
    live = [(s, q, n) for s, q, n in history if n > 0 and q > 0]
    if not live:
        return 0.0
    rdp = np.zeros(len(orders))
    for sigma, q, n in live:
        rdp = rdp + sampled_gaussian_rdp(
            sample_rate=q, noise_multiplier=sigma, steps=n, orders=orders
        )
    return rdp_to_epsilon(rdp=rdp, orders=orders, delta=delta)[0]


def _prv_epsilon(history: History, *, delta: float, orders: Sequence[float]) -> float:
    from opacus.accountants import PRVAccountant

    live = [(s, q, n) for s, q, n in history if n > 0 and q > 0]
    if not live:
        return 0.0
    if any(s == 0 for s, _, _ in live):
        return math.inf
    reason = prv_fallback(live, delta=delta)
    if reason is not None:
        logger.warning("%s: using the RDP accountant for %s", reason, live)
        return _rdp_epsilon(history, delta=delta, orders=orders)
    try:
        acc = PRVAccountant()
        acc.history = list(live)
        eps = float(acc.get_epsilon(delta))
        if not math.isfinite(eps) or eps < 0:
            raise ValueError(f"PRV accountant returned epsilon={eps}")
        return eps
    except Exception as exc:  # PRV fails in several ways at extreme values: fall back
        logger.warning("PRV accountant failed (%s); falling back to RDP for %s", exc, live)
        return _rdp_epsilon(history, delta=delta, orders=orders)


def prv_fallback(history: History, *, delta: float) -> str | None:
    """Why the PRV accountant would not build its grid for ``history`` (None: it fits)."""
    try:
        plan = plan_prv(history, delta=delta)
    except Exception as exc:  # the domain search itself can fail at extreme values
        return f"PRV domain could not be sized ({exc})"
    return None if plan.fits else plan.describe()


_ACCOUNTANTS: dict[str, Callable[..., float]] = {"rdp": _rdp_epsilon, "prv": _prv_epsilon}


def accountant_names() -> list[str]:
    """Names accepted wherever an ``accountant`` is chosen."""
    return sorted(_ACCOUNTANTS)


def _accountant(name: str) -> Callable[..., float]:
    try:
        return _ACCOUNTANTS[name]
    except KeyError:
        raise PrivacyConfigError(
            f"unknown accountant {name!r}; choose one of {', '.join(accountant_names())}"
        ) from None


def history_epsilon(
    history: History,
    *,
    delta: float,
    accountant: str = "rdp",
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> float:
    """Epsilon at ``delta`` of a composed history of sampled-Gaussian runs."""
    check_delta(delta)
    fn = _accountant(accountant)
    for sigma, q, n in history:
        check_rate(q)
        if sigma < 0 or n < 0:
            raise PrivacyConfigError(f"bad history entry {(sigma, q, n)}")
    return fn(history, delta=delta, orders=orders)


def epsilon_for(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> float:
    """Epsilon of ``steps`` Poisson-sampled Gaussian steps (add/remove adjacency)."""
    return history_epsilon(
        [(noise_multiplier, sample_rate, steps)], delta=delta, accountant=accountant, orders=orders
    )


def calibrate_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    orders: Sequence[float] = DEFAULT_ORDERS,
    rtol: float = 1e-3,
) -> float:
    """Smallest noise multiplier (within ``rtol``) whose epsilon is <= ``target_epsilon``.

    Calibrate on the client's TOTAL planned steps over all rounds: one accountant composes
    them all, so calibrating per round would overspend by the number of rounds.
    """
    if not (target_epsilon > 0) or not math.isfinite(target_epsilon):
        raise PrivacyConfigError(f"target_epsilon must be a positive number, got {target_epsilon}")
    if steps < 1:
        raise PrivacyConfigError(f"steps must be >= 1, got {steps}")
    if not (0 < sample_rate <= 1):
        raise PrivacyConfigError(f"sample_rate must lie in (0, 1], got {sample_rate}")

    def eps(sigma: float) -> float:
        return epsilon_for(
            noise_multiplier=sigma,
            sample_rate=sample_rate,
            steps=steps,
            delta=delta,
            accountant=accountant,
            orders=orders,
        )

    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, 2 * hi
        if hi > _MAX_SIGMA:
            raise PrivacyConfigError(
                f"epsilon {target_epsilon} at delta {delta} is out of reach for {steps} steps "
                f"at rate {sample_rate}: raise the budget or plan fewer steps"
            )
    while hi - lo > rtol * hi:
        mid = (lo + hi) / 2
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


class ClientAccountant:
    """One client's privacy accountant for a whole job (never recreated per round).

    It wraps an Opacus accountant of the chosen kind, whose optimizer hook
    (:meth:`optimizer_hook`) is attached to every round's ``DPOptimizer``, so the history
    keeps growing across rounds and survives checkpoints via :meth:`state_dict`.
    """

    def __init__(
        self,
        *,
        kind: str = "rdp",
        delta: float,
        budget_epsilon: float | None = None,
        orders: Sequence[float] = DEFAULT_ORDERS,
    ) -> None:
        from opacus.accountants import create_accountant

        _accountant(kind)
        check_delta(delta)
        if budget_epsilon is not None and not budget_epsilon > 0:
            raise PrivacyConfigError(f"budget_epsilon must be > 0, got {budget_epsilon}")
        self.kind = kind
        self.delta = delta
        self.budget_epsilon = budget_epsilon
        self.orders = tuple(orders)
        self._opacus = create_accountant(mechanism=kind)
        self._cache: dict[tuple[Any, ...], float] = {}

    @property
    def history(self) -> History:
        """Composed runs so far: (noise_multiplier, sample_rate, steps)."""
        return [(float(s), float(q), int(n)) for s, q, n in self._opacus.history]

    @property
    def steps(self) -> int:
        """Total steps accounted so far."""
        return sum(n for _, _, n in self.history)

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Account ``steps`` more steps (what the optimizer hook does once per step)."""
        check_rate(sample_rate)
        if steps < 0 or noise_multiplier < 0:
            raise PrivacyConfigError(f"bad step: noise {noise_multiplier}, steps {steps}")
        if steps == 0:
            return
        hist = self._opacus.history
        if hist and hist[-1][0] == noise_multiplier and hist[-1][1] == sample_rate:
            hist[-1] = (hist[-1][0], hist[-1][1], int(hist[-1][2]) + steps)
        else:
            hist.append((float(noise_multiplier), float(sample_rate), int(steps)))

    def optimizer_hook(self, *, sample_rate: float) -> Callable[[Any], None]:
        """The step hook to attach to a ``DPOptimizer`` (accounts one step per call)."""
        check_rate(sample_rate)
        return self._opacus.get_optimizer_hook_fn(sample_rate=sample_rate)

    def _epsilon(self, history: History, delta: float) -> float:
        key = (tuple(history), delta)
        if key not in self._cache:
            self._cache[key] = history_epsilon(
                history, delta=delta, accountant=self.kind, orders=self.orders
            )
        return self._cache[key]

    def epsilon(self, delta: float | None = None) -> float:
        """Epsilon spent so far at ``delta`` (default: the job's delta)."""
        return self._epsilon(self.history, self.delta if delta is None else delta)

    def epsilon_after(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon the client would have spent after ``steps`` more steps."""
        planned = [*self.history, (float(noise_multiplier), float(sample_rate), int(steps))]
        return self._epsilon(planned, self.delta)

    def would_exceed(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> bool:
        """Whether the planned steps would take the client past its budget (if any)."""
        if self.budget_epsilon is None:
            return False
        after = self.epsilon_after(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps
        )
        return after > self.budget_epsilon

    def check_budget(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Raise :class:`PrivacyBudgetExceeded` where the planned steps overspend."""
        if self.budget_epsilon is None:
            return
        after = self.epsilon_after(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps
        )
        if after > self.budget_epsilon:
            raise PrivacyBudgetExceeded(
                f"{steps} more steps (noise {noise_multiplier:.4g}, rate {sample_rate:.4g}) would "
                f"raise epsilon from {self.epsilon():.4g} to {after:.4g}, past the budget "
                f"{self.budget_epsilon:.4g} at delta {self.delta:g}: skip this client, add noise "
                f"or plan fewer steps"
            )

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (kind, delta, budget, orders, history)."""
        return {
            "kind": self.kind,
            "delta": self.delta,
            "budget_epsilon": self.budget_epsilon,
            "orders": list(self.orders),
            "history": [[s, q, n] for s, q, n in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the accountant kind must match."""
        if state.get("kind") != self.kind:
            raise PrivacyConfigError(
                f"checkpoint holds a {state.get('kind')!r} accountant, this one is {self.kind!r}: "
                f"resume with the accountant the job started with"
            )
        self.delta = float(state["delta"])
        budget = state.get("budget_epsilon")
        self.budget_epsilon = None if budget is None else float(budget)
        self.orders = tuple(state.get("orders") or DEFAULT_ORDERS)
        self._opacus.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
        self._cache.clear()

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ClientAccountant:
        """A new accountant restored from :meth:`state_dict`."""
        acc = cls(kind=state["kind"], delta=float(state["delta"]))
        acc.load_state_dict(state)
        return acc
