"""Seed -> mask expansion (AES-256-CTR) and in-place mask accumulation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.core import masking

seeds = st.binary(min_size=32, max_size=32)


def test_known_answer_aes256_zero_key():
    # FIPS-197 style vector: AES-256 under the all-zero key of the all-zero block is
    # dc95c078a2408989ad48a21492842087; CTR from a zero counter starts with that block.
    words, tail = masking.expand_mask(bytes(32), words=4)
    assert words.astype("<u4").tobytes().hex() == "dc95c078a2408989ad48a21492842087"
    assert 0 <= tail < 2**64


def test_tail_continues_the_same_keystream():
    words, tail = masking.expand_mask(b"s" * 32, words=6)
    longer, _ = masking.expand_mask(b"s" * 32, words=8)
    assert np.array_equal(longer[:6], words)
    assert tail == int(longer[6]) | (int(longer[7]) << 32)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=6),
    words=st.integers(min_value=0, max_value=300),
    data=st.data(),
)
def test_pairwise_masks_cancel(n, words, data):
    # Client u adds +mask(s_uv) for v > u and -mask(s_uv) for v < u; the sum is zero.
    pairs = [(u, v) for u in range(n) for v in range(u + 1, n)]
    drawn = data.draw(st.lists(seeds, min_size=len(pairs), max_size=len(pairs), unique=True))
    pair_seed = dict(zip(pairs, drawn, strict=True))
    total = np.zeros(words, dtype=np.uint32)
    tail = 0
    for u in range(n):
        acc = np.zeros(words, dtype=np.uint32)
        plus = [pair_seed[(u, v)] for v in range(u + 1, n)]
        minus = [pair_seed[(v, u)] for v in range(u)]
        tail += masking.apply_masks(acc, add=plus, subtract=minus)
        assert words == 0 or acc.any()  # each client's vector is masked on its own
        total += acc
    assert not total.any()
    assert tail % 2**64 == 0


def test_streamed_blocks_equal_one_shot_expansion():
    words = (1 << 16) * 2 + 7  # crosses two block boundaries
    a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
    acc = np.arange(words, dtype=np.uint32)
    tail = masking.apply_masks(acc, add=[a, b], subtract=[c])
    ma, ta = masking.expand_mask(a, words=words)
    mb, tb = masking.expand_mask(b, words=words)
    mc, tc = masking.expand_mask(c, words=words)
    want = np.arange(words, dtype=np.uint32) + ma + mb - mc
    assert np.array_equal(acc, want)
    assert tail == (ta + tb - tc) % 2**64


def test_masks_look_uniform_and_depend_on_the_seed():
    m1, _ = masking.expand_mask(b"x" * 32, words=1 << 14)
    m2, _ = masking.expand_mask(b"y" * 32, words=1 << 14)
    assert not np.array_equal(m1, m2)
    # Each of the 32 bit positions is set about half the time (4 sigma band).
    bits = np.unpackbits(m1.view(np.uint8)).reshape(-1, 32).mean(axis=0)
    assert np.all(np.abs(bits - 0.5) < 4 * 0.5 / np.sqrt(m1.size))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="32 bytes"):
        masking.expand_mask(b"short", words=3)
    with pytest.raises(ValueError, match="uint32"):
        masking.apply_masks(np.zeros(3, dtype=np.int64), add=[b"k" * 32], subtract=[])
    acc = np.ones(3, dtype=np.uint32)
    assert masking.apply_masks(acc, add=[], subtract=[]) == 0
    assert acc.tolist() == [1, 1, 1]
