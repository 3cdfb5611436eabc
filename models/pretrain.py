"""Short, deterministic public pre-training of the built-in tiny models, cached on disk.

A random-init base gives DP fine-tuning nothing to build on; real DP fine-tuning starts
from a pretrained model. :func:`pretrain_tiny` trains a language-model copy of the tiny
model (masked LM for encoder families, causal LM for decoder families) on a *public*
corpus, never on client data, then copies its base weights into the model (the task head
stays as initialised). The result depends only on the model config, tokenizer, corpus and
:class:`PretrainSpec`; it is cached under :func:`cache_root` by a hash of all of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ._quiet import quiet
from .errors import ModelConfigError

log = logging.getLogger(__name__)

#: Bump when the procedure changes, so stale cache entries are never reused.
PRETRAIN_VERSION = 3
#: Environment variable that overrides the cache location.
CACHE_ENV = "SECFED_CACHE_DIR"
MLM_FAMILIES: tuple[str, ...] = ("bert", "roberta", "distilbert", "albert", "deberta-v2")
CLM_FAMILIES: tuple[str, ...] = ("gpt2", "llama", "qwen2")
WEIGHTS = "base.safetensors"
META = "pretrain.json"


@dataclass(frozen=True)
class PretrainSpec:
    """How to pre-train: optimiser steps, batch size, AdamW learning rate, mask rate, seed."""

    steps: int
    batch_size: int = 64
    lr: float = 3e-3
    mask_prob: float = 0.15
    seed: int = 0


@dataclass(frozen=True)
class PretrainResult:
    """Where the cached weights lie, whether they came from the cache, the LM twin's loss on
    held-out public texts before and after pre-training, and the seconds it took (0 if cached)."""

    path: Path
    cached: bool
    loss_before: float
    loss_after: float
    seconds: float


def cache_root() -> Path:
    """``$SECFED_CACHE_DIR``, else ``$XDG_CACHE_HOME/secfed``, else ``~/.cache/secfed``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "secfed"


def objective(family: str, task: str) -> str:
    """``"mlm"`` or ``"clm"``: the pre-training objective of ``family`` for ``task``."""
    if task == "causal_lm":
        return "clm"
    if family in MLM_FAMILIES:
        return "mlm"
    if family in CLM_FAMILIES:
        return "clm"
    raise ModelConfigError(
        f"no public pre-training for {family!r} classifiers; use one of "
        f"{', '.join(MLM_FAMILIES + CLM_FAMILIES)} or set model.pretrain_steps = 0"
    )


