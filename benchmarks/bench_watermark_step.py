"""Embedding time per local step on ``examples/watermark.toml``: task step vs watermark terms.

Times, on the example's model (one thread), one step of the example's optimiser on one batch
of task data, the gradient terms of ``--keys`` 256-bit signatures
(:class:`crypto.watermark.SignEmbedder`, the example's strength and margin; uncapped, the
norm cap of the job's hook not included) and one trigger rehearsal term of ``--trigger-batch``
triggers (:class:`secfed.watermark.triggers.TriggerRehearsal`, default the example's
``trigger_batch``), each the mean of ``--repeat`` calls after one warm-up call.

Usage: ``python benchmarks/bench_watermark_step.py [--keys 3] [--trigger-batch N]
[--repeat 20]``. Prints one JSON object (milliseconds per local step).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from crypto import watermark as wm
from secfed import training
from secfed.assembly import build_parts, client_dataset
from secfed.config import load_config
from secfed.watermark.triggers import TriggerRehearsal
from secfed.watermark.verify import live_params, peft_config_dict, trigger_domain

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "watermark.toml"


def _ms(fn: Callable[[int], object], repeat: int) -> float:
    fn(0)
    t0 = time.perf_counter()
    for i in range(repeat):
        fn(i)
    return round(1e3 * (time.perf_counter() - t0) / repeat, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=3)
    ap.add_argument(
        "--trigger-batch", type=int, default=None, help="default: the example's trigger_batch"
    )
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(EXAMPLE)
    w = cfg.watermark
    trigger_batch = args.trigger_batch or w.trigger_batch
    parts = build_parts(cfg)
    model = parts.model
    params, config = live_params(model), peft_config_dict(model)
    with torch.no_grad():
        arch = wm.Architecture.of(wm.anchor_kind(config), wm.adapter_anchor(params, config))
    keys = [wm.generate_key(triggers=True) for _ in range(args.keys)]
    embedders = [wm.SignEmbedder(k, arch, strength=w.strength, margin=w.margin) for k in keys]
    domain = trigger_domain(parts.tokenizer, max(parts.data.num_labels, 2))
    rehearsal = TriggerRehearsal(keys[0], domain, batch=trigger_batch, weight=w.trigger_weight)
    data = client_dataset(parts, parts.shards[0])
    size = cfg.federation.batch_size
    batch = tuple(torch.stack(t) for t in zip(*(data[i] for i in range(size)), strict=True))
    opt = training.make_optimizer(
        list(params.values()), kind=cfg.federation.optimizer, lr=cfg.federation.lr
    )

    def task_step(_: int) -> None:
        opt.zero_grad()
        training.classification_loss(model, batch).mean().backward()
        opt.step()

    def signatures(_: int) -> None:
        for e in embedders:
            e.gradients(params, config)

    def triggers(i: int) -> None:
        rehearsal.gradients(model, params, start=i * trigger_batch)

    row = {
        "anchor_values": arch.dim,
        "capacity": wm.anchor_capacity(params, config),
        "task_step_ms": _ms(task_step, args.repeat),
        f"signature_terms_ms_{args.keys}_keys": _ms(signatures, args.repeat),
        f"trigger_term_ms_{trigger_batch}_triggers": _ms(triggers, args.repeat),
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
