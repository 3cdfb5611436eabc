"""DP-SGD step time against a non-private step on the default job's model, CPU.

The model and data are the default job's (``examples/default.toml``), built the way the
runner builds them (:func:`secfed.assembly.build_parts`): the built-in tiny BERT (hidden
64, 2 layers) with peft LoRA r=8, alpha 16 on query/value plus the trainable classifier,
client 0's training examples tokenized to length 32 (cut to a multiple of the batch size,
so that every ``plain`` batch is full). Per batch size (``--batch-sizes``, the job's own
first), three kinds of local training run on fresh copies of that model, in an order
that alternates between repeats so that other load on a shared machine hits them alike
(one warm-up round first):

- ``plain``: the runner's non-private path, :func:`secfed.training.train_local`
  (shuffled batches, mean loss, backward, the job's optimizer);
- ``secfed``: :func:`privacy.train_private` (Poisson sampling, per-example clipping,
  noise, accounting, guards; physical batches of at most ``--physical``, by default the
  config's ``privacy.sample.max_physical_batch_size``), timed per call, setup included;
  where Poisson batches of that size would be split, also ``secfed_unsplit`` (physical
  batches of up to 4x the batch size, so a logical batch runs as one);
- ``opacus``: Opacus' own ``PrivacyEngine.make_private`` (hooks mode, Poisson sampling)
  with the same optimizer, for reference.

Reported per variant: milliseconds per optimizer step (median and minimum over repeats),
the ratio of medians and of minimums to ``plain``, and the median of the per-repeat
ratios (each private run against the ``plain`` run of the same repeat).

Usage: ``python benchmarks/bench_dpsgd.py [--steps 40] [--repeats 7] [--batch-sizes 16,32,64]
[--physical N] [--threads 1] [--no-opacus]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from privacy import ClientAccountant, train_private
from secfed import training
from secfed.assembly import build_parts, client_dataset
from secfed.config import ExperimentConfig, load_config

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "default.toml"
NOISE, CLIP = 1.0, 1.0
loss_fn = training.classification_loss


def time_plain(
    model: torch.nn.Module, data: TensorDataset, cfg: ExperimentConfig, batch: int, epochs: int
) -> float:
    start = time.perf_counter()
    stats = training.train_local(
        model, data, loss_fn=loss_fn, epochs=epochs, batch_size=batch,
        lr=cfg.federation.lr, optimizer=cfg.federation.optimizer, extra_grad=None, seed=0,
    )  # fmt: skip
    return (time.perf_counter() - start) / stats.steps


def time_secfed(
    model: torch.nn.Module, data: TensorDataset, cfg: ExperimentConfig, batch: int, epochs: int,
    physical: int,
) -> float:  # fmt: skip
    start = time.perf_counter()
    stats = train_private(
        model, data, loss_fn=loss_fn, epochs=epochs, batch_size=batch, lr=cfg.federation.lr,
        optimizer=cfg.federation.optimizer, noise_multiplier=NOISE, max_grad_norm=CLIP,
        accountant=ClientAccountant(delta=1e-5), max_physical_batch_size=physical, seed=0,
    )  # fmt: skip
    return (time.perf_counter() - start) / stats.steps


def time_opacus(
    model: torch.nn.Module, data: TensorDataset, cfg: ExperimentConfig, batch: int, epochs: int
) -> float:
    from opacus import PrivacyEngine

    params = [p for p in model.parameters() if p.requires_grad]
    opt = training.make_optimizer(params, kind=cfg.federation.optimizer, lr=cfg.federation.lr)
    gsm, dp_opt, loader = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=opt, data_loader=DataLoader(data, batch_size=batch),
        noise_multiplier=NOISE, max_grad_norm=CLIP, poisson_sampling=True,
    )  # fmt: skip
    gsm.train()
    steps = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for b in loader:
            dp_opt.zero_grad(set_to_none=True)
            loss_fn(gsm, b).mean().backward()
            dp_opt.step()
            steps += 1
    elapsed = (time.perf_counter() - start) / steps
    gsm._close()
    return elapsed


def bench_batch(
    model: torch.nn.Module, data: TensorDataset, cfg: ExperimentConfig, *, batch: int,
    steps: int, repeats: int, physical: int, opacus: bool,
) -> dict[str, Any]:  # fmt: skip
    # Whole batches only, so that plain's last batch is not smaller than the rest.
    data = TensorDataset(*(t[: len(data) // batch * batch] for t in data.tensors))
    epochs = max(1, math.ceil(steps / max(1, len(data) // batch)))
    variants: dict[str, Callable[[torch.nn.Module], float]] = {
        "plain": lambda m: time_plain(m, data, cfg, batch, epochs),
        "secfed": lambda m: time_secfed(m, data, cfg, batch, epochs, physical),
    }
    if batch + 4 * math.sqrt(batch) > physical:  # Poisson batches get split: also without
        variants["secfed_unsplit"] = lambda m: time_secfed(m, data, cfg, batch, epochs, 4 * batch)
    if opacus:
        variants["opacus"] = lambda m: time_opacus(m, data, cfg, batch, epochs)
    names = list(variants)
    runs: dict[str, list[float]] = {k: [] for k in names}
    for rep in range(repeats + 1):  # round 0 is warm-up
        order = names if rep % 2 == 0 else names[::-1]
        timings = {k: variants[k](copy.deepcopy(model)) for k in order}
        if rep:
            for k, v in timings.items():
                runs[k].append(v)
    med = {k: statistics.median(v) for k, v in runs.items()}
    best = {k: min(v) for k, v in runs.items()}
    paired = {
        k: statistics.median(a / b for a, b in zip(runs[k], runs["plain"], strict=True))
        for k in names[1:]
    }
    return {
        "batch": batch,
        "epochs": epochs,
        "examples_used": len(data),
        "steps_per_call": epochs * (len(data) // batch),
        "ms_per_step_median": {k: round(1000 * v, 3) for k, v in med.items()},
        "ms_per_step_min": {k: round(1000 * v, 3) for k, v in best.items()},
        "ratio_of_medians": {k: round(med[k] / med["plain"], 3) for k in names[1:]},
        "ratio_of_mins": {k: round(best[k] / best["plain"], 3) for k in names[1:]},
        "median_paired_ratio": {k: round(v, 3) for k, v in paired.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--steps", type=int, default=40, help="at least this many steps a call")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-sizes", default=None, help="default: the job's, 32, 64")
    parser.add_argument("--physical", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-opacus", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    cfg = load_config(args.config)
    parts = build_parts(cfg)
    data = client_dataset(parts, parts.shards[0])
    physical = args.physical or cfg.privacy.sample.max_physical_batch_size
    sizes = [cfg.federation.batch_size, 32, 64]
    if args.batch_sizes:
        sizes = [int(s) for s in args.batch_sizes.split(",")]
    trainable = sum(p.numel() for p in parts.model.parameters() if p.requires_grad)
    out: dict[str, Any] = {
        "config": args.config,
        "model": f"{parts.family} tiny ({cfg.adapter.method} {dict(cfg.adapter.options)}), "
        f"{trainable} trainable parameters",
        "seq": cfg.model.max_length,
        "examples": len(data),
        "optimizer": cfg.federation.optimizer,
        "physical": physical,
        "threads": args.threads,
        "repeats": args.repeats,
        "results": [],
    }
    for b in dict.fromkeys(sizes):
        kw = dict(batch=b, steps=args.steps, repeats=args.repeats, physical=physical)
        result = bench_batch(parts.model, data, cfg, opacus=not args.no_opacus, **kw)
        out["results"].append(result)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
