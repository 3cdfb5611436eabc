"""Write adapters and base models to disk in the layout peft loads."""

from __future__ import annotations

import copy
from pathlib import Path

from peft import PeftModel
from peft.utils import ModulesToSaveWrapper
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ._quiet import quiet
from .errors import ModelLoadError

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def save_adapter(model: PeftModel, directory: Path | str) -> None:
    """Save the adapter (safetensors + adapter_config.json) for ``PeftModel.from_pretrained``."""
    if not isinstance(model, PeftModel):
        raise TypeError(f"save_adapter needs a PeftModel, got {type(model).__name__}")
    with quiet():
        model.save_pretrained(str(directory), safe_serialization=True)


def load_adapter(
    base_model: PreTrainedModel, directory: Path | str, *, trainable: bool = False
) -> PeftModel:
    """Load an adapter saved by :func:`save_adapter` onto a fresh ``base_model``."""
    path = Path(directory)
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise ModelLoadError(
            f"no adapter at {path} (missing {ADAPTER_WEIGHTS}); pass a directory written by "
            "save_adapter"
        )
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
    """
    base = _strip_adapters(model_or_base) if isinstance(model_or_base, PeftModel) else model_or_base
    if not isinstance(base, PreTrainedModel):
        raise TypeError(f"save_base_model needs a transformers model, got {type(base).__name__}")
    with quiet():
        base.save_pretrained(str(directory), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))
