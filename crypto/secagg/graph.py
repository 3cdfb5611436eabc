"""Who shares secrets with whom: the neighbour graph and the k/t rule of secagg / secagg+.

Every client ``u`` Shamir-shares its secrets among its *holders*: its ``k`` neighbours plus
itself, with threshold ``t``. SecAgg (Bonawitz et al. 2017) uses the complete graph
(``k = n - 1``); SecAgg+ (Bell et al. 2020) a random ``k``-regular graph with
``k = O(log n)``, so each client's work and traffic grow with ``log n`` instead of ``n``.

The rule, for a cohort of ``n``, a tolerated dropout rate ``delta`` and a tolerated corrupt
fraction ``gamma`` (both below 1/2):

* **complete graph**: ``t = n - floor(delta * n)``, the largest threshold that survives
  ``floor(delta * n)`` dropouts; secure while fewer than ``t`` clients collude with the
  server, which holds for any corrupt fraction below 1/2 since ``t > n / 2``.
* **sparse graph** (secagg+): the smallest even ``k < n - 1`` for which a ``t`` exists with

  - correctness: ``P[Bin(k, 1 - delta) < t] <= 2**-CORRECTNESS_BITS / n`` (each client
    keeps ``t`` live holders when clients drop independently at rate ``delta``);
  - security: ``P[Bin(k, gamma) >= t] <= 2**-SECURITY_BITS / n`` (no client has ``t``
    corrupt holders when a ``gamma`` fraction is corrupt);
  - connectivity: ``(n * (delta + gamma) ** (k / 2)) ** 2 <= 2**-SECURITY_BITS`` (the
    graph restricted to honest survivors stays connected, so the server learns no partial
    sum: a ring-structured graph splits only at two runs of ``k / 2`` bad clients);

  ``t`` is the largest value meeting correctness. Where no such ``k`` exists the graph is
  complete. Binomial tails bound the hypergeometric ones of a fixed-size corrupt or
  dropped set, so the rule is conservative. ``k`` grows like ``log n``.

Either way, any ``k + 1 - t`` dropouts are survived deterministically (:attr:`GraphParams.
max_dropouts`); a sparse graph survives a ``delta`` fraction of random dropouts with the
probability above, and otherwise the round fails with ``DropoutError``, never a wrong sum.

The graph itself is a Harary graph (each client linked to the ``k / 2`` nearest on either
side of a ring) over a permutation of the cohort keyed by 32 bytes of public randomness
that the server publishes, so every client derives the same graph. The server chooses that
randomness: a malicious server could grind it to surround a victim with colluders, which is
outside the honest-but-curious threat model of secagg+.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from ..errors import ParameterError

SECURITY_BITS = 40
CORRECTNESS_BITS = 20


@dataclass(frozen=True)
class GraphParams:
    """Neighbour count ``k`` and threshold ``t`` for a cohort of ``cohort_size``."""

    cohort_size: int
    neighbours: int
    threshold: int

    @property
    def complete(self) -> bool:
        return self.neighbours == self.cohort_size - 1

    @property
    def holders(self) -> int:
        """Share holders per client: its neighbours and itself."""
        return self.neighbours + 1

    @property
    def max_dropouts(self) -> int:
        """Dropouts survived whichever clients drop."""
        return self.holders - self.threshold


def binomial_tail(*, trials: int, p: float, at_least: int) -> float:
    """``P[Bin(trials, p) >= at_least]``, summed in log space (stable for large trials)."""
    if at_least <= 0:
        return 1.0
    if at_least > trials:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(at_least, trials + 1):
        log_term = (
            math.lgamma(trials + 1)
            - math.lgamma(i + 1)
            - math.lgamma(trials - i + 1)
            + i * lp
            + (trials - i) * lq
        )
        total += math.exp(log_term)
    return min(1.0, total)


def _check_fractions(dropout: float, corrupt: float) -> None:
    for name, value in (("max_dropout_fraction", dropout), ("max_corrupt_fraction", corrupt)):
        if not 0.0 <= value < 0.5:
            raise ParameterError(f"{name} must lie in [0, 0.5), got {value}")


def complete_params(
    n: int, *, dropout: float, corrupt: float, threshold: int | None = None
) -> GraphParams:
    """``k = n - 1`` and the threshold of the complete-graph rule (or a checked override)."""
    if n < 1:
        raise ParameterError(f"cohort size must be positive, got {n}")
    _check_fractions(dropout, corrupt)
    t = n - math.floor(dropout * n) if threshold is None else _capped(threshold, n)
    _check_threshold(t, holders=n)
    bad = math.floor(corrupt * n)
    if bad >= t or (n > 1 and 2 * t - bad <= n):
        raise ParameterError(
            f"threshold {t} in a cohort of {n} with up to {bad} corrupt clients is not safe "
            f"against a malicious server: it needs 2t - {bad} > {n} (t >= {(n + bad) // 2 + 1}) "
            "so two conflicting survivor sets cannot both gather t signatures; raise the "
            "threshold or lower max_corrupt_fraction"
        )
    return GraphParams(n, n - 1, t)


def _capped(threshold: int, holders: int) -> int:
    """An overridden threshold above the number of holders means "all of them"."""
    if isinstance(threshold, int) and not isinstance(threshold, bool):
        return min(threshold, holders)
    return threshold


def _check_threshold(t: int, *, holders: int) -> None:
    if not isinstance(t, int) or isinstance(t, bool):
        raise ParameterError(f"threshold must be an integer, got {t!r}")
    low = min(2, holders)
    if not low <= t <= holders:
        raise ParameterError(
            f"threshold {t} must lie in [{low}, {holders}] for {holders} share holders "
            "(a threshold of 1 would hand each holder the secret itself)"
        )


def _correct_t(k: int, n: int, dropout: float) -> int:
    """Largest t with P[Bin(k, dropout) > k - t] <= 2**-CORRECTNESS_BITS / n, or 0."""
    bound = 2.0**-CORRECTNESS_BITS / n
    lo, hi = 0, k  # the tail shrinks as t falls: binary search the largest passing t
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if binomial_tail(trials=k, p=dropout, at_least=k - mid + 1) <= bound:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _secure(k: int, t: int, n: int, corrupt: float) -> bool:
    """No client has t corrupt holders, and no two survivor sets can each gather t signatures
    of one client's holders (2t - corrupt holders > k + 1), except with 2**-SECURITY_BITS."""
    bound = 2.0**-SECURITY_BITS / n
    split = binomial_tail(trials=k + 1, p=corrupt, at_least=max(0, 2 * t - (k + 1)))
    return binomial_tail(trials=k, p=corrupt, at_least=t) <= bound and split <= bound


