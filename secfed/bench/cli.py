"""``secfed bench``: register with ``app.command()(bench)`` in :mod:`secfed.cli`."""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import SecfedError
from .workload import parse_int_list, parse_protocol_options

QUICK_PARAMS, QUICK_CLIENTS = "1000,10000", "3"
FULL_PARAMS, FULL_CLIENTS = "10000,1000000", "10"

err_console = Console(stderr=True)


def _adapter_params(path: Path) -> int:
    """Exact adapter size of a job's model + adapter."""
    import models

    from ..assembly import build_parts
    from ..config import load_config

    return int(models.adapter_size(build_parts(load_config(path)).model))


def _e2e_table(records: list[dict[str, Any]]) -> Table:
    table = Table(title="secfed bench --e2e: default job per protocol")
    for col in ("protocol", "params", "round s", "aggregate s", "kB up/client", "accuracy"):
        table.add_column(col, justify="left" if col == "protocol" else "right")
    for r in records:
        if r.get("error"):
            table.add_row(r["protocol"], "-", "-", "-", "-", f"[red]{r['error']}")
            continue
        table.add_row(
            r["protocol"] + (" (INSECURE)" if r.get("insecure") else ""),
            f"{r['params']:,}",
            f"{r['round_s']:.2f}",
            f"{r['aggregate_s']:.2f}",
            f"{r['bytes_up'] / 1e3:.1f}",
            f"{r['accuracy']:.4f}",
        )
    return table


