"""DP-SGD step time against a non-private step: tiny BERT + LoRA, CPU.

Model: BertForSequenceClassification from a tiny config (hidden 64, 2 layers, 2 heads,
vocab 2000), sequence length 32, peft LoRA r=8 on query/value plus the trainable
classifier. Loops over the same data, alternated ``--repeats`` times (after one warm-up
round); the median and the minimum over repeats are reported (the minimum is the least
disturbed by other load on a shared machine):

- ``plain``: ordinary mini-batches of 32, mean loss, backward, SGD step;
- ``opacus``: Opacus' own PrivacyEngine.make_private (hooks mode, Poisson sampling);
- ``secfed``: :func:`privacy.train_private` (hooks, Poisson, BatchMemoryManager, guards),
  timed per call so its per-call setup is included.

Usage: ``python benchmarks/bench_dpsgd.py [--steps 40] [--repeats 5] [--threads 1]``
Prints one JSON object (per-step milliseconds and ratios to ``plain``). ``secfed`` runs
with physical batches of 64 (no splitting of the Poisson batches around 32),
``secfed_phys32`` with 32 (Poisson batches above 32 are split in two).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from privacy import ClientAccountant, classification_loss, train_private

SEQ, BATCH, VOCAB = 32, 32, 2000


def build_model() -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=256, max_position_embeddings=64,
    )  # fmt: skip
    cfg.num_labels = 2
    lora = LoraConfig(task_type="SEQ_CLS", r=8, target_modules=["query", "value"])
    return get_peft_model(BertForSequenceClassification(cfg), lora)


def loss_fn(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    ids, mask, labels = batch
    return classification_loss(model(input_ids=ids, attention_mask=mask).logits, labels)


def time_plain(model: torch.nn.Module, data: TensorDataset, steps: int) -> float:
    loader = DataLoader(data, batch_size=BATCH, shuffle=True)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    start = time.perf_counter()
    for batch in loader:
        opt.zero_grad(set_to_none=True)
        loss_fn(model, batch).mean().backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def time_opacus(model: torch.nn.Module, data: TensorDataset, steps: int) -> float:
    from opacus import PrivacyEngine

    engine = PrivacyEngine(accountant="rdp")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    gsm, dp_opt, loader = engine.make_private(
        module=model, optimizer=opt, data_loader=DataLoader(data, batch_size=BATCH),
        noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=True,
    )  # fmt: skip
    gsm.train()
    start = time.perf_counter()
    for batch in loader:
        dp_opt.zero_grad(set_to_none=True)
        loss_fn(gsm, batch).mean().backward()
        dp_opt.step()
    elapsed = (time.perf_counter() - start) / steps
    gsm._close()
    return elapsed


def time_secfed(model: torch.nn.Module, data: TensorDataset, steps: int, physical: int) -> float:
    acc = ClientAccountant(delta=1e-5)
    start = time.perf_counter()
    stats = train_private(
        model, data, loss_fn=loss_fn, epochs=1, batch_size=BATCH, lr=0.01,
        noise_multiplier=1.0, max_grad_norm=1.0, accountant=acc,
        max_physical_batch_size=physical, seed=0,
    )  # fmt: skip
    assert stats.steps == steps
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    n = BATCH * args.steps
    data = TensorDataset(
        torch.randint(1, VOCAB, (n, SEQ)),
        torch.ones(n, SEQ, dtype=torch.long),
        torch.randint(0, 2, (n,)),
    )
    runs: dict[str, list[float]] = {"plain": [], "opacus": [], "secfed": [], "secfed_phys32": []}
    for rep in range(args.repeats + 1):  # first round is warm-up
        timings = {
            "plain": time_plain(build_model(), data, args.steps),
            "opacus": time_opacus(build_model(), data, args.steps),
            "secfed": time_secfed(build_model(), data, args.steps, physical=2 * BATCH),
            "secfed_phys32": time_secfed(build_model(), data, args.steps, physical=BATCH),
        }
        if rep:
            for k, v in timings.items():
                runs[k].append(v)
    med = {k: statistics.median(v) for k, v in runs.items()}
    best = {k: min(v) for k, v in runs.items()}
    out = {
        "model": "BERT hidden 64, 2 layers, 2 heads, vocab 2000; LoRA r=8 query/value + classifier",
        "seq": SEQ,
        "batch": BATCH,
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": args.threads,
        "ms_per_step_median": {k: round(1000 * v, 3) for k, v in med.items()},
        "ratio_to_plain_median": {k: round(v / med["plain"], 3) for k, v in med.items()},
        "ms_per_step_min": {k: round(1000 * v, 3) for k, v in best.items()},
        "ratio_to_plain_min": {k: round(v / best["plain"], 3) for k, v in best.items()},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
