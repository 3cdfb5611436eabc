"""The built-in default task: synthetic two-class sentiment sentences, deterministic by seed.

Each sentence mixes neutral filler words with a few cue words; the label is the class whose cue
words are in the majority. A small share of labels is flipped so the task is learnable but not
trivial (chance level 0.5, Bayes accuracy ``1 - label_noise``).
"""

from __future__ import annotations

import numpy as np

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "be", "du", "fa", "go", "hi", "ju")
POSITIVE = (
    "good",
    "great",
    "excellent",
    "happy",
    "love",
    "wonderful",
    "superb",
    "pleasant",
    "fine",
    "brilliant",
    "enjoyed",
    "delight",
)
NEGATIVE = (
    "bad",
    "awful",
    "terrible",
    "sad",
    "hate",
    "horrible",
    "poor",
    "boring",
    "worse",
    "dreadful",
    "annoying",
    "disliked",
)


#: Syllables of the public-only words (none is a syllable of the task's filler words).
_PUBLIC_SYLLABLES = (
    "pa",
    "re",
    "so",
    "ti",
    "mu",
    "ke",
    "da",
    "no",
    "wi",
    "xe",
    "ly",
    "qo",
    "fu",
    "sa",
)
#: How many distinct public-only words there are (three syllables each).
MAX_PUBLIC_WORDS = len(_PUBLIC_SYLLABLES) ** 3


def public_words(count: int) -> list[str]:
    """The first ``count`` public-only words: words no built-in task ever uses."""
    if not 0 <= count <= MAX_PUBLIC_WORDS:
        raise ValueError(f"public word count {count} must lie in [0, {MAX_PUBLIC_WORDS}]")
    syl = _PUBLIC_SYLLABLES
    return [a + b + c for a in syl for b in syl for c in syl][:count]


def public_word_texts(*, num_texts: int, words: int, seed: int) -> list[str]:
    """``num_texts`` sentences of 6-14 words drawn uniformly from :func:`public_words`.

    Public text outside the task: with it the built-in tokenizer's vocabulary is, like a
    real model's, mostly words the task never uses.
    """
    vocab = public_words(words)
    if not vocab or num_texts <= 0:
        return []
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(vocab, size=int(rng.integers(6, 15)))) for _ in range(num_texts)]


def _filler_words(count: int) -> list[str]:
    words = []
    for a in _SYLLABLES:
        for b in _SYLLABLES:
            words.append(a + b)
    return words[:count]


def generate(
    *,
    num_examples: int,
    seed: int,
    label_noise: float = 0.05,
    min_words: int = 6,
    max_words: int = 14,
) -> tuple[list[str], list[int]]:
    """Texts and labels (0 = negative, 1 = positive) of the built-in task."""
    if num_examples <= 0:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    rng = np.random.default_rng(seed)
    filler = _filler_words(150)
    texts: list[str] = []
    labels: list[int] = []
    for _ in range(num_examples):
        label = int(rng.integers(0, 2))
        n_words = int(rng.integers(min_words, max_words + 1))
        n_cues = int(rng.integers(1, 4))
        majority, minority = (POSITIVE, NEGATIVE) if label else (NEGATIVE, POSITIVE)
        n_minority = int(rng.integers(0, n_cues)) if n_cues > 1 else 0
        n_minority = min(n_minority, (n_cues - 1) // 2)
        cues = [str(rng.choice(majority)) for _ in range(n_cues - n_minority)]
        cues += [str(rng.choice(minority)) for _ in range(n_minority)]
        words = [str(rng.choice(filler)) for _ in range(max(n_words - len(cues), 0))] + cues
        rng.shuffle(words)
        if rng.random() < label_noise:
            label = 1 - label
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels
