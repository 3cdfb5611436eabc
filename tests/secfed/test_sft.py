"""Causal-LM instruction tuning: records, masked labels, per-sequence loss, evaluation."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from models import AdapterSpec, attach_adapter, build_tiny_model, train_tokenizer
from secfed.errors import DataError
from secfed.sft import (
    IGNORE,
    encode_sft,
    evaluate_sft,
    generate_sft_task,
    greedy_generate,
    load_sft_records,
    sft_loss,
)

RECORDS = generate_sft_task(num_examples=400, seed=0)
HELD_OUT = generate_sft_task(num_examples=48, seed=1)


@cache
def tokenizer(family: str) -> PreTrainedTokenizerFast:
    return train_tokenizer([p + r for p, r in RECORDS], vocab_size=300, family=family)


def model(family: str = "gpt2", seed: int = 0) -> PreTrainedModel:
    tok = tokenizer(family)
    return build_tiny_model(
        family,
        task="causal_lm",
        vocab_size=len(tok),
        seed=seed,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def test_load_records_from_json_and_jsonl_with_custom_keys(tmp_path: Path) -> None:
    rows = [{"q": "say hi", "a": " hi"}, {"q": "say yo", "a": " yo", "extra": 1}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    expected = [("say hi", " hi"), ("say yo", " yo")]
    for name in ("d.json", "d.jsonl"):
        assert load_sft_records(tmp_path / name, prompt_key="q", response_key="a") == expected
    with pytest.raises(DataError, match=r"record 0 .* lacks 'prompt' or 'response' .*\['a', 'q'\]"):
        load_sft_records(tmp_path / "d.json")
    with pytest.raises(DataError, match="does not exist"):
        load_sft_records(tmp_path / "missing.jsonl")


def test_builtin_task_is_deterministic_and_correct() -> None:
    assert generate_sft_task(num_examples=50, seed=3) == generate_sft_task(num_examples=50, seed=3)
    assert generate_sft_task(num_examples=50, seed=3) != generate_sft_task(num_examples=50, seed=4)
    ops = set()
    for prompt, response in RECORDS:
        op, rest = prompt.split(": ")
        items = rest.removesuffix(" =").split()
        expected = {"copy": items, "reverse": items[::-1], "first": items[:1]}[op]
        assert response == " " + " ".join(expected)
        ops.add(op)
    assert ops == {"copy", "reverse", "first"}


def test_labels_mask_prompt_and_padding() -> None:
    tok = tokenizer("gpt2")
    records = [("reverse: a b c =", " c b a"), ("first: d e =", " d")]
    ids, mask, labels = encode_sft(tok, records, max_length=32).tensors
    for row, (prompt, response) in enumerate(records):
        n_prompt = 1 + len(tok(prompt, add_special_tokens=False)["input_ids"])  # + bos
        n_resp = len(tok(response, add_special_tokens=False)["input_ids"]) + 1  # + eos
        length = int(mask[row].sum())
        assert length == n_prompt + n_resp
        assert (labels[row, :n_prompt] == IGNORE).all()
        assert (labels[row, length:] == IGNORE).all()
        assert torch.equal(labels[row, n_prompt:length], ids[row, n_prompt:length])
        assert int(ids[row, length - 1]) == tok.eos_token_id
        assert tok.decode(ids[row, n_prompt : length - 1]) == response
        assert (ids[row, length:] == tok.pad_token_id).all()
    with pytest.raises(DataError, match="max_length=4 leaves no room"):
        encode_sft(tok, records, max_length=4)


def _manual_loss(m: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One sequence alone, unpadded: mean next-token loss over its response tokens."""
    keep = labels != IGNORE
    length = int(keep.nonzero().max()) + 1
    logits = m(input_ids=ids[None, :length]).logits[0]
    targets = ids[1:length]
    losses = torch.nn.functional.cross_entropy(logits[:-1], targets, reduction="none")
    return losses[keep[1:length]].mean()


