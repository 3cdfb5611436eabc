"""A deterministic byte-pair-encoding trainer.

The ``tokenizers`` trainers break ties between equally frequent pairs in hash-map order,
so two runs on the same texts can give different vocabularies. Federated clients must
agree on one tokenizer, so this trainer breaks ties by the pair's text instead: the same
word counts always give the same vocabulary, in the same id order.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from itertools import pairwise

Pair = tuple[str, str]


def _split(word: str, prefix: str) -> list[str]:
    return [word[0], *(prefix + ch for ch in word[1:])]


def _join(left: str, right: str, prefix: str) -> str:
    return left + (right[len(prefix) :] if prefix else right)


def _pairs(symbols: list[str]) -> Iterable[Pair]:
    return pairwise(symbols)


def train_bpe(
    word_counts: Mapping[str, int],
    *,
    vocab_size: int,
    special_tokens: Iterable[str] = (),
    alphabet: Iterable[str] = (),
    prefix: str = "",
) -> tuple[dict[str, int], list[Pair]]:
    """Learn merges until the vocabulary has ``vocab_size`` tokens (or nothing is left).

    ``prefix`` marks word-internal symbols (``"##"`` for WordPiece). Returns the vocabulary
    (special tokens first, then the sorted alphabet, then merged tokens in merge order) and
    the merges. Ties between pairs of equal count go to the lexicographically smaller pair.
    """
    words = [w for w in sorted(word_counts) if w]
    counts = [word_counts[w] for w in words]
    symbols = [_split(w, prefix) for w in words]
    vocab: dict[str, int] = {}
    initial = set(alphabet) | {s for syms in symbols for s in syms}
    for token in [*special_tokens, *sorted(initial)]:
        vocab.setdefault(token, len(vocab))

    pair_counts: Counter[Pair] = Counter()
    where: defaultdict[Pair, set[int]] = defaultdict(set)
    for i, syms in enumerate(symbols):
        for pair in _pairs(syms):
            pair_counts[pair] += counts[i]
            where[pair].add(i)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[Pair] = []
    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg or neg == 0:
            continue  # stale heap entry
        left, right = pair
        merged = _join(left, right, prefix)
        merges.append(pair)
        vocab.setdefault(merged, len(vocab))
        changed: set[Pair] = set()
        for i in sorted(where.pop(pair)):
            old = symbols[i]
            for p in _pairs(old):
                pair_counts[p] -= counts[i]
                changed.add(p)
            new: list[str] = []
            j = 0
            while j < len(old):
                if j + 1 < len(old) and old[j] == left and old[j + 1] == right:
                    new.append(merged)
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            symbols[i] = new
            for p in _pairs(new):
                pair_counts[p] += counts[i]
                where[p].add(i)
                changed.add(p)
        for p in sorted(changed):
            c = pair_counts[p]
            if c <= 0:
                del pair_counts[p]
            else:
                heapq.heappush(heap, (-c, p))
    return vocab, merges
