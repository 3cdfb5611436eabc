"""User-level DP for federated averaging (DP-FedAvg, McMahan et al. 2018).

Each sampled client clips its whole update to L2 norm ``S`` (:func:`clip_update`); the sum
of the cohort's clipped updates gets Gaussian noise of std ``z * S``, either added once by
a trusted aggregator (central) or split across clients so that the survivors' sum carries
at least that variance (:func:`split_noise_std`). With each client sampled independently
with probability ``q`` per round, this is the Poisson-sampled Gaussian mechanism over
clients, accounted by :func:`user_level_epsilon` (add/remove one client's data).

Split float noise through fixed-point secure aggregation is accounted as the Gaussian on
the real-valued sum; for an exact integer guarantee use :mod:`privacy.distributed`.

Noise randomness: :func:`make_noise_rng` gives a numpy ``Generator`` seeded from
:mod:`secrets` (PCG64: not a CSPRNG, and the float Gaussian is not hardened against
floating-point attacks; the DP noise needs unpredictability, not secrecy of keys).

Adaptive clipping (Andrew et al. 2021): :class:`AdaptiveClipNorm` moves ``S`` toward a
target quantile of update norms using a noised count of unclipped clients.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .accounting import epsilon_for
from .errors import PrivacyConfigError


@dataclass(frozen=True)
class UserLevelDP:
    """User-level DP settings; ``clip_norm`` also bounds every coordinate of an update,
    which is what secure aggregation's quantisation range is derived from."""

    clip_norm: float
    noise_multiplier: float
    tolerated_dropouts: int = 0

    def __post_init__(self) -> None:
        if not (self.clip_norm > 0) or not math.isfinite(self.clip_norm):
            raise PrivacyConfigError(f"clip_norm must be > 0, got {self.clip_norm}")
        if not (self.noise_multiplier >= 0) or not math.isfinite(self.noise_multiplier):
            raise PrivacyConfigError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.tolerated_dropouts < 0:
            raise PrivacyConfigError(
                f"tolerated_dropouts must be >= 0, got {self.tolerated_dropouts}"
            )

    @property
    def central_std(self) -> float:
        """Std of the Gaussian noise on the sum of clipped updates: ``z * S``."""
        return self.noise_multiplier * self.clip_norm

    @property
    def coordinate_bound(self) -> float:
        """Largest |coordinate| of a clipped update (before noise): ``S``."""
        return self.clip_norm

    def client_noise_std(self, *, clients: int) -> float:
        """Per-client std when the noise is split over a cohort of ``clients``."""
        return split_noise_std(
            noise_multiplier=self.noise_multiplier,
            clip_norm=self.clip_norm,
            clients=clients,
            tolerated_dropouts=self.tolerated_dropouts,
        )


def make_noise_rng(seed: int | None = None) -> np.random.Generator:
    """Noise generator: seeded from :mod:`secrets` unless a (reproducible) seed is given."""
    return np.random.default_rng(secrets.randbits(128) if seed is None else seed)


