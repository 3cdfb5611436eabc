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
    args = ap.parse_args()
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
