"""Locally trained tokenizers: deterministic, with each family's special tokens."""

from __future__ import annotations

import pytest

from models import FAMILIES, ModelConfigError, build_tiny_model, train_tokenizer

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "federated learning trains one model across many parties",
    "secure aggregation hides each client's update from the server",
    "differential privacy bounds what any single example can reveal",
] * 5


@pytest.mark.parametrize("family", FAMILIES)
def test_training_is_deterministic(family: str) -> None:
    a = train_tokenizer(TEXTS, vocab_size=400, family=family)
    b = train_tokenizer(list(TEXTS), vocab_size=400, family=family)
    assert a.get_vocab() == b.get_vocab()
    assert a(TEXTS[1])["input_ids"] == b(TEXTS[1])["input_ids"]
    assert len(a) <= 400


@pytest.mark.parametrize("family", FAMILIES)
def test_special_tokens_and_padding(family: str) -> None:
    tok = train_tokenizer(TEXTS, vocab_size=400, family=family)
    assert tok.pad_token is not None
    assert tok.pad_token_id is not None
    if tok.eos_token is not None:
        assert tok.pad_token_id != tok.eos_token_id
    batch = tok(["federated learning trains one model across parties", "the dog"], padding=True)
    lengths = {len(ids) for ids in batch["input_ids"]}
    assert len(lengths) == 1
    assert tok.pad_token_id in batch["input_ids"][1]
    assert 0 in batch["attention_mask"][1]
    text = "secure aggregation"
    decoded = tok.decode(tok(text)["input_ids"], skip_special_tokens=True)
    assert isinstance(decoded, str)
    assert decoded.strip() == text


def test_family_specific_framing() -> None:
    bert = train_tokenizer(TEXTS, vocab_size=400, family="bert")
    ids = bert("the fox")["input_ids"]
    assert ids[0] == bert.cls_token_id and ids[-1] == bert.sep_token_id
    assert bert.mask_token == "[MASK]"
    roberta = train_tokenizer(TEXTS, vocab_size=400, family="roberta")
    ids = roberta("the fox")["input_ids"]
    assert ids[0] == roberta.bos_token_id and ids[-1] == roberta.eos_token_id
    assert roberta.pad_token_id == 1  # matches RoBERTa's padding_idx convention
    llama = train_tokenizer(TEXTS, vocab_size=400, family="llama")
    assert llama("the fox")["input_ids"][0] == llama.bos_token_id
    gpt2 = train_tokenizer(TEXTS, vocab_size=400, family="gpt2")
    assert gpt2.bos_token_id not in gpt2("the fox")["input_ids"]


def test_tokenizer_drives_a_tiny_model() -> None:
    tok = train_tokenizer(TEXTS, vocab_size=400, family="llama")
    model = build_tiny_model(
        "llama",
        task="classification",
        vocab_size=len(tok),
        seed=0,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    batch = tok(TEXTS[:3], padding=True, return_tensors="pt")
    assert tuple(model(**batch).logits.shape) == (3, 2)


def test_bad_family_and_tiny_vocab_rejected() -> None:
    with pytest.raises(ModelConfigError, match="unknown model family 'xlnet'"):
        train_tokenizer(TEXTS, family="xlnet")
    with pytest.raises(ModelConfigError, match="vocab_size=100 is too small for gpt2"):
        train_tokenizer(TEXTS, vocab_size=100, family="gpt2")


def test_bpe_known_answer_and_tie_break() -> None:
    from models.bpe import train_bpe

    vocab, merges = train_bpe({"abab": 2, "cd": 4}, vocab_size=100, special_tokens=["<pad>"])
    # (a,b) and (c,d) both count 4: the smaller pair wins the tie; then (ab,ab) with 2.
    assert merges == [("a", "b"), ("c", "d"), ("ab", "ab")]
    assert list(vocab) == ["<pad>", "a", "b", "c", "d", "ab", "cd", "abab"]
    _, wp = train_bpe({"ab": 1}, vocab_size=100, prefix="##")
    assert wp == [("a", "##b")]
