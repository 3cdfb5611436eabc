"""Adapters: attaching, trainable state <-> vector round trips, and option validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import PeftModel

from models import (
    PEFT_METHODS,
    AdapterConfigError,
    AdapterSpec,
    AdapterStateError,
    adapter_layout,
    adapter_vector,
    attach_adapter,
    build_tiny_model,
    load_adapter_vector,
)

VOCAB = 400
SMALL = {"lora": {"r": 4}, "prefix_tuning": {"num_virtual_tokens": 3},
         "prompt_tuning": {"num_virtual_tokens": 3}, "ia3": {}}  # fmt: skip
# (family, task) pairs covering encoders and decoders, classification and causal LM.
TARGETS = [
    ("bert", "classification"),
    ("gpt2", "causal_lm"),
    ("llama", "classification"),
    ("roberta", "classification"),
    ("llama", "causal_lm"),
]


def make(family: str, task: str, method: str, *, seed: int = 0) -> PeftModel:
    base = build_tiny_model(
        family, task=task, vocab_size=VOCAB, seed=seed, pad_token_id=1 if family == "roberta" else 0
    )
    model = attach_adapter(
        base, AdapterSpec(method, dict(SMALL[method])), family=family, task=task, seed=seed
    )
    assert isinstance(model, PeftModel)
    return model


def logits(model: torch.nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB, (2, 9), generator=gen)
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


@pytest.mark.parametrize("method", PEFT_METHODS)
@pytest.mark.parametrize(("family", "task"), TARGETS)
def test_vector_round_trip_covers_exactly_the_trainable_state(
    family: str, task: str, method: str
) -> None:
    model = make(family, task, method)
    trainable = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    assert adapter_layout(model) == trainable
    vec = adapter_vector(model)
    assert vec.dtype == np.float32
    assert vec.shape == (sum(int(np.prod(s)) for _, s in trainable),)
    before = logits(model)

    rng = np.random.default_rng(0)
    other = rng.normal(0.0, 0.5, vec.shape).astype(np.float32)
    load_adapter_vector(model, other)
    np.testing.assert_array_equal(adapter_vector(model), other)
    assert not torch.allclose(logits(model), before)

    load_adapter_vector(model, vec)
    np.testing.assert_array_equal(adapter_vector(model), vec)
    torch.testing.assert_close(logits(model), before, rtol=0, atol=0)


@pytest.mark.parametrize("method", PEFT_METHODS)
@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "roberta"])
def test_classifier_head_is_part_of_the_adapter_state(family: str, method: str) -> None:
    model = make(family, "classification", method)
    names = [n for n, _ in adapter_layout(model)]
    head = "score" if family in ("gpt2", "llama") else "classifier"
    assert any(f"{head}.modules_to_save" in n for n in names), names
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all("modules_to_save" not in n for n in frozen)


def test_distilbert_trains_both_classifier_layers() -> None:
    model = make("distilbert", "classification", "lora")
    names = " ".join(n for n, _ in adapter_layout(model))
    assert "pre_classifier.modules_to_save" in names
    assert "classifier.modules_to_save" in names
    assert tuple(logits(model).shape) == (2, 2)


@pytest.mark.parametrize(
    ("family", "method", "expected"),
    [
        ("gpt2", "lora", {"c_attn"}),
        ("bert", "lora", {"query", "value"}),
        ("distilbert", "lora", {"q_lin", "v_lin"}),
        ("llama", "lora", {"q_proj", "v_proj"}),
        ("llama", "ia3", {"k_proj", "v_proj", "down_proj"}),
    ],
)
def test_default_target_modules(family: str, method: str, expected: set[str]) -> None:
    model = make(family, "classification", method)
    marker = "lora_A" if method == "lora" else "ia3_l"
    targeted = {n.split(f".{marker}")[0].rsplit(".", 1)[-1] for n, _ in adapter_layout(model)
                if marker in n}  # fmt: skip
    assert targeted == expected


def test_attach_seed_makes_adapter_init_reproducible() -> None:
    a = adapter_vector(make("gpt2", "causal_lm", "prompt_tuning", seed=5))
    b = adapter_vector(make("gpt2", "causal_lm", "prompt_tuning", seed=5))
    c = adapter_vector(make("gpt2", "causal_lm", "prompt_tuning", seed=6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_wrong_vector_size_is_rejected() -> None:
    model = make("bert", "classification", "lora")
    n = adapter_vector(model).size
    with pytest.raises(AdapterStateError, match=f"has shape \\({n + 1},\\) but .* {n} entries"):
        load_adapter_vector(model, np.zeros(n + 1, dtype=np.float32))
    with pytest.raises(AdapterStateError, match="NaN"):
        load_adapter_vector(model, np.full(n, np.nan, dtype=np.float32))


def test_vector_of_model_without_adapter_is_rejected() -> None:
    base = build_tiny_model("bert", task="classification", vocab_size=VOCAB, seed=0, pad_token_id=0)
    base.requires_grad_(False)
    with pytest.raises(AdapterStateError, match="attach an adapter"):
        adapter_vector(base)


def test_unknown_option_names_the_option_and_lists_valid_ones() -> None:
    with pytest.raises(
        AdapterConfigError,
        match=r"'rank'.*'lora'.*valid options are: .*lora_alpha",
    ):
        AdapterSpec("lora", {"rank": 8})
    with pytest.raises(AdapterConfigError, match=r"'r'.*'ia3'"):
        AdapterSpec("ia3", {"r": 8})


@pytest.mark.parametrize(
    ("method", "options", "match"),
    [
        ("dora", {}, "unknown adapter method 'dora'"),
        ("lora", {"r": 0}, "r=0 must be a positive integer"),
        ("lora", {"lora_dropout": 1.5}, "lora_dropout=1.5"),
        ("lora", {"lora_alpha": -1}, "lora_alpha=-1"),
        ("prompt_tuning", {"num_virtual_tokens": 2.5}, "num_virtual_tokens=2.5"),
    ],
)
def test_bad_values_rejected(method: str, options: dict, match: str) -> None:
    with pytest.raises(AdapterConfigError, match=match):
        AdapterSpec(method, options)


def test_missing_target_module_and_unsupported_combinations_rejected() -> None:
    base = build_tiny_model("bert", task="classification", vocab_size=VOCAB, seed=0, pad_token_id=0)
    spec = AdapterSpec("lora", {"target_modules": ["no_such_layer"]})
    with pytest.raises(AdapterConfigError, match="no_such_layer"):
        attach_adapter(base, spec, family="bert", task="classification")
    dbase = build_tiny_model(
        "distilbert", task="classification", vocab_size=VOCAB, seed=0, pad_token_id=0
    )
    with pytest.raises(AdapterConfigError, match="prefix_tuning needs past key values"):
        attach_adapter(
            dbase, AdapterSpec("prefix_tuning"), family="distilbert", task="classification"
        )
    with pytest.raises(
        AdapterConfigError, match="no default target_modules for model family 'opt'"
    ):
        attach_adapter(base, AdapterSpec("lora"), family="opt", task="classification")
