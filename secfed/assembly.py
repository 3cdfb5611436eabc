"""Building a job's parts from its config: data tensors, tokenizer, model with adapter."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from peft import PeftModel
from torch.utils.data import TensorDataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import models

from . import builtin_task
from .config import ExperimentConfig
from .data import ClientShard, TextDataset, load_dataset, partition
from .errors import ConfigError
from .progress import ProgressCallback, ProgressEvent, emit

log = logging.getLogger(__name__)

#: Seed of the public corpus the built-in tokenizer is trained on (never client data).
PUBLIC_CORPUS_SEED = 10_007
#: Size of the public corpus for pre-training (its first 2000 texts are the tokenizer's).
PRETRAIN_TEXTS = 8000


@dataclass
class JobParts:
    """Everything a round needs that is rebuilt identically on resume."""

    model: PeftModel | PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    data: TextDataset
    shards: list[ClientShard]
    encoded: TensorDataset
    test_set: TensorDataset
    family: str
    test_records: list[tuple[str, str]] | None = None
    #: DPO jobs: SFT tensors of each pair's (prompt, chosen), for the SFT phase and metrics.
    sft_encoded: TensorDataset | None = None
    sft_test_set: TensorDataset | None = None


def public_corpus(source: str, num_texts: int = 2000, public_words: int = 0) -> list[str] | None:
    """Public texts of a built-in data source (seed :data:`PUBLIC_CORPUS_SEED`), else None.

    They come from the task's generator but not from the job's seed, so they are never the
    clients' examples; the tokenizer and the optional pre-training both use them. With
    ``public_words`` (``model.public_words``), ``num_texts`` more sentences drawn from that
    many words no task uses follow them (:func:`builtin_task.public_word_texts`).
    """
    texts = _task_corpus(source, num_texts)
    if texts is None or not public_words:
        return texts
    return texts + builtin_task.public_word_texts(
        num_texts=num_texts, words=public_words, seed=PUBLIC_CORPUS_SEED + 1
    )


def _task_corpus(source: str, num_texts: int) -> list[str] | None:
    """The built-in generator's public texts for ``source`` (None for file data)."""
    if source == "dpo_builtin":
        from .dpo import generate_preference_task

        pairs = generate_preference_task(num_examples=num_texts, seed=PUBLIC_CORPUS_SEED)
        return [p + c for p, c, _ in pairs] + [p + r for p, _, r in pairs]
    if source == "sft_builtin":
        from .sft import generate_sft_task

        records = generate_sft_task(num_examples=num_texts, seed=PUBLIC_CORPUS_SEED)
        return [p + r for p, r in records]
    if source == "builtin":
        texts, _ = builtin_task.generate(num_examples=num_texts, seed=PUBLIC_CORPUS_SEED)
        return texts
    return None


#: Printable ASCII, added to the public corpus's alphabet for file data so that any ASCII
#: word splits into known pieces instead of one unknown token.
ASCII_ALPHABET = tuple(chr(c) for c in range(33, 127))


def tokenizer_disclosure(cfg: ExperimentConfig) -> str | None:
    """The disclosure of client text the job's tokenizer makes (None: it makes none)."""
    if cfg.model.path is None and cfg.model.tokenizer_from_client_data:
        return (
            "the built-in model's tokenizer was trained on every client's training texts pooled "
            "together (model.tokenizer_from_client_data = true): its vocabulary reveals words "
            "and word frequencies of client data to everyone who holds the model; this "
            "disclosure is outside every accountant and protocol"
        )
    return None


def _tokenizer_corpus(
    cfg: ExperimentConfig, data: TextDataset
) -> tuple[list[str], tuple[str, ...]]:
    """Texts (and extra alphabet) the built-in tokenizer is trained on: a public corpus.

    Client texts are never pooled unless ``model.tokenizer_from_client_data`` opts in,
    which DP refuses (the vocabulary would be an unaccounted release of client text).
    """
    p = cfg.privacy
    if cfg.model.tokenizer_from_client_data:
        if p.sample.enabled or p.user.enabled:
            raise ConfigError(
                "model.tokenizer_from_client_data = true pools client texts outside the "
                "accountant, which differential privacy cannot allow: remove it (the tokenizer "
                "then comes from the public corpus) or give a pre-trained model.path"
            )
        log.warning("privacy: %s", tokenizer_disclosure(cfg))
        return data.texts, ()
    corpus = public_corpus(cfg.data.source, public_words=cfg.model.public_words)
    if corpus is not None:
        return corpus, ()
    # File data: the public built-in corpus of the same task kind, with all printable ASCII.
    kind = "sft_builtin" if cfg.model.task == "causal_lm" else "builtin"
    public = public_corpus(kind, public_words=cfg.model.public_words)
    assert public is not None
    log.info("tokenizer trained on the public built-in corpus, never on client texts")
    return public, ASCII_ALPHABET


def _pretrain(
    cfg: ExperimentConfig,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    progress: ProgressCallback | None = None,
) -> None:
    """Public pre-training of the built-in base (``model.pretrain_steps``), cached on disk."""
    corpus = public_corpus(cfg.data.source, PRETRAIN_TEXTS, cfg.model.public_words)
    if corpus is None or cfg.seed == PUBLIC_CORPUS_SEED:
        raise ConfigError(
            "model.pretrain_steps needs a public corpus disjoint from the clients' data: use "
            f"data.source = 'builtin' or 'sft_builtin' with seed != {PUBLIC_CORPUS_SEED}, or "
            "set model.pretrain_steps = 0"
        )
    spec = models.PretrainSpec(steps=cfg.model.pretrain_steps, seed=PUBLIC_CORPUS_SEED)

    def on_step(done: int, total: int) -> None:
        emit(progress, ProgressEvent("pretrain", done, total))

    models.pretrain_tiny(
        base, tokenizer, corpus, spec, family=cfg.model.family, task=cfg.model.base_task,
        max_length=cfg.model.max_length, on_step=on_step,
    )  # fmt: skip


