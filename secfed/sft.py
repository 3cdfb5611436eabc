"""Causal-LM instruction tuning (SFT): prompt/response records, masked labels, evaluation.

A record ``(prompt, response)`` becomes ``[bos] prompt response eos`` (the prompt and the
response tokenised separately, so no token straddles the boundary). Labels are ``-100``
on the bos, the prompt and the padding: the loss counts response tokens (and the closing
eos) only. :func:`sft_loss` returns one loss per sequence, the mean over that sequence's
response tokens, so examples stay independent (as DP-SGD needs); Hugging Face's built-in
loss averages over every token of the batch instead.

The built-in task (:func:`generate_sft_task`) is a deterministic mix of three string
operations on short sequences of symbols, answerable exactly, so greedy generation can
be scored by exact match.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional
from torch.utils.data import TensorDataset
from transformers import PreTrainedTokenizerBase

from .errors import DataError

IGNORE = -100
SYMBOLS = ("a", "b", "c", "d", "e", "f", "g", "h")
OPERATIONS = ("copy", "reverse", "first")


def read_json_rows(path: Path) -> list[Any]:
    """The objects of a ``.json`` list or a ``.jsonl`` file (one object per line)."""
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path} is not valid JSON ({exc}); use a list of objects or JSON lines"
        ) from exc
    if not isinstance(rows, list):
        raise DataError(f"{path} must hold a list of objects (or one object per line)")
    return rows


def load_sft_records(
    path: Path | str, *, prompt_key: str = "prompt", response_key: str = "response"
) -> list[tuple[str, str]]:
    """Read ``(prompt, response)`` pairs from a ``.json`` list or a ``.jsonl`` file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"SFT data file {p} does not exist; pass a .json or .jsonl file")
    rows = read_json_rows(p)
    records: list[tuple[str, str]] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or prompt_key not in row or response_key not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(
                f"record {i} of {p} lacks {prompt_key!r} or {response_key!r} (has {keys}); "
                "set the prompt and response keys to the file's field names"
            )
        prompt, response = row[prompt_key], row[response_key]
        if not isinstance(prompt, str) or not isinstance(response, str) or not response.strip():
            raise DataError(
                f"record {i} of {p}: prompt and response must be text, response non-empty"
            )
        records.append((prompt, response))
    if not records:
        raise DataError(f"{p} holds no records")
    return records


def _answer(operation: str, items: list[str]) -> list[str]:
    if operation == "copy":
        return items
    if operation == "reverse":
        return items[::-1]
    return items[:1]  # first


def generate_sft_task(
    *, num_examples: int, seed: int, min_len: int = 2, max_len: int = 4
) -> list[tuple[str, str]]:
    """``num_examples`` records like ``("reverse: a c b =", " b c a")``, deterministic by seed.

    Operations: ``copy``, ``reverse`` and ``first`` (the first symbol) over 2-4 symbols
    from an 8-letter alphabet. The response starts with a space so byte-level tokenizers
    keep word boundaries.
    """
    if num_examples < 1:
        raise DataError(f"num_examples={num_examples} must be at least 1")
    if not 1 <= min_len <= max_len:
        raise DataError(f"need 1 <= min_len <= max_len, got {min_len} and {max_len}")
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(num_examples):
        op = OPERATIONS[int(rng.integers(len(OPERATIONS)))]
        n = int(rng.integers(min_len, max_len + 1))
        items = [SYMBOLS[int(k)] for k in rng.integers(len(SYMBOLS), size=n)]
        records.append((f"{op}: {' '.join(items)} =", " " + " ".join(_answer(op, items))))
    return records


def _end_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return int(token_id)
    raise DataError("the tokenizer has no eos (or sep) token to end responses with; add one")


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    return ([int(bos)] if bos is not None else []) + ids


