"""User-level DP-FedAvg in a job (McMahan et al. 2018), with adaptive clipping.

Every client clips its update to L2 norm ``S`` (weights are then uniform); the Gaussian noise
``N(0, (z S)^2)`` on the sum is added by the party that reads the aggregate (``central``) or
split across clients (``distributed``). For masking protocols the split noise is integer
Skellam noise in the protocol's fixed-point unit, added before quantisation, so the server only
ever sees a noised sum. With adaptive clipping each client's unclipped bit rides in one extra
coordinate of the vector it submits, so the protocol sums (and protects) the count exactly like
the update.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

import crypto
import privacy

from ..config import ExperimentConfig
from ..errors import ConfigError
from .budget import UserBudget, released_epsilon
from .observers import AGGREGATOR, RELEASED, aggregator_protected, released_assumes

log = logging.getLogger(__name__)


class UserLevelDP:
    """Clip, noise and account client updates at the user level.

    Adaptive clipping (Andrew et al. 2021): the unclipped bit ``b_i = 1[||update_i|| <= S]``
    never leaves a client in the clear. The client appends ``kappa * (b_i - 1/2)`` to the
    vector it submits (:meth:`client_vector`), the protocol sums it with the update, and the
    reader of the aggregate takes the noised count from the last coordinate and strips it
    (:meth:`read_aggregate`). Count noise has std ``sigma_b`` (``count_noise_std``):

    * distributed noise: the clients' split noise on that coordinate (std ``z_u S`` in the
      sum, ``z_u`` the update's multiplier) is the count's noise, so
      ``kappa = z_u S / sigma_b``; the joint vector has L2 sensitivity
      ``sqrt(S^2 + kappa^2 / 4) = S z_u / z`` under noise ``z_u S``, i.e. the multiplier ``z``
      of :func:`privacy.adaptive_update_noise_multiplier`, which is what is accounted;
    * central noise (or ``z = 0``): ``kappa = min(S, clip)`` keeps the coordinate inside the
      protocol's fixed-point range and the reader adds ``N(0, (sigma_b kappa)^2)`` to it.
    """

    def __init__(self, cfg: ExperimentConfig, protocol: crypto.Protocol):
        u = cfg.privacy.user
        self.cfg = cfg
        self.mode = u.noise
        self.quantum: float | None = getattr(protocol, "quantum", None)
        self.clip_norm = u.clip_norm
        self.noise_multiplier = u.noise_multiplier
        self.protocol = protocol
        # Coordinates beyond +-clip are clipped by fixed-point protocols.
        self.coordinate_range = float(protocol.options.get("clip", math.inf))
        self.adaptive: privacy.AdaptiveClipNorm | None = None
        self.update_noise_multiplier = u.noise_multiplier
        expected = cfg.federation.clients * cfg.federation.sample_rate
        #: Fixed denominator of the mean (McMahan et al. 2018): the expected cohort size, so
        #: the released model never reveals how many clients took part.
        self.expected_cohort = expected
        #: Rounds each client took part in (what the aggregator, who knows cohorts, sees).
        self.participations: dict[int, int] = {}
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
        # The Skellam plan accounted for: the most conservative (smallest L2) one so far.
        self.plan: privacy.SkellamPlan | None = None
        if self.adaptive is not None and u.clip_norm > self.max_adaptive_norm:
            raise ConfigError(
                f"aggregation.options.clip = {self.coordinate_range:g} cannot hold updates "
                f"clipped to privacy.user.clip_norm = {u.clip_norm:g} with the unclipped count "
                f"and noise headroom (largest norm it fits: {self.max_adaptive_norm:.4g}): "
                "raise aggregation.options.clip or lower clip_norm"
            )

    @property
    def norm(self) -> float:
        """The clip norm this round: the adaptive one, capped to fit the protocol's range."""
        if self.adaptive is None:
            return self.clip_norm
        return min(self.adaptive.norm, self.max_adaptive_norm)

    @property
    def max_adaptive_norm(self) -> float:
        """Largest adaptive norm whose submitted coordinates fit the fixed-point range.

        Coordinates are at most ``S`` (update) and ``kappa / 2`` (count), plus 8 standard
        deviations of a client's distributed noise share (at most ``z_u S``), all linear in
        ``S``; beyond this the protocol would clip after the noise is added, breaking the
        accounted mechanism, so the norm stops growing here instead.
        """
        assert self.adaptive is not None
        per_norm = 1.0
        if self.count_in_client_noise:
            z_u = self.update_noise_multiplier
            per_norm = max(1.0, z_u / self.adaptive.count_noise_std / 2) + 8.0 * z_u
        return self.coordinate_range / per_norm

    @property
    def count_slots(self) -> int:
        """Coordinates a client appends to its update: 1 (the count) with adaptive clipping."""
        return 0 if self.adaptive is None else 1

    @property
    def count_in_client_noise(self) -> bool:
        """True when the clients' split noise is also the count's noise."""
        return (
            self.adaptive is not None and self.mode == "distributed" and self.noise_multiplier > 0
        )

    @property
    def count_scale(self) -> float:
        """``kappa``: a client's count coordinate is ``kappa * (b_i - 1/2)`` this round."""
        assert self.adaptive is not None
        if self.count_in_client_noise:
            return self.update_noise_multiplier * self.norm / self.adaptive.count_noise_std
        return min(self.norm, self.coordinate_range)

    @property
    def sensitivity(self) -> float:
        """L2 bound of a submitted vector: ``S``, or ``sqrt(S^2 + kappa^2/4)`` with the count."""
        if self.adaptive is None:
            return self.norm
        return math.hypot(self.norm, self.count_scale / 2)

    def clip(self, payload: NDArray[np.float64]) -> tuple[NDArray[np.float64], bool]:
        return privacy.clip_update(payload, norm=self.norm)

    def client_vector(self, payload: NDArray[np.float64]) -> NDArray[np.float64]:
        """What a client submits: its clipped update, plus the scaled, centred unclipped bit
        as one last coordinate under adaptive clipping (the bit is never sent on its own)."""
        clipped, was_clipped = self.clip(payload)
        if self.adaptive is None:
            return clipped
        kappa = self.count_scale  # fits the range: ``norm`` is capped by max_adaptive_norm
        return np.append(clipped, kappa * (0.0 if was_clipped else 1.0) - kappa / 2)

    def client_noise(
        self, dim: int, *, cohort: int, rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """This client's share of the noise on its ``dim``-long vector (zero for central
        noise); with adaptive clipping it also noises the count coordinate."""
        if self.mode == "central" or self.noise_multiplier == 0:
            return np.zeros(dim)
        dropouts = self.protocol.max_dropouts(cohort)
        if self.quantum is not None:
            plan = privacy.plan_skellam(
                noise_multiplier=self.noise_multiplier,
                clip_norm=self.sensitivity,
                quantum=self.quantum,
                dim=dim,
                clients=cohort,
                tolerated_dropouts=dropouts,
            )
            if self.plan is None or plan.l2 <= self.plan.l2:
                self.plan = plan  # Skellam RDP only grows as L2 (the clip norm) shrinks
            return plan.client_noise(rng).astype(np.float64) * self.quantum
        std = privacy.split_noise_std(
            noise_multiplier=self.update_noise_multiplier,
            clip_norm=self.norm,
            clients=cohort,
            tolerated_dropouts=dropouts,
        )
        return privacy.gaussian_noise(dim, std=std, rng=rng)

    def central_noise(
        self,
        dim: int,
        *,
        rng: np.random.Generator,
        count_rng: np.random.Generator | None = None,
    ) -> NDArray[np.float64]:
        """Noise the aggregate's reader adds to the summed ``dim``-long vector: the update's
        (zero when clients added it) and the count's, unless the clients' noise covers it."""
        n = dim - self.count_slots
        out = np.zeros(dim)
        if self.mode == "central" and self.noise_multiplier > 0:
            std = self.update_noise_multiplier * self.norm
            out[:n] = privacy.gaussian_noise(n, std=std, rng=rng)
        if self.adaptive is not None and not self.count_in_client_noise:
            std = self.adaptive.count_noise_std * self.count_scale
            count_rng = count_rng or privacy.make_noise_rng()
            out[n] = privacy.gaussian_noise(1, std=std, rng=count_rng)[0]
        return out

    def read_aggregate(
        self,
        weighted_sum: NDArray[np.float64],
        *,
        contributors: int,
        rng: np.random.Generator,
        count_rng: np.random.Generator | None = None,
    ) -> NDArray[np.float64]:
        """The noised mean update from the protocol's sum (uniform weights); with adaptive
        clipping, read the noised unclipped count off the last coordinate, strip it and move
        the clip norm. The mean divides by the expected cohort size, not ``contributors``."""
        total = weighted_sum + self.central_noise(len(weighted_sum), rng=rng, count_rng=count_rng)
        return self._release(total, contributors=contributors)

    def empty_aggregate(
        self, dim: int, *, rng: np.random.Generator, count_rng: np.random.Generator | None = None
    ) -> NDArray[np.float64]:
        """The mean update of a round whose cohort is empty: noise alone, of the same law as
        a non-empty round's (the reader adds what the clients would have), so the released
        model does not tell an observer that nobody took part."""
        total = self.central_noise(dim, rng=rng, count_rng=count_rng)
        if self.mode == "distributed" and self.noise_multiplier > 0:
            n = dim if self.count_in_client_noise else dim - self.count_slots
            if self.quantum is not None:
                plan = self._whole_noise_plan(dim)
                total[:n] += plan.client_noise(rng)[:n].astype(np.float64) * self.quantum
            else:
                std = self.update_noise_multiplier * self.norm
                total[:n] += privacy.gaussian_noise(n, std=std, rng=rng)
        return self._release(total, contributors=0)

    def _release(self, total: NDArray[np.float64], *, contributors: int) -> NDArray[np.float64]:
        n = len(total) - self.count_slots
        if self.adaptive is not None:
            count = float(total[n]) / self.count_scale + contributors / 2
            self.adaptive.update(unclipped=count, participants=contributors, already_noised=True)
        return total[:n] / self.expected_cohort

    def record_participation(self, cohort: list[int]) -> None:
        """Count a round for each member of its cohort (the aggregator's epsilon)."""
        for cid in cohort:
            self.participations[cid] = self.participations.get(cid, 0) + 1

    def epsilon(self, rounds: int) -> float:
        """Epsilon against the released models after ``rounds`` (run-time accountant)."""
        return released_epsilon(self.cfg, rounds, self.plan)

    def budget(self, dim: int) -> UserBudget:
        """The job's budget, planned for submitted vectors of length ``dim`` (warns at job
        start when the planned rounds pass it)."""
        plan = None
        if self.mode == "distributed" and self.quantum is not None and self.noise_multiplier > 0:
            plan = self._whole_noise_plan(dim)
        return UserBudget(self.cfg, plan=plan, accounted=self.epsilon)

    def _whole_noise_plan(self, dim: int) -> privacy.SkellamPlan:
        """The Skellam plan of one party adding the whole noise to a ``dim``-long vector."""
        assert self.quantum is not None
        return privacy.plan_skellam(
            noise_multiplier=self.noise_multiplier, clip_norm=self.sensitivity,
            quantum=self.quantum, dim=dim, clients=1, tolerated_dropouts=0,
        )  # fmt: skip

    def aggregator_view(self) -> tuple[bool, str]:
        """Whether the aggregate the aggregator reads is noised, and why."""
        sees = self.protocol.threat_model().server_sees
        return aggregator_protected(self.protocol.name, sees, self.mode, self.noise_multiplier)

    def aggregator_epsilon(self, participations: int) -> float:
        """Epsilon against the aggregator (knows the cohort: no amplification by sampling)
        for a client that took part in ``participations`` rounds; infinite where the
        aggregate it reads is not noised (:func:`.observers.aggregator_protected`)."""
        protected, _ = self.aggregator_view()
        if not protected:
            return float("inf")
        delta = self.cfg.privacy.delta
        if self.plan is not None:
            return self.plan.epsilon(sample_rate=1.0, rounds=participations, delta=delta)
        return privacy.gaussian_epsilon(
            noise_multiplier=self.noise_multiplier, compositions=participations, delta=delta
        )

    def max_aggregator_epsilon(self) -> float:
        """The aggregator's epsilon of the client that took part most often."""
        return self.aggregator_epsilon(max(self.participations.values(), default=0))

    def observers(self, rounds: int) -> dict[str, Any]:
        """Epsilon per observer (see :mod:`.observers`)."""
        protected, why = self.aggregator_view()
        counts = sorted(set(self.participations.values()))
        per_count = {str(k): self.aggregator_epsilon(k) for k in counts}
        return {
            RELEASED: {
                "epsilon": self.epsilon(rounds),
                "amplification_by_sampling": True,
                "client_sample_rate": self.cfg.federation.sample_rate,
                "rounds": rounds,
                "assumes": released_assumes(),
            },
            AGGREGATOR: {
                "epsilon": self.max_aggregator_epsilon(),
                "amplification_by_sampling": False,
                "protected": protected,
                "why": why,
                "accountant": (
                    "skellam-rdp (q = 1)" if self.plan is not None else "analytic Gaussian (exact)"
                ),
                "participations_per_client": {
                    str(k): v for k, v in sorted(self.participations.items())
                },
                "epsilon_by_participations": per_count,
            },
        }

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
        out["epsilon_observer"] = RELEASED
        out["budget"] = self.cfg.privacy.user.budget
        out["observers"] = self.observers(rounds)
        out["denominator"] = {"expected_cohort": self.expected_cohort}
        out["adaptive_clipping"] = None
        if self.adaptive is not None:
            out["adaptive_clipping"] = {
                **self.adaptive.state_dict(),
                "update_noise_multiplier": self.update_noise_multiplier,
                "count_aggregation": self.count_aggregation(),
            }
        return out

    def count_aggregation(self) -> str:
        """How the unclipped count is released (privacy report and threat model)."""
        who = "the clients' split noise" if self.count_in_client_noise else "the reader"
        sees = self.protocol.threat_model().server_sees
        return (
            f"each client's unclipped bit is one extra coordinate of the vector it submits, "
            f"aggregated by the {self.protocol.name} protocol with its update, so the bit is "
            f"as visible as the update itself (server sees: {sees}); the released count is "
            f"noised by {who}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "adaptive": self.adaptive.state_dict() if self.adaptive else None,
            "skellam_plan": dataclasses.asdict(self.plan) if self.plan else None,
            "participations": {str(k): v for k, v in self.participations.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.adaptive is not None and state.get("adaptive"):
            self.adaptive.load_state_dict(state["adaptive"])
        if state.get("skellam_plan"):
            self.plan = privacy.SkellamPlan(**state["skellam_plan"])
        self.participations = {int(k): int(v) for k, v in state.get("participations", {}).items()}


def protocol_options(cfg: ExperimentConfig) -> dict[str, Any]:
    """The configured protocol options, completed by what the runner knows.

    Client weights are scaled into (0, 1] by the runner, so ``max_weight`` defaults to 1
    (integer encodings then spend no bits on weight headroom); with user-level DP the
    quantisation range ``clip`` follows from the clip norm.

    Out-of-range values (:mod:`crypto.core.valuerange`) stay refused under distributed noise:
    clipping a client's noised vector would change the noise the accountant counts. The range
    is ``S (1 + 8 z)``: a submitted coordinate is at most ``S`` plus the client's noise share,
    whose standard deviation is at most ``z S``, so a refusal needs an 8-sigma noise draw
    (probability about ``1.2e-15`` per coordinate for Gaussian noise, ``d`` coordinates a
    client-round): an event that does not depend on the data beyond that bound, whose
    probability is negligible next to ``delta``. The round then fails with an error rather
    than releasing a differently noised sum; ``out_of_range = "clip"`` is refused here.
    """
    options = dict(cfg.aggregation.options)
    proto_cls = crypto.get_protocol(cfg.aggregation.protocol)
    if "max_weight" in proto_cls.option_names and "max_weight" not in options:
        options["max_weight"] = 1.0
    u = cfg.privacy.user
    split_noise = u.enabled and u.noise == "distributed" and u.noise_multiplier > 0
    if split_noise and options.get("out_of_range") == "clip":
        raise ConfigError(
            "aggregation.options.out_of_range = 'clip' with distributed user-level noise would "
            "clip coordinates after each client added its noise share, a mechanism the "
            "accountant does not cover: remove the option (out-of-range values are then "
            "refused; the runner leaves 8 noise standard deviations of room) or raise "
            "aggregation.options.clip"
        )
    if u.enabled and "clip" in proto_cls.option_names and "clip" not in options:
        if u.adaptive_quantile is not None:
            raise ConfigError(
                "adaptive clipping changes the clip norm every round: set "
                "aggregation.options.clip to the largest norm you allow (the unclipped "
                "count's extra coordinate must fit in it too)"
            )
        # Clipped coordinates lie in [-S, S]. A client's distributed noise has std at most
        # z*S (one survivor); 8 standard deviations keep clipping of noise below 1e-15.
        margin = 1.0 if u.noise == "central" else 1.0 + 8.0 * u.noise_multiplier
        options["clip"] = u.clip_norm * margin
    return options
