"""The families added for FATE-LLM parity (albert, bart, deberta-v2, qwen2), end to end.

Each: a tokenizer trained for it feeds its tiny model; LoRA attaches to its default
targets; the adapter vector round-trips; the adapter saves and reloads through peft.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from models import (
    CAUSAL_FAMILIES,
    AdapterConfigError,
    AdapterSpec,
    adapter_layout,
    adapter_vector,
    attach_adapter,
    build_tiny_model,
    family_of,
    load_adapter_vector,
    save_adapter,
    train_tokenizer,
)

NEW = ("albert", "bart", "deberta-v2", "qwen2")
CASES = [(f, "classification") for f in NEW] + [
    (f, "causal_lm") for f in NEW if f in CAUSAL_FAMILIES
]
TEXTS = ["parties train one adapter together", "the server learns only the sum"] * 4
LORA_TARGETS = {
    "albert": {"query", "value"},
    "bart": {"q_proj", "v_proj"},
    "deberta-v2": {"query_proj", "value_proj"},
    "qwen2": {"q_proj", "v_proj"},
}
_TOKENIZERS: dict[str, PreTrainedTokenizerFast] = {}


def tokenizer(family: str) -> PreTrainedTokenizerFast:
    if family not in _TOKENIZERS:
        _TOKENIZERS[family] = train_tokenizer(TEXTS, vocab_size=320, family=family)
    return _TOKENIZERS[family]


def base(family: str, task: str) -> PreTrainedModel:
    tok = tokenizer(family)
    return build_tiny_model(
        family,
        task=task,
        vocab_size=len(tok),
        seed=1,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )


def encoded(family: str) -> dict[str, torch.Tensor]:
    return dict(tokenizer(family)(TEXTS[:2], padding=True, return_tensors="pt"))


def logits(model: torch.nn.Module, family: str) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**encoded(family)).logits


@pytest.mark.parametrize(("family", "task"), CASES)
def test_lora_vector_round_trip_and_peft_reload(tmp_path: Path, family: str, task: str) -> None:
    model = attach_adapter(
        base(family, task), AdapterSpec("lora", {"r": 4}), family=family, task=task, seed=0
    )
    assert isinstance(model, PeftModel)
    assert family_of(model.get_base_model()) == family  # type: ignore[operator, arg-type]
    targeted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in adapter_layout(model)
                if ".lora_A" in n}  # fmt: skip
    assert targeted == LORA_TARGETS[family]
    if task == "classification":
        assert any("modules_to_save" in n for n, _ in adapter_layout(model))
    before = logits(model, family)
    vec = adapter_vector(model)
    load_adapter_vector(model, np.random.default_rng(0).normal(0, 0.3, vec.shape))
    changed = logits(model, family)
    assert not torch.allclose(changed, before)
    save_adapter(model, tmp_path)
    reloaded = PeftModel.from_pretrained(base(family, task), str(tmp_path))
    torch.testing.assert_close(logits(reloaded, family), changed, rtol=0, atol=0)
    load_adapter_vector(model, vec)
    torch.testing.assert_close(logits(model, family), before, rtol=0, atol=0)


@pytest.mark.parametrize("family", NEW)
def test_tokenizer_specials_fit_the_model(family: str) -> None:
    tok = tokenizer(family)
    ids = tok(TEXTS[0])["input_ids"]
    if family in ("albert", "deberta-v2"):
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    elif family == "bart":
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    else:  # qwen2 adds nothing, like the original
        assert tok.cls_token_id is None or ids[0] != tok.cls_token_id
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    out = logits(base(family, "classification"), family)
    assert out.shape == (2, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("family", "task", "method"),
    [
        ("albert", "classification", "prefix_tuning"),
        ("deberta-v2", "classification", "prefix_tuning"),
        ("bart", "classification", "prompt_tuning"),
        ("bart", "classification", "prefix_tuning"),
    ],
)
def test_unsupported_peft_combinations_are_refused(family: str, task: str, method: str) -> None:
    spec = AdapterSpec(method, {"num_virtual_tokens": 2})
    with pytest.raises(AdapterConfigError, match=f"{method} .*{family}|{method} .*Bart"):
        attach_adapter(base(family, task), spec, family=family, task=task)


def test_bart_causal_lm_takes_prompt_tuning() -> None:
    model = attach_adapter(
        base("bart", "causal_lm"),
        AdapterSpec("prompt_tuning", {"num_virtual_tokens": 2}),
        family="bart",
        task="causal_lm",
        seed=0,
    )
    assert logits(model, "bart").shape[-1] == len(tokenizer("bart"))