def encode_sft(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[tuple[str, str]], *, max_length: int
) -> TensorDataset:
    """``TensorDataset(input_ids, attention_mask, labels)``, right-padded to the longest.

    Sequences longer than ``max_length`` lose the end of their response; a record whose
    prompt alone fills ``max_length`` is an error (it would teach nothing).
    """
    pad = tokenizer.pad_token_id
    if pad is None:
        raise DataError("the tokenizer has no pad token; set tokenizer.pad_token first")
    end = _end_id(tokenizer)
    rows: list[tuple[list[int], list[int]]] = []
    for i, (prompt, response) in enumerate(records):
        head = _prompt_ids(tokenizer, prompt)
        tail = [*tokenizer(response, add_special_tokens=False)["input_ids"], end]
        if len(head) >= max_length:
            raise DataError(
                f"record {i}: the prompt takes {len(head)} tokens, max_length={max_length} "
                "leaves no room for the response; raise model.max_length or shorten prompts"
            )
        ids = (head + tail)[:max_length]
        rows.append((ids, [IGNORE] * len(head) + ids[len(head) :]))
    if not rows:
        raise DataError("no SFT records to encode")
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for r, (ids, lab) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        mask[r, : len(ids)] = 1
        labels[r, : len(ids)] = torch.tensor(lab)
    return TensorDataset(input_ids, mask, labels)


def token_losses(
    model: torch.nn.Module, batch: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token losses ``[B, T-1]`` and the mask of counted tokens."""
    input_ids, attention_mask, labels = batch[0], batch[1], batch[2]
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    # Prompt tuning prepends virtual tokens: keep the positions of the real tokens only.
    offset = logits.shape[1] - labels.shape[1]
    if offset < 0:
        raise DataError(f"model returned {logits.shape[1]} positions for {labels.shape[1]} tokens")
    logits = logits[:, offset:-1, :]
    target = labels[:, 1:]
    counted = target != IGNORE
    loss = functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        target.reshape(-1).clamp(min=0),
        reduction="none",
    ).view(target.shape)
    return loss * counted, counted


def sft_loss(model: torch.nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
    """Loss per sequence ``[B]``: the mean over that sequence's response tokens."""
    loss, counted = token_losses(model, batch)
    return loss.sum(dim=1) / counted.sum(dim=1).clamp(min=1)


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
) -> list[str]:
    """Greedy continuations of ``prompts`` (decoded, stopping at eos).

    Prompts of equal token length are batched without padding, so no model needs
    position ids for left padding; the whole sequence is re-run each step (tiny models).
    """
    end = _end_id(tokenizer)
    encoded = [_prompt_ids(tokenizer, p) for p in prompts]
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    outputs: list[list[int]] = [[] for _ in prompts]
    model.eval()
    for members in groups.values():
        seq = torch.tensor([encoded[i] for i in members], dtype=torch.long)
        done = torch.zeros(len(members), dtype=torch.bool)
        for _ in range(max_new_tokens):
            logits = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits
            nxt = logits[:, -1, :].argmax(dim=-1)
            for row, i in enumerate(members):
                if not done[row]:
                    if int(nxt[row]) == end:
                        done[row] = True
                    else:
                        outputs[i].append(int(nxt[row]))
            if bool(done.all()):
                break
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    return [str(tokenizer.decode(ids, skip_special_tokens=True)) for ids in outputs]


def _normalise(text: str) -> str:
    return " ".join(text.split())


@torch.no_grad()
def evaluate_sft(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dataset: TensorDataset,
    records: Sequence[tuple[str, str]],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 64,
) -> dict[str, float]:
    """Held-out ``loss`` (mean of per-sequence means), ``perplexity`` and ``exact_match``.

    ``perplexity`` is ``exp`` of the mean loss over all response tokens of ``dataset``;
    ``exact_match`` is the share of ``records`` whose greedy response equals the
    reference after collapsing whitespace (``records`` may be a small subset).
    """
    model.eval()
    seq_total, tok_total, tokens, count = 0.0, 0.0, 0, 0
    tensors = dataset.tensors
    for start in range(0, len(dataset), batch_size):
        batch = [t[start : start + batch_size] for t in tensors]
        loss, counted = token_losses(model, batch)
        per_seq = loss.sum(dim=1) / counted.sum(dim=1).clamp(min=1)
        seq_total += float(per_seq.sum())
        tok_total += float(loss.sum())
        tokens += int(counted.sum())
        count += per_seq.shape[0]
    result: dict[str, Any] = {
        "loss": seq_total / max(count, 1),
        "perplexity": math.exp(min(tok_total / max(tokens, 1), 50.0)),
        "exact_match": 0.0,
    }
    if records:
        answers = greedy_generate(
            model, tokenizer, [p for p, _ in records], max_new_tokens=max_new_tokens
        )
        hits = sum(
            _normalise(a) == _normalise(r) for a, (_, r) in zip(answers, records, strict=True)
        )
        result["exact_match"] = hits / len(records)
    return result
