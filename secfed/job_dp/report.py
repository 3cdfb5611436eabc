"""The job's privacy report: per-round fields, the DP part of the threat model, the summary."""

from __future__ import annotations

from typing import Any

import privacy

from ..assembly import tokenizer_disclosure
from ..config import ExperimentConfig
from .sample_level import SampleLevelDP
from .user_level import UserLevelDP


def dp_threat(cfg: ExperimentConfig, user: UserLevelDP | None) -> dict[str, Any]:
    """The DP part of the threat model: levels, who adds user-level noise, how the
    adaptive-clipping count is aggregated."""
    u = cfg.privacy.user
    return {
        "sample_level": cfg.privacy.sample.enabled,
        "user_level": u.enabled,
        "user_noise": u.noise if u.enabled else None,
        "clipped_count": (
            user.count_aggregation() if user is not None and user.adaptive is not None else None
        ),
    }


def privacy_fields(
    sample: SampleLevelDP | None, user: UserLevelDP | None, *, round_: int
) -> dict[str, Any]:
    """Per-round privacy fields of a metrics.jsonl record."""
    out: dict[str, Any] = {}
    if sample is not None:
        out["epsilon"] = sample.epsilon()
        out["skipped"] = [s.client for s in sample.ledger.skipped if s.round == round_]
    if user is not None:
        # Two observers (see .observers): released models (amplified by sampling) and the
        # aggregator (knows the cohort; the client that took part most so far).
        out["user_epsilon"] = user.epsilon(round_)
        out["user_epsilon_aggregator"] = user.max_aggregator_epsilon()
        out["clip_norm"] = user.norm
    return out


#: Whom sample-level DP-SGD protects against.
SAMPLE_OBSERVER = (
    "everyone but the client itself: each client's batch sampling is known only to that "
    "client, so the epsilon (amplified by that sampling) holds against the aggregator, even "
    "one that sees the client's individual update (plain protocol), and against whoever "
    "sees the released models"
)


def accountant_fallbacks(
    cfg: ExperimentConfig, sample: SampleLevelDP | None, user: UserLevelDP | None, rounds: int
) -> list[str]:
    """Where the PRV accountant's grid was too large and RDP was used instead."""
    p = cfg.privacy
    if p.sample.accountant != "prv":
        return []
    out = []
    if sample is not None:
        for cid in sample.ledger.clients():
            reason = privacy.prv_fallback(sample.ledger.accountant(cid).history, delta=p.delta)
            if reason is not None:
                out.append(f"sample-level, client {cid}: {reason}; RDP used")
    if user is not None and user.plan is None and user.noise_multiplier > 0:
        hist = [(user.noise_multiplier, cfg.federation.sample_rate, rounds)]
        reason = privacy.prv_fallback(hist, delta=p.delta)
        if reason is not None:
            out.append(f"user-level: {reason}; RDP used")
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
        out["sample_level"]["observer"] = SAMPLE_OBSERVER
    if user is not None:
        out["user_level"] = user.report(rounds)
        out["epsilon_by_observer"] = {
            k: v["epsilon"] for k, v in out["user_level"]["observers"].items()
        }
        out["level"].append("user")
    out["accountant_fallbacks"] = accountant_fallbacks(cfg, sample, user, rounds)
    disclosure = tokenizer_disclosure(cfg)
    out["disclosures_outside_accountant"] = [disclosure] if disclosure else []
    if not out["level"]:
        out["note"] = "no differential privacy in this run: no epsilon is reported"
    return out
