"""What trigger sets cost and how long they last: a trade-off sweep on the watermark example.

A central-training proxy of ``examples/watermark.toml`` (same data, base, adapter, lr and
batch size; the pooled training splits of all clients, ``--epochs`` epochs, no FedAvg and
no signatures), so that one setting takes a minute, not a federated job. For each setting
it embeds one key's triggers through the real rehearsal code
(:class:`secfed.watermark.triggers.TriggerRehearsal`, or a hinge variant), then runs the
fine-tuning attack of ``secfed watermark attack`` (fresh data, lr/epochs 1e-3 x1, 5e-3 x1,
5e-3 x3, 2e-2 x3) and reports, per setting: task accuracy (its cost is read against the
``none`` row, the same proxy without triggers), trigger hits against the hits needed at
2^-64 (exact binomial, :func:`crypto.watermark.min_matches`), the hits after each
fine-tuning, and the trigger term's time per step.

Settings (``--settings``, comma-separated ``KIND:COUNT:WEIGHT``): ``seq`` = the scheme's
random token sequences with random labels (the first COUNT of the key's set; COUNT = 256
is the key's scheme itself); ``hinge`` = the same with a margin-3 hinge on the logit gap
instead of cross-entropy; ``rule`` = a keyed-token rule (COUNT secret tokens each with a
random label, fresh random filler around three copies of the token every step, so the
model learns a rule rather than a list; verified by majority vote over 4 fixed triggers
per token, which keeps an exact binomial null over the tokens). ``lookahead`` = the
scheme's sequences, each trigger gradient taken at the weights ``--lookahead`` sign-steps of lr 5e-3
along the task gradient would reach (first-order meta-learning against fine-tuning).
``noisy`` = the scheme's sequences, each trigger gradient taken at the weights plus
Gaussian noise of ``--noise`` x each LoRA tensor's RMS (training for a flat optimum).
``headonly`` = the scheme's sequences, trigger gradient applied to the classifier head
only. ``none`` = no triggers.

Design-space knobs (the scheme itself is fixed; these only explore it): ``--epochs``
(how long the owner embeds: the proxy's 3 pooled epochs are about the example's
old 5 rounds x 2 local epochs of steps; 30 pooled epochs about 60 such rounds, what
the example now runs),
``--trigger-length`` (tokens per trigger, the [CLS] prefix included; ``secfed-wm/4``
uses 6, ``/3`` used 16), ``--key-seeds`` (several fixed keys, to see the spread). Each row
also gives ``bits`` = -log2 of the exact binomial p-value of the hits and ``rank_bits`` =
-log2 of the keyed rank test's p-value (:func:`crypto.watermark.keyed_rank_test`, the
score-based trigger test verification runs too); 64 = the 2^-64 level.

Usage: ``python benchmarks/bench_watermark_triggers.py [--settings ...] [--json F]``.
Keys are fixed (seeds below, not secret) so that settings are comparable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
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
DEFAULT = (
    "none:0:0,seq:256:0.6,seq:256:1.0,seq:128:1.0,hinge:256:0.6,rule:64:1.0,rule:128:1.0,"
    "lookahead:256:0.6,lookahead:256:1.0"
)
KINDS = ("none", "seq", "hinge", "rule", "lookahead", "noisy", "headonly")
VOTES = 4  # fixed verification triggers per secret token (rule)
LOOKAHEAD_LR = 5e-3  # the simulated attacker's step (lookahead)


class _Rule:
    """Secret tokens with random labels; triggers = random filler + 3 copies of one token."""

    def __init__(
        self, count: int, domain: wm.TriggerDomain, rng: np.random.Generator, *, length: int
    ):
        alphabet = domain.alphabet
        self.cues = rng.choice(alphabet, size=count, replace=False)
        self.labels = rng.integers(0, domain.num_labels, size=count)
        self.filler = np.setdiff1d(alphabet, self.cues)
        self.prefix = np.asarray(domain.prefix, np.int64)
        self.length = length
        groups = np.repeat(np.arange(count), VOTES)
        self.test_ids, _ = self.make(groups, np.random.default_rng(7))

    def make(self, groups: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, Any]:
        body_len = self.length - len(self.prefix)
        body = self.filler[rng.integers(0, len(self.filler), size=(len(groups), body_len))]
        for row, g in enumerate(groups):
            body[row, rng.choice(body_len, size=3, replace=False)] = self.cues[g]
        prefix = np.broadcast_to(self.prefix, (len(groups), len(self.prefix)))
        ids = np.concatenate([prefix, body], 1)
        return torch.from_numpy(ids).long(), torch.from_numpy(self.labels[groups]).long()


def _key(index: int, scheme: str = wm.SCHEME.name) -> wm.WatermarkKey:
    """Fixed, not secret benchmark key number ``index`` (key 0 is the earlier fixed key);
    rows in ``docs/watermark/triggers.json`` before ``secfed-wm/4`` used ``/3`` keys."""
    seed = bytes((i + index) % 256 for i in range(32))
    return wm.WatermarkKey(seed=seed, triggers=True, scheme=scheme)


def _bits(hits: int | None, count: int, chance: float) -> float | None:
    """-log2 of the exact binomial p-value of ``hits`` (64 = the scheme's 2^-64 level)."""
    if hits is None:
        return None
    p = wm.binomial_p_value(matches=hits, trials=count, chance=chance)
    return round(-math.log2(p), 1) if p > 0 else math.inf


def _noisy_grads(
    rehearsal: TriggerRehearsal, m: Any, params: dict[str, Any], start: int, noise: float
) -> tuple[dict[str, Any], int]:
    """Trigger gradients at the weights plus relative Gaussian noise on the LoRA tensors."""
    saved = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for n, p in params.items():
            if "classifier" not in n:
                p.add_(torch.randn_like(p) * noise * p.pow(2).mean().sqrt())
    out = rehearsal.gradients(m, params, start=start)
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n])
    return out


