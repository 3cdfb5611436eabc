"""Which adapters DP-SGD can train with correct per-example gradients.

Opacus computes per-example gradients layer by layer. For some adapter types that is
known to be wrong or to crash, so they are refused under DP with
:class:`~privacy.errors.UnsupportedUnderDP`:

- IA3: a learned scaling vector applied inside the wrapped layer's forward;
- DoRA (LoRA with ``use_dora``): the magnitude vector rescales by a weight norm computed
  from the LoRA matrices outside the modules Opacus hooks, so their per-example
  gradients miss that path;
- prompt tuning, P-tuning, prefix tuning, multitask prompt tuning, CPT, adaption prompt:
  virtual tokens / key-value prefixes shared across the batch (wrong per-example
  gradients on some models, crashes on others).

Plain LoRA works: its trainable weights live in ``nn.Linear``/``nn.Embedding`` modules
that Opacus supports exactly. Other peft methods are refused as unverified. Adapters made
of ordinary torch layers (e.g. bottleneck adapters built from ``nn.Linear``) pass the
static check; :mod:`privacy.guards` then checks the gradients at run time.
"""

from __future__ import annotations

import torch

from .errors import UnsupportedUnderDP

_BROKEN: dict[str, str] = {
    "IA3": "IA3 scaling vectors get wrong per-example gradients under Opacus",
    "DORA": "DoRA's magnitude path bypasses Opacus' per-layer hooks",
    "PROMPT_TUNING": "prompt tuning's virtual tokens get wrong per-example gradients",
    "MULTITASK_PROMPT_TUNING": "prompt tuning's virtual tokens get wrong per-example gradients",
    "P_TUNING": "P-tuning's prompt encoder gets wrong per-example gradients",
    "PREFIX_TUNING": "prefix tuning's key/value prefixes break per-example gradients",
    "CPT": "CPT's context tokens get wrong per-example gradients",
    "ADAPTION_PROMPT": "adaption prompts are shared across the batch",
}

_VERIFIED = {"LORA"}

# Trainable-parameter name fragments that identify a refused adapter injected without a
# peft config (e.g. ``inject_adapter_in_model``).
_NAME_MARKERS: dict[str, str] = {
    "ia3_l": "IA3",
    "lora_magnitude_vector": "DORA",
    "prompt_encoder": "PROMPT_TUNING",
    "prompt_embeddings": "PROMPT_TUNING",
    "prefix_encoder": "PREFIX_TUNING",
    "adaption_prompt": "ADAPTION_PROMPT",
}


def _peft_types(model: torch.nn.Module) -> dict[str, str]:
    """``{adapter name: peft type}`` of every peft config on the model (DoRA as "DORA")."""
    found: dict[str, str] = {}
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict):
        return found
    for name, cfg in configs.items():
        kind = getattr(cfg, "peft_type", None)
        kind = str(getattr(kind, "value", kind) or "").upper()
        if kind == "LORA" and getattr(cfg, "use_dora", False):
            kind = "DORA"
        found[str(name)] = kind
    return found


def _active_adapters(model: torch.nn.Module) -> set[str] | None:
    if getattr(model, "peft_config", None) is None:
        return None  # not a peft model (e.g. bottleneck adapters injected in place)
    active = getattr(model, "active_adapters", None)
    if callable(active):
        try:
            active = active()
        except ValueError:  # transformers raises this when no peft adapter is loaded
            return None
    if isinstance(active, str):
        return {active}
    if isinstance(active, (list, tuple, set)):
        return {str(a) for a in active}
    return None


def dp_unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why ``model`` cannot be trained under DP-SGD, or None where it can."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        return "the model has no trainable parameters: unfreeze the adapter before training"
    active = _active_adapters(model)
    for name, kind in _peft_types(model).items():
        if active is not None and name not in active:
            continue
        if kind in _BROKEN:
            return f"{kind} adapter {name!r}: {_BROKEN[kind]}"
        if kind not in _VERIFIED:
            return f"{kind} adapter {name!r}: per-example gradients not verified in secfed"
    for frag, kind in _NAME_MARKERS.items():
        hits = [n for n in trainable if frag in n]
        if hits:
            return f"{kind} adapter (trainable {hits[0]}): {_BROKEN[kind]}"
    return None


def check_dp_support(model: torch.nn.Module) -> None:
    """Raise :class:`UnsupportedUnderDP` naming the adapter where DP-SGD would be wrong."""
    reason = dp_unsupported_reason(model)
    if reason is not None:
        raise UnsupportedUnderDP(
            f"cannot train under DP-SGD: {reason}. Use LoRA (without use_dora) or a "
            f"bottleneck adapter, or disable privacy.sample"
        )
