"""Distributed integer noise for user-level DP under masking secure aggregation.

Each client adds integer Skellam noise to its quantised, clipped update, so the server
only ever sees the masked sum, which carries the sum of the survivors' noise. Skellam is
closed under addition: the sum of independent Skellam(mu_i) is Skellam(sum mu_i), so the
survivors' total is exactly the Skellam mechanism with the summed variance, and integer
noise passes through modular arithmetic without rounding.

Definition: ``Skellam(mu) = P1 - P2`` with ``P1, P2 ~ Poisson(mu / 2)`` independent; mean 0,
variance ``mu`` (``mu`` is the variance throughout this module).

Units: with quantum ``g`` (value = integer * g) a client sends ``rint(v / g) + noise``
where ``||v||_2 <= S``. Adding ``noise * g`` to the float update and then rounding gives the
same integers. Do not clip coordinates after adding noise (that breaks the closed sum):
size the protocol's range with :func:`noise_tail_bound`.

Guarantee (Agarwal, Kairouz, Liu 2021, Skellam mechanism, integer orders a > 1), for an
integer query with L2 sensitivity D2 and L1 sensitivity D1 and total noise Skellam(mu):

    rdp(a) <= a D2^2 / (2 mu) + min(((2a - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1 / (2 mu))

Client sampling with rate ``q`` is applied with the general Poisson-subsampling bound of
Zhu & Wang 2019 (:func:`privacy.rdp.poisson_subsampled_rdp`).

Randomness: numpy ``Generator`` from :func:`privacy.user_level.make_noise_rng` (seeded
from :mod:`secrets`). Integer noise is immune to floating-point attacks on the Gaussian.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .errors import PrivacyConfigError
from .rdp import INTEGER_ORDERS, check_rate, poisson_subsampled_rdp, rdp_to_epsilon


def skellam_noise(
    size: int | tuple[int, ...], *, mu: float, rng: np.random.Generator
) -> NDArray[np.int64]:
    """Skellam noise of variance ``mu``: ``Poisson(mu/2) - Poisson(mu/2)``, as int64."""
    if not (mu >= 0) or not math.isfinite(mu):
        raise PrivacyConfigError(f"Skellam variance mu must be >= 0, got {mu}")
    if mu == 0:
        return np.zeros(size, dtype=np.int64)
    a = rng.poisson(mu / 2.0, size=size).astype(np.int64)
    return a - rng.poisson(mu / 2.0, size=size).astype(np.int64)


def per_client_variance(*, target_variance: float, clients: int, tolerated_dropouts: int) -> float:
    """Variance each client adds so any ``clients - tolerated_dropouts`` survivors reach
    ``target_variance`` in total."""
    survivors = clients - tolerated_dropouts
    if clients < 1 or tolerated_dropouts < 0 or survivors < 1:
        raise PrivacyConfigError(
            f"cannot split noise over {clients} clients tolerating {tolerated_dropouts} dropouts"
        )
    if not (target_variance >= 0):
        raise PrivacyConfigError(f"target_variance must be >= 0, got {target_variance}")
    return target_variance / survivors


def integer_sensitivity(*, clip_norm: float, quantum: float, dim: int) -> tuple[float, float]:
    """(L1, L2) sensitivity of ``rint(v / quantum)`` over ``||v||_2 <= clip_norm`` in ``dim``
    coordinates: rounding adds at most 1/2 per coordinate, so
    ``L2 <= clip_norm / quantum + sqrt(dim) / 2`` and ``L1 <= sqrt(dim) * L2``."""
    if not (clip_norm > 0) or not (quantum > 0) or dim < 1:
        raise PrivacyConfigError(
            f"need clip_norm > 0, quantum > 0, dim >= 1; got {clip_norm}, {quantum}, {dim}"
        )
    l2 = clip_norm / quantum + math.sqrt(dim) / 2.0
    return math.sqrt(dim) * l2, l2


def skellam_rdp(
    *, l1: float, l2: float, mu: float, orders: Sequence[int] = INTEGER_ORDERS
) -> NDArray[np.float64]:
    """RDP of one Skellam(mu) release at integer ``orders`` (Agarwal et al. 2021)."""
    if not (mu > 0):
        return np.full(len(orders), np.inf)
    a = np.asarray(orders, dtype=np.float64)
    if np.any(a != np.round(a)) or np.any(a < 2):
        raise PrivacyConfigError("Skellam RDP is stated for integer orders >= 2")
    second = np.minimum(((2 * a - 1) * l2**2 + 6 * l1) / (4 * mu**2), 3 * l1 / (2 * mu))
    return np.asarray(a * l2**2 / (2 * mu) + second, dtype=np.float64)


def skellam_epsilon(
    *,
    l1: float,
    l2: float,
    mu: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    orders: Sequence[int] = INTEGER_ORDERS,
) -> float:
    """Epsilon of ``rounds`` Skellam(mu) releases with client sampling rate ``sample_rate``."""
    check_rate(sample_rate)
    if rounds < 0:
        raise PrivacyConfigError(f"rounds must be >= 0, got {rounds}")
    if rounds == 0 or sample_rate == 0:
        return 0.0
    top = int(max(orders))
    base = np.zeros(top + 1)
    base[2:] = skellam_rdp(l1=l1, l2=l2, mu=mu, orders=list(range(2, top + 1)))
    per_round = poisson_subsampled_rdp(base_rdp=base, sample_rate=sample_rate, orders=orders)
    return rdp_to_epsilon(rdp=per_round * rounds, orders=orders, delta=delta)[0]


@dataclass(frozen=True)
class SkellamPlan:
    """Distributed Skellam noise sized for one cohort; variances in integer units."""

    quantum: float
    dim: int
    l1: float
    l2: float
    central_variance: float
    client_variance: float
    clients: int
    tolerated_dropouts: int

    def client_noise(self, rng: np.random.Generator) -> NDArray[np.int64]:
        """One client's integer noise vector (multiply by ``quantum`` for float units)."""
        return skellam_noise(self.dim, mu=self.client_variance, rng=rng)

    def epsilon(self, *, sample_rate: float, rounds: int, delta: float) -> float:
        """Epsilon after ``rounds`` (the survivors' noise is at least ``central_variance``)."""
        return skellam_epsilon(
            l1=self.l1, l2=self.l2, mu=self.central_variance,
            sample_rate=sample_rate, rounds=rounds, delta=delta,
        )  # fmt: skip