def clip_update(vector: NDArray[np.floating], *, norm: float) -> tuple[NDArray[np.float64], bool]:
    """Scale ``vector`` down to L2 norm ``norm`` if longer; returns (clipped copy, was_clipped)."""
    if not (norm > 0) or not math.isfinite(norm):
        raise PrivacyConfigError(f"clip norm must be > 0, got {norm}")
    v = np.asarray(vector, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise PrivacyConfigError("update holds NaN or infinity: check local training")
    length = float(np.linalg.norm(v))
    if length <= norm:
        return v.copy(), False
    return v * (norm / length), True


def gaussian_noise(dim: int, *, std: float, rng: np.random.Generator) -> NDArray[np.float64]:
    """``dim`` independent N(0, std^2) draws."""
    if dim < 0 or not (std >= 0):
        raise PrivacyConfigError(f"need dim >= 0 and std >= 0, got {dim}, {std}")
    return rng.normal(0.0, std, size=dim) if std > 0 else np.zeros(dim)


def gaussian_tail_bound(*, std: float, dim: int, failure_prob: float) -> float:
    """``t`` with P(any of ``dim`` N(0, std^2) coordinates has |x| >= t) <= ``failure_prob``:
    ``std * sqrt(2 log(2 dim / failure_prob))`` (Chernoff bound and a union bound).

    With split noise, a client's noised coordinate stays within ``clip_norm + t``: size
    fixed-point encoding's clip from that so it never clips the noise.
    """
    if not (0 < failure_prob < 1) or dim < 1 or std < 0:
        raise PrivacyConfigError(
            f"need 0 < failure_prob < 1, dim >= 1, std >= 0; got {failure_prob}, {dim}, {std}"
        )
    return std * math.sqrt(2 * math.log(2 * dim / failure_prob))


def split_noise_std(
    *, noise_multiplier: float, clip_norm: float, clients: int, tolerated_dropouts: int
) -> float:
    """Per-client std so that any ``clients - tolerated_dropouts`` survivors' noise sums to
    variance at least ``(z * S)^2``: ``z * S / sqrt(clients - tolerated_dropouts)``."""
    survivors = clients - tolerated_dropouts
    if clients < 1 or tolerated_dropouts < 0 or survivors < 1:
        raise PrivacyConfigError(
            f"cannot split noise over {clients} clients tolerating {tolerated_dropouts} dropouts: "
            f"at least one client must survive"
        )
    return noise_multiplier * clip_norm / math.sqrt(survivors)


def user_level_epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """Epsilon after ``rounds`` of DP-FedAvg with client sampling rate ``sample_rate``.

    Assumes each client joins a round independently with probability ``sample_rate``
    (Poisson sampling); with a fixed-size cohort this is the usual approximation.
    """
    return epsilon_for(
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=rounds,
        delta=delta,
        accountant=accountant,
    )


def adaptive_update_noise_multiplier(*, noise_multiplier: float, count_noise_std: float) -> float:
    """Noise multiplier left for the update sum when the clipped count is also noised.

    Andrew et al. 2021: releasing both with multipliers ``z_u`` and ``2 * sigma_b`` costs as
    one Gaussian with ``z = (z_u^-2 + (2 sigma_b)^-2)^-1/2``, hence
    ``z_u = (z^-2 - (2 sigma_b)^-2)^-1/2``.
    """
    if noise_multiplier <= 0:
        raise PrivacyConfigError("adaptive clipping needs noise_multiplier > 0")
    if 2 * count_noise_std <= noise_multiplier:
        raise PrivacyConfigError(
            f"count_noise_std {count_noise_std} is too small for noise_multiplier "
            f"{noise_multiplier}: need 2 * count_noise_std > noise_multiplier (the paper uses "
            f"count_noise_std = expected_clients / 20)"
        )
    return (noise_multiplier**-2 - (2 * count_noise_std) ** -2) ** -0.5


class AdaptiveClipNorm:
    """Geometric clip-norm update toward a target quantile (Andrew et al. 2021).

    Each round, clients contribute ``b_i = 1[||update_i|| <= S]`` (centred as ``b_i - 1/2``,
    sensitivity 1/2) to a sum that gets N(0, ``count_noise_std``^2); the unclipped fraction
    is estimated as ``b = noised_sum / expected_clients + 1/2``; then
    ``S <- S * exp(-learning_rate * (b - target_quantile))``. No party should see a single
    ``b_i``: sum them inside the aggregation protocol (as secfed's runner does, one extra
    coordinate of each update) and pass the noised sum with ``already_noised=True``.
    """

    def __init__(
        self,
        *,
        initial_norm: float,
        target_quantile: float,
        learning_rate: float = 0.2,
        count_noise_std: float,
        expected_clients: float,
    ) -> None:
        if not (initial_norm > 0):
            raise PrivacyConfigError(f"initial_norm must be > 0, got {initial_norm}")
        if not (0 < target_quantile < 1):
            raise PrivacyConfigError(f"target_quantile must lie in (0, 1), got {target_quantile}")
        if not (learning_rate > 0) or count_noise_std < 0 or not (expected_clients > 0):
            raise PrivacyConfigError(
                f"need learning_rate > 0, count_noise_std >= 0, expected_clients > 0; got "
                f"{learning_rate}, {count_noise_std}, {expected_clients}"
            )
        self.norm = float(initial_norm)
        self.target_quantile = float(target_quantile)
        self.learning_rate = float(learning_rate)
        self.count_noise_std = float(count_noise_std)
        self.expected_clients = float(expected_clients)
        self.last_fraction: float | None = None

    def update(
        self,
        *,
        unclipped: float,
        participants: int,
        rng: np.random.Generator | None = None,
        already_noised: bool = False,
    ) -> float:
        """Advance one round from the count of unclipped updates; returns the new norm.

        ``already_noised`` means ``unclipped`` already carries the count noise (e.g. it was
        summed under secure aggregation with distributed noise).
        """
        if participants < 0 or (not already_noised and not 0 <= unclipped <= participants):
            raise PrivacyConfigError(
                f"bad counts: unclipped {unclipped}, participants {participants}"
            )
        centred = unclipped - participants / 2.0
        if not already_noised and self.count_noise_std > 0:
            centred += float((rng or make_noise_rng()).normal(0.0, self.count_noise_std))
        fraction = centred / self.expected_clients + 0.5
        self.last_fraction = fraction
        self.norm *= math.exp(-self.learning_rate * (fraction - self.target_quantile))
        return self.norm

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state."""
        return {
            "norm": self.norm,
            "target_quantile": self.target_quantile,
            "learning_rate": self.learning_rate,
            "count_noise_std": self.count_noise_std,
            "expected_clients": self.expected_clients,
            "last_fraction": self.last_fraction,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.norm = float(state["norm"])
        self.target_quantile = float(state["target_quantile"])
        self.learning_rate = float(state["learning_rate"])
        self.count_noise_std = float(state["count_noise_std"])
        self.expected_clients = float(state["expected_clients"])
        last = state.get("last_fraction")
        self.last_fraction = None if last is None else float(last)
