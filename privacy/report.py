"""The run's privacy report: a JSON-able dict and a short text table."""

from __future__ import annotations

import io
from typing import Any

from .distributed import SkellamPlan
from .ledger import PrivacyLedger
from .user_level import UserLevelDP, user_level_epsilon

SECURE_NOISE_NOTE = (
    "Gaussian noise from torch/numpy pseudo-random generators (Opacus secure_mode off): not "
    "hardened against floating-point attacks; Skellam noise is integer-valued"
)


def sample_level_report(ledger: PrivacyLedger, *, max_grad_norm: float) -> dict[str, Any]:
    """DP-SGD section: per-client epsilon, steps, noise, rates, rounds; skips; budget."""
    clients: dict[str, dict[str, Any]] = {}
    spent = ledger.spent()
    for cid in ledger.clients():
        rows = [r for r in ledger.records if r.client == cid]
        acc = ledger.accountant(cid)
        clients[cid] = {
            "epsilon": spent[cid],
            "steps": acc.steps,
            "rounds": [r.round for r in rows],
            "noise_multipliers": sorted({s for s, _, _ in acc.history}),
            "sample_rates": sorted({q for _, q, _ in acc.history}),
            "remaining": ledger.remaining(cid),
        }
    return {
        "mechanism": "DP-SGD (sample-level, Poisson-sampled Gaussian, Opacus)",
        "accountant": ledger.kind,
        "delta": ledger.delta,
        "budget_epsilon": ledger.budget_epsilon,
        "max_grad_norm": max_grad_norm,
        "max_epsilon": max(spent.values(), default=0.0),
        "clients": clients,
        "skipped": [
            {"round": s.round, "client": s.client, "reason": s.reason} for s in ledger.skipped
        ],
        "noise_source": SECURE_NOISE_NOTE,
    }


def user_level_report(
    dp: UserLevelDP,
    *,
    noise: str,
    sample_rate: float,
    rounds: int,
    delta: float,
    accountant: str = "rdp",
    skellam: SkellamPlan | None = None,
) -> dict[str, Any]:
    """DP-FedAvg section: clip norm, noise placement, client rate, rounds and epsilon."""
    if skellam is not None:
        eps = skellam.epsilon(sample_rate=sample_rate, rounds=rounds, delta=delta)
        acct = "skellam-rdp"
    else:
        eps = user_level_epsilon(
            noise_multiplier=dp.noise_multiplier,
            sample_rate=sample_rate,
            rounds=rounds,
            delta=delta,
            accountant=accountant,
        )
        acct = accountant
    out: dict[str, Any] = {
        "mechanism": "DP-FedAvg (user-level, clipped updates, Gaussian noise on the sum)",
        "noise": noise,
        "accountant": acct,
        "delta": delta,
        "clip_norm": dp.clip_norm,
        "noise_multiplier": dp.noise_multiplier,
        "tolerated_dropouts": dp.tolerated_dropouts,
        "client_sample_rate": sample_rate,
        "rounds": rounds,
        "epsilon": eps,
        "noise_source": SECURE_NOISE_NOTE,
    }
    if skellam is not None:
        out["mechanism"] = "DP-FedAvg (user-level, distributed Skellam noise under SecAgg)"
        out["skellam"] = {
            "quantum": skellam.quantum,
            "l2_sensitivity": skellam.l2,
            "central_variance": skellam.central_variance,
            "client_variance": skellam.client_variance,
        }
    return out


def format_report(report: dict[str, Any], *, width: int = 100) -> str:
    """A short text rendering (rich table) of a report from this module."""
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=False, color_system=None)
    budget = report.get("budget_epsilon")
    title = f"{report['mechanism']} | accountant {report['accountant']} | delta {report['delta']:g}"
    if "clients" in report:
        table = Table(title=title + f" | budget {budget if budget is not None else 'none'}")
        for col in ("client", "epsilon", "steps", "rounds", "noise", "rate"):
            table.add_column(col)
        for cid, c in report["clients"].items():
            table.add_row(
                cid,
                f"{c['epsilon']:.3f}",
                str(c["steps"]),
                str(len(c["rounds"])),
                ",".join(f"{s:.3g}" for s in c["noise_multipliers"]),
                ",".join(f"{q:.3g}" for q in c["sample_rates"]),
            )
        console.print(table)
        for s in report["skipped"]:
            console.print(f"skipped: client {s['client']} round {s['round']}: {s['reason']}")
    else:
        table = Table(title=title)
        table.add_column("setting")
        table.add_column("value")
        for key in ("noise", "clip_norm", "noise_multiplier", "client_sample_rate", "rounds"):
            table.add_row(key, str(report[key]))
        table.add_row("epsilon", f"{report['epsilon']:.3f}")
        console.print(table)
    return buf.getvalue()
