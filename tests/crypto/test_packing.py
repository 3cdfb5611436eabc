"""Slot packing and weighted quantisation (crypto/core/packing.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.core.packing import (
    Quantiser,
    ceil_log2,
    dequantise_sums,
    error_bound,
    pack,
    quantise_weighted,
    slot_layout,
    unpack,
)
from crypto.errors import EncodingError, ParameterError


@st.composite
def layouts_and_terms(draw, max_parties: int = 40):
    term_max = draw(st.integers(1, 2**40))
    parties = draw(st.integers(1, max_parties))
    slot_bits = (parties * term_max).bit_length()
    plaintext_bits = draw(st.integers(slot_bits, 600))
    count = draw(st.integers(1, 60))
    layout = slot_layout(
        term_max=term_max, parties=parties, plaintext_bits=plaintext_bits, count=count
    )
    vectors = [
        np.array(
            draw(st.lists(st.integers(0, term_max), min_size=count, max_size=count)), np.uint64
        )
        for _ in range(draw(st.integers(1, parties)))
    ]
    return layout, vectors


@given(layouts_and_terms())
@settings(max_examples=60, deadline=None)
def test_pack_unpack_round_trip(case):
    layout, vectors = case
    for terms in vectors:
        blob = pack(terms, layout=layout)
        assert len(blob) == layout.plaintexts * layout.plaintext_bytes
        assert np.array_equal(unpack(blob, layout=layout), terms)


@given(layouts_and_terms())
@settings(max_examples=60, deadline=None)
def test_sum_of_packed_plaintexts_never_carries(case):
    # Adding packed plaintexts as big integers (what Paillier does under encryption) gives the
    # packing of the slot-wise sums, for any number of parties up to the layout's bound.
    layout, vectors = case
    width = layout.plaintext_bytes
    total = [0] * layout.plaintexts
    for terms in vectors:
        blob = pack(terms, layout=layout)
        for i in range(layout.plaintexts):
            total[i] += int.from_bytes(blob[i * width : (i + 1) * width], "big")
    assert all(t < 2 ** (8 * width) for t in total)
    summed = b"".join(t.to_bytes(width, "big") for t in total)
    want = np.sum(np.stack(vectors).astype(object), axis=0)
    assert unpack(summed, layout=layout).tolist() == list(want)


def test_worst_case_sum_fits_exactly_and_one_more_party_would_not():
    layout = slot_layout(term_max=255, parties=4, plaintext_bits=64, count=6)
    assert layout.slot_bits == (4 * 255).bit_length() == 10
    full = np.full(6, 255, np.uint64)
    width = layout.plaintext_bytes
    total = 4 * int.from_bytes(pack(full, layout=layout), "big")
    assert unpack(total.to_bytes(width, "big"), layout=layout).tolist() == [1020] * 6
    # A 5th maximal party exceeds 2**10 - 1 = 1023 and would carry: the layout is for 4.
    assert 2**layout.slot_bits <= 5 * 255


def test_term_above_bound_is_refused():
    layout = slot_layout(term_max=100, parties=3, plaintext_bits=64, count=3)
    with pytest.raises(EncodingError, match="101 at index 1"):
        pack(np.array([0, 101, 5], np.uint64), layout=layout)
    with pytest.raises(EncodingError):
        pack(np.array([0, -1, 5], np.int64), layout=layout)
    with pytest.raises(EncodingError):
        pack(np.array([1, 2], np.uint64), layout=layout)


def test_overflowed_plaintext_is_refused_on_unpack():
    layout = slot_layout(term_max=100, parties=3, plaintext_bits=64, count=3)
    blob = bytearray(pack(np.array([1, 2, 3], np.uint64), layout=layout))
    blob[0] |= 0x80  # a bit above the top slot: the sum overflowed
    with pytest.raises(EncodingError, match="overflows"):
        unpack(bytes(blob), layout=layout)


def test_cohort_size_sets_the_headroom():
    small = slot_layout(term_max=2**17, parties=2, plaintext_bits=2047, count=10)
    large = slot_layout(term_max=2**17, parties=1000, plaintext_bits=2047, count=10)
    assert large.slot_bits - small.slot_bits == (1000 * 2**17).bit_length() - 19
    with pytest.raises(ParameterError):
        slot_layout(term_max=2**60, parties=16, plaintext_bits=2047, count=1)
    with pytest.raises(ParameterError):
        slot_layout(term_max=2**30, parties=2, plaintext_bits=16, count=1)


def test_ceil_log2_is_exact():
    assert [ceil_log2(x) for x in (0.25, 0.3, 1.0, 1.5, 1024.0, 1025.0)] == [-2, -1, 0, 1, 10, 11]


def test_quantiser_validates_options():
    for bad in ({"clip": 0.0}, {"max_weight": -1.0}, {"precision_bits": 2}, {"clip": float("inf")}):
        kwargs = {"clip": 1.0, "max_weight": 4.0, "precision_bits": 16} | bad
        with pytest.raises(ParameterError):
            Quantiser(**kwargs)


@given(
    clip=st.floats(1e-3, 1e3),
    max_weight=st.floats(1e-2, 1e5),
    precision_bits=st.integers(8, 30),
    weights=st.lists(st.floats(1e-3, 1.0), min_size=1, max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=50, deadline=None)
def test_decoded_weighted_sum_within_stated_bound(clip, max_weight, precision_bits, weights, seed):
    qz = Quantiser(clip=clip, max_weight=max_weight, precision_bits=precision_bits)
    rng = np.random.default_rng(seed)  # not-secret: test inputs
    dim = 17
    ws = [w * max_weight for w in weights]
    vecs = [rng.uniform(-clip, clip, dim) for _ in ws]
    stacked = np.stack(
        [quantise_weighted(v, weight=w, quantiser=qz) for v, w in zip(vecs, ws, strict=True)]
    ).astype(object)
    sums = stacked.sum(axis=0)
    assert all(s <= len(ws) * qz.term_max for s in sums.tolist())
    weighted, total = dequantise_sums(
        np.array(sums, dtype=np.uint64), contributors=len(ws), quantiser=qz
    )
    want = sum(w * v for v, w in zip(vecs, ws, strict=True))
    assert np.max(np.abs(weighted - want)) <= error_bound(contributors=len(ws), quantiser=qz)
    assert total == pytest.approx(sum(ws), rel=1e-9, abs=len(ws) / qz.weight_scale)


def test_values_are_clipped_and_integer_weights_exact():
    qz = Quantiser(clip=0.5, max_weight=64.0, precision_bits=16)
    terms = quantise_weighted(np.array([3.0, -3.0, 0.0]), weight=37.0, quantiser=qz)
    weighted, total = dequantise_sums(terms, contributors=1, quantiser=qz)
    assert weighted.tolist() == [18.5, -18.5, 0.0] and total == 37.0


def test_impossible_sums_are_refused():
    qz = Quantiser(clip=1.0, max_weight=4.0, precision_bits=8)
    terms = quantise_weighted(np.zeros(4), weight=1.0, quantiser=qz)
    bad = terms.copy()
    bad[0] = 2 * qz.term_max + 1  # more than 2 honest contributors could produce
    with pytest.raises(EncodingError, match="out of range"):
        dequantise_sums(bad + terms, contributors=2, quantiser=qz)
    with pytest.raises(EncodingError):
        quantise_weighted(np.zeros(4), weight=4.5, quantiser=qz)