def encode(
    tokenizer: PreTrainedTokenizerBase, data: TextDataset, *, max_length: int
) -> TensorDataset:
    """Token ids, attention masks and labels as tensors (padded to ``max_length``)."""
    enc = tokenizer(
        data.texts,
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    labels = torch.tensor(data.labels, dtype=torch.long)
    return TensorDataset(enc["input_ids"], enc["attention_mask"], labels)


def build_parts(
    cfg: ExperimentConfig,
    *,
    progress: ProgressCallback | None = None,
    data: TextDataset | None = None,
    shards: list[ClientShard] | None = None,
    num_labels: int | None = None,
    tokenizer_texts: list[str] | None = None,
) -> JobParts:
    """Data, shards, tokenizer and model with its adapter, deterministic by ``cfg.seed``.

    ``progress`` hears each stage (data, tokenizer, model, pre-training steps). By default the
    data is the job's dataset partitioned across its clients; a Flower node with its own file
    passes ``data`` and ``shards`` (and the shared ``num_labels`` and ``tokenizer_texts``, so
    every node builds the same model).
    """
    emit(progress, ProgressEvent("data"))
    if data is None:
        data = load_dataset(cfg.data, seed=cfg.seed)
    if shards is None:
        shards = partition(data, cfg.data, cfg.federation, seed=cfg.seed)
    log.info(
        "data: %d examples over %d clients (%s)",
        len(data.texts),
        len(shards),
        cfg.data.source if cfg.data.path is None else cfg.data.path,
    )
    num_labels = num_labels or max(data.num_labels, 2)
    if cfg.model.path:
        emit(progress, ProgressEvent("model"))
        log.info("loading model %s", cfg.model.path)
        base, tokenizer = models.load_pretrained(
            cfg.model.path, task=cfg.model.base_task, num_labels=num_labels, seed=cfg.seed
        )
        family = models.family_of(base)
    else:
        family = cfg.model.family
        emit(progress, ProgressEvent("tokenizer"))
        texts, alphabet = _tokenizer_corpus(cfg, data)
        if tokenizer_texts is not None:  # a Flower node: the corpus every node shares
            texts = tokenizer_texts
        tokenizer = models.train_tokenizer(
            texts, vocab_size=cfg.model.vocab_size, family=family, alphabet=alphabet
        )
        emit(progress, ProgressEvent("model"))
        base = models.build_tiny_model(
            family,
            task=cfg.model.base_task,
            vocab_size=len(tokenizer),
            num_labels=num_labels,
            seed=cfg.seed,
            pad_token_id=int(tokenizer.pad_token_id),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        if cfg.model.pretrain_steps:
            _pretrain(cfg, base, tokenizer, progress)
    spec = models.AdapterSpec(cfg.adapter.method, dict(cfg.adapter.options))
    model = models.attach_adapter(
        base, spec, family=family, task=cfg.model.base_task, seed=cfg.seed
    )
    if data.eval_start is not None:
        test_idx = np.arange(data.eval_start, len(data.texts))
    else:
        test_idx = np.concatenate([s.test for s in shards]) if shards else np.array([], dtype=int)
    test_records = None
    sft_encoded = sft_test_set = None
    if data.pairs is not None:
        from .dpo import encode_dpo
        from .sft import encode_sft

        encoded = encode_dpo(tokenizer, data.pairs, max_length=cfg.model.max_length)
        sft_encoded = encode_sft(tokenizer, data.records or [], max_length=cfg.model.max_length)
        sft_test_set = _rows(sft_encoded, test_idx)
        test_records = [(data.pairs[i][0], data.pairs[i][1]) for i in test_idx]
    elif data.records is not None:
        from .sft import encode_sft

        encoded = encode_sft(tokenizer, data.records, max_length=cfg.model.max_length)
        test_records = [data.records[i] for i in test_idx]
    else:
        encoded = encode(tokenizer, data, max_length=cfg.model.max_length)
    test_set = _rows(encoded, test_idx)
    return JobParts(
        model, tokenizer, data, shards, encoded, test_set, family, test_records, sft_encoded,
        sft_test_set,
    )  # fmt: skip


def _rows(dataset: TensorDataset, idx: np.ndarray) -> TensorDataset:
    index = torch.as_tensor(idx, dtype=torch.long)
    return TensorDataset(*(t[index] for t in dataset.tensors))


def client_dataset(parts: JobParts, shard: ClientShard, *, sft: bool = False) -> TensorDataset:
    """The tensors of one client's training examples (``sft``: a DPO job's SFT view)."""
    source = parts.sft_encoded if sft else parts.encoded
    if source is None:
        raise ConfigError("this job has no SFT view of its data (only DPO jobs do)")
    return _rows(source, shard.train)


def client_test_dataset(parts: JobParts, shard: ClientShard) -> TensorDataset:
    """The tensors of one client's held-out examples."""
    return _rows(parts.encoded, shard.test)
