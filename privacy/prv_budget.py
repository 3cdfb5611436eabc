"""Resource planning for the PRV accountant, and the exact epsilon of the Gaussian mechanism.

Opacus' PRV accountant discretises the privacy-loss distribution on a grid of
``2 L / mesh`` points, ``mesh = eps_error / sqrt(T log(12 / delta_error) / 2)`` (``T`` the
total number of composed steps, ``L`` the safe domain size of Gopi et al. 2021). Its peak
memory is about :data:`BYTES_PER_POINT` bytes per grid point and its time about
:data:`SECONDS_PER_POINT` per point (measured: 67 B and ~1 us per point on this machine's
CPUs). :func:`plan_prv` computes the grid size before anything is allocated (the domain size
itself is a cheap tail computation), so the accountant can refuse grids above
:data:`MAX_GRID_POINTS` and use RDP instead: at sigma=1, q=0.6, T=50,000 the grid would have
1.6e9 points (~100 GiB).

:func:`gaussian_epsilon` is the exact (tight) epsilon of ``k`` compositions of the Gaussian
mechanism without sampling (Balle & Wang 2018, analytic Gaussian): ``k`` steps at noise
multiplier ``z`` are one Gaussian at ``z / sqrt(k)``, whose privacy profile is
``delta(eps) = Phi(-eps s + 1/(2 s)) - e^eps Phi(-eps s - 1/(2 s))`` with ``s = z / sqrt(k)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.optimize import brentq
from scipy.stats import norm

from .errors import PrivacyConfigError

#: Largest PRV grid built (about 270 MB and a few seconds); above it RDP is used.
MAX_GRID_POINTS = 4_000_000
#: Measured peak bytes per grid point of Opacus' PRV accountant (tracemalloc).
BYTES_PER_POINT = 72
#: Measured seconds per grid point (2-core machine, unloaded), for the log line.
SECONDS_PER_POINT = 1.2e-6
#: Opacus' defaults in ``PRVAccountant.get_epsilon``.
EPS_ERROR = 0.01


@dataclass(frozen=True)
class PRVPlan:
    """Grid the PRV accountant would build for a history, and whether it fits."""

    points: float
    bytes: float
    seconds: float
    max_points: int

    @property
    def fits(self) -> bool:
        return self.points <= self.max_points

    def describe(self) -> str:
        return (
            f"PRV grid of {self.points:.3g} points (~{self.bytes / 2**30:.3g} GiB, "
            f"~{self.seconds:.3g} s) is above the limit of {self.max_points:.3g} points"
        )


def plan_prv(
    history: Sequence[tuple[float, float, int]],
    *,
    delta: float,
    max_points: int = MAX_GRID_POINTS,
) -> PRVPlan:
    """The grid Opacus' PRV accountant would build for ``history`` at ``delta``."""
    import numpy as np
    from opacus.accountants.analysis.prv import (
        PoissonSubsampledGaussianPRV,
        compute_safe_domain_size,
    )

    live = [(s, q, n) for s, q, n in history if n > 0 and q > 0]
    if not live:
        return PRVPlan(0.0, 0.0, 0.0, max_points)
    delta_error = delta / 1000
    prvs = [PoissonSubsampledGaussianPRV(q, s) for s, q, _ in live]
    steps = [n for _, _, n in live]
    size = float(
        compute_safe_domain_size(
            prvs=prvs, max_self_compositions=steps, eps_error=EPS_ERROR, delta_error=delta_error
        )
    )
    mesh = EPS_ERROR / float(np.sqrt(sum(steps) * np.log(12 / delta_error) / 2))
    points = 2 * size / mesh
    return PRVPlan(points, points * BYTES_PER_POINT, points * SECONDS_PER_POINT, max_points)


def _gaussian_delta(eps: float, s: float) -> float:
    return float(norm.cdf(-eps * s + 0.5 / s) - math.exp(eps) * norm.cdf(-eps * s - 0.5 / s))


def gaussian_epsilon(*, noise_multiplier: float, compositions: int, delta: float) -> float:
    """Exact epsilon at ``delta`` of ``compositions`` Gaussian mechanisms (sensitivity 1,
    noise std ``noise_multiplier``, no sampling): the analytic Gaussian of Balle & Wang."""
    if not 0 < delta < 1:
        raise PrivacyConfigError(f"delta must lie in (0, 1), got {delta}")
    if compositions < 0 or noise_multiplier < 0:
        raise PrivacyConfigError(
            f"need compositions >= 0 and noise_multiplier >= 0, got {compositions}, "
            f"{noise_multiplier}"
        )
    if compositions == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    s = noise_multiplier / math.sqrt(compositions)
    if _gaussian_delta(0.0, s) <= delta:
        return 0.0
    hi = 1.0
    while _gaussian_delta(hi, s) > delta:
        hi *= 2
    return float(brentq(lambda e: _gaussian_delta(e, s) - delta, 0.0, hi, xtol=1e-12))
