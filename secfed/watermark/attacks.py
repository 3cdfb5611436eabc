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
    verify_keys,
)

#: Seed of the attacker's fresh fine-tuning data (disjoint from the job's data seeds).
FRESH_DATA_SEED = 424_242


def _row(name: str, strength: Any, acc: float, verdicts: list[wm.Verdict]) -> dict[str, Any]:
    bit_accs = [v.bits.bit_accuracy for v in verdicts if v.bits is not None]
    return {
        "attack": name,
        "strength": strength,
        "accuracy": acc,
        "min_bit_accuracy": min(bit_accs, default=float("nan")),
        "max_p_value": max(v.p_value for v in verdicts),
        "all_marked": all(v.marked for v in verdicts),
        "keys": [v.as_dict() for v in verdicts],
    }


def _set_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = live_params(model)
    with torch.no_grad():
        for name, t in state.items():
            params[name].copy_(t)


def run_attacks(run_dir: Path, *, quick: bool = False) -> list[dict[str, Any]]:
    """Every attack at several strengths; one row per (attack, strength)."""
    cfg = load_config(run_dir / "config.toml")
    keys = [wm.load_key(p) for p in sorted((run_dir / "watermark").glob("*.key"))]
    if not keys:
        raise FileNotFoundError(f"no watermark keys under {run_dir / 'watermark'}")
    parts = build_parts(cfg)
    model = parts.model
    tensors, _ = read_adapter_dir(run_dir / "adapter")
    set_peft_model_state_dict(model, tensors)
    clean = {n: p.detach().clone() for n, p in live_params(model).items()}
    config = peft_config_dict(model)
    gen = torch.Generator().manual_seed(0)  # not-secret: simulated adversary
    rows: list[dict[str, Any]] = []

    def measure(name: str, strength: Any, state: dict[str, torch.Tensor]) -> None:
        _set_state(model, state)
        acc = training.evaluate(model, parts.test_set)["accuracy"]
        with torch.no_grad():
            anchor = wm.adapter_anchor(state, config)
        rows.append(_row(name, strength, acc, verify_keys(keys, anchor=anchor, model=model)))

    measure("none", 0, clean)
    ratios = (0.5, 0.9) if quick else (0.25, 0.5, 0.75, 0.9, 0.95)
    for ratio in ratios:
        measure("prune", ratio, attacks.magnitude_prune(clean, ratio=ratio))
    measure("int8", 8, attacks.quantize_int8(clean))
    for rel in (0.5,) if quick else (0.1, 0.5, 1.0, 2.0):
        measure("noise", rel, attacks.add_noise(clean, relative=rel, generator=gen))
    measure("refactorize", 1, attacks.refactorize(clean, generator=gen))
    rank = int(config.get("r", 0) or 0)
    for k in (max(rank // 2, 1),) if quick else tuple(range(rank - 1, 0, -max(rank // 4, 1))):
        measure("svd", k, attacks.svd_truncate(clean, rank=k))

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
    merged: Any = copy.deepcopy(model).merge_and_unload()  # type: ignore[operator]
    layout = list(dict.fromkeys(m for k in keys for m in k.layout))
    anchor = wm.merged_anchor(merged.state_dict(), read_model_state(run_dir / "base_model"), layout)
    acc = training.evaluate(merged, parts.test_set)["accuracy"]
    rows.append(_row("merge", 1, acc, verify_keys(keys, anchor=anchor, model=merged)))
    return rows


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
    ax[1].axhline(6, color="red", ls="--", label="alpha = 1e-6")
    ax[1].set_ylabel("-log10 max p")
    ax[1].legend()
    ax[2].bar(x, [r["accuracy"] for r in rows])
    ax[2].set_ylabel("task accuracy")
    ax[2].set_xticks(list(x), labels, rotation=90, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
