"""Train a small tokenizer locally (deterministic BPE), with each family's special tokens."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from transformers import PreTrainedTokenizerFast

from .bpe import train_bpe
from .errors import ModelConfigError
from .tiny import FAMILIES, MAX_POSITIONS


@dataclass(frozen=True)
class _Specials:
    """Special tokens of a family; ``order`` fixes their ids 0, 1, 2, ..."""

    order: tuple[str, ...]
    roles: dict[str, str]


_WORDPIECE = _Specials(
    order=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    roles={
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    },
)

_ROBERTA = _Specials(
    order=("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
    roles={
        "bos_token": "<s>",
        "cls_token": "<s>",
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
    },
)

_SPECIALS: dict[str, _Specials] = {
    "bert": _WORDPIECE,
    "distilbert": _WORDPIECE,
    "roberta": _ROBERTA,
    "bart": _ROBERTA,
    "albert": _Specials(
        order=("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"),
        roles={
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
        },
    ),
    "deberta-v2": _Specials(
        order=("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"),
        roles={
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "unk_token": "[UNK]",
            "mask_token": "[MASK]",
        },
    ),
    "qwen2": _Specials(
        order=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"),
        roles={
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<pad>",
        },
    ),
    "gpt2": _Specials(
        order=("<|endoftext|>", "<pad>"),
        roles={
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<pad>",
        },
    ),
    "llama": _Specials(
        order=("<unk>", "<s>", "</s>", "<pad>"),
        roles={
            "unk_token": "<unk>",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "<pad>",
        },
    ),
}


def _word_counts(texts: Iterable[str], tok: Tokenizer) -> Counter[str]:
    counts: Counter[str] = Counter()
    normalizer, pre = tok.normalizer, tok.pre_tokenizer
    for text in texts:
        if normalizer is not None:
            text = normalizer.normalize_str(text)
        counts.update(word for word, _ in pre.pre_tokenize_str(text))
    return counts


#: Families with a lower-casing WordPiece; every other family gets a byte-level BPE.
_WORDPIECE_FAMILIES = frozenset({"bert", "distilbert", "albert"})


def _wordpiece(
    texts: Iterable[str], vocab_size: int, specials: _Specials, alphabet: Iterable[str] = ()
) -> Tokenizer:
    unk = specials.roles["unk_token"]
    shell = Tokenizer(models.WordPiece(unk_token=unk))
    shell.normalizer = normalizers.BertNormalizer(lowercase=True)
    shell.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab, _ = train_bpe(
        _word_counts(texts, shell),
        vocab_size=vocab_size,
        special_tokens=specials.order,
        alphabet=[x for ch in alphabet for x in (ch, "##" + ch)],
        prefix="##",
    )
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=unk))
    tok.normalizer = shell.normalizer
    tok.pre_tokenizer = shell.pre_tokenizer
    tok.decoder = decoders.WordPiece()
    return tok


def _byte_bpe(
    texts: Iterable[str], vocab_size: int, specials: _Specials, alphabet: Iterable[str] = ()
) -> Tokenizer:
    del alphabet  # byte-level: every byte is already in the alphabet
    shell = Tokenizer(models.BPE())
    shell.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    vocab, merges = train_bpe(
        _word_counts(texts, shell),
        vocab_size=vocab_size,
        special_tokens=specials.order,
        alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = shell.pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    return tok


def _special_id(tok: Tokenizer, token: str) -> int:
    found = tok.token_to_id(token)
    if found is None:  # the trainer always adds special tokens; guard anyway
        raise ModelConfigError(f"special token {token!r} missing from the trained vocabulary")
    return int(found)


def _post_processor(family: str, tok: Tokenizer) -> processors.PostProcessor | None:
    ids = {t: _special_id(tok, t) for t in _SPECIALS[family].order}
    if family in ("bert", "distilbert", "albert", "deberta-v2"):
        return processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
        )
    if family in ("roberta", "bart"):
        return processors.RobertaProcessing(("</s>", ids["</s>"]), ("<s>", ids["<s>"]))
    if family == "llama":
        return processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", ids["<s>"])]
        )
    return None  # gpt2 and qwen2 add no special tokens, as the originals do


def train_tokenizer(
    texts: Iterable[str], *, vocab_size: int = 2000, family: str, alphabet: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """Train a tokenizer for ``family`` on ``texts``; the same texts give the same tokenizer.

    bert/distilbert/albert get a lower-casing WordPiece; roberta, bart, deberta-v2, gpt2,
    llama and qwen2 get a byte-level BPE (never an unknown token). Each gets its family's
    usual special tokens (plus a pad token distinct from eos), at the lowest ids, and its
    family's template ([CLS] .. [SEP], <s> .. </s>, or none for gpt2/qwen2). ``alphabet``
    adds characters to a WordPiece vocabulary (word-initial and ``##`` forms) so words made
    of them never become the unknown token.
    """
    if family not in FAMILIES:
        raise ModelConfigError(
            f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}"
        )
    specials = _SPECIALS[family]
    byte_level = family not in _WORDPIECE_FAMILIES
    floor = len(specials.order) + (256 if byte_level else 0)
    if vocab_size <= floor:
        raise ModelConfigError(
            f"vocab_size={vocab_size} is too small for {family}; use more than {floor}"
        )
    build = _byte_bpe if byte_level else _wordpiece
    tok = build(texts, vocab_size, specials, tuple(alphabet))
    tok.add_special_tokens(list(specials.order))
    post = _post_processor(family, tok)
    if post is not None:
        tok.post_processor = post
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=MAX_POSITIONS,
        padding_side="right",
        **specials.roles,
    )