def plan_skellam(
    *,
    noise_multiplier: float,
    clip_norm: float,
    quantum: float,
    dim: int,
    clients: int,
    tolerated_dropouts: int,
) -> SkellamPlan:
    """Skellam noise whose survivors' total has std ``noise_multiplier * L2`` (integer units),
    L2 the rounded update's sensitivity from :func:`integer_sensitivity`."""
    if not (noise_multiplier > 0):
        raise PrivacyConfigError(f"noise_multiplier must be > 0, got {noise_multiplier}")
    l1, l2 = integer_sensitivity(clip_norm=clip_norm, quantum=quantum, dim=dim)
    central = (noise_multiplier * l2) ** 2
    return SkellamPlan(
        quantum=quantum,
        dim=dim,
        l1=l1,
        l2=l2,
        central_variance=central,
        client_variance=per_client_variance(
            target_variance=central, clients=clients, tolerated_dropouts=tolerated_dropouts
        ),
        clients=clients,
        tolerated_dropouts=tolerated_dropouts,
    )


def noise_tail_bound(*, mu: float, dim: int, failure_prob: float) -> float:
    """``t`` with P(any of ``dim`` Skellam(mu) coordinates has |x| >= t) <= ``failure_prob``.

    Bernstein's inequality (Skellam is a limit of sums of independent differences of
    Bernoulli variables, each bounded by 1, total variance ``mu``):
    ``P(|x| >= t) <= 2 exp(-t^2 / (2 (mu + t/3)))``, with a union bound over coordinates.
    """
    if not (0 < failure_prob < 1) or dim < 1 or mu < 0:
        raise PrivacyConfigError(
            f"need 0 < failure_prob < 1, dim >= 1, mu >= 0; got {failure_prob}, {dim}, {mu}"
        )
    log_term = math.log(2 * dim / failure_prob)
    return log_term / 3 + math.sqrt(log_term**2 / 9 + 2 * log_term * mu)
