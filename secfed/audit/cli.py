"""``secfed privacy audit JOB.toml``: run the job once with canaries and print the
empirical lower bound on epsilon beside the accounted epsilon."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ..errors import SecfedError

console = Console(stderr=True)


def _fmt(eps: float | None) -> str:
    if eps is None:
        return "none"
    return "inf (no guarantee)" if not math.isfinite(eps) else f"{eps:.3f}"


def audit(
    job: Annotated[Path, typer.Argument(help="Experiment file (TOML).")],
    canaries: Annotated[int, typer.Option(help="Number of canaries m.")] = 1000,
    level: Annotated[
        str | None, typer.Option(help="user or sample (default: the job's DP level).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default: output.dir/audit).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Empirical lower bound on epsilon from one training run with canaries (Steinke et al.)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    from ..config import load_config
    from .runner import run_audit

    if level not in (None, "user", "sample"):
        console.print(f"[bold red]error:[/] --level {level!r}: choose user or sample")
        raise typer.Exit(2)
    try:
        cfg = load_config(job)
        run_dir = out or Path(cfg.output.dir) / "audit"
        result: dict[str, Any] = run_audit(cfg, run_dir, canaries=canaries, level=level)  # type: ignore[arg-type]
    except (SecfedError, ValueError, OSError, ImportError) as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    if json_out:
        print(json.dumps(result, indent=2))
        return
    Console().print(
        f"{result['level']}-level audit of {result['job']} with {result['canaries']} canaries: "
        f"epsilon >= {result['epsilon_lower_bound']:.3f} at {result['confidence']:.0%} "
        f"confidence ({result['correct']} of {result['guesses']} guesses right, delta "
        f"{result['delta']:g})"
    )
    accounted = result["accounted_epsilon"] or {"(no DP in this job)": None}
    for observer, eps in accounted.items():
        Console().print(f"  accounted epsilon, {observer}: {_fmt(eps)}")
    Console().print(f"written to {run_dir}/audit.json")
    if not result["consistent"]:
        console.print("[bold red]the lower bound exceeds the accounted epsilon: a privacy bug[/]")
        raise typer.Exit(1)
