"""Shamir secret sharing over GF(2**256 + 297)."""

from __future__ import annotations

import itertools

import gmpy2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.core import shamir

secrets_256 = st.integers(min_value=0, max_value=2**256 - 1)


def test_field_is_prime_and_holds_256_bit_secrets():
    assert shamir.PRIME > 2**256
    assert gmpy2.is_prime(shamir.PRIME, 50)
    assert shamir.PRIME.bit_length() <= 8 * shamir.SHARE_BYTES


def test_known_answer_lagrange():
    # f(x) = 5 + 3x + 2x^2: f(1) = 10, f(2) = 19, f(3) = 32, f(7) = 124.
    assert shamir.reconstruct({1: 10, 2: 19, 3: 32}, threshold=3) == 5
    assert shamir.reconstruct({2: 19, 3: 32, 7: 124}, threshold=3) == 5
    coeffs = shamir.lagrange_at_zero([1, 2, 3])
    assert coeffs == [3, shamir.PRIME - 3, 1]


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(secrets_256, min_size=1, max_size=2),
    n=st.integers(min_value=1, max_value=8),
    data=st.data(),
)
def test_any_threshold_subset_reconstructs(values, n, data):
    t = data.draw(st.integers(min_value=1, max_value=n))
    xs = data.draw(st.lists(st.integers(1, 2**32), min_size=n, max_size=n, unique=True), label="xs")
    shares = shamir.split(values, threshold=t, xs=xs)
    assert sorted(shares) == sorted(xs)
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=n, unique=True))
    for i, v in enumerate(values):
        assert shamir.reconstruct({x: shares[x][i] for x in subset}, threshold=t) == v


@settings(max_examples=25, deadline=None)
@given(secret=secrets_256)
def test_fewer_than_threshold_shares_do_not_determine_the_secret(secret):
    shares = shamir.split([secret], threshold=3, xs=[1, 2, 3, 4, 5])
    pts = {1: shares[1][0], 2: shares[2][0]}
    with pytest.raises(ValueError, match="more needed"):
        shamir.reconstruct(pts, threshold=3)
    # Treating two shares of a degree-2 polynomial as a line misses the secret (the
    # coefficients are uniform, so equality has probability 1/p).
    assert shamir.reconstruct(pts, threshold=2) != secret


def test_shares_are_fresh_each_time():
    a = shamir.split([7], threshold=2, xs=[1, 2, 3])
    b = shamir.split([7], threshold=2, xs=[1, 2, 3])
    assert a != b
    for pair in itertools.combinations([1, 2, 3], 2):
        assert shamir.reconstruct({x: a[x][0] for x in pair}, threshold=2) == 7


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 0, "xs": [1, 2]}, "threshold"),
        ({"threshold": 3, "xs": [1, 2]}, "threshold"),
        ({"threshold": 2, "xs": [1, 1]}, "distinct"),
        ({"threshold": 1, "xs": [0]}, "evaluation point"),
    ],
)
def test_bad_split_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        shamir.split([1], **kwargs)


def test_secret_outside_field_refused():
    with pytest.raises(ValueError, match="field"):
        shamir.split([shamir.PRIME], threshold=1, xs=[1])


def test_share_bytes_round_trip_and_range_check():
    v = shamir.PRIME - 1
    assert shamir.from_bytes(shamir.to_bytes(v)) == v
    with pytest.raises(ValueError, match="field"):
        shamir.from_bytes(shamir.PRIME.to_bytes(shamir.SHARE_BYTES, "big"))
    with pytest.raises(ValueError, match="33 bytes"):
        shamir.from_bytes(b"\x01" * 32)
