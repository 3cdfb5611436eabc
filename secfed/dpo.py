"""Direct preference optimisation (DPO, Rafailov et al. 2023) of causal-LM adapters.

A preference record is ``(prompt, chosen, rejected)``. Both responses are encoded like SFT
records (:func:`secfed.sft.encode_sft`: labels on the response tokens only) and the pair is
one example: :func:`dpo_loss` returns one loss per PAIR,

    -log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r)))),

``log pi(y)`` the summed log-probability of the response tokens under the adapted model and
``log ref(y)`` the same under the reference policy: the frozen base with the adapter switched
off (``models.adapter_disabled``; no second model in memory), run in eval mode under
``torch.no_grad()``, so it builds no graph and the DP-SGD hooks record nothing.

The policy runs chosen and rejected as two forward passes of ``B`` rows each. Under DP-SGD
every hooked layer then records two outputs per step, and :mod:`privacy.dpsgd` adds the two
per-row gradients of a layer used twice: row ``i`` of both passes is pair ``i``, so the
clipped unit is the pair, as sample-level DP needs.

The built-in preference set (:func:`generate_preference_task`) reuses the SFT task's
prompts: the chosen response is the right answer, the rejected one an unhelpful refusal or
a near miss (one symbol wrong, or the answer of a neighbouring operation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional
from torch.utils.data import TensorDataset
from transformers import PreTrainedTokenizerBase

import models

from .errors import DataError
from .sft import IGNORE, OPERATIONS, SYMBOLS, _answer, encode_sft, read_json_rows, token_losses

PreferenceRecord = tuple[str, str, str]
#: Unhelpful responses: a third of the built-in set's rejected answers.
REFUSALS = ("no .", "not now", "ask later")
#: Operation whose answer is the near miss of each operation's answer.
_CONFUSED = {"copy": "reverse", "reverse": "copy", "first": "last"}


# -- data ----------------------------------------------------------------------------------
def _rows(path: Path) -> list[Any]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_table(path).to_pylist())
    return read_json_rows(path)


def load_preference_records(
    path: Path | str,
    *,
    prompt_key: str = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
) -> list[PreferenceRecord]:
    """``(prompt, chosen, rejected)`` triples from a ``.json``, ``.jsonl`` or ``.parquet`` file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"preference file {p} does not exist; pass a .json, .jsonl or .parquet")
    if p.suffix not in (".json", ".jsonl", ".parquet"):
        raise DataError(f"{p}: preference files must end in .json, .jsonl or .parquet")
    keys = (prompt_key, chosen_key, rejected_key)
    records: list[PreferenceRecord] = []
    for i, row in enumerate(_rows(p)):
        if not isinstance(row, dict) or any(k not in row for k in keys):
            has = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(
                f"record {i} of {p} lacks one of {list(keys)} (has {has}); set data.prompt_key, "
                "data.chosen_key and data.rejected_key to the file's field names"
            )
        prompt, chosen, rejected = (row[k] for k in keys)
        if not all(isinstance(t, str) for t in (prompt, chosen, rejected)):
            raise DataError(f"record {i} of {p}: prompt, chosen and rejected must be text")
        if not chosen.strip() or not rejected.strip() or chosen == rejected:
            raise DataError(
                f"record {i} of {p}: chosen and rejected must be non-empty and differ "
                "(a tie teaches no preference)"
            )
        records.append((prompt, chosen, rejected))
    if not records:
        raise DataError(f"{p} holds no preference records")
    return records


def _rejected(op: str, items: list[str], rng: np.random.Generator) -> list[str]:
    right = _answer(op, items)
    kind = rng.random()
    if kind < 1 / 3:  # an unhelpful refusal instead of the answer
        return list(REFUSALS[int(rng.integers(len(REFUSALS)))].split())
    if kind < 2 / 3:  # the answer of the operation it is most easily confused with
        other = items[-1:] if _CONFUSED[op] == "last" else _answer(_CONFUSED[op], items)
        if other != right:
            return other
    wrong = list(right)  # one symbol replaced by a different one
    k = int(rng.integers(len(wrong)))
    wrong[k] = str(rng.choice([s for s in SYMBOLS if s != wrong[k]]))
    return wrong


def generate_preference_task(
    *, num_examples: int, seed: int, min_len: int = 2, max_len: int = 4
) -> list[PreferenceRecord]:
    """Deterministic ``("reverse: a c b =", " b c a", " a c b")`` triples.

    Prompts as in :func:`secfed.sft.generate_sft_task`; chosen is the right answer, rejected
    (a third each) a refusal from :data:`REFUSALS`, the confusable operation's answer
    (copy <-> reverse, first -> last symbol) or the right answer with one symbol replaced.
    """
    if num_examples < 1:
        raise DataError(f"num_examples={num_examples} must be at least 1")
    if not 1 <= min_len <= max_len:
        raise DataError(f"need 1 <= min_len <= max_len, got {min_len} and {max_len}")
    rng = np.random.default_rng([seed, 20])
    records = []
    for _ in range(num_examples):
        op = OPERATIONS[int(rng.integers(len(OPERATIONS)))]
        n = int(rng.integers(min_len, max_len + 1))
        items = [SYMBOLS[int(k)] for k in rng.integers(len(SYMBOLS), size=n)]
        prompt = f"{op}: {' '.join(items)} ="
        chosen = " " + " ".join(_answer(op, items))
        rejected = " " + " ".join(_rejected(op, items, rng))
        records.append((prompt, chosen, rejected))
    return records


