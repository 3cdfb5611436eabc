"""Built-in tiny models: every family builds, runs, is seed-deterministic and small."""

from __future__ import annotations

import pytest
import torch

from models import CAUSAL_FAMILIES, FAMILIES, ModelConfigError, build_tiny_model

VOCAB = 500
CASES = [(f, "classification") for f in FAMILIES] + [(f, "causal_lm") for f in CAUSAL_FAMILIES]


EOS = 2


def _pad(family: str) -> int:
    return 1 if family in ("roberta", "bart") else 0


def _batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(5, VOCAB, (3, 10), generator=gen)
    mask = torch.ones_like(ids)
    ids[:2, -1] = EOS  # bart classifies from each sequence's last eos token
    ids[2, 6] = EOS
    ids[2, 7:] = 0
    mask[2, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("family", "task"), CASES)
def test_builds_and_runs_forward(family: str, task: str) -> None:
    model = build_tiny_model(
        family,
        task=task,
        vocab_size=VOCAB,
        num_labels=3,
        seed=0,
        pad_token_id=_pad(family),
        eos_token_id=EOS,
    )
    batch = _batch()
    with torch.no_grad():
        logits = model(**batch).logits
    expected = (3, 3) if task == "classification" else (3, 10, VOCAB)
    assert tuple(logits.shape) == expected
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights_other_seed_differs(family: str) -> None:
    def build(seed: int) -> torch.nn.Module:
        return build_tiny_model(
            family,
            task="classification",
            vocab_size=VOCAB,
            seed=seed,
            pad_token_id=_pad(family),
            eos_token_id=EOS,
        )

    a, b, c = _state(build(3)), _state(build(3)), _state(build(4))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_are_a_few_hundred_kilobytes(family: str) -> None:
    model = build_tiny_model(
        family,
        task="classification",
        vocab_size=VOCAB,
        seed=0,
        pad_token_id=_pad(family),
        eos_token_id=EOS,
    )
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    assert 100_000 < size < 1_000_000, size  # bart (encoder + decoder) is the largest


def test_build_leaves_global_rng_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    build_tiny_model("gpt2", task="causal_lm", vocab_size=VOCAB, seed=9, pad_token_id=0)
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"family": "t5", "task": "classification"}, "unknown model family 't5'"),
        ({"family": "bert", "task": "seq2seq"}, "unknown task 'seq2seq'"),
        ({"family": "distilbert", "task": "causal_lm"}, "no causal language-model head"),
        ({"family": "bert", "task": "classification", "pad_token_id": VOCAB}, "pad_token_id=500"),
        ({"family": "albert", "task": "causal_lm"}, "no causal language-model head"),
        ({"family": "bart", "task": "classification"}, "bart needs eos_token_id"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, match: str) -> None:
    args = {"vocab_size": VOCAB, "seed": 0, "pad_token_id": 0, **kwargs}
    with pytest.raises(ModelConfigError, match=match):
        build_tiny_model(**args)
