"""Public pre-training of the tiny models: deterministic, cached, and a better start."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import models
from models.pretrain import pretrain_key
from secfed import builtin_task
from secfed.assembly import PUBLIC_CORPUS_SEED, build_parts
from secfed.config import parse_config
from secfed.errors import ConfigError

SPEC = models.PretrainSpec(steps=40, batch_size=32, seed=1)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    texts, _ = builtin_task.generate(num_examples=400, seed=PUBLIC_CORPUS_SEED)
    return texts


@pytest.fixture(scope="module")
def tokenizer(corpus: list[str]):  # type: ignore[no-untyped-def]
    return models.train_tokenizer(corpus, vocab_size=300, family="bert")


def _model(tokenizer, seed: int = 0) -> torch.nn.Module:  # type: ignore[no-untyped-def]
    return models.build_tiny_model(
        "bert", task="classification", vocab_size=len(tokenizer), seed=seed,
        pad_token_id=int(tokenizer.pad_token_id),
    )  # fmt: skip


def _pretrain(model, tokenizer, corpus, cache: Path, spec=SPEC):  # type: ignore[no-untyped-def]
    return models.pretrain_tiny(
        model, tokenizer, corpus, spec, family="bert", task="classification", max_length=16,
        cache_dir=cache,
    )  # fmt: skip


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_deterministic_cached_and_better(tmp_path: Path, corpus, tokenizer) -> None:  # type: ignore[no-untyped-def]
    fresh = _model(tokenizer)
    first, second, third = _model(tokenizer), _model(tokenizer), _model(tokenizer)
    r1 = _pretrain(first, tokenizer, corpus, tmp_path / "a")
    r2 = _pretrain(second, tokenizer, corpus, tmp_path / "b")  # another cache: trained again
    r3 = _pretrain(third, tokenizer, corpus, tmp_path / "a")  # same cache: loaded
    assert not r1.cached and not r2.cached and r3.cached
    assert r1.path == r3.path and (r1.path / models.pretrain.WEIGHTS).is_file()
    assert _same(first, second) and _same(first, third)
    assert not _same(first, fresh)  # the base really changed
    assert torch.equal(first.classifier.weight, fresh.classifier.weight)  # the head did not
    # A better start: the masked-LM loss on held-out public texts drops well below chance.
    assert r1.loss_before == pytest.approx(r2.loss_before)
    assert r1.loss_after == pytest.approx(r2.loss_after)
    assert r1.loss_after < r1.loss_before - 0.3


def test_key_tracks_inputs(corpus, tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = _model(tokenizer)
    key = pretrain_key(model, tokenizer, corpus, SPEC, max_length=16)
    tokenizer(corpus[:3], padding="max_length", truncation=True, max_length=8)  # sets state
    assert pretrain_key(_model(tokenizer, seed=5), tokenizer, corpus, SPEC, max_length=16) == key
    other = models.PretrainSpec(steps=41, batch_size=32, seed=1)
    assert pretrain_key(model, tokenizer, corpus, other, max_length=16) != key
    assert pretrain_key(model, tokenizer, corpus[:-1], SPEC, max_length=16) != key
    assert pretrain_key(model, tokenizer, corpus, SPEC, max_length=17) != key


def test_cache_root_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(models.pretrain.CACHE_ENV, str(tmp_path))
    assert models.cache_root() == tmp_path


def test_needs_public_corpus(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "".join(f"a b c {i},{i % 2}\n" for i in range(20)))
    cfg = parse_config(
        {"model": {"pretrain_steps": 5}, "data": {"source": "csv", "path": str(path)}}
    )
    with pytest.raises(ConfigError, match="public corpus"):
        build_parts(cfg)


def test_on_step_reports_every_step_and_not_when_cached(tmp_path: Path, corpus, tokenizer) -> None:  # type: ignore[no-untyped-def]
    spec = models.PretrainSpec(steps=5, batch_size=8, seed=2)
    seen: list[tuple[int, int]] = []
    for _ in range(2):  # the second call reads the cache: no steps to report
        models.pretrain_tiny(
            _model(tokenizer), tokenizer, corpus, spec, family="bert", task="classification",
            max_length=16, cache_dir=tmp_path, on_step=lambda d, t: seen.append((d, t)),
        )  # fmt: skip
    assert seen == [(d, 5) for d in range(1, 6)]