def _hinge_grads(model: Any, params: dict[str, Any], ids: Any, labels: Any, weight: float) -> Any:
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    true = logits.gather(1, labels[:, None])[:, 0]
    other = logits.masked_fill(torch.nn.functional.one_hot(labels, logits.shape[1]).bool(), -1e9)
    loss = weight * torch.relu(3.0 - (true - other.max(1).values)).mean()
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: g for n, g in zip(params, grads, strict=True) if g is not None}


@dataclass
class Proxy:
    """The example's config, parts and pooled training split, built once per process; each
    setting starts from ``initial``, the adapter as built (so settings stay comparable)."""

    cfg: Any
    parts: Any
    domain: wm.TriggerDomain
    train: TensorDataset
    initial: dict[str, torch.Tensor]

    @classmethod
    def build(cls) -> Proxy:
        cfg = load_config(EXAMPLE)
        parts = build_parts(cfg)
        domain = trigger_domain(parts.tokenizer, max(parts.data.num_labels, 2))
        pooled = torch.cat([torch.as_tensor(s.train) for s in parts.shards])
        train = TensorDataset(*(t[pooled] for t in parts.encoded.tensors))
        initial = {n: p.detach().clone() for n, p in live_params(parts.model).items()}
        return cls(cfg, parts, domain, train, initial)


