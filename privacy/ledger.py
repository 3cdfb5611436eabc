"""The job's privacy ledger: one accountant per client, a budget, and a record per round.

Typical use by a runner, per round and sampled client::

    if ledger.would_exceed(cid, noise_multiplier=z, sample_rate=q, steps=k):
        ledger.skip(cid, round=r, reason="budget")          # logged, in the report
    else:
        train_private(..., accountant=ledger.accountant(cid))  # steps the accountant
        ledger.record(cid, round=r)                          # the round's spend

or, where no optimizer steps the accountant (accounting done by hand)::

    ledger.spend(cid, round=r, noise_multiplier=z, sample_rate=q, steps=k)

Client ids are normalised to ``str`` (they are JSON keys in checkpoints).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from .accounting import ClientAccountant, accountant_names
from .errors import PrivacyBudgetExceeded, PrivacyConfigError
from .rdp import check_delta

logger = logging.getLogger(__name__)

ClientId = str | int


@dataclass(frozen=True)
class RoundSpend:
    """One client's spend in one round; ``epsilon`` is cumulative after the round."""

    round: int
    client: str
    steps: int
    noise_multiplier: float
    sample_rate: float
    epsilon: float


@dataclass(frozen=True)
class Skipped:
    """A client left out of a round, and why."""

    round: int
    client: str
    reason: str


class PrivacyLedger:
    """Per-client accountants under one (epsilon, delta) budget, surviving resume."""

    def __init__(self, *, budget_epsilon: float | None, delta: float, accountant: str = "rdp"):
        check_delta(delta)
        if accountant not in accountant_names():
            raise PrivacyConfigError(
                f"unknown accountant {accountant!r}; choose one of {', '.join(accountant_names())}"
            )
        if budget_epsilon is not None and not budget_epsilon > 0:
            raise PrivacyConfigError(f"budget_epsilon must be > 0 or None, got {budget_epsilon}")
        self.budget_epsilon = budget_epsilon
        self.delta = delta
        self.kind = accountant
        self._accountants: dict[str, ClientAccountant] = {}
        self._recorded_steps: dict[str, int] = {}
        self.records: list[RoundSpend] = []
        self.skipped: list[Skipped] = []

    def accountant(self, client: ClientId) -> ClientAccountant:
        """The client's accountant for the whole job (created on first use)."""
        cid = str(client)
        if cid not in self._accountants:
            self._accountants[cid] = ClientAccountant(
                kind=self.kind, delta=self.delta, budget_epsilon=self.budget_epsilon
            )
            self._recorded_steps[cid] = 0
        return self._accountants[cid]

    def clients(self) -> list[str]:
        """Clients that have an accountant."""
        return sorted(self._accountants)

    def would_exceed(
        self, client: ClientId, *, noise_multiplier: float, sample_rate: float, steps: int
    ) -> bool:
        """Whether the client's spend after the planned steps would pass the budget."""
        return self.accountant(client).would_exceed(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps
        )

    def check(
        self, client: ClientId, *, noise_multiplier: float, sample_rate: float, steps: int
    ) -> None:
        """Raise :class:`PrivacyBudgetExceeded` where the planned steps overspend."""
        self.accountant(client).check_budget(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps
        )

    def spend(
        self,
        client: ClientId,
        *,
        round: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
    ) -> RoundSpend:
        """Check the budget, account the steps and record the round (manual accounting)."""
        self.check(client, noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        self.accountant(client).step(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps
        )
        return self.record(client, round=round)

    def record(self, client: ClientId, *, round: int) -> RoundSpend:
        """Record the steps the client's accountant took since its last record.

        Raises :class:`PrivacyBudgetExceeded` where the client is now past its budget
        (possible only if training ran without a budget check): discard its update.
        """
        cid = str(client)
        acc = self.accountant(cid)
        hist = acc.history
        new_steps = acc.steps - self._recorded_steps[cid]
        if new_steps < 0:
            raise PrivacyConfigError(f"client {cid}: accountant history shrank since last record")
        sigma, rate = (hist[-1][0], hist[-1][1]) if hist else (0.0, 0.0)
        entry = RoundSpend(
            round=int(round),
            client=cid,
            steps=new_steps,
            noise_multiplier=sigma,
            sample_rate=rate,
            epsilon=acc.epsilon(),
        )
        self._recorded_steps[cid] = acc.steps
        self.records.append(entry)
        logger.info("privacy: client %s round %d epsilon %.4g", cid, entry.round, entry.epsilon)
        if self.budget_epsilon is not None and entry.epsilon > self.budget_epsilon:
            raise PrivacyBudgetExceeded(
                f"client {cid} spent epsilon {entry.epsilon:.4g} in round {round}, past the "
                f"budget {self.budget_epsilon:.4g}: discard its update and check the budget "
                f"before training"
            )
        return entry

    def skip(self, client: ClientId, *, round: int, reason: str) -> None:
        """Log and remember that ``client`` sat out ``round``."""
        entry = Skipped(round=int(round), client=str(client), reason=reason)
        self.skipped.append(entry)
        logger.warning("privacy: client %s skipped in round %d: %s", entry.client, round, reason)

    def spent(self) -> dict[str, float]:
        """Cumulative epsilon per client at the ledger's delta."""
        return {cid: acc.epsilon() for cid, acc in sorted(self._accountants.items())}

    def remaining(self, client: ClientId) -> float | None:
        """Budget left to ``client`` (None without a budget)."""
        if self.budget_epsilon is None:
            return None
        return max(0.0, self.budget_epsilon - self.accountant(client).epsilon())

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: settings, every accountant, records and skips."""
        return {
            "budget_epsilon": self.budget_epsilon,
            "delta": self.delta,
            "accountant": self.kind,
            "clients": {cid: acc.state_dict() for cid, acc in self._accountants.items()},
            "recorded_steps": dict(self._recorded_steps),
            "records": [asdict(r) for r in self.records],
            "skipped": [asdict(s) for s in self.skipped],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; delta and accountant must match, the budget is ours."""
        for key, mine in (("delta", self.delta), ("accountant", self.kind)):
            if state.get(key) != mine:
                raise PrivacyConfigError(
                    f"checkpoint ledger has {key}={state.get(key)!r}, this job {mine!r}: resume "
                    f"with the privacy settings the job started with"
                )
        if state.get("budget_epsilon") != self.budget_epsilon:
            logger.warning(
                "privacy budget changed on resume: %s -> %s",
                state.get("budget_epsilon"),
                self.budget_epsilon,
            )
        self._accountants = {}
        for cid, acc_state in state["clients"].items():
            acc = ClientAccountant.from_state_dict(acc_state)
            acc.budget_epsilon = self.budget_epsilon
            self._accountants[str(cid)] = acc
        self._recorded_steps = {str(k): int(v) for k, v in state["recorded_steps"].items()}
        self.records = [RoundSpend(**r) for r in state["records"]]
        self.skipped = [Skipped(**s) for s in state["skipped"]]

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PrivacyLedger:
        """A ledger restored from :meth:`state_dict`."""
        ledger = cls(
            budget_epsilon=state.get("budget_epsilon"),
            delta=float(state["delta"]),
            accountant=state["accountant"],
        )
        ledger.load_state_dict(state)
        return ledger
