"""The runner's privacy layer: DP-SGD per client under a ledger, and user-level DP-FedAvg.

Sample level: one accountant per client for the whole job (in a :class:`privacy.PrivacyLedger`
that is checkpointed), noise calibrated on the client's total planned steps, and a client whose
next round would pass the budget sits out with the reason logged.

User level (DP-FedAvg, McMahan et al. 2018): every client clips its update to L2 norm ``S``
(weights are then uniform); the Gaussian noise ``N(0, (z S)^2)`` on the sum is added by the
party that reads the aggregate (``central``) or split across clients (``distributed``). For
masking protocols the split noise is integer Skellam noise in the protocol's fixed-point unit,
added before quantisation, so the server only ever sees a noised sum.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray

import crypto
import privacy

from .config import ExperimentConfig
from .errors import ConfigError

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


class UserLevelDP:
    """Clip, noise and account client updates at the user level."""

    def __init__(self, cfg: ExperimentConfig, protocol: crypto.Protocol):
        u = cfg.privacy.user
        self.cfg = cfg
        self.mode = u.noise
        self.quantum: float | None = getattr(protocol, "quantum", None)
        self.clip_norm = u.clip_norm
        self.noise_multiplier = u.noise_multiplier
        self.protocol = protocol
        self.adaptive: privacy.AdaptiveClipNorm | None = None
        self.update_noise_multiplier = u.noise_multiplier
        expected = cfg.federation.clients * cfg.federation.sample_rate
        if u.adaptive_quantile is not None:
            count_std = (
                u.adaptive_count_noise if u.adaptive_count_noise is not None else expected / 20
            )
            self.adaptive = privacy.AdaptiveClipNorm(
                initial_norm=u.clip_norm,
                target_quantile=u.adaptive_quantile,
                learning_rate=u.adaptive_lr,
                count_noise_std=count_std,
                expected_clients=expected,
            )
            if u.noise_multiplier > 0:
                self.update_noise_multiplier = privacy.adaptive_update_noise_multiplier(
                    noise_multiplier=u.noise_multiplier, count_noise_std=count_std
                )
        self.plan: privacy.SkellamPlan | None = None

    @property
    def norm(self) -> float:
        return self.adaptive.norm if self.adaptive is not None else self.clip_norm

    def clip(self, payload: NDArray[np.float64]) -> tuple[NDArray[np.float64], bool]:
        return privacy.clip_update(payload, norm=self.norm)

    def client_noise(
        self, dim: int, *, cohort: int, rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """This client's share of the noise (zero for central noise)."""
        if self.mode == "central" or self.noise_multiplier == 0:
            return np.zeros(dim)
        dropouts = self.protocol.max_dropouts(cohort)
        if self.quantum is not None:
            self.plan = privacy.plan_skellam(
                noise_multiplier=self.update_noise_multiplier,
                clip_norm=self.norm,
                quantum=self.quantum,
                dim=dim,
                clients=cohort,
                tolerated_dropouts=dropouts,
            )
            return self.plan.client_noise(rng).astype(np.float64) * self.quantum
        std = privacy.split_noise_std(
            noise_multiplier=self.update_noise_multiplier,
            clip_norm=self.norm,
            clients=cohort,
            tolerated_dropouts=dropouts,
        )
        return privacy.gaussian_noise(dim, std=std, rng=rng)

    def central_noise(self, dim: int, *, rng: np.random.Generator) -> NDArray[np.float64]:
        """Noise the aggregate's reader adds to the sum (zero when clients added it)."""
        if self.mode != "central" or self.noise_multiplier == 0:
            return np.zeros(dim)
        return privacy.gaussian_noise(dim, std=self.update_noise_multiplier * self.norm, rng=rng)

    def update_clip(self, *, unclipped: int, participants: int, rng: np.random.Generator) -> None:
        if self.adaptive is not None:
            self.adaptive.update(unclipped=unclipped, participants=participants, rng=rng)

    def epsilon(self, rounds: int) -> float:
        p = self.cfg.privacy
        rate = self.cfg.federation.sample_rate
        if self.noise_multiplier == 0:
            return float("inf")
        if self.plan is not None:
            return self.plan.epsilon(sample_rate=rate, rounds=rounds, delta=p.delta)
        return privacy.user_level_epsilon(
            noise_multiplier=self.noise_multiplier, sample_rate=rate, rounds=rounds,
            delta=p.delta, accountant=p.sample.accountant,
        )  # fmt: skip

    def report(self, rounds: int) -> dict[str, Any]:
        dp = privacy.UserLevelDP(clip_norm=self.norm, noise_multiplier=self.noise_multiplier)
        out = privacy.user_level_report(
            dp,
            noise=self.mode,
            sample_rate=self.cfg.federation.sample_rate,
            rounds=rounds,
            delta=self.cfg.privacy.delta,
            accountant=self.cfg.privacy.sample.accountant,
            skellam=self.plan,
        )
        out["epsilon"] = self.epsilon(rounds)
        out["adaptive_clipping"] = self.adaptive.state_dict() if self.adaptive else None
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"adaptive": self.adaptive.state_dict() if self.adaptive else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.adaptive is not None and state.get("adaptive"):
            self.adaptive.load_state_dict(state["adaptive"])