def _connected(k: int, n: int, dropout: float, corrupt: float) -> bool:
    return (
        2 * (math.log2(n) + (k / 2) * math.log2(dropout + corrupt)) <= -SECURITY_BITS
        if dropout + corrupt > 0
        else True
    )


@lru_cache(maxsize=256)
def sparse_params(
    n: int,
    *,
    dropout: float,
    corrupt: float,
    neighbours: int | None = None,
    threshold: int | None = None,
) -> GraphParams:
    """``k`` and ``t`` of the secagg+ rule (see the module docstring), with checked overrides."""
    if n < 1:
        raise ParameterError(f"cohort size must be positive, got {n}")
    _check_fractions(dropout, corrupt)
    if neighbours is not None:
        if (
            isinstance(neighbours, bool)
            or not isinstance(neighbours, int)
            or neighbours < 2
            or neighbours % 2
        ):
            raise ParameterError(
                f"neighbours must be an even integer >= 2 (k/2 on each side of the ring), "
                f"got {neighbours!r}"
            )
        if neighbours >= n - 1:
            return complete_params(n, dropout=dropout, corrupt=corrupt, threshold=threshold)
        t = (
            _correct_t(neighbours, n, dropout)
            if threshold is None
            else _capped(threshold, neighbours + 1)
        )
        if t == 0:
            raise ParameterError(
                f"{neighbours} neighbours cannot survive a dropout rate of {dropout}: "
                "raise neighbours or leave it unset"
            )
        _check_threshold(t, holders=neighbours + 1)
        if not _secure(neighbours, t, n, corrupt):
            raise ParameterError(
                f"neighbours={neighbours}, threshold={t} is not {SECURITY_BITS}-bit secure "
                f"against a corrupt fraction of {corrupt} in a cohort of {n}: raise neighbours "
                "or the threshold, or leave them unset"
            )
        return GraphParams(n, neighbours, t)

    def fits(k: int) -> GraphParams | None:
        if not _connected(k, n, dropout, corrupt):
            return None
        t = _correct_t(k, n, dropout) if threshold is None else _capped(threshold, k + 1)
        if t < 2 or t > k + 1 or not _secure(k, t, n, corrupt):
            return None
        return GraphParams(n, k, t)

    # Feasibility grows with k (binomial tails concentrate): double, then bisect the smallest
    # even k that fits; every returned (k, t) is checked by fits() itself.
    lo, k = 0, 2
    while k < n - 1 and fits(k) is None:
        lo, k = k, 2 * k
    if k >= n - 1:
        k = n - 2 - (n % 2)  # largest even k below n - 1
        if k < 2 or fits(k) is None:
            return complete_params(n, dropout=dropout, corrupt=corrupt, threshold=threshold)
    while k - lo > 2:
        mid = (lo + k) // 4 * 2
        if mid > lo and fits(mid) is not None:
            k = mid
        else:
            lo = mid if mid > lo else lo + 2
    found = fits(k)
    assert found is not None
    return found