def run_setting(
    proxy: Proxy,
    kind: str,
    count: int,
    weight: float,
    *,
    epochs: int,
    lookahead: int,
    length: int = wm.SCHEME.trigger_length,
    key_index: int = 0,
    noise: float = 0.4,
    scheme: str = wm.SCHEME.name,
    batch: int = 32,
) -> dict[str, Any]:
    """Embed one setting from the pre-trained base, then attack it by fine-tuning."""
    cfg, parts, domain, train = proxy.cfg, proxy.parts, proxy.domain, proxy.train
    model = parts.model
    attacks._set_state(model, proxy.initial)
    key = _key(key_index, scheme)
    sizes = dataclasses.replace(key.sizes, triggers=max(count, 1), trigger_length=length)
    ids = torch.from_numpy(wm.trigger_token_ids(key, domain, scheme=sizes))
    labels = torch.from_numpy(wm.trigger_labels(key, domain, scheme=sizes))
    rehearsal = TriggerRehearsal(key, domain, batch=batch, weight=max(weight, 1e-9))
    rehearsal.ids, rehearsal.labels = ids, labels
    rule = (
        _Rule(count, domain, np.random.default_rng(11), length=length) if kind == "rule" else None
    )
    rng = np.random.default_rng(1)  # not-secret: fresh rule triggers for training
    state = {"cursor": 0, "seconds": 0.0, "steps": 0}

    def hook(m: torch.nn.Module) -> None:
        t0 = time.perf_counter()
        params = live_params(m)
        if kind in ("seq", "headonly"):
            grads, state["cursor"] = rehearsal.gradients(m, params, start=state["cursor"])
            if kind == "headonly":
                grads = {n: g for n, g in grads.items() if "classifier" in n}
        elif kind == "noisy":
            grads, state["cursor"] = _noisy_grads(rehearsal, m, params, state["cursor"], noise)
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
            idx = (torch.arange(batch) + state["cursor"]) % count
            state["cursor"] = int(idx[-1]) + 1
            grads = _hinge_grads(m, params, ids[idx], labels[idx], weight)
        else:
            assert rule is not None
            batch_ids, batch_labels = rule.make(rng.integers(0, count, size=batch), rng)
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
    def logits_on(inputs: torch.Tensor) -> torch.Tensor:
        model.eval()
        out = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits
        model.train()
        return out.double()

    def hits() -> int | None:
        if kind == "none":
            return None
        if rule is not None:
            votes = logits_on(rule.test_ids).argmax(-1).reshape(count, VOTES).numpy()
            # plurality vote per token, ties to the lowest class: a function of the inputs only
            vote = np.array([np.bincount(v, minlength=domain.num_labels).argmax() for v in votes])
            return int((vote == rule.labels).sum())
        return int((logits_on(ids).argmax(-1) == labels).sum())

    def rank_bits() -> float | None:
        """-log2 of the keyed rank test's p-value on the triggers' logits (not for rule)."""
        if kind in ("none", "rule"):
            return None
        p = wm.keyed_rank_test(logits_on(ids).numpy(), labels.numpy()).p_value
        return round(-math.log2(p), 1)

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
    chance = 1 / domain.num_labels
    row: dict[str, Any] = {
        "kind": kind,
        "triggers": count,
        "weight": weight,
        "epochs": epochs,
        "trigger_length": length,
        "key": key_index,
        "scheme": scheme,
        "trigger_batch": batch,
        "lookahead_steps": lookahead if kind == "lookahead" else None,
        "noise": noise if kind == "noisy" else None,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "trigger_ms_per_step": round(1e3 * state["seconds"] / max(state["steps"], 1), 1),
        "accuracy": training.evaluate(model, parts.test_set)["accuracy"],
        "hits": hits(),
        "needed": wm.min_matches(trials=count, chance=chance) if count else None,
        "finetune": {},
    }
    row["bits"] = _bits(row["hits"], count, chance)
    row["rank_bits"] = rank_bits()
    clean = {n: p.detach().clone() for n, p in live_params(model).items()}

    def measure(_name: str, strength: str, tuned: dict[str, torch.Tensor]) -> None:
        attacks._set_state(model, tuned)
        acc = training.evaluate(model, parts.test_set)["accuracy"]
        found = hits()
        row["finetune"][strength] = {
            "accuracy": acc,
            "hits": found,
            "bits": _bits(found, count, chance),
            "rank_bits": rank_bits(),
            **_where(tuned),
        }

    def _where(tuned: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Which part the fine-tuning erased: hits with only the head, or only the LoRA
        factors, fine-tuned (the other part as embedded), and how far the factors moved."""
        out: dict[str, Any] = {}
        for part, take in (("head_tuned_only", "classifier"), ("lora_tuned_only", "lora_")):
            attacks._set_state(model, {n: (t if take in n else clean[n]) for n, t in tuned.items()})
            out[f"hits_{part}"] = hits()
        moved = [(tuned[n] - clean[n]).norm() / clean[n].norm() for n in tuned if "lora_" in n]
        out["lora_relative_change"] = round(float(torch.stack(moved).mean()), 3)
        return out

    attacks._finetune(model, parts, cfg, clean, quick=False, measure=measure)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=DEFAULT)
    ap.add_argument("--epochs", type=int, default=3, help="epochs over the pooled splits")
    ap.add_argument("--lookahead", type=int, default=20, help="sign-steps of the lookahead")
    ap.add_argument("--noise", type=float, default=0.4, help="relative weight noise (noisy)")
    ap.add_argument(
        "--trigger-length", type=int, default=wm.SCHEME.trigger_length,
        help="tokens per trigger, [CLS] included (design space; the scheme uses 6)",
    )  # fmt: skip
    ap.add_argument("--key-seeds", default="0", help="comma-separated fixed benchmark keys")
    ap.add_argument(
        "--scheme", default=wm.SCHEME.name, choices=sorted(wm.SCHEMES),
        help="the benchmark keys' scheme (derivation domain; rows before /4 used /3)",
    )  # fmt: skip
    ap.add_argument(
        "--trigger-batch", type=int, default=32,
        help="triggers per step (rows before secfed-wm/4 used 32; the example now uses 64)",
    )  # fmt: skip
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    proxy = Proxy.build()
    for spec in args.settings.split(","):
        kind, count, weight = spec.split(":")
        if kind not in KINDS:
            raise SystemExit(f"unknown setting kind {kind!r}; use one of {', '.join(KINDS)}")
        for key_index in (int(k) for k in args.key_seeds.split(",")):
            row = run_setting(
                proxy, kind, int(count), float(weight), epochs=args.epochs,
                lookahead=args.lookahead, length=args.trigger_length,
                key_index=key_index, noise=args.noise, scheme=args.scheme,
                batch=args.trigger_batch,
            )  # fmt: skip
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
