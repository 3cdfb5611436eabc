"""Adapter specifications and attaching them to a model with peft.

An :class:`AdapterSpec` names a peft method and its options; it validates option names
at construction (a typo fails early, naming the option and the valid ones). After
:func:`attach_adapter`, the trainable adapter state is exactly the parameters with
``requires_grad=True``: the adapter weights and, for classification, the classifier head
(peft's ``modules_to_save``).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import (
    IA3Config,
    LoraConfig,
    PeftConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)
from torch import nn
from transformers import PreTrainedModel

from ._quiet import quiet
from .bottleneck import (
    BOTTLENECK_METHODS,
    BOTTLENECK_OPTIONS,
    BottleneckConfig,
    adapters_disabled,
    bottleneck_config_of,
    inject_bottleneck,
)
from .errors import AdapterConfigError
from .tiny import TASKS

PEFT_METHODS: tuple[str, ...] = ("lora", "prefix_tuning", "prompt_tuning", "ia3")
METHODS: tuple[str, ...] = PEFT_METHODS + BOTTLENECK_METHODS

_PROMPT_DIMS = (
    "token_dim",
    "num_attention_heads",
    "num_layers",
    "num_transformer_submodules",
    "modules_to_save",
)

#: Options each method accepts; they are passed through to the peft config.
VALID_OPTIONS: dict[str, frozenset[str]] = {
    "lora": frozenset(
        {
            "r",
            "lora_alpha",
            "lora_dropout",
            "target_modules",
            "exclude_modules",
            "bias",
            "use_rslora",
            "use_dora",
            "init_lora_weights",
            "layers_to_transform",
            "layers_pattern",
            "rank_pattern",
            "alpha_pattern",
            "fan_in_fan_out",
            "modules_to_save",
        }
    ),
    "prefix_tuning": frozenset(
        {"num_virtual_tokens", "prefix_projection", "encoder_hidden_size", *_PROMPT_DIMS}
    ),
    "prompt_tuning": frozenset(
        {
            "num_virtual_tokens",
            "prompt_tuning_init",
            "prompt_tuning_init_text",
            "tokenizer_name_or_path",
            *_PROMPT_DIMS,
        }
    ),
    "ia3": frozenset(
        {
            "target_modules",
            "feedforward_modules",
            "exclude_modules",
            "fan_in_fan_out",
            "init_ia3_weights",
            "modules_to_save",
        }
    ),
    **BOTTLENECK_OPTIONS,
}

_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
    "prefix_tuning": {"num_virtual_tokens": 8},
    "prompt_tuning": {"num_virtual_tokens": 8},
    "ia3": {},
}

_CONFIGS: dict[str, type[PeftConfig]] = {
    "lora": LoraConfig,
    "prefix_tuning": PrefixTuningConfig,
    "prompt_tuning": PromptTuningConfig,
    "ia3": IA3Config,
}


@dataclass(frozen=True)
class _Targets:
    lora: tuple[str, ...]
    ia3: tuple[str, ...]
    feedforward: tuple[str, ...]
    conv1d: bool = False  # GPT-2 style Conv1D layers store weights transposed


_LLAMA_TARGETS = _Targets(
    lora=("q_proj", "v_proj"), ia3=("k_proj", "v_proj", "down_proj"), feedforward=("down_proj",)
)
_BERT_TARGETS = _Targets(
    lora=("query", "value"), ia3=("key", "value", "output.dense"), feedforward=("output.dense",)
)

#: Default target modules per family (model_type aliases of llama-like models included).
DEFAULT_TARGETS: dict[str, _Targets] = {
    "gpt2": _Targets(
        lora=("c_attn",),
        ia3=("c_attn", "mlp.c_proj"),
        feedforward=("mlp.c_proj",),
        conv1d=True,
    ),
    "bert": _BERT_TARGETS,
    "roberta": _BERT_TARGETS,
    "distilbert": _Targets(
        lora=("q_lin", "v_lin"), ia3=("k_lin", "v_lin", "lin2"), feedforward=("lin2",)
    ),
    "llama": _LLAMA_TARGETS,
    "albert": _Targets(
        lora=("query", "value"), ia3=("key", "value", "ffn_output"), feedforward=("ffn_output",)
    ),
    "bart": _Targets(
        lora=("q_proj", "v_proj"), ia3=("k_proj", "v_proj", "fc2"), feedforward=("fc2",)
    ),
    "deberta-v2": _Targets(
        lora=("query_proj", "value_proj"),
        ia3=("key_proj", "value_proj", "output.dense"),
        feedforward=("output.dense",),
    ),
    "mistral": _LLAMA_TARGETS,
    "qwen2": _LLAMA_TARGETS,
    "qwen3": _LLAMA_TARGETS,
    "gemma": _LLAMA_TARGETS,
    "gemma2": _LLAMA_TARGETS,
}

#: Randomly initialised head layers besides peft's "classifier"/"score", trained with it.
_EXTRA_HEAD: dict[str, tuple[str, ...]] = {
    "distilbert": ("pre_classifier",),
    "bart": ("classification_head",),
    "deberta-v2": ("pooler",),
}

_NO_PAST = "needs past key values, which {family} models do not support"
_NO_EMBEDS = "feeds input embeddings, which BartForSequenceClassification refuses"

#: (family, method, task or "*") combinations peft cannot run, and why.
_UNSUPPORTED: dict[tuple[str, str, str], str] = {
    ("distilbert", "prefix_tuning", "*"): _NO_PAST,
    ("albert", "prefix_tuning", "*"): _NO_PAST,
    ("deberta-v2", "prefix_tuning", "*"): _NO_PAST,
    ("bart", "prefix_tuning", "classification"): _NO_PAST.replace("models", "classifiers"),
    ("bart", "prompt_tuning", "classification"): _NO_EMBEDS,
}


def _check_supported(family: str, method: str, task: str) -> None:
    reason = _UNSUPPORTED.get((family, method, task)) or _UNSUPPORTED.get((family, method, "*"))
    if reason is not None:
        raise AdapterConfigError(
            f"{method} {reason.format(family=family)} (task {task!r}); use lora, ia3 or a "
            "bottleneck adapter (houlsby, pfeiffer, parallel) instead"
        )


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AdapterConfigError(f"adapter option {name}={value!r} must be a positive integer")


def _check_values(options: Mapping[str, Any]) -> None:
    for name in ("r", "num_virtual_tokens"):
        if name in options:
            _positive_int(name, options[name])
    alpha = options.get("lora_alpha", 1)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or alpha <= 0:
        raise AdapterConfigError(f"adapter option lora_alpha={alpha!r} must be a positive number")
    dropout = options.get("lora_dropout", 0.0)
    if not isinstance(dropout, numbers.Real) or not 0.0 <= float(dropout) < 1.0:
        raise AdapterConfigError(f"adapter option lora_dropout={dropout!r} must be in [0, 1)")


@dataclass(frozen=True)
class AdapterSpec:
    """An adapter method and its options.

    peft methods: ``lora``, ``prefix_tuning``, ``prompt_tuning``, ``ia3``; bottleneck
    adapters (secfed's own, see :mod:`models.bottleneck`): ``houlsby``, ``pfeiffer``,
    ``parallel`` with ``reduction_factor``, ``non_linearity`` and (parallel) ``scaling``.
    """

    method: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise AdapterConfigError(
                f"unknown adapter method {self.method!r}; choose one of {', '.join(METHODS)}"
            )
        if not isinstance(self.options, Mapping):
            raise AdapterConfigError(
                f"adapter options must be a mapping, got {type(self.options).__name__}"
            )
        valid = VALID_OPTIONS[self.method]
        unknown = sorted(set(self.options) - valid)
        if unknown:
            raise AdapterConfigError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for adapter method "
                f"{self.method!r}; valid options are: {', '.join(sorted(valid))}"
            )
        if self.method in BOTTLENECK_METHODS:
            BottleneckConfig.from_options(self.method, dict(self.options), family="")
        else:
            _check_values(self.options)


def _targets_for(family: str, method: str) -> _Targets:
    try:
        return DEFAULT_TARGETS[family]
    except KeyError:
        raise AdapterConfigError(
            f"no default target_modules for model family {family!r} with {method}; pass "
            f"options target_modules=[...] (known families: {', '.join(DEFAULT_TARGETS)})"
        ) from None


def peft_config(spec: AdapterSpec, *, family: str, task: str, model: PreTrainedModel) -> PeftConfig:
    """The peft config for ``spec`` on ``model``, with family defaults filled in."""
    if task not in TASKS:
        raise AdapterConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if spec.method not in _CONFIGS:
        raise AdapterConfigError(
            f"{spec.method} is not a peft method; attach it with attach_adapter"
        )
    opts: dict[str, Any] = {**_DEFAULTS[spec.method], **spec.options}
    if spec.method in ("lora", "ia3") and "target_modules" not in opts:
        targets = _targets_for(family, spec.method)
        if spec.method == "lora":
            opts["target_modules"] = list(targets.lora)
        else:
            opts["target_modules"] = list(targets.ia3)
            opts.setdefault("feedforward_modules", list(targets.feedforward))
        opts.setdefault("fan_in_fan_out", targets.conv1d)
    _check_supported(family, spec.method, task)
    if spec.method in ("prefix_tuning", "prompt_tuning"):
        # peft reads these from config.to_dict(), which lacks aliased names (DistilBERT's dim).
        cfg = model.config
        for option, attr in (
            ("token_dim", "hidden_size"),
            ("num_layers", "num_hidden_layers"),
            ("num_attention_heads", "num_attention_heads"),
        ):
            if option not in opts and getattr(cfg, attr, None) is not None:
                opts[option] = getattr(cfg, attr)
    if task == "classification" and family in _EXTRA_HEAD and "modules_to_save" not in opts:
        opts["modules_to_save"] = list(_EXTRA_HEAD[family])
    task_type = TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM
    try:
        return _CONFIGS[spec.method](task_type=task_type, **opts)
    except (TypeError, ValueError) as exc:
        raise AdapterConfigError(f"invalid options for {spec.method}: {exc}") from exc


#: Classification-head modules trained with a bottleneck adapter (peft's defaults + extras).
_HEADS = frozenset({"classifier", "score", "classification_head"})


def _attach_bottleneck(
    model: PreTrainedModel, spec: AdapterSpec, *, family: str, task: str, seed: int | None
) -> PreTrainedModel:
    if task not in TASKS:
        raise AdapterConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    config = BottleneckConfig.from_options(spec.method, dict(spec.options), family=family)
    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        inject_bottleneck(model, config)
    if task == "classification":
        heads = _HEADS | set(_EXTRA_HEAD.get(family, ()))
        for name, module in model.named_children():
            if name in heads:
                module.requires_grad_(True)
    return model


def attach_adapter(
    model: PreTrainedModel,
    spec: AdapterSpec,
    *,
    family: str,
    task: str,
    seed: int | None = None,
) -> PeftModel | PreTrainedModel:
    """Add the adapter described by ``spec`` to ``model``; only adapter state is trainable.

    ``family`` picks default target modules (a model's ``config.model_type`` works too).
    With ``seed`` the adapter's random initialisation is reproducible and the caller's
    global RNG state is left untouched. peft methods return a ``PeftModel`` (the base is
    modified in place by peft); bottleneck methods return ``model`` itself, with the
    adapters added in place, the base frozen and, for classification, the head trainable.
    """
    if spec.method in BOTTLENECK_METHODS:
        return _attach_bottleneck(model, spec, family=family, task=task, seed=seed)
    config = peft_config(spec, family=family, task=task, model=model)
    with torch.random.fork_rng(devices=[]), quiet():
        if seed is not None:
            torch.manual_seed(seed)
        try:
            peft_model = get_peft_model(model, config)
        except ValueError as exc:
            raise AdapterConfigError(
                f"peft could not attach {spec.method} with options {spec.options!r} to a "
                f"{family} model: {exc}"
            ) from exc
    if not any(p.requires_grad for p in peft_model.parameters()):
        raise AdapterConfigError(
            f"{spec.method} with options {spec.options!r} left no trainable parameters; "
            "check target_modules"
        )
    return peft_model


@contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as its frozen base inside the block (no copy of any weight is made).

    peft models use ``PeftModel.disable_adapter()``; bottleneck adapters add nothing while
    disabled. A model without an adapter is an error (there would be nothing to switch off).
    """
    if isinstance(model, PeftModel):
        with model.disable_adapter():
            yield
        return
    if bottleneck_config_of(model) is not None:
        with adapters_disabled(model):
            yield
        return
    raise AdapterConfigError(
        f"{type(model).__name__} has no peft or bottleneck adapter to switch off; attach one "
        "with attach_adapter first"
    )
