"""Verifying watermark keys against a live model, a saved adapter or a merged model.

Glue between :mod:`crypto.watermark` (keys, anchors, statistics) and model files:
white-box checks read only tensors (an adapter directory, or a merged model and its
base); trigger checks need query access, so they run the model on the key's triggers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from crypto import watermark as wm

from ..errors import SecfedError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class WatermarkVerifyError(SecfedError):
    """Files needed for verification are missing or inconsistent."""


def live_params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Trainable parameters of a (possibly Opacus-wrapped) peft model, by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def peft_config_dict(model: Any) -> dict[str, Any]:
    """The active adapter's peft config as a plain dict."""
    inner = getattr(model, "_module", model)
    config = inner.peft_config[getattr(inner, "active_adapter", "default")]
    return dict(config.to_dict())


def read_adapter_dir(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Adapter tensors and ``adapter_config.json`` of a peft adapter directory."""
    weights, cfg = path / ADAPTER_WEIGHTS, path / ADAPTER_CONFIG
    if not weights.is_file() or not cfg.is_file():
        raise WatermarkVerifyError(
            f"{path} is not a peft adapter directory (needs {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG})"
        )
    return load_file(str(weights)), json.loads(cfg.read_text())


def read_model_state(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a saved transformers model directory (safetensors shards)."""
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise WatermarkVerifyError(f"no safetensors weights under {path}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def trigger_domain(tokenizer: Any, num_labels: int) -> wm.TriggerDomain:
    """The trigger domain of a base model: its tokenizer's vocabulary and specials, classes."""
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    return wm.TriggerDomain(
        vocab_size=len(tokenizer),
        special_ids=tuple(int(i) for i in tokenizer.all_special_ids),
        prefix=() if first is None else (int(first),),
        num_labels=int(num_labels),
    )


@torch.no_grad()
def trigger_logits(
    model: torch.nn.Module, key: wm.WatermarkKey, domain: wm.TriggerDomain
) -> torch.Tensor:
    """The model's logits ``[triggers, classes]`` on the key's triggers (eval mode)."""
    ids = torch.from_numpy(wm.trigger_token_ids(key, domain))
    was_training = model.training
    model.eval()
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    model.train(was_training)
    return logits.detach().double()


def trigger_test(
    model: torch.nn.Module, key: wm.WatermarkKey, domain: wm.TriggerDomain
) -> wm.TriggerTest:
    """Both trigger statistics of one key: hits (labels only) and the keyed rank test."""
    logits = trigger_logits(model, key, domain).numpy()
    labels = wm.trigger_labels(key, domain)
    return wm.trigger_test(
        hits=int((logits.argmax(-1) == labels).sum()),
        triggers=len(labels),
        num_labels=domain.num_labels,
        rank=wm.keyed_rank_test(logits, labels),
    )


def verify_keys(
    keys: Sequence[wm.WatermarkKey],
    *,
    anchor: Mapping[str, torch.Tensor],
    kind: str,
    model: torch.nn.Module | None = None,
    domain: wm.TriggerDomain | None = None,
    skip_triggers: bool = False,
    alpha: float = wm.DEFAULT_ALPHA,
) -> list[wm.Verdict]:
    """Bit tests on ``anchor`` and, for trigger keys, trigger tests on ``model``; Holm.

    The architecture is read from ``anchor`` itself. A key whose trigger set was embedded
    needs ``model`` and ``domain`` (the base model's) unless ``skip_triggers`` says so.
    """
    arch = wm.Architecture.of(kind, anchor)
    bit_tests: list[wm.BitTest | None] = []
    trig_tests: list[wm.TriggerTest | None] = []
    for key in keys:
        bit_tests.append(wm.verify_bits(key, anchor, arch))
        if not key.triggers or skip_triggers:
            trig_tests.append(None)
            continue
        if model is None or domain is None:
            raise WatermarkVerifyError(
                f"key of owner {key.owner} has a trigger set, which needs the base model "
                "(--base DIR, or the run's base_model/ beside the adapter); pass "
                "--no-triggers to test the signature only"
            )
        trig_tests.append(trigger_test(model, key, domain))
    return wm.decide([k.owner for k in keys], bit_tests, trig_tests, alpha=alpha)


def model_anchor(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The anchor of a live peft model (detached)."""
    with torch.no_grad():
        return {
            k: v.detach()
            for k, v in wm.adapter_anchor(live_params(model), peft_config_dict(model)).items()
        }