def test_per_sequence_loss_matches_manual_and_differs_from_hf_batch_mean() -> None:
    m = model("gpt2")
    m.eval()
    records = [("copy: a b c d =", " a b c d"), ("first: e f =", " e"), ("reverse: g h =", " h g")]
    ids, mask, labels = encode_sft(tokenizer("gpt2"), records, max_length=32).tensors
    with torch.no_grad():
        ours = sft_loss(m, (ids, mask, labels))
        manual = torch.stack([_manual_loss(m, ids[i], labels[i]) for i in range(3)])
        hf = m(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, manual, rtol=1e-5, atol=1e-5)
    assert abs(float(ours.mean()) - float(hf)) > 1e-3  # HF weights sequences by token count


def test_prompt_tuning_offset_matches_peft_own_loss() -> None:
    """With virtual tokens prepended, one sequence's loss equals peft's (which pads labels)."""
    m = attach_adapter(
        model("llama"),
        AdapterSpec("prompt_tuning", {"num_virtual_tokens": 3}),
        family="llama",
        task="causal_lm",
        seed=0,
    )
    m.eval()
    ids, mask, labels = encode_sft(tokenizer("llama"), RECORDS[:2], max_length=32).tensors
    with torch.no_grad():
        ours = sft_loss(m, (ids, mask, labels))
        for i in range(2):
            n = int(mask[i].sum())
            peft_loss = m(input_ids=ids[i : i + 1, :n], labels=labels[i : i + 1, :n]).loss
            torch.testing.assert_close(ours[i], peft_loss, rtol=1e-5, atol=1e-5)


def test_greedy_generation_matches_hf_generate() -> None:
    m, tok = model("gpt2", seed=2), tokenizer("gpt2")
    prompts = ["copy: a b =", "reverse: c d e =", "first: a b ="]
    ours = greedy_generate(m, tok, prompts, max_new_tokens=5)
    for prompt, text in zip(prompts, ours, strict=True):
        ids = torch.tensor([[tok.bos_token_id, *tok(prompt)["input_ids"]]])
        out = m.generate(  # type: ignore[operator]
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=5,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )[0, ids.shape[1] :]
        out = out[: (out == tok.eos_token_id).nonzero()[0, 0]] if tok.eos_token_id in out else out
        assert text == tok.decode(out, skip_special_tokens=True)


def _train(m: torch.nn.Module, data: torch.utils.data.TensorDataset, *, steps: int,
           lr: float, batch: int = 32) -> None:  # fmt: skip
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(0)
    m.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        loss = sft_loss(m, [t[idx] for t in data.tensors]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_lora_training_lowers_held_out_loss() -> None:
    tok = tokenizer("gpt2")
    train = encode_sft(tok, RECORDS, max_length=24)
    test = encode_sft(tok, HELD_OUT, max_length=24)
    m = attach_adapter(model("gpt2"), AdapterSpec("lora", {"r": 8}), family="gpt2",
                       task="causal_lm", seed=0)  # fmt: skip
    before = evaluate_sft(m, tok, test, HELD_OUT[:4], max_new_tokens=5)
    _train(m, train, steps=12, lr=2e-2, batch=16)
    after = evaluate_sft(m, tok, test, HELD_OUT[:4], max_new_tokens=5)
    assert after["loss"] < before["loss"] - 0.3
    assert after["perplexity"] < before["perplexity"]
    assert set(after) == {"loss", "perplexity", "exact_match"}


@pytest.mark.slow
def test_lora_training_improves_exact_match() -> None:
    """Base weights stay random and frozen, so only LoRA learns: expect a clear rise."""
    tok = tokenizer("gpt2")
    train = encode_sft(tok, RECORDS, max_length=24)
    test = encode_sft(tok, HELD_OUT, max_length=24)
    m = attach_adapter(model("gpt2"), AdapterSpec("lora", {"r": 8}), family="gpt2",
                       task="causal_lm", seed=0)  # fmt: skip
    before = evaluate_sft(m, tok, test, HELD_OUT, max_new_tokens=6)
    _train(m, train, steps=300, lr=1e-2)
    after = evaluate_sft(m, tok, test, HELD_OUT, max_new_tokens=6)
    assert before["exact_match"] == 0.0
    assert after["exact_match"] >= 0.15, after
    assert after["loss"] < before["loss"] - 0.5
