"""Privacy spend of a job before running it (``secfed privacy estimate``)."""

from __future__ import annotations

import math
from typing import Any

from scipy.stats import binom

import crypto
import models
import privacy

from .config import ExperimentConfig
from .data import load_dataset, partition
from .job_dp.budget import budget_warning, released_epsilon, rounds_within
from .job_dp.observers import AGGREGATOR, RELEASED, aggregator_protected, released_assumes
from .job_dp.report import SAMPLE_OBSERVER
from .job_dp.user_level import protocol_options

#: Probability that every client's participation count stays within the quantile reported.
PARTICIPATION_CONFIDENCE = 0.99


def rounds_that_fit(
    *, budget: float, noise: float, sample_rate: float, steps_per_round: int, rounds: int,
    delta: float, accountant: str,
) -> int:  # fmt: skip
    """Most rounds (<= ``rounds``) whose epsilon stays within ``budget``."""

    def eps(r: int) -> float:
        return privacy.epsilon_for(
            noise_multiplier=noise, sample_rate=sample_rate, steps=r * steps_per_round,
            delta=delta, accountant=accountant,
        )  # fmt: skip

    return rounds_within(budget, rounds, eps)


def _sample(cfg: ExperimentConfig) -> dict[str, Any]:
    p, fed = cfg.privacy, cfg.federation
    data = load_dataset(cfg.data, seed=cfg.seed)
    shards = partition(data, cfg.data, fed, seed=cfg.seed)
    budget = p.budget if p.budget is not None else p.sample.epsilon
    clients: dict[str, dict[str, Any]] = {}
    over: dict[tuple[float, int], list[str]] = {}
    for shard in shards:
        sched = privacy.dp_schedule(
            dataset_size=len(shard.train), batch_size=fed.batch_size, epochs=fed.local_epochs
        )
        steps = sched.steps * fed.rounds
        if p.sample.noise_multiplier is not None:
            noise = p.sample.noise_multiplier
        else:
            assert p.sample.epsilon is not None
            noise = privacy.calibrate_noise(
                target_epsilon=p.sample.epsilon, delta=p.delta, sample_rate=sched.sample_rate,
                steps=steps, accountant=p.sample.accountant,
            )  # fmt: skip
        eps = privacy.epsilon_for(
            noise_multiplier=noise, sample_rate=sched.sample_rate, steps=steps,
            delta=p.delta, accountant=p.sample.accountant,
        )  # fmt: skip
        row: dict[str, Any] = {
            "examples": len(shard.train),
            "sample_rate": sched.sample_rate,
            "steps": steps,
            "noise_multiplier": noise,
            "epsilon": eps,
            "rounds_within_budget": fed.rounds,
        }
        if budget is not None and eps > budget:
            fit = rounds_that_fit(
                budget=budget, noise=noise, sample_rate=sched.sample_rate,
                steps_per_round=sched.steps, rounds=fed.rounds, delta=p.delta,
                accountant=p.sample.accountant,
            )  # fmt: skip
            row["rounds_within_budget"] = fit
            over.setdefault((round(eps, 3), fit), []).append(str(shard.client_id))
        clients[str(shard.client_id)] = row
    warnings = [
        f"client{'s' if len(ids) > 1 else ''} {', '.join(ids)}: epsilon {eps:.3f} over "
        f"{fed.rounds} rounds passes the budget {budget:g}: only {fit} of "
        f"{fed.rounds} rounds fit; after that each such client sits out (and the job ends "
        "early once no client can train)"
        for (eps, fit), ids in over.items()
    ]
    return {
        "accountant": p.sample.accountant,
        "budget": budget,
        "max_grad_norm": p.sample.max_grad_norm,
        "observer": SAMPLE_OBSERVER,
        "clients": clients,
        "warnings": warnings,
    }


def _skellam_plan(cfg: ExperimentConfig) -> privacy.SkellamPlan | None:
    """The run-time Skellam plan for distributed noise through a fixed-point protocol."""
    u = cfg.privacy.user
    proto = crypto.create_protocol(cfg.aggregation.protocol, **protocol_options(cfg))
    quantum = getattr(proto, "quantum", None)
    if (
        u.noise != "distributed" or quantum is None or u.adaptive_quantile is not None
        or u.noise_multiplier == 0
    ):  # fmt: skip
        return None
    from .assembly import build_parts
    from .strategies import create_strategy

    # The adapter's size does not depend on pre-training: skip it.
    shape_only = cfg.with_overrides(model={"pretrain_steps": 0})
    dim = models.adapter_size(build_parts(shape_only).model)
    strat = create_strategy(cfg.federation.strategy, dim=dim, options={})
    return privacy.plan_skellam(
        noise_multiplier=u.noise_multiplier, clip_norm=u.clip_norm, quantum=quantum,
        dim=dim * strat.update_blocks, clients=1, tolerated_dropouts=0,
    )  # fmt: skip


