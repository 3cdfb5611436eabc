"""Sample-level DP-SGD in a job: one accountant per client for the whole job.

The clients' accountants live in a checkpointed :class:`privacy.PrivacyLedger`; noise is
calibrated on each client's total planned steps, and a client whose next round would pass the
budget sits out with the reason logged.
"""

from __future__ import annotations

import logging
from typing import Any

import privacy

from ..config import ExperimentConfig

log = logging.getLogger(__name__)


class SampleLevelDP:
    """DP-SGD settings and the ledger of every client's spend."""

    def __init__(self, cfg: ExperimentConfig, train_sizes: dict[int, int]):
        p, s = cfg.privacy, cfg.privacy.sample
        fed = cfg.federation
        self.cfg = cfg
        budget = p.budget if p.budget is not None else s.epsilon
        if budget is None:
            log.warning(
                "privacy.sample uses a fixed noise_multiplier without privacy.budget: epsilon is "
                "accounted and reported but no budget is enforced"
            )
        self.ledger = privacy.PrivacyLedger(
            budget_epsilon=budget, delta=p.delta, accountant=s.accountant
        )
        self.schedules = {
            cid: privacy.dp_schedule(
                dataset_size=n, batch_size=fed.batch_size, epochs=fed.local_epochs
            )
            for cid, n in train_sizes.items()
        }
        self.noise: dict[int, float] = {}
        for cid, sched in self.schedules.items():
            if s.noise_multiplier is not None:
                self.noise[cid] = s.noise_multiplier
            else:
                assert s.epsilon is not None
                self.noise[cid] = privacy.calibrate_noise(
                    target_epsilon=s.epsilon,
                    delta=p.delta,
                    sample_rate=sched.sample_rate,
                    steps=sched.steps * fed.rounds,
                    accountant=s.accountant,
                )

    def admit(self, round_: int, cohort: list[int]) -> list[int]:
        """Cohort members whose next round stays within budget; the others are skipped."""
        admitted = []
        for cid in cohort:
            sched = self.schedules[cid]
            if self.ledger.would_exceed(
                cid, noise_multiplier=self.noise[cid], sample_rate=sched.sample_rate,
                steps=sched.steps,
            ):  # fmt: skip
                spent = self.ledger.accountant(cid).epsilon()
                self.ledger.skip(
                    cid,
                    round=round_,
                    reason=f"budget: spent {spent:.3f}, next round would pass "
                    f"{self.ledger.budget_epsilon}",
                )
            else:
                admitted.append(cid)
        return admitted

    def record_early_stop(self, round_: int, *, last: int) -> None:
        """Record, for every client, that rounds ``round_``..``last`` will not run."""
        for cid in self.schedules:
            spent = self.ledger.accountant(cid).epsilon()
            self.ledger.skip(
                cid,
                round=round_,
                reason=f"budget: spent {spent:.3f}, the next round would pass "
                f"{self.ledger.budget_epsilon} for every client: the job ended early, rounds "
                f"{round_}-{last} not run",
            )

    def exhausted(self) -> bool:
        """True when no client can take another round."""
        return not any(
            not self.ledger.would_exceed(
                cid, noise_multiplier=self.noise[cid], sample_rate=s.sample_rate, steps=s.steps
            )
            for cid, s in self.schedules.items()
        )

    def epsilon(self) -> dict[str, float]:
        return self.ledger.spent()

    def report(self) -> dict[str, Any]:
        out = privacy.sample_level_report(
            self.ledger, max_grad_norm=self.cfg.privacy.sample.max_grad_norm
        )
        out["noise_multiplier_per_client"] = {str(k): v for k, v in self.noise.items()}
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.ledger.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ledger.load_state_dict(state)
