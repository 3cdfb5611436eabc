"""Where watermark bits live: the adapter's effective weight change (the "anchor").

- LoRA: per target module the product ``scaling * B @ A`` (peft names ``...lora_A.<adapter>
  .weight`` / ``...lora_B.<adapter>.weight``; saved files drop ``<adapter>``). A mark on
  ``A`` or ``B`` alone is erased by re-factorising ``B' = B M, A' = M^-1 A``; the product
  is invariant, survives SVD compression and is exactly what merging adds to the base
  weight, so a merged model's anchor is ``W_merged - W_base`` on the same modules.
- IA3: the scaling vectors minus 1 (their change from the identity initialisation).
- Prompt / prefix tuning: the virtual-token embeddings themselves.
- Not anchors: classifier-head copies (``modules_to_save``), biases, DoRA magnitudes
  (DoRA is refused: its effective change is not the LoRA product).

Names are canonicalised (``_module.`` from Opacus and ``base_model.model.`` from peft
stripped, adapter name dropped) so a live model, a saved adapter and a merged model give
the same module names. The anchor's capacity (independent linear constraints it can
satisfy) is ``r (m + n - r)`` per rank-``r`` LoRA product and the entry count otherwise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from .errors import AnchorError, WatermarkCapacityError

_PREFIXES = ("_module.", "base_model.model.")
_LORA = re.compile(r"^(?P<mod>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_IA3 = re.compile(r"^(?P<mod>.+)\.ia3_l(?:\.(?P<adapter>[^.]+))?$")
_PROMPT = re.compile(r"^prompt_encoder(?:\.(?P<adapter>[^.]+))?\.embedding\.weight$")

Anchor = dict[str, torch.Tensor]
Layout = list[tuple[str, tuple[int, ...]]]


def canonical_name(name: str) -> str:
    """Strip wrapper prefixes (Opacus, peft) from a parameter or module name."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    for pattern, value in patterns.items():
        if module == pattern or module.endswith("." + pattern) or re.fullmatch(pattern, module):
            return value
    return default


def lora_scaling(config: Mapping[str, Any], module: str, rank: int) -> float:
    """``alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA), honouring ``alpha_pattern``."""
    alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"]))
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def anchor_kind(config: Mapping[str, Any]) -> str:
    """The anchor family of a peft adapter config (``lora``, ``ia3`` or ``prompt``)."""
    peft_type = str(config.get("peft_type", "")).upper().rsplit(".", 1)[-1]
    if peft_type == "LORA":
        if config.get("use_dora"):
            raise AnchorError("DoRA adapters are not supported for watermarking; use plain LoRA")
        return "lora"
    if peft_type == "IA3":
        return "ia3"
    if peft_type in ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING"):
        return "prompt"
    raise AnchorError(
        f"no watermark anchor for adapter type {peft_type!r}; use lora, ia3 or prompt"
    )


def adapter_anchor(params: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> Anchor:
    """The anchor tensors of an adapter (differentiable in ``params``), by module name."""
    kind = anchor_kind(config)
    out: Anchor = {}
    if kind == "lora":
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in params.items():
            m = _LORA.match(canonical_name(name))
            if m:
                pairs.setdefault(m["mod"], {})[m["ab"]] = tensor
        for mod, ab in sorted(pairs.items()):
            if set(ab) != {"A", "B"}:
                missing = ", ".join(f"lora_{x}" for x in sorted({"A", "B"} - set(ab)))
                raise AnchorError(f"LoRA module {mod} lacks {missing}; pass the whole adapter")
            rank = ab["A"].shape[0]
            out[mod] = lora_scaling(config, mod, rank) * (ab["B"] @ ab["A"])
    elif kind == "ia3":
        for name, tensor in sorted(params.items()):
            m = _IA3.match(canonical_name(name))
            if m:
                out[m["mod"]] = tensor.reshape(-1) - 1.0
    else:
        for name, tensor in sorted(params.items()):
            if _PROMPT.match(canonical_name(name)):
                out["prompt_encoder"] = tensor
    if not out:
        raise AnchorError(f"no {kind} anchor parameters found among {len(params)} tensors")
    return out


#: Task heads that peft trains as full copies (``modules_to_save``); never anchors.
HEAD_MODULES = ("classifier", "score", "pre_classifier", "lm_head", "qa_outputs")


def merged_anchor(merged: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> Anchor:
    """``W_merged - W_base`` for every 2-D weight a LoRA merge changed (heads excluded).

    The modules come from the two models alone (never from a key), so the anchor's
    architecture is what the merge produced: a verifier cannot be steered to a subset.
    """
    m_state = {canonical_name(k): v for k, v in merged.items()}
    b_state = {canonical_name(k): v for k, v in base.items()}
    out: Anchor = {}
    for key in sorted(m_state):
        if not key.endswith(".weight") or key not in b_state:
            continue
        module = key[: -len(".weight")]
        if module.rsplit(".", 1)[-1] in HEAD_MODULES or m_state[key].dim() != 2:
            continue
        if tuple(m_state[key].shape) != tuple(b_state[key].shape):
            raise AnchorError(
                f"{key} has shape {tuple(m_state[key].shape)} in the merged model, "
                f"{tuple(b_state[key].shape)} in the base; pass the base it was merged into"
            )
        delta = m_state[key].float() - b_state[key].float()
        if bool(torch.any(delta != 0)):
            out[module] = delta
    if not out:
        raise AnchorError(
            "the merged model's weights equal the base model's; pass the merged model and "
            "the base it was merged into"
        )
    return out


def layout_of(anchor: Mapping[str, torch.Tensor]) -> Layout:
    """``(module, shape)`` in anchor order."""
    return [(k, tuple(v.shape)) for k, v in anchor.items()]


def flatten(anchor: Mapping[str, torch.Tensor], layout: Layout) -> torch.Tensor:
    """The anchor as one vector in ``layout`` order (raises on a missing or resized module)."""
    parts = []
    for module, shape in layout:
        if module not in anchor:
            raise AnchorError(
                f"anchor lacks module {module}; the key was made for another adapter layout"
            )
        t = anchor[module]
        if tuple(t.shape) != tuple(shape):
            raise AnchorError(f"module {module} has shape {tuple(t.shape)}, key expects {shape}")
        parts.append(t.reshape(-1).float())
    return torch.cat(parts)


def anchor_capacity(params: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> int:
    """Independent sign constraints the anchor can carry (degrees of freedom)."""
    with torch.no_grad():
        anchor = adapter_anchor(params, config)
    if anchor_kind(config) != "lora":
        return int(sum(t.numel() for t in anchor.values()))
    total = 0
    for name, tensor in params.items():
        m = _LORA.match(canonical_name(name))
        if m and m["ab"] == "A":
            r, n = tensor.shape
            mrows = anchor[m["mod"]].shape[0]
            total += r * (mrows + n - r)
    return total


def check_capacity(*, total_bits: int, capacity: int) -> None:
    """Refuse embedding more than half of the anchor's capacity."""
    if total_bits * 2 > capacity:
        raise WatermarkCapacityError(
            f"{total_bits} watermark bits exceed half the anchor capacity ({capacity} degrees "
            f"of freedom -> at most {capacity // 2} bits); use fewer owners or bits, or a "
            "larger adapter (higher LoRA rank, more target modules)"
        )
