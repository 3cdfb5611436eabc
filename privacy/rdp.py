"""Rényi-DP arithmetic: the order grid, the sampled Gaussian, Poisson subsampling of any
mechanism, and conversion to (epsilon, delta).

Order grid. Opacus' default grid stops at order 63. With a large noise multiplier the
optimal order is larger than that (roughly ``sqrt(log(1/delta) / rdp_per_order)``), so the
default grid overstates epsilon: q=0.01, sigma=10, 1000 steps, delta=1e-5 gives 0.135 on
Opacus' grid and 0.109 on :data:`DEFAULT_ORDERS`, which extends it up to 4096. A richer
grid can only lower the reported epsilon (every order is a valid bound), never raise it.

>>> eps, order = rdp_to_epsilon(
...     rdp=sampled_gaussian_rdp(sample_rate=0.01, noise_multiplier=10.0, steps=1000),
...     orders=DEFAULT_ORDERS, delta=1e-5)
>>> round(eps, 3), order > 63
(0.109, True)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy.special import gammaln, logsumexp

from .errors import PrivacyConfigError

#: Opacus' default RDP orders (1.1 ... 10.9 in steps of 0.1, then 12 ... 63).
OPACUS_ORDERS: tuple[float, ...] = (*[1 + x / 10.0 for x in range(1, 100)], *range(12, 64))

#: secfed's default: Opacus' grid extended to order 4096 for large noise multipliers.
DEFAULT_ORDERS: tuple[float, ...] = (
    *OPACUS_ORDERS, 64, 72, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512,
    640, 768, 1024, 1536, 2048, 3072, 4096,
)  # fmt: skip

#: Integer orders for mechanisms whose RDP is only known at integer orders (Skellam).
INTEGER_ORDERS: tuple[int, ...] = (
    *range(2, 65), 72, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 512,
)  # fmt: skip


def check_rate(sample_rate: float) -> None:
    """Raise unless ``0 <= sample_rate <= 1``."""
    if not (0.0 <= sample_rate <= 1.0) or math.isnan(sample_rate):
        raise PrivacyConfigError(f"sample_rate must lie in [0, 1], got {sample_rate}")


def check_delta(delta: float) -> None:
    """Raise unless ``0 < delta < 1``."""
    if not (0.0 < delta < 1.0):
        raise PrivacyConfigError(f"delta must lie in (0, 1), got {delta}; 1/(n * 10) is common")


def sampled_gaussian_rdp(
    *,
    sample_rate: float,
    noise_multiplier: float,
    steps: int,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> NDArray[np.float64]:
    """RDP of ``steps`` compositions of the Poisson-sampled Gaussian mechanism.

    Add/remove-one adjacency, sensitivity 1, noise std ``noise_multiplier``
    (Mironov, Talwar, Zhang 2019; computed by Opacus' ``compute_rdp``).
    """
    check_rate(sample_rate)
    if noise_multiplier < 0 or math.isnan(noise_multiplier):
        raise PrivacyConfigError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if steps < 0:
        raise PrivacyConfigError(f"steps must be >= 0, got {steps}")
    if steps == 0 or sample_rate == 0.0:
        return np.zeros(len(orders))
    if noise_multiplier == 0.0:
        return np.full(len(orders), np.inf)
    return np.asarray(_one_step_rdp(sample_rate, noise_multiplier, tuple(orders))) * steps


@functools.lru_cache(maxsize=4096)
def _one_step_rdp(
    sample_rate: float, noise_multiplier: float, orders: tuple[float, ...]
) -> tuple[float, ...]:
    """One step's RDP vector, cached: a client's (rate, noise) repeats every round."""
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=orders)
    return tuple(float(r) for r in np.asarray(rdp, dtype=np.float64))


def rdp_to_epsilon(
    *, rdp: NDArray[np.float64], orders: Sequence[float], delta: float
) -> tuple[float, float]:
    """Smallest epsilon over ``orders`` and the order achieving it.

    Conversion of Balle et al. 2020 (Theorem 21), also used by Opacus:
    ``eps = rdp + log1p(-1/a) - (log(delta) + log(a)) / (a - 1)``.
    """
    check_delta(delta)
    a = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    if a.shape != r.shape:
        raise PrivacyConfigError(f"{len(r)} RDP values for {len(a)} orders")
    if np.any(a <= 1):
        raise PrivacyConfigError("RDP orders must be > 1")
    with np.errstate(invalid="ignore", over="ignore"):
        eps = r + np.log1p(-1.0 / a) - (math.log(delta) + np.log(a)) / (a - 1)
    eps = np.where(np.isfinite(eps), eps, np.inf)
    i = int(np.argmin(eps))
    return max(0.0, float(eps[i])), float(a[i])


def log_binom(n: int, k: NDArray[np.float64]) -> NDArray[np.float64]:
    """``log(C(n, k))`` elementwise."""
    return np.asarray(gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1), dtype=np.float64)


def poisson_subsampled_rdp(
    *, base_rdp: NDArray[np.float64], sample_rate: float, orders: Sequence[int]
) -> NDArray[np.float64]:
    """RDP at integer ``orders`` of a mechanism run on a Poisson sample of rate ``sample_rate``.

    ``base_rdp[j]`` is the unsampled mechanism's RDP at order ``j`` (entries 0 and 1 are
    ignored; the array must reach the largest order). Upper bound of Zhu & Wang 2019
    (Poisson subsampled RDP, Theorem 6), valid for any mechanism under add/remove adjacency:

        (a-1) eps'(a) <= log[ (1-q)^(a-1) (a q - q + 1)
                              + C(a,2) q^2 (1-q)^(a-2) exp(eps(2))
                              + 3 sum_{j=3..a} C(a,j) q^j (1-q)^(a-j) exp((j-1) eps(j)) ]

    The result is also capped by the unsampled RDP (sampling never hurts).
    """
    check_rate(sample_rate)
    out = np.empty(len(orders))
    for i, order in enumerate(orders):
        a = int(order)
        if a != order or a < 2:
            raise PrivacyConfigError(f"subsampled RDP needs integer orders >= 2, got {order}")
        if a >= len(base_rdp):
            raise PrivacyConfigError(f"base_rdp stops at order {len(base_rdp) - 1}, need {a}")
        unsampled = float(base_rdp[a])
        if sample_rate == 1.0:
            out[i] = unsampled
            continue
        if sample_rate == 0.0:
            out[i] = 0.0
            continue
        lq, l1q = math.log(sample_rate), math.log1p(-sample_rate)
        terms = [(a - 1) * l1q + math.log1p((a - 1) * sample_rate)]
        terms.append(float(log_binom(a, np.array(2.0))) + 2 * lq + (a - 2) * l1q + base_rdp[2])
        if a >= 3:
            j = np.arange(3, a + 1, dtype=np.float64)
            rest = (
                math.log(3.0)
                + log_binom(a, j)
                + j * lq
                + (a - j) * l1q
                + (j - 1) * base_rdp[3 : a + 1]
            )
            terms.extend(rest.tolist())
        out[i] = min(unsampled, float(logsumexp(terms)) / (a - 1))
    return out