def _tokenizer_json(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's definition, without the padding/truncation state each call sets."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())  # type: ignore[attr-defined]
    state.pop("padding", None)
    state.pop("truncation", None)
    return json.dumps(state, sort_keys=True)


def pretrain_key(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    spec: PretrainSpec,
    *,
    max_length: int,
) -> str:
    """Hash of everything the pre-trained weights depend on (the cache entry's name)."""
    h = hashlib.sha256()
    parts = (
        json.dumps({"v": PRETRAIN_VERSION, "torch": torch.__version__, **asdict(spec)}),
        str(max_length),
        model.config.to_json_string(use_diff=False),
        _tokenizer_json(tokenizer),
    )
    for part in (*parts, *texts):
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()[:24]


def _lm_model(model: PreTrainedModel, kind: str) -> PreTrainedModel:
    """A fresh language-model twin of ``model`` (same config, an LM head instead of its own)."""
    config = model.config.__class__.from_dict(model.config.to_dict())
    if model.config.model_type in ("bert", "roberta"):
        config.is_decoder = kind == "clm"
    auto = AutoModelForMaskedLM if kind == "mlm" else AutoModelForCausalLM
    with quiet():
        return auto.from_config(config)


def _mask_tokens(
    x: torch.Tensor, special: torch.Tensor, spec: PretrainSpec, mask_id: int, vocab: int,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """BERT's corruption: of ``mask_prob`` of the tokens, 80% [MASK], 10% random, 10% kept."""
    chosen = (torch.rand(x.shape, generator=gen) < spec.mask_prob) & ~special
    labels = torch.where(chosen, x, -100)
    roll = torch.rand(x.shape, generator=gen)
    x = torch.where(chosen & (roll < 0.8), torch.full_like(x, mask_id), x)
    noise = torch.randint(0, vocab, x.shape, generator=gen)
    return torch.where(chosen & (roll >= 0.8) & (roll < 0.9), noise, x), labels


def _encode(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids, attention mask, and which positions may not be masked (specials and padding)."""
    enc = tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=max_length,
        return_tensors="pt", return_special_tokens_mask=True,
    )  # fmt: skip
    ids, mask = enc["input_ids"], enc["attention_mask"]
    return ids, mask, enc["special_tokens_mask"].bool() | ~mask.bool()


def _loss(
    lm: PreTrainedModel, data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    rows: torch.Tensor, kind: str, spec: PretrainSpec, mask_id: int, gen: torch.Generator,
) -> torch.Tensor:  # fmt: skip
    ids, mask, special = data
    width = max(int(mask[rows].sum(1).max()), 2)
    x, a = ids[rows, :width], mask[rows, :width]
    if kind == "clm":
        labels = torch.where(a.bool(), x, -100)
    else:
        vocab = int(lm.config.vocab_size)
        x, labels = _mask_tokens(x, special[rows, :width], spec, mask_id, vocab, gen)
    return lm(input_ids=x, attention_mask=a, labels=labels).loss


@torch.no_grad()
def _heldout_loss(
    lm: PreTrainedModel, data: tuple[torch.Tensor, torch.Tensor, torch.Tensor], kind: str,
    spec: PretrainSpec, mask_id: int,
) -> float:  # fmt: skip
    """Mean loss on the held-out texts, with the same fixed masking every time."""
    lm.eval()
    gen = torch.Generator().manual_seed(spec.seed + 1)
    rows = torch.arange(len(data[0]))
    return float(_loss(lm, data, rows, kind, spec, mask_id, gen))


def _train(
    lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
    spec: PretrainSpec, kind: str, max_length: int,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[float, float]:  # fmt: skip
    """Train ``lm``; return its held-out loss before and after."""
    held = max(len(texts) // 10, 1)
    train = _encode(tokenizer, texts[:-held], max_length)
    heldout = _encode(tokenizer, texts[-held:], max_length)
    mask_id = int(tokenizer.mask_token_id or 0)
    before = _heldout_loss(lm, heldout, kind, spec, mask_id)
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(lm.parameters(), lr=spec.lr, weight_decay=0.01)
    warmup = max(spec.steps // 10, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (1 - s / spec.steps)
    )
    lm.train()
    for step in range(spec.steps):
        rows = torch.randint(0, len(train[0]), (spec.batch_size,), generator=gen)
        loss = _loss(lm, train, rows, kind, spec, mask_id, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step + 1, spec.steps)
    return before, _heldout_loss(lm, heldout, kind, spec, mask_id)


def _base_state(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    base = getattr(model, model.base_model_prefix)
    return {k: v.detach().clone().contiguous() for k, v in base.state_dict().items()}


def _load_base(model: PreTrainedModel, state: dict[str, torch.Tensor]) -> None:
    base = getattr(model, model.base_model_prefix)
    result = base.load_state_dict(state, strict=False)
    fresh = [k for k in result.missing_keys if not k.startswith("pooler.")]
    if result.unexpected_keys or fresh:
        raise ModelConfigError(
            "pre-trained weights do not fit the model (missing "
            f"{fresh[:3]}, unexpected {result.unexpected_keys[:3]}); clear {cache_root()}"
        )


def pretrain_tiny(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    spec: PretrainSpec,
    *,
    family: str,
    task: str,
    max_length: int,
    cache_dir: Path | str | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> PretrainResult:
    """Pre-train ``model``'s base in place on the public ``texts`` (or load it from the cache).

    The same arguments always give the same weights; the first call writes them to
    ``<cache_dir>/pretrained/<key>/`` (default :func:`cache_root`), later calls read them.
    The model is left in eval mode; the caller's global RNG state is untouched.
    ``on_step(done, total)`` is called after each optimiser step (progress display).
    """
    if spec.steps < 1:
        raise ModelConfigError(f"pre-training needs steps >= 1, got {spec.steps}")
    kind = objective(family, task)
    if kind == "mlm" and tokenizer.mask_token_id is None:
        raise ModelConfigError(f"the {family} tokenizer has no mask token for masked-LM training")
    key = pretrain_key(model, tokenizer, texts, spec, max_length=max_length)
    entry = Path(cache_dir or cache_root()) / "pretrained" / key
    if (entry / WEIGHTS).is_file() and (entry / META).is_file():
        meta = json.loads((entry / META).read_text())
        _load_base(model, load_file(str(entry / WEIGHTS)))
        model.eval()
        log.info("pre-trained %s base loaded from %s", family, entry)
        return PretrainResult(entry, True, meta["loss_before"], meta["loss_after"], 0.0)
    log.info("pre-training the %s base: %d steps (cached for later runs)", family, spec.steps)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        lm = _lm_model(model, kind)
        first, last = _train(lm, tokenizer, texts, spec, kind, max_length, on_step)
    state = _base_state(lm)
    _load_base(model, state)
    model.eval()
    seconds = time.perf_counter() - start
    meta = {"key": key, "objective": kind, "family": family, "task": task,
            "texts": len(texts), "loss_before": first, "loss_after": last,
            "seconds": round(seconds, 2), **asdict(spec)}  # fmt: skip
    _write_entry(entry, state, meta)
    log.info("pre-trained %s base (%s, %d steps, loss %.3f -> %.3f, %.1fs) cached at %s",
             family, kind, spec.steps, first, last, seconds, entry)  # fmt: skip
    return PretrainResult(entry, False, first, last, seconds)


def _write_entry(entry: Path, state: dict[str, torch.Tensor], meta: dict[str, object]) -> None:
    """Write weights and metadata to a temporary folder, then rename it into place."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    save_file(state, str(tmp / WEIGHTS))
    (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    try:
        tmp.rename(entry)
    except OSError:  # another process wrote the same entry first; theirs is identical
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