def bench(
    protocols: Annotated[
        str | None, typer.Option(help="Comma-separated protocols (default: all registered).")
    ] = None,
    params: Annotated[
        str | None,
        typer.Option(
            help=f"Comma-separated vector sizes (default {FULL_PARAMS}).", show_default=False
        ),
    ] = None,
    adapter_config: Annotated[
        Path | None, typer.Option(help="Use the exact adapter size of this job's model+adapter.")
    ] = None,
    clients: Annotated[
        str | None, typer.Option(help=f"Comma-separated cohort sizes (default {FULL_CLIENTS}).")
    ] = None,
    dropouts: Annotated[str, typer.Option(help="Comma-separated dropout counts.")] = "0",
    repeats: Annotated[
        int | None, typer.Option(min=1, help="Timed repetitions (default 3; a warm-up is extra).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Protocol option 'workers' where accepted.")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="Protocol option, e.g. paillier.key_bits=3072."),
    ] = None,
    cap: Annotated[
        list[str] | None,
        typer.Option(help="Skip a protocol's points above N params, e.g. paillier=100000."),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write records (JSON).")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write records (CSV).")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write time/bytes plots (PNG).")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Write the table as markdown.")] = None,
    quick: Annotated[
        bool, typer.Option(help="About a minute: small sizes, 1 repeat, INSECURE test keys.")
    ] = False,
    baselines: Annotated[
        bool, typer.Option(help="Measure peers (phe, TenSEAL, Flower) where installed.")
    ] = True,
    point_budget: Annotated[
        float, typer.Option(help="Cap timed repetitions of a point at about this many seconds.")
    ] = 600.0,
    e2e: Annotated[bool, typer.Option(help="Also run the default job once per protocol.")] = False,
    memory: Annotated[
        bool,
        typer.Option(help="Per-party peak RSS: one more round, client 0 and server in processes."),
    ] = True,
    unauthenticated: Annotated[
        bool,
        typer.Option(
            "--unauthenticated",
            help="UNAUTHENTICATED mode: no roster, unsigned messages (only to measure what "
            "authentication costs; by default every protocol signs and checks, as jobs do).",
        ),
    ] = False,
) -> None:
    """Measure the crypto overhead of every aggregation protocol (and its peers)."""
    import crypto

    from . import report
    from .sweep import SweepConfig, run_sweep

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        names = protocols.split(",") if protocols else crypto.protocol_names()
        for n in names:
            crypto.get_protocol(n)
        if adapter_config is not None:
            sizes = [_adapter_params(adapter_config)]
        else:
            sizes = parse_int_list(
                params or (QUICK_PARAMS if quick else FULL_PARAMS), what="params"
            )
        cfg = SweepConfig(
            protocols=names,
            params=sizes,
            clients=parse_int_list(
                clients or (QUICK_CLIENTS if quick else FULL_CLIENTS), what="clients"
            ),
            dropouts=parse_int_list(dropouts, what="dropouts"),
            repeats=repeats or (1 if quick else 3),
            options=parse_protocol_options(option or []),
            workers=workers,
            quick=quick,
            baselines=baselines,
            point_budget_s=point_budget,
            caps=_parse_caps(cap or []),
            memory=memory,
            authenticated=not unauthenticated,
        )
        if any(c < 2 for c in cfg.clients):
            raise SecfedError(f"--clients needs cohorts of at least 2, got {list(cfg.clients)}")
    except (SecfedError, crypto.CryptoError, ValueError) as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    if unauthenticated:
        err_console.print(
            "[bold red]UNAUTHENTICATED: no roster, messages are neither signed nor checked; "
            "figures show what authentication costs, not what a job runs.[/]"
        )
    if quick:
        err_console.print(
            "[bold red]QUICK MODE: small sizes, one repetition and INSECURE test keys where a "
            "protocol offers them (e.g. paillier insecure_key_bits=1024). Not for citing.[/]"
        )
    total = len(cfg.points()) + len(cfg.baseline_points()) + (len(names) if e2e else 0)
    started = time.time()
    load_start = os.getloadavg()
    with Progress(
        TextColumn("[bold]bench"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
    ) as progress:
        task = progress.add_task("", total=total)
        done = [0]

        def advance(label: str) -> None:
            progress.update(task, description=label, completed=done[0])
            done[0] += 1

        records = run_sweep(cfg, advance=advance)
        e2e_records: list[dict[str, Any]] = []
        if e2e:
            from .e2e import run_e2e  # imports torch and the runner: only when asked

            e2e_opts = {n: _quick_opts(cfg, n) for n in names}
            e2e_records = run_e2e(
                names, options=e2e_opts, rounds=1 if quick else None, advance=advance
            )
        progress.update(task, completed=total, description="done")
    out = Console()
    out.print(report.rich_table(records))
    if e2e_records:
        out.print(_e2e_table(e2e_records))
    if any(r.get("insecure") for r in records):
        out.print("[bold red]rows marked INSECURE used test-only keys: not for citing[/]")
    meta = {
        "argv": sys.argv[1:],
        "load_average_start_end": [load_start, os.getloadavg()],
        "quick": quick,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": time.time() - started,
        "machine": f"{platform.machine()} {platform.processor()} cpus={os.cpu_count()}",
        "python": platform.python_version(),
        "timing": "medians over repeats after one warm-up; seconds and bytes per client",
        "memory": "peak_mem_bytes: tracemalloc peak of the warm-up round (all parties); "
        "peak_rss_bytes: per party (client 0, server) ru_maxrss of its own process in one "
        "more round; rss_over_update: that peak above the post-import baseline / (4 * params)",
        "e2e": "records with kind 'e2e': examples/default.toml once per protocol",
        "protocols": {n: _quick_opts(cfg, n) for n in names},
        "authenticated": "UNAUTHENTICATED (no roster)"
        if unauthenticated
        else "every protocol with a roster: signed and checked messages, as in a job",
    }
    if json_out is not None:
        report.write_json(json_out, records + e2e_records, meta)
    if csv_out is not None:
        report.write_csv(csv_out, records + e2e_records)
    if plot is not None:
        report.write_plot(plot, records)
    if markdown is not None:
        markdown.write_text(report.markdown_table(records) + "\n")
    for path in (json_out, csv_out, plot, markdown):
        if path is not None:
            out.print(f"wrote {path}")


def _parse_caps(items: list[str]) -> dict[str, int]:
    caps: dict[str, int] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise SecfedError(
                f"--cap {item!r} must look like PROTOCOL=PARAMS, e.g. paillier=100000"
            )
        caps[name] = parse_int_list(value, what="cap")[0]
    return caps


def _quick_opts(cfg: Any, name: str) -> dict[str, Any]:
    from .sweep import protocol_options

    return protocol_options(cfg, name)[0]
