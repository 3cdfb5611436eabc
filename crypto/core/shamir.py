"""t-of-n Shamir secret sharing over the prime field GF(2**256 + 297).

The field holds any 256-bit secret (a 32-byte seed or an X25519 private key). A share is
the point ``(x, f(x))`` of a random polynomial ``f`` of degree ``threshold - 1`` with
``f(0) = secret``; any ``threshold`` shares give the secret back, fewer reveal nothing.
Evaluation points are small positive integers (secagg uses ``client_id + 1``).

Several secrets can be shared over the same points at once (one polynomial each), which is
how a secagg client shares its self-mask seed and its mask private key in one pass.

>>> shares = split([42], threshold=2, xs=[1, 2, 3])
>>> reconstruct({x: s[0] for x, s in shares.items() if x != 2}, threshold=2)
42
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence

import numpy as np

PRIME = 2**256 + 297
"""The smallest prime above 2**256."""

SHARE_BYTES = 33
"""Bytes of one serialized share value (an element of the field)."""


def _check_points(xs: Sequence[int], prime: int) -> None:
    if len(set(xs)) != len(xs):
        raise ValueError(f"evaluation points must be distinct, got {sorted(xs)}")
    for x in xs:
        if not 0 < x < prime:
            raise ValueError(f"evaluation point {x} must lie in [1, prime)")


def split(
    values: Sequence[int], *, threshold: int, xs: Sequence[int], prime: int = PRIME
) -> dict[int, tuple[int, ...]]:
    """Share each of ``values`` ``threshold``-of-``len(xs)`` over the points ``xs``.

    Returns ``{x: (share of values[0], share of values[1], ...)}``. Coefficients come from
    :mod:`secrets`.
    """
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must lie in [1, {len(xs)}] (number of points)")
    _check_points(xs, prime)
    for v in values:
        if not 0 <= v < prime:
            raise ValueError("secret does not fit the field: it must lie in [0, prime)")
    # polys[i] = [c_{t-1}, ..., c_1, secret_i] (highest degree first, for Horner).
    polys = [[secrets.randbelow(prime) for _ in range(threshold - 1)] + [v] for v in values]
    out: dict[int, tuple[int, ...]] = {}
    for x in xs:
        row = []
        for coeffs in polys:
            # Horner's rule without intermediate reductions: for the small points secagg uses
            # (client ids) the value grows by log2(x) bits a step, cheaper than t modulos.
            acc = 0
            for c in coeffs:
                acc = acc * x + c
            row.append(acc % prime)
        out[x] = tuple(row)
    return out


def lagrange_at_zero(xs: Sequence[int], *, prime: int = PRIME) -> list[int]:
    """Coefficients ``l_j`` with ``f(0) = sum_j l_j f(xs[j])`` for any ``f`` of degree < len(xs).

    ``l_j = prod_{m != j} x_m / (x_m - x_j)``; the denominators are inverted together with one
    modular inversion (Montgomery's trick).
    """
    _check_points(xs, prime)
    product = 1
    for x in xs:
        product = product * x % prime
    # d_j = x_j * prod_{m != j} (x_m - x_j), so that l_j = product / d_j.
    dens = [xj * d % prime for xj, d in zip(xs, _difference_products(xs), strict=True)]
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % prime)
    inv = pow(prefix[-1], -1, prime)
    coeffs = [0] * len(xs)
    for j in range(len(xs) - 1, -1, -1):
        coeffs[j] = inv * prefix[j] % prime * product % prime
        inv = inv * dens[j] % prime
    return coeffs


def _difference_products(xs: Sequence[int]) -> list[int]:
    """Exact ``prod_{m != j} (x_m - x_j)`` for each j.

    Points below 2**31 (client ids) multiply in int64 blocks that provably cannot overflow
    before the exact big-integer product; larger points take the plain loop.
    """
    if max(xs) >= 2**31:
        return [math.prod(xm - xj for xm in xs if xm != xj) for xj in xs]
    t = len(xs)
    a = np.asarray(xs, dtype=np.int64)
    diffs = a[None, :] - a[:, None]
    np.fill_diagonal(diffs, 1)
    group = max(1, 62 // int(np.abs(diffs).max()).bit_length())
    pad = -t % group
    if pad:
        diffs = np.concatenate([diffs, np.ones((t, pad), dtype=np.int64)], axis=1)
    blocks = np.prod(diffs.reshape(t, -1, group), axis=2)
    return [int(v) for v in np.prod(blocks.astype(object), axis=1)]


def combine(ys: Sequence[int], coeffs: Sequence[int], *, prime: int = PRIME) -> int:
    """``sum(l * y) mod prime``: the secret from shares and :func:`lagrange_at_zero` weights."""
    if len(ys) != len(coeffs):
        raise ValueError(f"{len(ys)} shares but {len(coeffs)} Lagrange coefficients")
    return sum(c * y for c, y in zip(coeffs, ys, strict=True)) % prime


def reconstruct(shares: Mapping[int, int], *, threshold: int, prime: int = PRIME) -> int:
    """The secret from at least ``threshold`` shares ``{x: y}`` (the first ``threshold`` by x).

    With fewer shares the secret is information-theoretically hidden, so this raises
    ``ValueError`` rather than returning a value that would be wrong.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1, got {threshold}")
    if len(shares) < threshold:
        raise ValueError(
            f"{len(shares)} shares cannot reconstruct a {threshold}-of-n secret: "
            f"{threshold - len(shares)} more needed"
        )
    xs = sorted(shares)[:threshold]
    for x in xs:
        if not 0 <= shares[x] < prime:
            raise ValueError(f"share at point {x} does not lie in the field")
    return combine([shares[x] for x in xs], lagrange_at_zero(xs, prime=prime), prime=prime)


def to_bytes(value: int) -> bytes:
    """Fixed-width big-endian encoding of a field element."""
    return value.to_bytes(SHARE_BYTES, "big")


def from_bytes(raw: bytes, *, prime: int = PRIME) -> int:
    """Inverse of :func:`to_bytes`; rejects values outside the field."""
    if len(raw) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(raw)}")
    value = int.from_bytes(raw, "big")
    if value >= prime:
        raise ValueError("share value does not lie in the field")
    return value
