"""The job's privacy report: per-round fields, the DP part of the threat model, the summary."""

from __future__ import annotations

from typing import Any

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
