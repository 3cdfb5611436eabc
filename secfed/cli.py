"""Command-line interface: ``secfed run``, ``secfed keys``, ``secfed privacy``, ``secfed bench``,
``secfed watermark``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .audit.cli import audit
from .bench.cli import bench
from .bench.workload import parse_value
from .errors import SecfedError
from .watermark.cli import watermark_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
keys_app = typer.Typer(no_args_is_help=True, help="Key material for homomorphic protocols.")
app.add_typer(keys_app, name="keys")
privacy_app = typer.Typer(no_args_is_help=True, help="Privacy budgets before a run; audits.")
app.add_typer(privacy_app, name="privacy")
privacy_app.command("audit")(audit)
app.add_typer(watermark_app, name="watermark")
app.command()(bench)
console = Console(stderr=True)


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(2)


def _summary_table(summary: dict[str, Any], rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"secfed run: {summary.get('name')}")
    for col in ("round", "accuracy", "loss", "seconds", "KB up/client", "KB down/client"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["round"]),
            f"{r['accuracy']:.4f}",
            f"{r['loss']:.4f}",
            f"{r['seconds']:.1f}",
            f"{r['bytes_up'] / 1024:.1f}",
            f"{r['bytes_down'] / 1024:.1f}",
        )
    return table


@app.command()
def run(
    job: Annotated[Path | None, typer.Argument(help="Experiment file (TOML).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: output.dir).")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Resume the run in this directory from its last checkpoint.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a federated job (or resume one)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    from .config import load_config
    from .runner import FederatedRunner

    try:
        if resume is not None:
            runner = FederatedRunner.resume(resume)
        elif job is not None:
            cfg = load_config(job)
            if cfg.model.path is None:
                # Built-in tiny models run fastest on one thread (no contention between ops).
                import torch

                torch.set_num_threads(1)
            runner = FederatedRunner(cfg, out or Path(cfg.output.dir))
        else:
            raise SecfedError("give an experiment file (secfed run JOB.toml) or --resume RUN_DIR")
        total = runner.cfg.federation.rounds
        with Progress(
            TextColumn("[bold]round"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("", total=total, completed=runner.state.round)

            def on_round(rec: dict[str, Any]) -> None:
                progress.update(
                    task, advance=1, description=f"acc {rec['accuracy']:.3f} loss {rec['loss']:.3f}"
                )

            summary = runner.run(on_round=on_round)
    except (SecfedError, ValueError, OSError, ImportError) as err:
        _fail(err)
        return
    Console().print(_summary_table(summary, runner.dir.read_metrics()))
    Console().print(f"results in {runner.dir.root}/ (metrics.jsonl, summary.json, adapter/)")


@keys_app.command("generate")
def keys_generate(
    scheme: Annotated[str, typer.Option(help="Protocol needing keys: paillier or ckks.")],
    out: Annotated[Path, typer.Option(help="Directory for the key files (owner-only).")],
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="Protocol option KEY=VALUE.")
    ] = None,
) -> None:
    """Generate a job's key set: public part for the server, secret part for clients."""
    import crypto

    opts: dict[str, Any] = {}
    for item in option or []:
        key, _, value = item.partition("=")
        if not _:
            _fail(ValueError(f"--option {item!r} must look like KEY=VALUE"))
        opts[key] = parse_value(value)
    try:
        proto = crypto.create_protocol(scheme, **opts)
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        proto.setup(job_id="keys", key_dir=out)
    except (crypto.CryptoError, ValueError, OSError) as err:
        _fail(err)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    for f in files:
        Console().print(f"{f}  ({oct(f.stat().st_mode & 0o777)})")


@privacy_app.command("estimate")
def privacy_estimate(
    job: Annotated[Path, typer.Argument(help="Experiment file (TOML).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Epsilon a job would spend per client (or the noise a target epsilon needs)."""
    import json

    from .config import load_config
    from .estimate import estimate

    try:
        result = estimate(load_config(job))
    except (SecfedError, ValueError) as err:
        _fail(err)
        return
    if json_out:
        print(json.dumps(result, indent=2))
        return
    out = Console()
    if result["sample"] is None and result["user"] is None:
        out.print("no differential privacy configured in this job: nothing to account")
    if result["sample"] is not None:
        s = result["sample"]
        table = Table(
            title=f"DP-SGD over {result['rounds']} rounds (delta={result['delta']:g}, "
            f"{s['accountant']}, budget={s['budget']})"
        )
        for col in ("client", "examples", "sample rate", "steps", "noise", "epsilon"):
            table.add_column(col, justify="right")
        for cid, c in s["clients"].items():
            table.add_row(
                cid, str(c["examples"]), f"{c['sample_rate']:.4f}", str(c["steps"]),
                f"{c['noise_multiplier']:.3f}", f"{c['epsilon']:.3f}",
            )  # fmt: skip
        out.print(table)
        out.print(f"sample-level epsilon holds against {s['observer']}")
    if result["user"] is not None:
        u = result["user"]
        rel, agg = u["observers"]["released_models"], u["observers"]["aggregator"]
        out.print(
            f"user-level DP-FedAvg: clip {u['clip_norm']}, noise multiplier "
            f"{u['noise_multiplier']} ({u['noise']}), client rate {u['client_sample_rate']}, "
            f"delta {result['delta']:g}:\n"
            f"  epsilon {rel['epsilon']:.3f} against whoever sees only the released models "
            f"(amplified by secret client sampling)\n"
            f"  epsilon {agg['epsilon_expected']:.3f} at {agg['participations_expected']:.3g} "
            f"expected rounds per client, {agg['epsilon_high']:.3f} at "
            f"{agg['participations_high']} rounds (every client, probability "
            f"{agg['participations_high_confidence']}) against the aggregator, who knows the "
            f"cohorts (no amplification): {agg['why']}"
        )
        if u["note"]:
            out.print(f"  {u['note']}")
    for warning in result["warnings"]:
        console.print(f"[bold yellow]warning:[/] {warning}")


def main() -> None:
    """Entry point of the ``secfed`` console script."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted: resume with `secfed run --resume RUN_DIR`")
        sys.exit(130)
