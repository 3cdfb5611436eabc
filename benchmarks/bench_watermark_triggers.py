"""What trigger sets cost and how long they last: a trade-off sweep on the watermark example.

A central-training proxy of ``examples/watermark.toml`` (same data, base, adapter, lr and
batch size; the pooled training splits of all clients, ``--epochs`` epochs, no FedAvg and
no signatures), so that one setting takes a minute, not a federated job. For each setting
it embeds one key's triggers through the real rehearsal code
(:class:`secfed.watermark.triggers.TriggerRehearsal`, or a hinge variant), then runs the
fine-tuning attack of ``secfed watermark attack`` (fresh data, lr/epochs 1e-3 x1, 5e-3 x1,
5e-3 x3, 2e-2 x3) and reports, per setting: task accuracy (and its cost against the same
proxy without triggers), trigger hits against the hits needed at 2^-64 (exact binomial,
:func:`crypto.watermark.min_matches`), the hits after each fine-tuning, and the trigger
term's time per step.

Settings (``--settings``, comma-separated ``KIND:COUNT:WEIGHT``): ``seq`` = the scheme's
random token sequences with random labels (the first COUNT of the key's set; COUNT = 256
is ``secfed-wm/3`` itself); ``hinge`` = the same with a margin-3 hinge on the logit gap
instead of cross-entropy; ``rule`` = a keyed-token rule (COUNT secret tokens each with a
random label, fresh random filler around three copies of the token every step, so the
model learns a rule rather than a list; verified by majority vote over 4 fixed triggers
per token, which keeps an exact binomial null over the tokens). ``lookahead`` = the
scheme's sequences, each trigger gradient taken at the weights ``--lookahead`` sign-steps of lr 5e-3
along the task gradient would reach (first-order meta-learning against fine-tuning).
``none`` = no triggers.

Usage: ``python benchmarks/bench_watermark_triggers.py [--settings ...] [--json F]``.
The key is fixed (seed below, not secret) so that settings are comparable.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from crypto import watermark as wm
from secfed import training
from secfed.assembly import build_parts
from secfed.config import load_config
from secfed.watermark import attacks
from secfed.watermark.triggers import TriggerRehearsal
from secfed.watermark.verify import live_params, trigger_domain

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "watermark.toml"
KEY = wm.WatermarkKey(seed=bytes(range(32)), triggers=True)  # fixed, not secret: a benchmark
DEFAULT = (
    "none:0:0,seq:256:0.6,seq:256:1.0,seq:128:1.0,hinge:256:0.6,rule:64:1.0,rule:128:1.0,"
    "lookahead:256:0.6,lookahead:256:1.0"
)
VOTES = 4  # fixed verification triggers per secret token (rule)
LOOKAHEAD_LR = 5e-3  # the simulated attacker's step (lookahead)


class _Rule:
    """Secret tokens with random labels; triggers = random filler + 3 copies of one token."""

    def __init__(self, count: int, domain: wm.TriggerDomain, rng: np.random.Generator):
        alphabet = domain.alphabet
        self.cues = rng.choice(alphabet, size=count, replace=False)
        self.labels = rng.integers(0, domain.num_labels, size=count)
        self.filler = np.setdiff1d(alphabet, self.cues)
        self.prefix = np.asarray(domain.prefix, np.int64)
        self.count = count
        groups = np.repeat(np.arange(count), VOTES)
        self.test_ids, _ = self.make(groups, np.random.default_rng(7))

    def make(self, groups: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, Any]:
        body_len = wm.SCHEME.trigger_length - len(self.prefix)
        body = self.filler[rng.integers(0, len(self.filler), size=(len(groups), body_len))]
        for row, g in enumerate(groups):
            body[row, rng.choice(body_len, size=3, replace=False)] = self.cues[g]
        prefix = np.broadcast_to(self.prefix, (len(groups), len(self.prefix)))
        ids = np.concatenate([prefix, body], 1)
        return torch.from_numpy(ids).long(), torch.from_numpy(self.labels[groups]).long()


def _hinge_grads(model: Any, params: dict[str, Any], ids: Any, labels: Any, weight: float) -> Any:
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    true = logits.gather(1, labels[:, None])[:, 0]
    other = logits.masked_fill(torch.nn.functional.one_hot(labels, logits.shape[1]).bool(), -1e9)
    loss = weight * torch.relu(3.0 - (true - other.max(1).values)).mean()
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: g for n, g in zip(params, grads, strict=True) if g is not None}


def run_setting(
    kind: str, count: int, weight: float, *, epochs: int, lookahead: int
) -> dict[str, Any]:
    """Embed one setting from the pre-trained base, then attack it by fine-tuning."""
    cfg = load_config(EXAMPLE)
    parts = build_parts(cfg)
    model = parts.model
    domain = trigger_domain(parts.tokenizer, max(parts.data.num_labels, 2))
    ids = torch.from_numpy(wm.trigger_token_ids(KEY, domain))[:count]
    labels = torch.from_numpy(wm.trigger_labels(KEY, domain))[:count]
    rehearsal = TriggerRehearsal(KEY, domain, batch=32, weight=max(weight, 1e-9))
    rehearsal.ids, rehearsal.labels = ids, labels
    rule = _Rule(count, domain, np.random.default_rng(11)) if kind == "rule" else None
    rng = np.random.default_rng(1)  # not-secret: fresh rule triggers for training
    state = {"cursor": 0, "seconds": 0.0, "steps": 0}

    def hook(m: torch.nn.Module) -> None:
        t0 = time.perf_counter()
        params = live_params(m)
        if kind == "seq":
            grads, state["cursor"] = rehearsal.gradients(m, params, start=state["cursor"])
        elif kind == "lookahead":
            # First-order meta-learning against the fine-tuning attack: the trigger gradient
            # is taken where ``lookahead`` Adam-like steps along the task gradient (held in
            # .grad) would move the weights, and applied at the current weights.
            saved = {n: p.detach().clone() for n, p in params.items()}
            with torch.no_grad():
                for p in params.values():
                    if p.grad is not None:
                        p.sub_(LOOKAHEAD_LR * lookahead * torch.sign(p.grad))
            grads, state["cursor"] = rehearsal.gradients(m, params, start=state["cursor"])
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved[n])
        elif kind == "hinge":
            idx = (torch.arange(32) + state["cursor"]) % count
            state["cursor"] = int(idx[-1]) + 1
            grads = _hinge_grads(m, params, ids[idx], labels[idx], weight)
        else:
            assert rule is not None
            batch_ids, batch_labels = rule.make(rng.integers(0, count, size=32), rng)
            loss = (
                weight
                * training.classification_loss(
                    m, (batch_ids, torch.ones_like(batch_ids), batch_labels)
                ).mean()
            )
            found = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            grads = {n: g for n, g in zip(params, found, strict=True) if g is not None}
        wm.add_grads(params, grads)
        state["seconds"] += time.perf_counter() - t0
        state["steps"] += 1

    @torch.no_grad()
    def hits() -> int | None:
        if kind == "none":
            return None
        model.eval()
        if rule is not None:
            pred = model(input_ids=rule.test_ids, attention_mask=torch.ones_like(rule.test_ids))
            votes = pred.logits.argmax(-1).reshape(count, VOTES).numpy()
            # plurality vote per token, ties to the lowest class: a function of the inputs only
            vote = np.array([np.bincount(v, minlength=domain.num_labels).argmax() for v in votes])
            model.train()
            return int((vote == rule.labels).sum())
        pred = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.argmax(-1)
        model.train()
        return int((pred == labels).sum())

    pooled = torch.cat([torch.as_tensor(s.train) for s in parts.shards])
    train = TensorDataset(*(t[pooled] for t in parts.encoded.tensors))
    t0 = time.perf_counter()
    training.train_local(
        model,
        train,
        loss_fn=training.classification_loss,
        epochs=epochs,
        batch_size=cfg.federation.batch_size,
        lr=cfg.federation.lr,
        optimizer=cfg.federation.optimizer,
        extra_grad=None if kind == "none" else hook,
        seed=cfg.seed,
    )
    row: dict[str, Any] = {
        "kind": kind,
        "triggers": count,
        "weight": weight,
        "lookahead_steps": lookahead if kind == "lookahead" else None,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "trigger_ms_per_step": round(1e3 * state["seconds"] / max(state["steps"], 1), 1),
        "accuracy": training.evaluate(model, parts.test_set)["accuracy"],
        "hits": hits(),
        "needed": wm.min_matches(trials=count, chance=1 / domain.num_labels) if count else None,
        "finetune": {},
    }
    clean = {n: p.detach().clone() for n, p in live_params(model).items()}

    def measure(_name: str, strength: str, tuned: dict[str, torch.Tensor]) -> None:
        attacks._set_state(model, tuned)
        acc = training.evaluate(model, parts.test_set)["accuracy"]
        row["finetune"][strength] = {"accuracy": acc, "hits": hits()}

    attacks._finetune(model, parts, cfg, clean, quick=False, measure=measure)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=DEFAULT)
    ap.add_argument("--epochs", type=int, default=3, help="epochs over the pooled splits")
    ap.add_argument("--lookahead", type=int, default=20, help="sign-steps of the lookahead")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for spec in args.settings.split(","):
        kind, count, weight = spec.split(":")
        if kind not in ("none", "seq", "hinge", "rule", "lookahead"):
            raise SystemExit(
                f"unknown setting kind {kind!r}; use none, seq, hinge, rule or lookahead"
            )
        rows.append(
            run_setting(
                kind, int(count), float(weight), epochs=args.epochs, lookahead=args.lookahead
            )
        )
        print(json.dumps(rows[-1]), flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
