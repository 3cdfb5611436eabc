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


@torch.no_grad()
def trigger_hits(model: torch.nn.Module, key: wm.WatermarkKey) -> int:
    """How many of the key's triggers the model gives their key-derived labels."""
    ids = torch.from_numpy(wm.trigger_token_ids(key))
    labels = torch.from_numpy(wm.trigger_labels(key))
    was_training = model.training
    model.eval()
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    model.train(was_training)
    return int((logits.argmax(-1) == labels).sum())


def verify_keys(
    keys: Sequence[wm.WatermarkKey],
    *,
    anchor: Mapping[str, torch.Tensor] | None,
    model: torch.nn.Module | None = None,
    alpha: float = wm.DEFAULT_ALPHA,
) -> list[wm.Verdict]:
    """Bit tests on ``anchor`` and trigger tests on ``model`` (each when given), Holm-corrected."""
    bit_tests: list[wm.BitTest | None] = []
    trig_tests: list[wm.TriggerTest | None] = []
    for key in keys:
        bit_tests.append(None if anchor is None else wm.verify_bits(key, anchor))
        if model is not None and key.triggers is not None:
            trig_tests.append(
                wm.trigger_test(
                    hits=trigger_hits(model, key),
                    triggers=key.triggers.count,
                    num_labels=key.triggers.num_labels,
                )
            )
        else:
            trig_tests.append(None)
    return wm.decide([k.owner for k in keys], bit_tests, trig_tests, alpha=alpha)


def model_anchor(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The anchor of a live peft model (detached)."""
    with torch.no_grad():
        return {
            k: v.detach()
            for k, v in wm.adapter_anchor(live_params(model), peft_config_dict(model)).items()
        }
