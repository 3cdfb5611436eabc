"""The job seed fixes everything a job creates, for a ``model.path`` model too.

A Hugging Face base model without a classification head is saved to disk; loading it for
classification makes a new, randomly initialised head. Two builds of one config must give the
same initial adapter vector (head included) and the same partitions; another seed must not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

import models
from secfed import builtin_task
from secfed.assembly import build_parts
from tests.secfed.conftest import tiny_job


@pytest.fixture(scope="module")
def headless_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT encoder (no head) and its tokenizer, written by save_pretrained."""
    out = tmp_path_factory.mktemp("headless_bert")
    texts, _ = builtin_task.generate(num_examples=300, seed=99)
    tokenizer = models.train_tokenizer(texts, vocab_size=300, family="bert")
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _initial(cfg_seed: int, path: Path) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    cfg = tiny_job(seed=cfg_seed, model={"path": str(path), "max_length": 16})
    parts = build_parts(cfg)
    head = next(
        p.detach().numpy().copy()
        for n, p in parts.model.named_parameters()
        if "classifier" in n and n.endswith("weight") and p.requires_grad
    )
    return models.adapter_vector(parts.model), [s.train for s in parts.shards], head


def test_two_builds_of_a_path_model_are_identical(headless_bert: Path) -> None:
    # Disturb the global RNG between builds: the job must not depend on it.
    torch.manual_seed(123)
    vec_a, shards_a, head_a = _initial(5, headless_bert)
    torch.manual_seed(456)
    vec_b, shards_b, head_b = _initial(5, headless_bert)
    assert np.array_equal(vec_a, vec_b)
    assert np.array_equal(head_a, head_b)
    assert all(np.array_equal(a, b) for a, b in zip(shards_a, shards_b, strict=True))
    # The head is new (not in the checkpoint), so a different seed draws a different one.
    vec_c, _, head_c = _initial(6, headless_bert)
    assert not np.array_equal(head_a, head_c)
    assert not np.array_equal(vec_a, vec_c)


def test_load_pretrained_leaves_global_rng_alone(headless_bert: Path) -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    models.load_pretrained(headless_bert, task="classification", num_labels=2, seed=1)
    assert torch.equal(torch.rand(3), expected)