def _user(cfg: ExperimentConfig) -> dict[str, Any]:
    p, fed, u = cfg.privacy, cfg.federation, cfg.privacy.user
    q, rounds, n = fed.sample_rate, fed.rounds, fed.clients
    expected = q * rounds
    # Every client's count of rounds stays at or below this with the stated probability.
    high = int(binom.ppf(1 - (1 - PARTICIPATION_CONFIDENCE) / n, rounds, q))
    proto = crypto.create_protocol(cfg.aggregation.protocol, **protocol_options(cfg))
    sees = proto.threat_model().server_sees
    protected, why = aggregator_protected(
        cfg.aggregation.protocol, sees, u.noise, u.noise_multiplier
    )

    def agg(k: float) -> float:
        if not protected:
            return math.inf
        return privacy.gaussian_epsilon(
            noise_multiplier=u.noise_multiplier, compositions=math.ceil(k), delta=p.delta
        )

    released = (
        privacy.user_level_epsilon(
            noise_multiplier=u.noise_multiplier,
            sample_rate=q,
            rounds=rounds,
            delta=p.delta,
            accountant=p.sample.accountant,
        )
        if u.noise_multiplier > 0
        else math.inf
    )
    out: dict[str, Any] = {
        "clip_norm": u.clip_norm,
        "noise_multiplier": u.noise_multiplier,
        "noise": u.noise,
        "client_sample_rate": q,
        "epsilon": released,
        "observers": {
            RELEASED: {"epsilon": released, "assumes": released_assumes()},
            AGGREGATOR: {
                "protected": protected,
                "why": why,
                "participations_expected": expected,
                "epsilon_expected": agg(expected),
                "participations_high": high,
                "participations_high_confidence": PARTICIPATION_CONFIDENCE,
                "epsilon_high": agg(high),
            },
        },
        "note": "",
    }
    plan = _skellam_plan(cfg)
    if plan is not None:
        skellam = [
            plan.epsilon(sample_rate=rate, rounds=k, delta=p.delta)
            for rate, k in [(q, rounds), (1.0, math.ceil(expected)), (1.0, high)]
        ]
        over = 100.0 * (skellam[0] / released - 1.0)
        out["skellam_epsilon"] = skellam[0]
        out["observers"][RELEASED]["epsilon"] = skellam[0]
        if protected:
            out["observers"][AGGREGATOR]["epsilon_expected"] = skellam[1]
            out["observers"][AGGREGATOR]["epsilon_high"] = skellam[2]
        out["note"] = (
            f"distributed noise through {cfg.aggregation.protocol} is integer Skellam noise, "
            f"accounted at run time as Skellam: {skellam[0]:.4g}, {over:.1f}% above the "
            f"Gaussian figure {released:.4g} (rounding in the fixed-point unit)"
        )
    out["budget"], out["rounds_within_budget"], out["warnings"] = u.budget, rounds, []
    if u.budget is not None:
        # The same figure the job enforces (job_dp.budget): Skellam where it applies.
        planned = out["observers"][RELEASED]["epsilon"]
        if planned > u.budget:
            fit = rounds_within(u.budget, rounds, lambda r: released_epsilon(cfg, r, plan))
            out["rounds_within_budget"] = fit
            out["warnings"].append(
                budget_warning(budget=u.budget, rounds=rounds, fit=fit, epsilon=planned)
            )
    return out


def estimate(cfg: ExperimentConfig) -> dict[str, Any]:
    """Per-client DP-SGD noise and epsilon for the whole job, and the user-level epsilon per
    observer; ``warnings`` says where the plan passes the budget and how many rounds fit.

    Client dataset sizes come from the job's own partition (watermark triggers are a
    separate gradient term, not training examples, so they do not change them).
    """
    p, fed = cfg.privacy, cfg.federation
    out: dict[str, Any] = {
        "delta": p.delta, "rounds": fed.rounds, "sample": None, "user": None, "warnings": [],
    }  # fmt: skip
    if p.sample.enabled:
        out["sample"] = _sample(cfg)
        out["warnings"] += out["sample"]["warnings"]
    if p.user.enabled:
        out["user"] = _user(cfg)
        out["warnings"] += out["user"]["warnings"]
    return out
