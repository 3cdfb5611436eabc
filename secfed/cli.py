"""Command line: run a federated job, compare it with local-only training, make keys,
estimate and audit privacy, benchmark, check watermarks."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, ClassVar

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from typer.core import TyperGroup

from . import __version__
from .audit.cli import audit
from .compare_cli import compare
from .errors import SecfedError

#: Sub-commands imported only when invoked (they pull in torch, scipy or the crypto stack):
#: name -> (module, attribute, one-line help shown by ``secfed --help``).
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "watermark": (
        "secfed.watermark.cli",
        "watermark_app",
        "Adapter watermarks: keygen, commit, verify, attack.",
    ),
    "bench": (
        "secfed.bench.cli",
        "bench",
        "Measure the crypto overhead of every aggregation protocol (and its peers).",
    ),
}


def load_lazy_command(name: str) -> click.Command:
    """Import a lazy sub-command and build its click command."""
    module, attr, _ = LAZY_COMMANDS[name]
    obj = getattr(importlib.import_module(module), attr)
    holder = typer.Typer(add_completion=False)  # a group, so the command keeps its own shape
    holder.callback()(lambda: None)
    if isinstance(obj, typer.Typer):
        holder.add_typer(obj, name=name)
    else:
        holder.command(name=name)(obj)
    group = typer.main.get_command(holder)
    assert isinstance(group, click.Group)
    return group.commands[name]


class _LazyGroup(TyperGroup):
    """The root group: lazy sub-commands are listed from :data:`LAZY_COMMANDS` and imported
    only when resolved, so ``secfed --help`` and ``secfed run`` start without torch."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *LAZY_COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:  # a stand-in carrying the help line (for listings)
            short = LAZY_COMMANDS[cmd_name][2]
            return click.Command(cmd_name, help=short, short_help=short)
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] in LAZY_COMMANDS:
            return args[0], load_lazy_command(args[0]), args[1:]
        return super().resolve_command(ctx, args)


app = typer.Typer(cls=_LazyGroup, add_completion=False, no_args_is_help=True, help=__doc__)
keys_app = typer.Typer(no_args_is_help=True, help="Key material for homomorphic protocols.")
app.add_typer(keys_app, name="keys")
privacy_app = typer.Typer(no_args_is_help=True, help="Privacy budgets before a run; audits.")
app.add_typer(privacy_app, name="privacy")
privacy_app.command("audit")(audit)
app.command()(compare)
console = Console(stderr=True)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"secfed {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Command line: run a federated job, make keys, estimate privacy, benchmark, check
    watermarks."""


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
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


class _JobView:
    """Draws a job's progress: building its parts, then rounds and the work inside one."""

    STAGES: ClassVar[dict[str, str]] = {
        "data": "loading data",
        "tokenizer": "training the tokenizer",
        "model": "building the model",
        "pretrain": "pre-training the base model",
    }

    def __init__(self, progress: Progress):
        self.progress = progress
        self.work = progress.add_task("starting", total=None)
        self.rounds: Any = None

    def start_rounds(self, total: int, done: int) -> None:
        self.rounds = self.progress.add_task("rounds", total=total, completed=done)
        self.progress.update(self.work, description="starting round", total=None, completed=0)

    def __call__(self, ev: Any) -> None:
        if ev.stage in self.STAGES:
            text, total = self.STAGES[ev.stage], ev.total or None
        elif ev.stage == "train":
            text = f"round {ev.round}: client {ev.client} ({ev.member}/{ev.cohort}) local steps"
            total = ev.total or None
        else:
            text, total = f"round {ev.round}: {ev.stage}", None
        self.progress.update(self.work, description=text, total=total, completed=ev.done)

    def on_round(self, rec: dict[str, Any]) -> None:
        acc, loss = rec.get("accuracy"), rec.get("loss")
        shown = f"acc {acc:.3f} loss {loss:.3f}" if acc is not None and loss is not None else ""
        self.progress.update(self.rounds, advance=1, description=f"rounds  {shown}")

    def close(self) -> None:
        self.progress.update(self.work, visible=False)