def ring_order(cohort: Sequence[int], *, seed: bytes) -> list[int]:
    """The cohort permuted by a keyed hash of ``seed`` (public randomness)."""
    if len(seed) != 32:
        raise ValueError(f"graph seed must be 32 bytes, got {len(seed)}")
    return sorted(
        cohort,
        key=lambda c: hashlib.sha256(
            b"secfed/secagg/v1/graph" + seed + c.to_bytes(4, "big")
        ).digest(),
    )


def neighbours_of(cohort: Sequence[int], *, k: int, seed: bytes) -> dict[int, frozenset[int]]:
    """Each client's ``k`` neighbours: complete if ``k >= n - 1``, else a permuted Harary graph."""
    n = len(cohort)
    if k >= n - 1:
        everyone = frozenset(cohort)
        return {c: everyone - {c} for c in cohort}
    order = _sparse_order(cohort, k=k, seed=seed)
    return {c: _ring_neighbours(order, pos, k) for pos, c in enumerate(order)}


def neighbours_of_one(cohort: Sequence[int], client: int, *, k: int, seed: bytes) -> frozenset[int]:
    """``neighbours_of(cohort, k=k, seed=seed)[client]`` without building the whole graph."""
    if client not in cohort:
        raise ValueError(f"client {client} is not in the cohort")
    if k >= len(cohort) - 1:
        return frozenset(cohort) - {client}
    order = _sparse_order(cohort, k=k, seed=seed)
    return _ring_neighbours(order, order.index(client), k)


def _sparse_order(cohort: Sequence[int], *, k: int, seed: bytes) -> list[int]:
    if k < 2 or k % 2:
        raise ValueError(f"a sparse graph needs an even k >= 2, got {k}")
    return ring_order(cohort, seed=seed)


def _ring_window(order: Sequence[int], pos: int, k: int) -> frozenset[int]:
    """``order[pos]`` and the ``k / 2`` clients on either side of it on the ring (k < n)."""
    n, half = len(order), k // 2
    lo, hi = pos - half, pos + half + 1
    if lo < 0:
        return frozenset(order[lo:]) | frozenset(order[:hi])
    if hi > n:
        return frozenset(order[lo:]) | frozenset(order[: hi - n])
    return frozenset(order[lo:hi])


def _ring_neighbours(order: Sequence[int], pos: int, k: int) -> frozenset[int]:
    return _ring_window(order, pos, k) - {order[pos]}


class Graph:
    """The round's neighbour graph, with each client's share holders (neighbours and itself)."""

    def __init__(self, cohort: Sequence[int], *, k: int, seed: bytes):
        self.cohort = frozenset(cohort)
        self.complete = k >= len(cohort) - 1
        self._k = k
        self._order: list[int] = [] if self.complete else _sparse_order(cohort, k=k, seed=seed)
        self._pos = {c: i for i, c in enumerate(self._order)}
        self._cache: dict[int, frozenset[int]] = {}
        self._nbrs: dict[int, frozenset[int]] = {}

    def neighbours(self, client: int) -> frozenset[int]:
        if client not in self._nbrs:
            self._nbrs[client] = self.holders(client) - {client}
        return self._nbrs[client]

    def holders(self, client: int) -> frozenset[int]:
        """Who holds shares of ``client``'s secrets: its neighbours and itself."""
        if client not in self.cohort:
            raise ValueError(f"client {client} is not in the cohort")
        if self.complete:
            return self.cohort
        if client not in self._cache:
            self._cache[client] = _ring_window(self._order, self._pos[client], self._k)
        return self._cache[client]
