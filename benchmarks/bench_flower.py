"""The same job in-process and over a local Flower deployment, side by side.

    python benchmarks/bench_flower.py [JOB.toml] [--subprocess] [--stock]

Runs ``secfed run JOB`` and ``python -m secfed.flower.launch JOB`` (each in a fresh process,
into a scratch run directory) and prints, for each: wall time, the CPU seconds of its
processes that were waited for (``RUSAGE_CHILDREN``: a helper Flower detaches from its
parent and that is reaped elsewhere is not counted, so the Flower figures are a lower
bound), job time (the sum of the rounds' ``seconds`` in metrics.jsonl: training,
aggregation and evaluation, without start-up) and the mean per-round phases. ``flower`` is
the launcher's default: each node agent answers its SuperNode's ClientApp tasks
(``--isolation process``). ``--subprocess`` adds a run where Flower starts a ClientApp
process per message (``--isolation subprocess``), and ``--stock`` one that also keeps
Flower's own SuperNode intervals (``--poll 0``), to show what each change is worth. Final
accuracies are printed too: the deployments must reach the in-process result.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run(cmd: list[str], out: Path) -> dict[str, float]:
    t0, cpu0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0  # every process of the run that its parent waited for
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {' | '.join(tail)}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
    phases = {
        k: sum(r["phases"][k] for r in rows) / len(rows) for k in ("train", "aggregate", "evaluate")
    }
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "job_s": sum(r["seconds"] for r in rows),
        "accuracy": rows[-1]["accuracy"],
        **{f"{k}_per_round_s": v for k, v in phases.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("job", nargs="?", default="examples/default.toml")
    ap.add_argument("--subprocess", action="store_true",
                    help="also run with a ClientApp process per message")  # fmt: skip
    ap.add_argument(
        "--stock",
        action="store_true",
        help="also run with a process per message and Flower's own intervals",
    )
    ap.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    args = ap.parse_args()
    py = sys.executable
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-flower-") as tmp:
        root = args.keep or Path(tmp)
        results["in-process"] = run(
            [py, "-m", "secfed", "run", args.job, "--out", str(root / "a")], root / "a"
        )
        variants = [("flower", "0.1", "process")]
        if args.subprocess:
            variants.append(("flower-subprocess", "0.1", "subprocess"))
        if args.stock:
            variants.append(("flower-stock", "0", "subprocess"))
        for name, poll, isolation in variants:
            out = root / name
            cmd = [py, "-m", "secfed.flower.launch", args.job, "--out", str(out), "--poll", poll,
                   "--isolation", isolation]  # fmt: skip
            results[name] = run(cmd, out)
    base = results["in-process"]["job_s"]
    print(f"{'':20}{'wall s':>9}{'cpu s':>8}{'job s':>9}{'x in-proc':>11}{'train/r':>9}{'agg/r':>8}"
          f"{'eval/r':>8}{'acc':>8}")  # fmt: skip
    for name, r in results.items():
        print(f"{name:20}{r['wall_s']:9.1f}{r['cpu_s']:8.1f}{r['job_s']:9.1f}"
              f"{r['job_s'] / base:11.2f}"
              f"{r['train_per_round_s']:9.2f}{r['aggregate_per_round_s']:8.2f}"
              f"{r['evaluate_per_round_s']:8.2f}{r['accuracy']:8.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
