"""``secfed watermark``: verify keys against adapters or merged models, commitments, attacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from crypto import watermark as wm

watermark_app = typer.Typer(
    no_args_is_help=True, help="Adapter watermarks: verify, commit, attack."
)
console = Console(stderr=True)
out = Console()


def _load_classifier(path: Path) -> Any:
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModelForSequenceClassification.from_pretrained(str(path))


def _base_dir(adapter: Path | None, base: Path | None) -> Path | None:
    if base is not None:
        return base
    if adapter is not None and (adapter.parent / "base_model").is_dir():
        return adapter.parent / "base_model"
    return None


def run_verify(
    keys: list[wm.WatermarkKey],
    *,
    adapter: Path | None,
    model: Path | None,
    base: Path | None,
    alpha: float,
) -> list[wm.Verdict]:
    """Verdicts for ``keys`` on an adapter directory or on a merged model (with its base)."""
    from .verify import (
        WatermarkVerifyError,
        read_adapter_dir,
        read_model_state,
        verify_keys,
    )

    need_triggers = any(k.triggers is not None for k in keys)
    base_dir = _base_dir(adapter, base)
    if model is not None:
        if base_dir is None:
            raise WatermarkVerifyError("--model needs --base (the base model it was merged into)")
        layout = list(dict.fromkeys(m for k in keys for m in k.layout))
        anchor = wm.merged_anchor(read_model_state(model), read_model_state(base_dir), layout)
        net = _load_classifier(model) if need_triggers else None
    elif adapter is not None:
        tensors, config = read_adapter_dir(adapter)
        anchor = wm.adapter_anchor(tensors, config)
        net = None
        if need_triggers and base_dir is not None:
            import models

            net = models.load_adapter(_load_classifier(base_dir), adapter)
    else:
        raise WatermarkVerifyError("give --adapter DIR, or --model DIR with --base DIR")
    return verify_keys(keys, anchor=anchor, model=net, alpha=alpha)


@watermark_app.command()
def verify(
    key: Annotated[list[Path], typer.Option(help="Owner key file (repeatable).")],
    adapter: Annotated[Path | None, typer.Option(help="peft adapter directory.")] = None,
    model: Annotated[Path | None, typer.Option(help="Merged model directory.")] = None,
    base: Annotated[Path | None, typer.Option(help="Base model directory.")] = None,
    commitment: Annotated[
        list[str] | None, typer.Option(help="Published commitment per key, in key order.")
    ] = None,
    alpha: Annotated[
        float, typer.Option(help="Family-wise significance level.")
    ] = wm.DEFAULT_ALPHA,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON records.")] = False,
) -> None:
    """Test each key's watermark; "marked" when its Holm-corrected p-value is below alpha."""
    from ..errors import SecfedError

    try:
        keys = [wm.load_key(p) for p in key]
        if commitment:
            if len(commitment) != len(keys):
                raise wm.WatermarkKeyError(
                    f"{len(commitment)} commitments for {len(keys)} keys; give one per --key"
                )
            for p, k, c in zip(key, keys, commitment, strict=True):
                if not wm.check_commitment(k, c):
                    raise wm.WatermarkKeyError(f"key {p} does not match commitment {c}")
        verdicts = run_verify(keys, adapter=adapter, model=model, base=base, alpha=alpha)
    except (wm.WatermarkError, SecfedError, OSError) as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from err
    records = [{"key": str(p), **v.as_dict()} for p, v in zip(key, verdicts, strict=True)]
    if commitment:
        for r in records:
            r["commitment_ok"] = True
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    table = Table(title="watermark verification")
    for col in ("key", "bits", "bit acc", "trigger acc [95% CI]", "p-value", "verdict"):
        table.add_column(col)
    for r in records:
        trig = r.get("trigger")
        trig_text = (
            f"{trig['accuracy']:.3f} [{trig['ci_low']:.3f}, {trig['ci_high']:.3f}]" if trig else "-"
        )
        table.add_row(
            r["key"],
            str(r.get("bits", "-")),
            f"{r['bit_accuracy']:.3f}" if "bit_accuracy" in r else "-",
            trig_text,
            f"{r['p_value']:.3g}",
            r["verdict"],
        )
    out.print(table)
    out.print(f"alpha = {alpha:g}, correction = {records[0]['correction'] if records else 'none'}")


@watermark_app.command()
def commit(key: Annotated[Path, typer.Option(help="Owner key file.")]) -> None:
    """Print the key's SHA-256 commitment (safe to publish)."""
    try:
        typer.echo(wm.commitment(wm.load_key(key)))
    except wm.WatermarkError as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from err


@watermark_app.command()
def attack(
    run: Annotated[Path, typer.Option(help="Run directory of a finished watermarked job.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG plot.")] = None,
    quick: Annotated[bool, typer.Option(help="Fewer attack strengths (for tests).")] = False,
) -> None:
    """Robustness suite: fine-tuning, pruning, int8, noise, re-factorisation, SVD, merging."""
    from .attacks import plot_results, run_attacks

    rows = run_attacks(run, quick=quick)
    table = Table(title=f"watermark attacks on {run}")
    for col in ("attack", "strength", "task acc", "min bit acc", "max p-value", "all marked"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["attack"],
            str(r["strength"]),
            f"{r['accuracy']:.3f}",
            f"{r['min_bit_accuracy']:.3f}",
            f"{r['max_p_value']:.3g}",
            str(r["all_marked"]),
        )
    out.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")
    if plot is not None:
        plot_results(rows, plot)