def _pad(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return functional.pad(t, (0, width - t.shape[1]), value=value)


def encode_dpo(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[PreferenceRecord], *, max_length: int
) -> TensorDataset:
    """``TensorDataset(c_ids, c_mask, c_labels, r_ids, r_mask, r_labels)``, one row a pair."""
    if not records:
        raise DataError("no preference records to encode")
    chosen = encode_sft(tokenizer, [(p, c) for p, c, _ in records], max_length=max_length)
    rejected = encode_sft(tokenizer, [(p, r) for p, _, r in records], max_length=max_length)
    width = max(chosen.tensors[0].shape[1], rejected.tensors[0].shape[1])
    pad = int(tokenizer.pad_token_id)  # encode_sft checked it is set
    tensors = []
    for part in (chosen, rejected):
        ids, mask, labels = part.tensors
        tensors += [_pad(ids, width, pad), _pad(mask, width, 0), _pad(labels, width, IGNORE)]
    return TensorDataset(*tensors)


# -- loss ----------------------------------------------------------------------------------
def sequence_logps(model: torch.nn.Module, part: Sequence[torch.Tensor]) -> torch.Tensor:
    """Summed log-probability of each row's response tokens, ``[B]``."""
    loss, _ = token_losses(model, part)
    return -loss.sum(dim=1)


@torch.no_grad()
def reference_logps(
    model: torch.nn.Module, batch: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log ref(chosen)``, ``log ref(rejected)``: the base with the adapter off, eval mode."""
    was_training = model.training
    model.eval()
    try:
        with models.adapter_disabled(model):
            return sequence_logps(model, batch[:3]), sequence_logps(model, batch[3:6])
    finally:
        model.train(was_training)


def dpo_terms(
    model: torch.nn.Module, batch: Sequence[torch.Tensor], *, beta: float
) -> dict[str, torch.Tensor]:
    """Per-pair ``loss``, implicit rewards and policy log-probabilities, each ``[B]``."""
    ref_c, ref_r = reference_logps(model, batch)
    pol_c = sequence_logps(model, batch[:3])
    pol_r = sequence_logps(model, batch[3:6])
    reward_c = beta * (pol_c - ref_c)
    reward_r = beta * (pol_r - ref_r)
    return {
        "loss": -functional.logsigmoid(reward_c - reward_r),
        "reward_chosen": reward_c,
        "reward_rejected": reward_r,
        "logp_chosen": pol_c,
        "logp_rejected": pol_r,
    }


def make_dpo_loss(beta: float) -> Callable[[torch.nn.Module, Sequence[torch.Tensor]], torch.Tensor]:
    """``loss_fn(model, batch) -> [B]``: the DPO loss of each preference pair."""
    if not beta > 0:
        raise ValueError(f"dpo.beta must be > 0, got {beta}")

    def dpo_loss(model: torch.nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(batch) != 6:
            raise DataError(f"a DPO batch has 6 tensors (chosen and rejected), got {len(batch)}")
        return dpo_terms(model, batch, beta=beta)["loss"]

    return dpo_loss


@torch.no_grad()
def evaluate_dpo(
    model: torch.nn.Module, dataset: TensorDataset, *, beta: float, batch_size: int = 128
) -> dict[str, float]:
    """Held-out preference metrics of ``model``.

    ``preference_accuracy``: share of pairs whose chosen response the model scores above the
    rejected one (summed log-probability); ``reward_accuracy`` and ``reward_margin``: the
    same with DPO's implicit reward ``beta * log(pi / ref)`` (accuracy counts strict wins,
    so it is 0 for the base itself); ``loss``: the mean DPO loss.
    """
    model.eval()
    sums = {"loss": 0.0, "preference_accuracy": 0.0, "reward_accuracy": 0.0, "reward_margin": 0.0}
    count = 0
    tensors = dataset.tensors
    for start in range(0, len(dataset), batch_size):
        batch = [t[start : start + batch_size] for t in tensors]
        terms = dpo_terms(model, batch, beta=beta)
        margin = terms["reward_chosen"] - terms["reward_rejected"]
        sums["loss"] += float(terms["loss"].sum())
        sums["preference_accuracy"] += float((terms["logp_chosen"] > terms["logp_rejected"]).sum())
        sums["reward_accuracy"] += float((margin > 0).sum())
        sums["reward_margin"] += float(margin.sum())
        count += margin.shape[0]
    return {k: v / max(count, 1) for k, v in sums.items()}


#: Metrics compared before and after the DPO phase.
SUMMARY_KEYS = (
    "preference_accuracy", "reward_accuracy", "reward_margin", "loss", "sft_loss",
    "sft_perplexity", "sft_exact_match",
)  # fmt: skip


def dpo_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Held-out metrics at the start of the DPO phase (after any SFT rounds) and at the end."""
    start = next((r["before_dpo"] for r in rows if "before_dpo" in r), None)
    end = next((r for r in reversed(rows) if "preference_accuracy" in r), None)

    def pick(m: dict[str, Any] | None) -> dict[str, float] | None:
        return None if m is None else {k: m[k] for k in SUMMARY_KEYS if k in m}

    return {"before": pick(start), "after": pick(end)}