def protocol_options(cfg: ExperimentConfig) -> dict[str, Any]:
    """The configured protocol options, completed by what the runner knows.

    Client weights are scaled into (0, 1] by the runner, so ``max_weight`` defaults to 1
    (integer encodings then spend no bits on weight headroom); with user-level DP the
    quantisation range ``clip`` follows from the clip norm.
    """
    options = dict(cfg.aggregation.options)
    proto_cls = crypto.get_protocol(cfg.aggregation.protocol)
    if "max_weight" in proto_cls.option_names and "max_weight" not in options:
        options["max_weight"] = 1.0
    u = cfg.privacy.user
    if u.enabled and "clip" in proto_cls.option_names and "clip" not in options:
        if u.adaptive_quantile is not None:
            raise ConfigError(
                "adaptive clipping changes the clip norm every round: set "
                "aggregation.options.clip to the largest norm you allow"
            )
        # Clipped coordinates lie in [-S, S]. A client's distributed noise has std at most
        # z*S (one survivor); 8 standard deviations keep clipping of noise below 1e-15.
        margin = 1.0 if u.noise == "central" else 1.0 + 8.0 * u.noise_multiplier
        options["clip"] = u.clip_norm * margin
    return options


def privacy_fields(
    sample: SampleLevelDP | None, user: UserLevelDP | None, *, round_: int
) -> dict[str, Any]:
    """Per-round privacy fields of a metrics.jsonl record."""
    out: dict[str, Any] = {}
    if sample is not None:
        out["epsilon"] = sample.epsilon()
        out["skipped"] = [s.client for s in sample.ledger.skipped if s.round == round_]
    if user is not None:
        out["user_epsilon"] = user.epsilon(round_)
        out["clip_norm"] = user.norm
    return out


def privacy_summary(
    cfg: ExperimentConfig,
    sample: SampleLevelDP | None,
    user: UserLevelDP | None,
    *,
    rounds: int,
    threat_model: dict[str, Any],
) -> dict[str, Any]:
    """The run's privacy report (``summary.json["privacy"]`` and ``privacy_report.json``)."""
    p = cfg.privacy
    out: dict[str, Any] = {
        "delta": p.delta,
        "accountant": p.sample.accountant,
        "budget": None,
        "epsilon": {},
        "skipped": [],
        "level": [],
        "threat_model": threat_model,
    }
    if sample is not None:
        report = sample.report()
        out.update(
            budget=sample.ledger.budget_epsilon,
            epsilon=sample.epsilon(),
            skipped=report["skipped"],
            sample_level=report,
        )
        out["level"].append("sample")
    if user is not None:
        out["user_level"] = user.report(rounds)
        out["level"].append("user")
    if not out["level"]:
        out["note"] = "no differential privacy in this run: no epsilon is reported"
    return out
