"""Write adapters and base models to disk.

peft adapters are written in the layout ``PeftModel.from_pretrained`` loads. Bottleneck
adapters are secfed's own: ``adapter_model.safetensors`` holds the trainable tensors by
name and ``adapter_config.json`` records ``{"secfed_bottleneck": {method, options,
family}, "task": ...}``; :func:`load_adapter` rebuilds them, peft cannot.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.utils import ModulesToSaveWrapper
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ._quiet import quiet
from .bottleneck import BottleneckConfig, bottleneck_config_of, inject_bottleneck, strip_bottleneck
from .errors import ModelLoadError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_BOTTLENECK_KEY = "secfed_bottleneck"


def _save_bottleneck(model: nn.Module, config: BottleneckConfig, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters()
                 if p.requires_grad}  # fmt: skip
    heads = sorted({n.rsplit(".", 1)[0] for n in trainable if ".bottleneck." not in n})
    save_file(trainable, str(path / ADAPTER_WEIGHTS))
    meta: dict[str, Any] = {_BOTTLENECK_KEY: config.to_dict(), "trainable_modules": heads}
    (path / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))


def save_adapter(model: PeftModel | nn.Module, directory: Path | str) -> None:
    """Save the adapter (safetensors + adapter_config.json) so load_adapter rebuilds it.

    peft adapters also load with ``PeftModel.from_pretrained``; bottleneck adapters only
    with :func:`load_adapter`.
    """
    config = bottleneck_config_of(model)
    if config is not None:
        _save_bottleneck(model, config, Path(directory))
        return
    if not isinstance(model, PeftModel):
        raise TypeError(
            f"save_adapter needs a model made by attach_adapter, got {type(model).__name__}"
        )
    with quiet():
        model.save_pretrained(str(directory), safe_serialization=True)


def _load_bottleneck(
    base_model: PreTrainedModel, path: Path, meta: dict[str, Any], *, trainable: bool
) -> PreTrainedModel:
    try:
        config = BottleneckConfig(**meta[_BOTTLENECK_KEY])
    except TypeError as exc:
        raise ModelLoadError(
            f"corrupt bottleneck config in {path / ADAPTER_CONFIG}: {exc}"
        ) from exc
    family = str(getattr(base_model.config, "model_type", ""))
    if family != config.family:
        raise ModelLoadError(
            f"adapter at {path} was built for {config.family!r} models, got a {family!r} model; "
            "load it onto the base model it was trained with"
        )
    base_model.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        inject_bottleneck(base_model, config)
    state = load_file(str(path / ADAPTER_WEIGHTS))
    params = dict(base_model.named_parameters())
    missing = sorted(set(state) - set(params))
    if missing:
        raise ModelLoadError(
            f"adapter at {path} has tensors {missing[:3]} that the model lacks; load it onto "
            "the base model (family, task, num_labels) it was trained with"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            if params[name].shape != tensor.shape:
                raise ModelLoadError(
                    f"adapter tensor {name} has shape {tuple(tensor.shape)}, the model expects "
                    f"{tuple(params[name].shape)}; use the same base model and vocabulary"
                )
            params[name].copy_(tensor)
            params[name].requires_grad_(trainable)
    return base_model


def load_adapter(
    base_model: PreTrainedModel, directory: Path | str, *, trainable: bool = False
) -> PeftModel | PreTrainedModel:
    """Load an adapter saved by :func:`save_adapter` onto a fresh ``base_model``."""
    path = Path(directory)
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise ModelLoadError(
            f"no adapter at {path} (missing {ADAPTER_WEIGHTS}); pass a directory written by "
            "save_adapter"
        )
    config_file = path / ADAPTER_CONFIG
    meta = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if _BOTTLENECK_KEY in meta:
        return _load_bottleneck(base_model, path, meta, trainable=trainable)
    with quiet():
        return PeftModel.from_pretrained(base_model, str(path), is_trainable=trainable)


def _strip_adapters(model: PeftModel) -> nn.Module:
    """A copy of the base model with modules_to_save copies and adapter layers removed."""
    clone = copy.deepcopy(model)
    # Restore the original modules first: peft's unload() keeps the trained copies instead.
    for name, module in list(clone.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent_name, _, child = name.rpartition(".")
            setattr(clone.get_submodule(parent_name), child, module.original_module)
    if hasattr(clone.base_model, "unload"):
        return clone.unload()
    return clone.base_model


def save_base_model(
    model_or_base: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase | None,
    directory: Path | str,
) -> None:
    """Save the frozen base model (and tokenizer) that an adapter directory loads onto.

    For a PeftModel the adapter layers are removed from a copy first, so the saved
    weights are the original base weights (call it before attach_adapter to avoid the copy).
    A model with a bottleneck adapter is saved without the adapters; its classification
    head is saved as trained (the adapter directory holds it too).
    """
    if isinstance(model_or_base, PeftModel):
        base: nn.Module = _strip_adapters(model_or_base)
    elif bottleneck_config_of(model_or_base) is not None:
        base = copy.deepcopy(model_or_base)
        strip_bottleneck(base)
    else:
        base = model_or_base
    if not isinstance(base, PreTrainedModel):
        raise TypeError(f"save_base_model needs a transformers model, got {type(base).__name__}")
    with quiet():
        base.save_pretrained(str(directory), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))
