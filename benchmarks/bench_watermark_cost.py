"""Accuracy cost of watermarks on the built-in task, measured on a large fresh test set.

A job's own test split (480 examples in ``examples/watermark.toml``) moves one run's
cost (its paired difference to an unmarked run) by about 1.2 points, one standard
deviation, through sampling alone, and the one unmarked run every marked
run is compared to carries its own sampling error into every comparison. This bench
evaluates finished run directories of the built-in task on ``--examples`` fresh examples
from the same generator (label noise as configured, a seed disjoint from the job's data
and from the attack suite's), and reports each run's accuracy with a Wilson 95% interval
and, for each marked run, the paired difference to the unmarked run on the same examples
with a 95% interval (normal approximation to the paired difference of proportions).

Usage: ``python benchmarks/bench_watermark_cost.py --unmarked RUN --marked RUN [RUN ...]
[--examples 20000] [--json F]``.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from transformers import AutoTokenizer

import models
from secfed import builtin_task
from secfed.assembly import encode
from secfed.config import load_config
from secfed.data import TextDataset

#: Seed of the fresh evaluation examples (disjoint from job seeds and the attack's 424_242).
EVAL_SEED = 515_151
#: Config sections a watermark's paired cost may differ in (everything else must match).
IGNORED_SECTIONS = ("watermark", "output", "name")
Z95 = 1.959964


def correct(run: Path, examples: int) -> NDArray[np.bool_]:
    """Whether the run's final model classifies each fresh example right."""
    cfg = load_config(run / "config.toml")
    if cfg.data.source != "builtin" or cfg.model.task != "classification":
        raise SystemExit(f"{run}: this bench measures built-in classification jobs only")
    texts, labels = builtin_task.generate(
        num_examples=examples, seed=EVAL_SEED, label_noise=cfg.data.label_noise
    )
    tokenizer = AutoTokenizer.from_pretrained(run / "base_model")
    data = encode(tokenizer, TextDataset(texts, labels), max_length=cfg.model.max_length)
    base, _ = models.load_pretrained(run / "base_model", task="classification")
    model = models.load_adapter(base, run / "adapter").eval()
    hits = []
    with torch.no_grad():
        for start in range(0, examples, 512):
            ids, mask, y = (t[start : start + 512] for t in data.tensors)
            pred = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
            hits.append((pred == y).numpy())
    return np.concatenate(hits)


def config_differences(a: Path, b: Path) -> list[str]:
    """Dotted keys where two runs' configs differ, outside ``[watermark]`` and the output."""

    def flat(run: Path) -> dict[str, Any]:
        data = load_config(run / "config.toml").model_dump()
        out: dict[str, Any] = {}
        for section, body in data.items():
            if section in IGNORED_SECTIONS:
                continue
            items = body.items() if isinstance(body, dict) else [("", body)]
            for k, v in items:
                out[f"{section}.{k}".rstrip(".")] = v
        return out

    fa, fb = flat(a), flat(b)
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k/n."""
    p = k / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return centre - half, centre + half


def paired_cost(base: NDArray[np.bool_], marked: NDArray[np.bool_]) -> dict[str, float]:
    """Accuracy points lost by ``marked`` against ``base`` on the same examples, 95% CI."""
    n = len(base)
    only_base = int((base & ~marked).sum())  # right before, wrong after
    only_marked = int((marked & ~base).sum())
    cost = (only_base - only_marked) / n
    se = math.sqrt(max(only_base + only_marked - n * cost**2, 0.0)) / n
    return {
        "cost_points": 100 * cost,
        "ci_low": 100 * (cost - Z95 * se),
        "ci_high": 100 * (cost + Z95 * se),
        "discordant": only_base + only_marked,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unmarked", type=Path, required=True, help="run without watermarks")
    ap.add_argument("--marked", type=Path, nargs="+", required=True, help="watermarked runs")
    ap.add_argument("--examples", type=int, default=20_000)
    ap.add_argument("--json", type=Path, default=None, help="append rows to this JSON list")
    ap.add_argument(
        "--any-baseline",
        action="store_true",
        help="compare runs whose configs differ outside [watermark] (not a watermark's cost)",
    )
    args = ap.parse_args()
    if load_config(args.unmarked / "config.toml").watermark.enabled:
        raise SystemExit(
            f"--unmarked {args.unmarked} has watermarks on: give a run with enabled = false"
        )
    if not args.any_baseline:
        for run in args.marked:
            differ = config_differences(args.unmarked, run)
            if differ:
                raise SystemExit(
                    f"{run} and {args.unmarked} differ outside [watermark] ({', '.join(differ)}): "
                    "the paired cost of a watermark needs the same job with enabled = false; "
                    "pass --any-baseline to compare anyway"
                )
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecations
    base = correct(args.unmarked, args.examples)
    lo, hi = wilson(int(base.sum()), len(base))
    print(f"unmarked {args.unmarked}: accuracy {base.mean():.4f} [{lo:.4f}, {hi:.4f}]")
    rows: list[dict[str, Any]] = []
    for run in args.marked:
        hits = correct(run, args.examples)
        lo, hi = wilson(int(hits.sum()), len(hits))
        row = {
            "run": str(run),
            "unmarked": str(args.unmarked),
            "examples": args.examples,
            "accuracy": float(hits.mean()),
            "accuracy_unmarked": float(base.mean()),
            **paired_cost(base, hits),
        }
        rows.append(row)
        print(
            f"{run}: accuracy {hits.mean():.4f} [{lo:.4f}, {hi:.4f}], cost "
            f"{row['cost_points']:+.2f} points [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
        )
    costs = [r["cost_points"] for r in rows]
    print(f"mean cost {np.mean(costs):+.2f} points over {len(costs)} runs")
    if args.json is not None:
        old = json.loads(args.json.read_text()) if args.json.exists() else []
        args.json.write_text(json.dumps(old + rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
