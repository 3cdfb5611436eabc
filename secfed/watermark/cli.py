"""``secfed watermark``: keygen, commit, verify (exit 0 marked / 1 not marked / 2 error), attack.

Torch, transformers and the watermark library load inside the commands, so ``secfed
--help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from crypto import watermark as wm

watermark_app = typer.Typer(
    no_args_is_help=True, help="Adapter watermarks: keygen, commit, verify, attack."
)
console = Console(stderr=True)
out = Console()

DEFAULT_ALPHA = 1e-6  # = crypto.watermark.DEFAULT_ALPHA (kept literal: no torch at import)
MAX_ALPHA = 0.01
ATTACKS = ("none", "prune", "int8", "noise", "refactorize", "svd", "finetune", "merge")


def _fail(err: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/] {err}")
    return typer.Exit(2)


def _user_errors(*more: type[Exception]) -> tuple[type[Exception], ...]:
    """Errors a command reports with :func:`_fail`, and ``more`` (imported late: no torch
    at start-up)."""
    from crypto import watermark as wm

    from ..errors import SecfedError

    return (wm.WatermarkError, SecfedError, OSError, *more)


def _load_classifier(path: Path) -> Any:
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModelForSequenceClassification.from_pretrained(str(path))


def _domain(base_dir: Path, num_labels: int) -> wm.TriggerDomain:
    from transformers import AutoTokenizer

    from .verify import trigger_domain

    return trigger_domain(AutoTokenizer.from_pretrained(str(base_dir)), num_labels)


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
    no_triggers: bool = False,
) -> tuple[list[wm.Verdict], wm.Architecture, str | None]:
    """Verdicts on an adapter directory or a merged model (with its base), the architecture
    read from it, and the adapter file's SHA-256 (None for a merged model)."""
    from crypto import watermark as wm

    from .verify import (
        ADAPTER_WEIGHTS,
        WatermarkVerifyError,
        read_adapter_dir,
        read_model_state,
        verify_keys,
    )

    if adapter is not None and model is not None:
        raise WatermarkVerifyError("give --adapter DIR or --model DIR (merged), not both")
    need_triggers = any(k.triggers for k in keys) and not no_triggers
    base_dir = _base_dir(adapter, base)
    net: Any = None
    digest = None
    if model is not None:
        if base_dir is None:
            raise WatermarkVerifyError("--model needs --base (the base model it was merged into)")
        anchor, kind = wm.merged_anchor(read_model_state(model), read_model_state(base_dir)), "lora"
        if need_triggers:
            net = _load_classifier(model)
    elif adapter is not None:
        tensors, config = read_adapter_dir(adapter)
        anchor, kind = wm.adapter_anchor(tensors, config), wm.anchor_kind(config)
        digest = wm.file_sha256(adapter / ADAPTER_WEIGHTS)
        if need_triggers and base_dir is not None:
            import models

            net = models.load_adapter(_load_classifier(base_dir), adapter)
    else:
        raise WatermarkVerifyError("give --adapter DIR, or --model DIR with --base DIR")
    domain = None if net is None or base_dir is None else _domain(base_dir, net.config.num_labels)
    verdicts = verify_keys(
        keys,
        anchor=anchor,
        kind=kind,
        model=net,
        domain=domain,
        skip_triggers=no_triggers,
        alpha=alpha,
    )
    return verdicts, wm.Architecture.of(kind, anchor), digest


def check_commitments(
    keys: list[wm.WatermarkKey],
    records: list[Path],
    tokens: list[Path],
    tsa_cert: Path | None,
    *,
    arch: wm.Architecture,
    adapter_sha256: str | None,
) -> list[dict[str, Any]]:
    """Check one record per key (and one timestamp token per record, when given)."""
    from crypto import watermark as wm
    from crypto.watermark.timestamp import load_certificate, verify_token

    if len(records) != len(keys):
        raise wm.CommitmentError(f"{len(records)} commitment records for {len(keys)} keys")
    if tokens and (len(tokens) != len(records) or tsa_cert is None):
        raise wm.CommitmentError(
            "give one --timestamp token per --commitment record and the --tsa-cert you trust"
        )
    cert = load_certificate(tsa_cert.read_bytes()) if tsa_cert is not None and tokens else None
    checked = []
    for i, (key, path) in enumerate(zip(keys, records, strict=True)):
        record = wm.load_record(path)
        notes = wm.check_record(record, key, arch=arch, adapter_sha256=adapter_sha256)
        stamped = None
        if cert is not None:
            when = verify_token(
                tokens[i].read_bytes(), data=wm.canonical_start(record), tsa_cert=cert
            )
            stamped = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            notes.append("no timestamp token: the record's time is the claimant's word only")
        checked.append(
            {
                "record": str(path),
                "job_id": record["job_id"],
                "created": record["created"],
                "digest": record["digest"],
                "timestamp": stamped,
                "notes": notes,
            }
        )
    return checked


