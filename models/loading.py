"""Load a pretrained Hugging Face model and tokenizer from a directory or hub name."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from . import packaged
from ._quiet import quiet
from .errors import ModelLoadError
from .tiny import TASKS


def _looks_local(name_or_path: str) -> bool:
    return name_or_path.startswith((".", "/", "~")) or Path(name_or_path).exists()


def family_of(model: PreTrainedModel) -> str:
    """The model's family name (its ``config.model_type``), for attach_adapter defaults."""
    return str(model.config.model_type)


def load_pretrained(
    name_or_path: str | Path,
    *,
    task: str,
    num_labels: int = 2,
    local_files_only: bool = True,
    seed: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` with AutoModelFor{SequenceClassification,CausalLM}.

    A tokenizer without a pad token gets its eos (or unk) token as pad, and the model's
    ``pad_token_id`` is set to match, so batched classification works for decoders.
    The model is returned in eval mode. Weights the checkpoint lacks (a new classification
    head) are drawn from ``seed`` when given, so two loads of one model with one seed are
    identical; the caller's global RNG state is left untouched either way.
    ``package:NAME`` loads a model shipped inside an installed package
    (:mod:`models.packaged`).
    """
    if task not in TASKS:
        raise ModelLoadError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    name = str(name_or_path)
    if packaged.is_packaged(name):  # a model shipped in an installed package (see .packaged)
        name = packaged.resolve(name)
    if _looks_local(name) and not Path(name).expanduser().is_dir():
        raise ModelLoadError(
            f"model directory {name!r} does not exist; pass a directory written by "
            "save_pretrained (or save_base_model), or a hub name"
        )
    auto = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    kwargs = {"num_labels": num_labels} if task == "classification" else {}
    try:
        with quiet():
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
            with torch.random.fork_rng(devices=[]):
                if seed is not None:
                    torch.manual_seed(seed)
                model = auto.from_pretrained(name, local_files_only=local_files_only, **kwargs)
    except (OSError, ValueError) as exc:
        hint = (
            "it is not in the local Hugging Face cache; download it first or pass "
            "local_files_only=False with network access"
            if local_files_only and not _looks_local(name)
            else "check that the directory holds config.json, the weights and tokenizer files"
        )
        raise ModelLoadError(f"cannot load model {name!r}: {hint} ({exc})") from exc
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelLoadError(
                f"tokenizer of {name!r} has no pad, eos or unk token; add a pad token to it"
            )
        tokenizer.pad_token = fallback
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer
