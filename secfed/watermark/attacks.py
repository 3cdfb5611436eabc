"""Robustness suite for adapter watermarks (``secfed watermark attack``).

Starting from a finished run's final adapter, each attack produces a modified model; for
each we record task accuracy on the run's test split and every owner key's bit accuracy
and p-value (white-box anchor; trigger tests too when the keys carry triggers).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from peft import set_peft_model_state_dict

from crypto import watermark as wm
from crypto.watermark import attacks

from .. import builtin_task, training
from ..assembly import build_parts, encode
from ..config import load_config
from ..data import TextDataset
from .verify import (
    live_params,
    peft_config_dict,
    read_adapter_dir,
    read_model_state,
    trigger_domain,
    verify_keys,
)

ATTACKS = ("none", "prune", "int8", "noise", "refactorize", "svd", "finetune", "merge")

#: Seed of the attacker's fresh fine-tuning data (disjoint from the job's data seeds).
FRESH_DATA_SEED = 424_242


def _row(name: str, strength: Any, acc: float, verdicts: list[wm.Verdict]) -> dict[str, Any]:
    bits = [v.bits for v in verdicts if v.bits is not None]
    trig = [v.trigger for v in verdicts if v.trigger is not None]
    return {
        "attack": name,
        "strength": strength,
        "accuracy": acc,
        "min_bit_accuracy": min((b.bit_accuracy for b in bits), default=float("nan")),
        "max_bit_p_value": max((b.p_value for b in bits), default=float("nan")),
        "triggers": wm.SCHEME.triggers,
        "min_trigger_hits": min((t.hits for t in trig), default=None),
        "max_trigger_p_value": max((t.p_value for t in trig), default=None),
        "max_trigger_rank_p_value": max(
            (t.rank_p_value for t in trig if t.rank_p_value is not None), default=None
        ),
        "max_p_value": max(v.p_value for v in verdicts),
        "all_marked": all(v.marked for v in verdicts),
        "keys": [v.as_dict() for v in verdicts],
    }


def _set_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = live_params(model)
    with torch.no_grad():
        for name, t in state.items():
            params[name].copy_(t)


def run_attacks(
    run_dir: Path, *, quick: bool = False, only: list[str] | None = None
) -> list[dict[str, Any]]:
    """The chosen attacks (default: all) at several strengths; one row per setting."""
    todo = set(only or ATTACKS)
    cfg = load_config(run_dir / "config.toml")
    keys = [wm.load_key(p) for p in sorted((run_dir / "watermark").glob("*.key"))]
    if not keys:
        raise FileNotFoundError(
            f"no watermark keys under {run_dir / 'watermark'}: attack the run directory of a "
            "job run with [watermark] enabled = true"
        )
    parts = build_parts(cfg)
    model = parts.model
    tensors, _ = read_adapter_dir(run_dir / "adapter")
    set_peft_model_state_dict(model, tensors)
    clean = {n: p.detach().clone() for n, p in live_params(model).items()}
    config = peft_config_dict(model)
    kind = wm.anchor_kind(config)
    domain = trigger_domain(parts.tokenizer, int(model.config.num_labels or 2))
    gen = torch.Generator().manual_seed(0)  # not-secret: simulated adversary
    rows: list[dict[str, Any]] = []

    def measure(name: str, strength: Any, state: dict[str, torch.Tensor]) -> None:
        _set_state(model, state)
        acc = training.evaluate(model, parts.test_set)["accuracy"]
        with torch.no_grad():
            anchor = wm.adapter_anchor(state, config)
        verdicts = verify_keys(keys, anchor=anchor, kind=kind, model=model, domain=domain)
        rows.append(_row(name, strength, acc, verdicts))

    if "none" in todo:
        measure("none", 0, clean)
    if "prune" in todo:
        for ratio in (0.5, 0.9) if quick else (0.25, 0.5, 0.75, 0.9, 0.95):
            measure("prune", ratio, attacks.magnitude_prune(clean, ratio=ratio))
    if "int8" in todo:
        measure("int8", 8, attacks.quantize_int8(clean))
    if "noise" in todo:
        for rel in (0.5,) if quick else (0.1, 0.5, 1.0, 2.0):
            measure("noise", rel, attacks.add_noise(clean, relative=rel, generator=gen))
    if "refactorize" in todo:
        measure("refactorize", 1, attacks.refactorize(clean, generator=gen))
    rank = int(config.get("r", 0) or 0)
    if "svd" in todo:
        for k in (max(rank // 2, 1),) if quick else tuple(range(rank - 1, 0, -max(rank // 4, 1))):
            measure("svd", k, attacks.svd_truncate(clean, rank=k))
    if "finetune" in todo:
        _finetune(model, parts, cfg, clean, quick=quick, measure=measure)
    if "merge" in todo:
        _set_state(model, clean)
        merged: Any = copy.deepcopy(model).merge_and_unload()  # type: ignore[operator]
        anchor = wm.merged_anchor(merged.state_dict(), read_model_state(run_dir / "base_model"))
        acc = training.evaluate(merged, parts.test_set)["accuracy"]
        verdicts = verify_keys(keys, anchor=anchor, kind="lora", model=merged, domain=domain)
        rows.append(_row("merge", 1, acc, verdicts))
    return rows


def _finetune(
    model: Any, parts: Any, cfg: Any, clean: dict[str, torch.Tensor], *, quick: bool, measure: Any
) -> None:
    """The attacker fine-tunes on fresh task data (disjoint seed) at several lr/epochs."""
    texts, labels = builtin_task.generate(num_examples=400 if quick else 800, seed=FRESH_DATA_SEED)
    fresh = encode(parts.tokenizer, TextDataset(texts, labels), max_length=cfg.model.max_length)
    plans = [(1e-3, 1)] if quick else [(1e-3, 1), (5e-3, 1), (5e-3, 3), (2e-2, 3)]
    for lr, epochs in plans:
        _set_state(model, clean)
        training.train_local(
            model,
            fresh,
            loss_fn=_loss,
            epochs=epochs,
            batch_size=cfg.federation.batch_size,
            lr=lr,
            optimizer="adamw",
            extra_grad=None,
            seed=1,
        )
        tuned = {n: p.detach().clone() for n, p in live_params(model).items()}
        measure("finetune", f"lr={lr:g},epochs={epochs}", tuned)
    _set_state(model, clean)


def _loss(model: Any, batch: tuple[Any, ...]) -> Any:
    input_ids, attention_mask, labels = batch
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return torch.nn.functional.cross_entropy(logits, labels, reduction="none")


def plot_results(rows: list[dict[str, Any]], path: Path) -> None:
    """Bit accuracy, -log10 p and task accuracy per attack setting (PNG)."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['attack']}\n{r['strength']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(3, 1, figsize=(max(8, len(rows) * 0.6), 9), sharex=True)
    ax[0].bar(x, [r["min_bit_accuracy"] for r in rows])
    ax[0].axhline(0.5, color="grey", ls="--")
    ax[0].set_ylabel("min bit accuracy")
    ax[1].bar(x, [-math.log10(max(r["max_p_value"], 1e-300)) for r in rows])
    ax[1].axhline(64 * math.log10(2), color="red", ls="--", label="2^-64 (security level)")
    ax[1].set_ylabel("-log10 max p (Holm)")
    ax[1].legend()
    ax[2].bar(x, [r["accuracy"] for r in rows])
    ax[2].set_ylabel("task accuracy")
    ax[2].set_xticks(list(x), labels, rotation=90, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
