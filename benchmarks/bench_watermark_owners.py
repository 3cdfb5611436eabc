"""How many owners' white-box signatures coexist in one adapter, and what they cost.

Runs ``examples/watermark.toml`` (triggers off, so only signatures are measured) with
``owners = k`` for each ``--owners`` value (every owner a client with its own 256-bit key;
``--clients`` raises the client count where k needs it), plus one run without watermarks
per client count. Reports, per run: keys marked at min(alpha, 2^-64) (Holm across the
run's keys), the smallest bit accuracy, the largest p-value and the task accuracy. The
example's anchor (capacity 3840) takes at most 7 keys of 256 bits (half-capacity rule).

Usage: ``python benchmarks/bench_watermark_owners.py [--owners 1,2,4,7] [--rounds 5]
[--fraction 0.5] [--margin 0.05] [--no-baseline] [--json F]``. Keys are fresh random
keys each run, so figures vary from run to run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from secfed.config import load_config
from secfed.runner import FederatedRunner

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "watermark.toml"


def run_job(
    *, owners: int, clients: int, rounds: int, fraction: float, margin: float
) -> dict[str, Any]:
    """One job; ``owners = 0`` turns watermarking off."""
    base = load_config(EXAMPLE)
    wm: dict[str, Any] = {
        "enabled": owners > 0,
        "owners": max(owners, 1),
        "job_key": False,
        "triggers": 0,
    }
    wm.update(max_grad_fraction=fraction, margin=margin)
    cfg = base.with_overrides(federation={"clients": clients, "rounds": rounds}, watermark=wm)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        summary = FederatedRunner(cfg, out).run()
    row: dict[str, Any] = {
        "owners": owners,
        "clients": clients,
        "rounds": rounds,
        "max_grad_fraction": fraction,
        "margin": margin,
        "accuracy": summary["accuracy"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if owners:
        keys = summary["watermark"]["keys"].values()
        row.update(
            marked=summary["watermark"]["marked"],
            min_bit_accuracy=min(k["bit_accuracy"] for k in keys),
            max_p_value=max(k["bit_p_value"] for k in keys),
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--owners", default="1,2,4,7")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--fraction", type=float, default=0.5, help="watermark.max_grad_fraction")
    ap.add_argument("--margin", type=float, default=0.05, help="watermark.margin")
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    counts = [int(x) for x in args.owners.split(",")]
    rows = []
    for clients in sorted({max(4, k) for k in counts}):
        todo = [0] if args.baseline else []
        todo += [k for k in counts if max(4, k) == clients]
        for k in todo:
            opts = {"fraction": args.fraction, "margin": args.margin}
            rows.append(run_job(owners=k, clients=clients, rounds=args.rounds, **opts))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