def _job_errors() -> tuple[type[Exception], ...]:
    """Errors a job reports as one clean line (the packages are imported by then)."""
    import crypto
    import models
    import privacy

    return (SecfedError, ValueError, OSError, ImportError, crypto.CryptoError,
            privacy.PrivacyError, models.ModelError)  # fmt: skip


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
    from rich.logging import RichHandler

    from .config import load_config

    # Log lines (warnings; -v: one per client and round) print above the progress display.
    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
        handlers=[handler], force=True,
    )  # fmt: skip

    try:  # config errors surface before torch is imported
        if resume is None and job is None:
            raise SecfedError("give an experiment file (secfed run JOB.toml) or --resume RUN_DIR")
        cfg = load_config(job) if resume is None and job is not None else None
    except SecfedError as err:
        _fail(err)
        return
    from .runner import FederatedRunner

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())  # fmt: skip
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            view = _JobView(progress)
            if cfg is None:
                assert resume is not None
                runner = FederatedRunner.resume(resume, progress=view)
            else:
                if cfg.model.path is None:
                    # Built-in tiny models run fastest on one thread (no contention between ops).
                    import torch

                    torch.set_num_threads(1)
                runner = FederatedRunner(cfg, out or Path(cfg.output.dir), progress=view)
            view.start_rounds(runner.cfg.federation.rounds, runner.state.round)
            summary = runner.run(on_round=view.on_round)
            view.close()
    except _job_errors() as err:
        _fail(err)
        return
    Console().print(_summary_table(summary, runner.dir.read_metrics()))
    Console().print(f"results in {runner.dir.root}/ (metrics.jsonl, summary.json, adapter/)")


@keys_app.command("generate")
def keys_generate(
    scheme: Annotated[
        str, typer.Option(help="paillier or ckks (a protocol's keys), or identity (the roster).")
    ],
    out: Annotated[Path, typer.Option(help="Directory for the key files (owner-only).")],
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="Protocol option KEY=VALUE.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace keys of this scheme already in --out.")
    ] = False,
    clients: Annotated[
        int, typer.Option(help="identity: how many clients (ids 0..N-1) the roster lists.")
    ] = 0,
) -> None:
    """Generate a job's key set: public part for the server, secret part for clients.

    ``--scheme identity --clients N`` makes the roster (``identity/roster.json``, for every
    party) and one Ed25519 key per party (``identity/party-<id>.key``: give each client its
    own, the server ``party-4294967295.key``).
    """
    import crypto

    from .bench.workload import parse_value
    from .keydir import prepare_generate

    if scheme == "identity":
        from crypto.core import identity

        if clients < 1:
            _fail(ValueError("--scheme identity needs --clients N (the job's client count)"))
        if (out / identity.SUBDIR).exists() and any((out / identity.SUBDIR).iterdir()):
            if not force:
                _fail(
                    ValueError(
                        f"{out / identity.SUBDIR} already holds identity keys: keep "
                        "them, choose another --out, or pass --force to replace them"
                    )
                )
            import shutil

            shutil.rmtree(out / identity.SUBDIR)
        try:
            identity.load_or_create(out / identity.SUBDIR, range(clients))
        except (crypto.CryptoError, OSError) as err:
            _fail(err)
        for f in sorted(p for p in (out / identity.SUBDIR).iterdir() if p.is_file()):
            Console().print(f"{f}  ({oct(f.stat().st_mode & 0o777)})")
        return

    opts: dict[str, Any] = {}
    for item in option or []:
        key, _, value = item.partition("=")
        if not _:
            _fail(ValueError(f"--option {item!r} must look like KEY=VALUE"))
        opts[key] = parse_value(value)
    try:
        prepare_generate(scheme, out, force=force)
    except SecfedError as err:
        _fail(err)
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
