"""``secfed compare``: run a job with its local-only baseline and print both side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import SecfedError


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def comparison_table(comparison: dict[str, Any], title: str) -> Table:
    """Per-client local-only accuracy next to the federated model's, and the means."""
    local, fed = comparison["local_only"], comparison["federated"]
    table = Table(title=f"{title}: local-only vs federated ({comparison['metric']})")
    for col in (
        "client", "train examples", "local: held-out", "local: own test",
        "federated: held-out", "federated: own test",
    ):  # fmt: skip
        table.add_column(col, justify="right")
    for cid, c in local["clients"].items():
        table.add_row(
            cid, str(c["train_examples"]), _fmt(c["accuracy"]), _fmt(c["own_accuracy"]),
            _fmt(fed["accuracy"]), _fmt(c["federated_own_accuracy"]),
        )  # fmt: skip
    table.add_row(
        "mean", "", _fmt(local["mean_accuracy"]), _fmt(local["mean_own_accuracy"]),
        _fmt(fed["accuracy"]), _fmt(fed["mean_own_accuracy"]), style="bold",
    )  # fmt: skip
    return table


def compare(
    job: Annotated[Path, typer.Argument(help="Experiment file (TOML).")],
    out: Annotated[Path | None, typer.Option(help="Run directory (default: output.dir).")] = None,
) -> None:
    """Run a job and, on the same data, each client training alone (local-only baseline)."""
    from .config import load_config
    from .runner import FederatedRunner

    console = Console(stderr=True)
    try:
        cfg = load_config(job)
        cfg = cfg.with_overrides(federation={"baseline": "local"})
        if cfg.model.path is None:
            import torch

            torch.set_num_threads(1)  # tiny built-in models: one thread is fastest
        runner = FederatedRunner(cfg, out or Path(cfg.output.dir))
        summary = runner.run()
    except (SecfedError, ValueError, OSError, ImportError) as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    Console().print(comparison_table(summary["comparison"], cfg.name))
    Console().print(f"results in {runner.dir.root}/ (comparison.json, summary.json)")
