"""Built-in tiny model configurations, randomly initialised from a seed.

The tiny models (hidden size 64, two layers) exist so that federated jobs, tests and
examples run in seconds on a CPU without downloading weights. Initialisation is
deterministic for a given seed and does not disturb the caller's global RNG state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    AlbertConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BartConfig,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    RobertaConfig,
)

from ._quiet import quiet
from .errors import ModelConfigError

#: Family names are the models' ``config.model_type`` (so ``family_of(model)`` round-trips).
FAMILIES: tuple[str, ...] = (
    "gpt2",
    "bert",
    "roberta",
    "distilbert",
    "llama",
    "albert",
    "bart",
    "deberta-v2",
    "qwen2",
)
TASKS: tuple[str, ...] = ("classification", "causal_lm")

#: Families with a causal language-model head (bert/roberta run as decoders, bart as
#: BartForCausalLM: its decoder stack alone).
CAUSAL_FAMILIES: tuple[str, ...] = ("gpt2", "bert", "roberta", "llama", "qwen2", "bart")

HIDDEN = 64
LAYERS = 2
HEADS = 2
MAX_POSITIONS = 256


def _gpt2(common: dict[str, Any]) -> PretrainedConfig:
    return GPT2Config(
        n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=MAX_POSITIONS, **common
    )


def _bert(common: dict[str, Any]) -> PretrainedConfig:
    return BertConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=2 * HIDDEN,
        max_position_embeddings=MAX_POSITIONS,
        **common,
    )


def _roberta(common: dict[str, Any]) -> PretrainedConfig:
    # RoBERTa offsets positions by padding_idx + 1, hence the extra two slots.
    return RobertaConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=2 * HIDDEN,
        max_position_embeddings=MAX_POSITIONS + 2,
        **common,
    )


def _distilbert(common: dict[str, Any]) -> PretrainedConfig:
    return DistilBertConfig(
        dim=HIDDEN,
        n_layers=LAYERS,
        n_heads=HEADS,
        hidden_dim=2 * HIDDEN,
        max_position_embeddings=MAX_POSITIONS,
        **common,
    )


def _llama(common: dict[str, Any]) -> PretrainedConfig:
    return LlamaConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=2 * HIDDEN,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        **common,
    )


def _albert(common: dict[str, Any]) -> PretrainedConfig:
    return AlbertConfig(
        embedding_size=HIDDEN,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=2 * HIDDEN,
        max_position_embeddings=MAX_POSITIONS,
        **common,
    )


def _bart(common: dict[str, Any]) -> PretrainedConfig:
    # BART starts decoding from eos, as the original checkpoints do.
    return BartConfig(
        d_model=HIDDEN,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=2 * HIDDEN,
        decoder_ffn_dim=2 * HIDDEN,
        max_position_embeddings=MAX_POSITIONS,
        decoder_start_token_id=common["eos_token_id"],
        forced_eos_token_id=None,
        **common,
    )


def _deberta_v2(common: dict[str, Any]) -> PretrainedConfig:
    return DebertaV2Config(  # type: ignore[call-arg]
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=2 * HIDDEN,
        max_position_embeddings=MAX_POSITIONS,
        relative_attention=True,
        position_buckets=32,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        **common,
    )


def _qwen2(common: dict[str, Any]) -> PretrainedConfig:
    return Qwen2Config(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=2 * HIDDEN,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        **common,
    )


_BUILDERS: dict[str, Callable[[dict[str, Any]], PretrainedConfig]] = {
    "gpt2": _gpt2,
    "bert": _bert,
    "roberta": _roberta,
    "distilbert": _distilbert,
    "llama": _llama,
    "albert": _albert,
    "bart": _bart,
    "deberta-v2": _deberta_v2,
    "qwen2": _qwen2,
}


def check_family_task(family: str, task: str) -> None:
    """Raise ModelConfigError unless ``family`` and ``task`` are known and compatible."""
    if family not in FAMILIES:
        raise ModelConfigError(
            f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}"
        )
    if task not in TASKS:
        raise ModelConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "causal_lm" and family not in CAUSAL_FAMILIES:
        raise ModelConfigError(
            f"family {family!r} has no causal language-model head; use task='classification'"
            f" or one of {', '.join(CAUSAL_FAMILIES)}"
        )


def tiny_config(
    family: str,
    *,
    task: str,
    vocab_size: int,
    num_labels: int = 2,
    pad_token_id: int,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> PretrainedConfig:
    """The tiny configuration of ``family`` for ``task`` (no weights)."""
    check_family_task(family, task)
    if vocab_size < 8:
        raise ModelConfigError(f"vocab_size={vocab_size} is too small; use at least 8")
    for name, value in (("pad", pad_token_id), ("bos", bos_token_id), ("eos", eos_token_id)):
        if value is not None and not 0 <= value < vocab_size:
            raise ModelConfigError(
                f"{name}_token_id={value} is outside the vocabulary [0, {vocab_size}); "
                "pass the tokenizer's id for that token"
            )
    if family == "bart" and eos_token_id is None:
        raise ModelConfigError(
            "bart needs eos_token_id (it classifies from the last eos token and starts decoding "
            "from it); pass the tokenizer's eos_token_id"
        )
    if task == "classification" and num_labels < 1:
        raise ModelConfigError(f"num_labels={num_labels} must be at least 1")
    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "pad_token_id": pad_token_id,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
    }
    config = _BUILDERS[family](common)
    if task == "classification":
        config.num_labels = num_labels
    elif family in ("bert", "roberta"):
        config.is_decoder = True
    return config


def build_tiny_model(
    family: str,
    *,
    task: str,
    vocab_size: int,
    num_labels: int = 2,
    seed: int,
    pad_token_id: int,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> PreTrainedModel:
    """A randomly initialised tiny model; identical weights for identical arguments.

    ``task`` is ``"classification"`` (AutoModelForSequenceClassification) or
    ``"causal_lm"`` (AutoModelForCausalLM). The model is returned in eval mode.
    """
    config = tiny_config(
        family,
        task=task,
        vocab_size=vocab_size,
        num_labels=num_labels,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    auto = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]), quiet():
        torch.manual_seed(seed)
        model = auto.from_config(config)
    model.eval()
    return model
