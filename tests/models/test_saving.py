"""Saving adapters and base models, and loading pretrained models from disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import PreTrainedModel

from models import (
    PEFT_METHODS,
    AdapterSpec,
    ModelLoadError,
    adapter_vector,
    attach_adapter,
    build_tiny_model,
    family_of,
    load_adapter,
    load_adapter_vector,
    load_pretrained,
    save_adapter,
    save_base_model,
    train_tokenizer,
)

VOCAB = 400
SMALL = {"lora": {"r": 4}, "prefix_tuning": {"num_virtual_tokens": 3},
         "prompt_tuning": {"num_virtual_tokens": 3}, "ia3": {}}  # fmt: skip
TEXTS = ["a federated model learns from many parties", "the server sees only the sum"] * 4


def base(family: str, task: str) -> PreTrainedModel:
    return build_tiny_model(family, task=task, vocab_size=VOCAB, seed=11, pad_token_id=0)


def logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(5, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def perturbed(family: str, task: str, method: str) -> PeftModel:
    model = attach_adapter(
        base(family, task), AdapterSpec(method, SMALL[method]), family=family, task=task, seed=0
    )
    assert isinstance(model, PeftModel)
    vec = adapter_vector(model)
    load_adapter_vector(model, np.random.default_rng(3).normal(0, 0.3, vec.shape))
    return model


@pytest.mark.parametrize("method", PEFT_METHODS)
@pytest.mark.parametrize(("family", "task"), [("bert", "classification"), ("gpt2", "causal_lm")])
def test_saved_adapter_reloads_with_identical_outputs(
    tmp_path: Path, family: str, task: str, method: str
) -> None:
    model = perturbed(family, task, method)
    save_adapter(model, tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(base(family, task), str(tmp_path))
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=0)
    assert not torch.equal(logits(base(family, task)), logits(model))


def test_load_adapter_trainable_gives_same_vector(tmp_path: Path) -> None:
    model = perturbed("llama", "classification", "lora")
    save_adapter(model, tmp_path)
    again = load_adapter(base("llama", "classification"), tmp_path, trainable=True)
    np.testing.assert_array_equal(adapter_vector(again), adapter_vector(model))
    with pytest.raises(ModelLoadError, match="no adapter at"):
        load_adapter(base("llama", "classification"), tmp_path / "missing")


@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_run_dir_from_peft_model_reloads_everything(tmp_path: Path, method: str) -> None:
    tok = train_tokenizer(TEXTS, vocab_size=300, family="bert")
    original = {k: v.clone() for k, v in base("bert", "classification").state_dict().items()}
    model = perturbed("bert", "classification", method)
    save_base_model(model, tok, tmp_path / "base")
    save_adapter(model, tmp_path / "adapter")

    loaded_base, loaded_tok = load_pretrained(tmp_path / "base", task="classification")
    assert loaded_tok.get_vocab() == tok.get_vocab()
    state = loaded_base.state_dict()
    assert state.keys() == original.keys()
    assert all(torch.equal(state[k], original[k]) for k in original)
    model_after = load_adapter(loaded_base, tmp_path / "adapter")
    torch.testing.assert_close(logits(model_after), logits(model), rtol=0, atol=0)


@pytest.mark.parametrize(("family", "task"), [("gpt2", "causal_lm"), ("roberta", "classification")])
def test_load_pretrained_from_saved_directory(tmp_path: Path, family: str, task: str) -> None:
    tok = train_tokenizer(TEXTS, vocab_size=300, family=family)
    model = build_tiny_model(
        family, task=task, vocab_size=len(tok), seed=4, pad_token_id=tok.pad_token_id
    )
    save_base_model(model, tok, tmp_path)
    loaded, loaded_tok = load_pretrained(str(tmp_path), task=task, num_labels=2)
    assert family_of(loaded) == family
    assert loaded_tok.pad_token_id == tok.pad_token_id == loaded.config.pad_token_id
    batch = loaded_tok(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_load_pretrained_missing_path_names_path_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match=r"nope.*does not exist.*save_pretrained"):
        load_pretrained(missing, task="classification")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"cannot load model .*empty.*config.json"):
        load_pretrained(empty, task="classification")
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        load_pretrained("secfed-test/definitely-not-cached-model", task="causal_lm")
