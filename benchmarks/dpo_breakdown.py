"""Held-out preference accuracy of a finished built-in DPO run, split by kind of rejected answer.

The built-in preference set rejects either a refusal (``secfed.dpo.REFUSALS``) or a near
miss (a wrong symbol, or a confusable operation's answer). This script rebuilds the run's
model and data from its ``config.toml`` and scores the held-out pairs with the base (fresh
adapter) and with the global adapter of each requested round's checkpoint.

Usage: ``python benchmarks/dpo_breakdown.py RUN_DIR ROUND [ROUND ...]``; prints one JSON
object (kind -> share of pairs whose chosen answer the model scores above the rejected one).
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import torch

import models
from secfed.assembly import client_test_dataset
from secfed.checkpoint import load_checkpoint
from secfed.config import load_config
from secfed.data import ClientShard
from secfed.dpo import REFUSALS, evaluate_dpo
from secfed.rundir import RunDir
from secfed.runner import FederatedRunner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("rounds", nargs="+", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = RunDir(args.run_dir)
    with tempfile.TemporaryDirectory() as scratch:
        runner = FederatedRunner(load_config(run.config), scratch)
    parts, beta = runner.parts, runner.cfg.dpo.beta
    if parts.data.pairs is None:
        raise SystemExit(f"{args.run_dir} is not a DPO run")
    test_idx = np.concatenate([s.test for s in parts.shards])
    test = [parts.data.pairs[i] for i in test_idx]
    refusal = np.array([r.strip() in REFUSALS for _, _, r in test])
    vectors = {"base": runner.initial_vector}
    for r in args.rounds:
        vectors[f"round {r}"] = load_checkpoint(run.checkpoint(r)).global_vector
    out: dict[str, dict[str, float | int]] = {}
    for name, vec in vectors.items():
        models.load_adapter_vector(parts.model, vec.astype(np.float32))
        row: dict[str, float | int] = {}
        kinds = (("refusal", refusal), ("near_miss", ~refusal), ("all", refusal | ~refusal))
        for label, mask in kinds:
            idx = test_idx[np.nonzero(mask)[0]]
            shard = ClientShard(0, np.array([], dtype=int), idx)
            data = client_test_dataset(parts, shard) if len(idx) else None
            score = evaluate_dpo(parts.model, data, beta=beta) if data is not None else None
            row[label] = round(score["preference_accuracy"], 4) if score else float("nan")
            row[f"{label}_pairs"] = len(idx)
        out[name] = row
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
