"""``model.public_words``: public text outside the task in the built-in tokenizer's corpus."""

from __future__ import annotations

import pytest

import models
from secfed import builtin_task
from secfed.assembly import PUBLIC_CORPUS_SEED, build_parts, public_corpus
from secfed.config import PUBLIC_WORDS_LIMIT, PUBLIC_WORDS_SPARE
from secfed.dpo import generate_preference_task
from secfed.errors import ConfigError
from secfed.flower.nodedata import shared_tokenizer_texts
from secfed.sft import generate_sft_task
from tests.secfed.conftest import tiny_job


def _filler_syllables() -> set[str]:
    texts, _ = builtin_task.generate(num_examples=3000, seed=2)
    cues = set(builtin_task.POSITIVE) | set(builtin_task.NEGATIVE)
    fillers = {w for t in texts for w in t.split()} - cues
    assert all(len(w) == 4 for w in fillers)  # two syllables each
    return {w[i : i + 2] for w in fillers for i in (0, 2)}


def _task_words() -> set[str]:
    texts, _ = builtin_task.generate(num_examples=3000, seed=1)
    texts += [p + r for p, r in generate_sft_task(num_examples=300, seed=1)]
    texts += [p + c + r for p, c, r in generate_preference_task(num_examples=300, seed=1)]
    return {w.strip(".,!?:;") for t in texts for w in t.lower().split()}


def test_public_words_are_distinct_and_no_task_uses_them():
    words = builtin_task.public_words(builtin_task.MAX_PUBLIC_WORDS)
    assert len(set(words)) == len(words) == 14**3
    assert not set(words) & _task_words()
    # Built from syllables the task's filler words never use, so no word is a task word
    # with a syllable added.
    syllables = _filler_syllables()
    assert len(syllables) == 14
    assert all({w[0:2], w[2:4], w[4:6]}.isdisjoint(syllables) for w in words)
    assert builtin_task.public_words(5) == words[:5]


def test_public_word_texts_are_seeded_sentences_of_those_words():
    texts = builtin_task.public_word_texts(num_texts=200, words=50, seed=3)
    assert texts == builtin_task.public_word_texts(num_texts=200, words=50, seed=3)
    assert texts != builtin_task.public_word_texts(num_texts=200, words=50, seed=4)
    lengths = [len(t.split()) for t in texts]
    assert min(lengths) >= 6 and max(lengths) <= 14
    used = {w for t in texts for w in t.split()}
    assert used == set(builtin_task.public_words(50))  # 200 sentences reach all 50 words
    with pytest.raises(ValueError, match="public word count"):
        builtin_task.public_words(builtin_task.MAX_PUBLIC_WORDS + 1)


def test_the_public_corpus_gains_the_words_and_keeps_the_task_texts():
    plain = public_corpus("builtin", 100)
    extended = public_corpus("builtin", 100, public_words=40)
    assert plain is not None and extended is not None
    assert extended[:100] == plain and len(extended) == 200
    expected = builtin_task.public_word_texts(num_texts=100, words=40, seed=PUBLIC_CORPUS_SEED + 1)
    assert extended[100:] == expected
    assert public_corpus("csv", 100, public_words=40) is None  # file data: its own rule


def test_built_in_tokenizer_holds_public_words_as_whole_tokens():
    base = build_parts(tiny_job()).tokenizer
    words = builtin_task.public_words(300)
    extended = build_parts(
        tiny_job(model={"public_words": 300, "vocab_size": 300 + PUBLIC_WORDS_SPARE})
    ).tokenizer
    vocab = extended.get_vocab()
    assert all(w in vocab for w in words)
    whole = {t for t in base.get_vocab() if not t.startswith("##")}
    assert whole <= set(vocab)  # every whole task word is still one token
    text = "kaka good " + " ".join(words[:3])
    assert extended.tokenize(text) == ["kaka", "good", *words[:3]]


@pytest.mark.parametrize("count", [1000, PUBLIC_WORDS_LIMIT])
def test_every_public_word_is_one_token_up_to_the_limit(count):
    corpus = public_corpus("builtin", public_words=count)
    assert corpus is not None
    tok = models.train_tokenizer(corpus, vocab_size=count + PUBLIC_WORDS_SPARE, family="bert")
    vocab = tok.get_vocab()
    assert all(w in vocab for w in builtin_task.public_words(count))
    task = {w for t in builtin_task.generate(num_examples=3000, seed=2)[0] for w in t.split()}
    assert len(task) == 174 and task <= set(vocab)
    if count == 1000:  # the watermark example's vocabulary, as its documents state
        assert len(tok) == 1407


def test_pre_training_reads_the_public_words(monkeypatch):
    seen: list[list[str]] = []

    def record(base, tokenizer, texts, spec, **kwargs):
        seen.append(list(texts))

    monkeypatch.setattr(models, "pretrain_tiny", record)
    build_parts(tiny_job(model={"public_words": 40, "pretrain_steps": 1}))
    [texts] = seen
    public = set(builtin_task.public_words(40))
    assert any(set(t.split()) <= public for t in texts)
    assert any(set(t.split()).isdisjoint(public) for t in texts)  # the task's texts too


def test_file_data_tokenizer_gains_the_public_words(tmp_path):
    path = tmp_path / "clients.csv"
    path.write_text("text,label\n" + "".join(f"item {i % 5} reported,{i % 2}\n" for i in range(80)))
    cfg = tiny_job(
        data={"source": "csv", "path": str(path), "num_examples": 80},
        model={"public_words": 50, "vocab_size": 900},
        federation={"clients": 2, "rounds": 1},
    )
    vocab = build_parts(cfg).tokenizer.get_vocab()
    assert all(w in vocab for w in builtin_task.public_words(50))
    assert "reported" not in vocab  # client words still stay out


def test_flower_nodes_share_the_same_extended_corpus():
    cfg = tiny_job(model={"public_words": 30})
    texts = shared_tokenizer_texts(cfg)
    assert texts == public_corpus("builtin", public_words=30)


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ({"path": "some/model", "public_words": 10}, "brings its own"),
        ({"tokenizer_from_client_data": True, "public_words": 10}, "drop one of the two"),
        ({"public_words": PUBLIC_WORDS_LIMIT + 1, "vocab_size": 5000}, "public_words"),
        ({"public_words": 300, "vocab_size": 700}, "vocab_size >= 800.*raise vocab_size"),
        ({"public_words": -1}, "public_words"),
    ],
)
def test_bad_public_words_settings_are_refused(model, needle):
    with pytest.raises(ConfigError, match=needle):
        tiny_job(model=model)