@watermark_app.command()
def verify(
    key: Annotated[list[Path], typer.Option(help="Owner key file (repeatable).")],
    adapter: Annotated[Path | None, typer.Option(help="peft adapter directory.")] = None,
    model: Annotated[Path | None, typer.Option(help="Merged model directory.")] = None,
    base: Annotated[Path | None, typer.Option(help="Base model directory.")] = None,
    no_triggers: Annotated[
        bool, typer.Option("--no-triggers", help="Test signatures only (skip trigger sets).")
    ] = False,
    commitment: Annotated[
        list[Path] | None, typer.Option(help="Commitment record per key, in key order.")
    ] = None,
    timestamp: Annotated[
        list[Path] | None, typer.Option(help="RFC 3161 token (.tsr) per commitment record.")
    ] = None,
    tsa_cert: Annotated[
        Path | None, typer.Option(help="Certificate of the timestamp authority you trust.")
    ] = None,
    alpha: Annotated[
        float, typer.Option(help=f"Family-wise level, 0 < alpha <= {MAX_ALPHA}.")
    ] = DEFAULT_ALPHA,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON records.")] = False,
) -> None:
    """Test keys; exit 0 when every key is marked, 1 when one is not, 2 on error.

    A key is "marked" when its Holm-adjusted p-value is at most min(alpha, 2^-64).
    """
    if not 0.0 < alpha <= MAX_ALPHA:
        raise _fail(ValueError(f"--alpha {alpha} out of range; use 0 < alpha <= {MAX_ALPHA}"))
    from crypto import watermark as wm
    from crypto.watermark.timestamp import TimestampError

    try:
        keys = [wm.load_key(p) for p in key]
        verdicts, arch, digest = run_verify(
            keys, adapter=adapter, model=model, base=base, alpha=alpha, no_triggers=no_triggers
        )
        checked = (
            check_commitments(
                keys, commitment, timestamp or [], tsa_cert, arch=arch, adapter_sha256=digest
            )
            if commitment
            else None
        )
    except _user_errors(TimestampError, ValueError) as err:
        raise _fail(err) from err
    if checked is None:
        console.print(
            "[bold yellow]WARNING: no --commitment record given. A verdict without a record "
            "committed before training does not show who holds the key first: anyone can "
            "make a key and test it.[/]"
        )
    records = []
    for i, (p, v) in enumerate(zip(key, verdicts, strict=True)):
        rec = {"key": str(p), **v.as_dict(), "triggers_tested": v.trigger is not None}
        rec["commitment"] = None if checked is None else checked[i]
        records.append(rec)
    if as_json:
        typer.echo(json.dumps(records, indent=2))
    else:
        _print_verdicts(records, alpha=alpha, level=verdicts[0].level if verdicts else alpha)
    raise typer.Exit(0 if all(v.marked for v in verdicts) else 1)


def _print_verdicts(records: list[dict[str, Any]], *, alpha: float, level: float) -> None:
    table = Table(title="watermark verification")
    cols = (
        "key",
        "bits",
        "bit p (Holm)",
        "trigger acc [95% CI]",
        "trigger p (Holm)",
        "trigger rank p (Holm)",
    )
    for col in (*cols, "p (Holm)", "commitment", "verdict"):
        table.add_column(col)
    for r in records:
        trig = r.get("trigger")
        com = r["commitment"]
        table.add_row(
            Path(r["key"]).name,
            f"{r['matches']}/{r['bits']}" if "bits" in r else "-",
            f"{r['bit_p_adjusted']:.3g}" if "bits" in r else "-",
            f"{trig['accuracy']:.3f} [{trig['ci_low']:.3f}, {trig['ci_high']:.3f}]"
            if trig
            else "-",
            f"{trig['p_adjusted']:.3g}" if trig else "-",
            f"{trig['rank_p_adjusted']:.3g}"
            if trig and trig["rank_p_adjusted"] is not None
            else "-",
            f"{r['p_value']:.3g}",
            "none" if com is None else f"ok{' @ ' + com['timestamp'] if com['timestamp'] else ''}",
            r["verdict"],
        )
    out.print(table)
    out.print(f"alpha = {alpha:g}, level = min(alpha, 2^-64) = {level:.3g}, Holm-adjusted")
    for r in records:
        for note in (r["commitment"] or {}).get("notes", []):
            console.print(f"[yellow]note ({r['key']}):[/] {note}")


