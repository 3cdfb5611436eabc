"""Model loading, adapters and adapter-state vectors for secfed.

Never imports ``secfed``, ``crypto`` or ``privacy``.
"""

from __future__ import annotations

from .adapters import (
    DEFAULT_TARGETS,
    METHODS,
    PEFT_METHODS,
    VALID_OPTIONS,
    AdapterSpec,
    adapter_disabled,
    attach_adapter,
)
from .bottleneck import (
    BOTTLENECK_METHODS,
    LAYER_SITES,
    NON_LINEARITIES,
    BottleneckConfig,
    bottleneck_config_of,
)
from .errors import (
    AdapterConfigError,
    AdapterStateError,
    ModelConfigError,
    ModelError,
    ModelLoadError,
)
from .loading import family_of, load_pretrained
from .pretrain import PretrainResult, PretrainSpec, cache_root, pretrain_tiny
from .saving import load_adapter, save_adapter, save_base_model
from .tiny import CAUSAL_FAMILIES, FAMILIES, TASKS, build_tiny_model, tiny_config
from .tokenizer import train_tokenizer
from .vector import adapter_layout, adapter_size, adapter_vector, load_adapter_vector

__all__ = [
    "BOTTLENECK_METHODS",
    "CAUSAL_FAMILIES",
    "DEFAULT_TARGETS",
    "FAMILIES",
    "LAYER_SITES",
    "METHODS",
    "NON_LINEARITIES",
    "PEFT_METHODS",
    "TASKS",
    "VALID_OPTIONS",
    "AdapterConfigError",
    "AdapterSpec",
    "AdapterStateError",
    "BottleneckConfig",
    "ModelConfigError",
    "ModelError",
    "ModelLoadError",
    "PretrainResult",
    "PretrainSpec",
    "adapter_disabled",
    "adapter_layout",
    "adapter_size",
    "adapter_vector",
    "attach_adapter",
    "bottleneck_config_of",
    "build_tiny_model",
    "cache_root",
    "family_of",
    "load_adapter",
    "load_adapter_vector",
    "load_pretrained",
    "pretrain_tiny",
    "save_adapter",
    "save_base_model",
    "tiny_config",
    "train_tokenizer",
]
