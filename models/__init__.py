"""Model loading, adapters and adapter-state vectors for secfed.

Never imports ``secfed``, ``crypto`` or ``privacy``.
"""

from __future__ import annotations

from .adapters import DEFAULT_TARGETS, METHODS, VALID_OPTIONS, AdapterSpec, attach_adapter
from .errors import (
    AdapterConfigError,
    AdapterStateError,
    ModelConfigError,
    ModelError,
    ModelLoadError,
)
from .loading import family_of, load_pretrained
from .saving import load_adapter, save_adapter, save_base_model
from .tiny import CAUSAL_FAMILIES, FAMILIES, TASKS, build_tiny_model, tiny_config
from .tokenizer import train_tokenizer
from .vector import adapter_layout, adapter_size, adapter_vector, load_adapter_vector

__all__ = [
    "CAUSAL_FAMILIES",
    "DEFAULT_TARGETS",
    "FAMILIES",
    "METHODS",
    "TASKS",
    "VALID_OPTIONS",
    "AdapterConfigError",
    "AdapterSpec",
    "AdapterStateError",
    "ModelConfigError",
    "ModelError",
    "ModelLoadError",
    "adapter_layout",
    "adapter_size",
    "adapter_vector",
    "attach_adapter",
    "build_tiny_model",
    "family_of",
    "load_adapter",
    "load_adapter_vector",
    "load_pretrained",
    "save_adapter",
    "save_base_model",
    "tiny_config",
    "train_tokenizer",
]