@watermark_app.command()
def keygen(
    out_path: Annotated[Path, typer.Option("--out", help="Key file to write (0600, new).")],
    owner: Annotated[int, typer.Option(help="Owner label (not secret, not tested).")] = 0,
    triggers: Annotated[
        bool, typer.Option(help="Mark the key as carrying an embedded trigger set.")
    ] = False,
    adapter: Annotated[
        Path | None, typer.Option(help="Bind the key to this adapter's architecture.")
    ] = None,
) -> None:
    """Make a fresh key: a 256-bit secret seed (scheme secfed-wm/3)."""
    from crypto import watermark as wm

    try:
        arch = None
        if adapter is not None:
            from .verify import read_adapter_dir

            tensors, config = read_adapter_dir(adapter)
            arch = wm.Architecture.of(wm.anchor_kind(config), wm.adapter_anchor(tensors, config))
        key = wm.generate_key(owner=owner, triggers=triggers, architecture=arch)
        wm.save_key(key, out_path)
    except FileExistsError as err:
        raise _fail(FileExistsError(f"{out_path} exists; keys are never overwritten")) from err
    except _user_errors() as err:
        raise _fail(err) from err
    typer.echo(f"wrote {out_path} (key hash {wm.key_hash(key)})")


@watermark_app.command()
def commit(
    key: Annotated[Path, typer.Option(help="Owner key file.")],
    adapter: Annotated[Path, typer.Option(help="The (initial) adapter the key will mark.")],
    job_id: Annotated[str, typer.Option(help="Identifier of the training job.")],
    out_path: Annotated[Path, typer.Option("--out", help="Commitment record to write.")],
) -> None:
    """Write a commitment record (no secret in it) and print the digest to timestamp."""
    from crypto import watermark as wm

    from .verify import read_adapter_dir

    try:
        k = wm.load_key(key)
        tensors, config = read_adapter_dir(adapter)
        arch = wm.Architecture.of(wm.anchor_kind(config), wm.adapter_anchor(tensors, config))
        wm.check_fits(k, arch)
        wm.save_record(wm.make_record(k, job_id=job_id, arch=arch), out_path)
    except _user_errors() as err:
        raise _fail(err) from err
    typer.echo(wm.load_record(out_path)["digest"])


@watermark_app.command()
def attack(
    run: Annotated[Path, typer.Option(help="Run directory of a finished watermarked job.")],
    attacks: Annotated[
        str, typer.Option(help=f"Comma-separated subset of: {','.join(ATTACKS)}.")
    ] = ",".join(ATTACKS),
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG plot.")] = None,
    quick: Annotated[bool, typer.Option(help="Fewer attack strengths (for tests).")] = False,
) -> None:
    """Robustness suite: fine-tuning, pruning, int8, noise, re-factorisation, SVD, merging."""
    chosen = [a.strip() for a in attacks.split(",") if a.strip()]
    unknown = sorted(set(chosen) - set(ATTACKS))
    if unknown or not chosen:
        raise _fail(ValueError(f"unknown attacks {unknown}; choose from {','.join(ATTACKS)}"))
    from .attacks import plot_results, run_attacks

    try:
        rows = run_attacks(run, quick=quick, only=chosen)
    except _user_errors() as err:
        raise _fail(err) from err
    table = Table(title=f"watermark attacks on {run}")
    cols = ("attack", "strength", "task acc", "min bit acc", "max bit p", "min trig hits")
    for col in (*cols, "max trig p", "max trig rank p", "all marked"):
        table.add_column(col)
    for r in rows:
        hits = r["min_trigger_hits"]
        table.add_row(
            r["attack"],
            str(r["strength"]),
            f"{r['accuracy']:.3f}",
            f"{r['min_bit_accuracy']:.3f}",
            f"{r['max_bit_p_value']:.3g}",
            "-" if hits is None else f"{hits}/{r['triggers']}",
            "-" if r["max_trigger_p_value"] is None else f"{r['max_trigger_p_value']:.3g}",
            "-"
            if r["max_trigger_rank_p_value"] is None
            else f"{r['max_trigger_rank_p_value']:.3g}",
            str(r["all_marked"]),
        )
    out.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")
    if plot is not None:
        plot_results(rows, plot)
