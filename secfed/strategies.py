"""Server strategies: how the aggregated mean update moves the global adapter.

Every strategy receives the weighted mean of the cohort's updates (``delta = local - global``)
from whoever can read the aggregate, so a blind server never runs an optimiser on
ciphertexts. FedProx and SCAFFOLD also change local training (see :meth:`Strategy.client_hook`).
Adaptive optimisers follow Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), with
``-delta`` as the pseudo-gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigError

Vector = NDArray[np.float64]
_REGISTRY: dict[str, type[Strategy]] = {}


class Strategy:
    """Base: plain FedAvg step ``x <- x + server_lr * delta``."""

    name: ClassVar[str]
    defaults: ClassVar[dict[str, float]] = {"server_lr": 1.0}
    #: Length of the vector each client sends, as a multiple of the adapter size.
    update_blocks: ClassVar[int] = 1

    def __init__(self, dim: int, **options: float):
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise ConfigError(
                f"unknown federation.strategy_options {sorted(unknown)} for {self.name!r}; "
                f"known: {', '.join(sorted(self.defaults))}"
            )
        self.dim = dim
        self.opts = {**self.defaults, **{k: float(v) for k, v in options.items()}}
        for key, value in self.opts.items():
            if not np.isfinite(value) or value < 0:
                raise ConfigError(f"federation.strategy_options.{key} = {value} must be >= 0")
        self.state: dict[str, Vector] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return  # abstract intermediate class
        if cls.name in _REGISTRY:
            raise ValueError(f"strategy {cls.name!r} registered twice")
        _REGISTRY[cls.name] = cls

    def apply(self, global_vec: Vector, mean_update: Vector, *, participation: float) -> Vector:
        """New global vector from the cohort's weighted mean update."""
        return global_vec + self.opts["server_lr"] * mean_update[: self.dim]

    def client_hook(self, client_id: int, global_vec: Vector) -> Callable[[Vector], Vector] | None:
        """Extra gradient term for local training, as a function of the local vector."""
        return None

    def client_payload(
        self, client_id: int, global_vec: Vector, local_vec: Vector, *, steps: int, lr: float
    ) -> Vector:
        """The vector a client aggregates (the update, plus strategy extras)."""
        return local_vec - global_vec

    def commit_client(self, client_id: int) -> None:
        """Called once the round's aggregate is applied: keep client-side state."""

    def state_dict(self) -> dict[str, Vector]:
        return {k: v.copy() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, Vector]) -> None:
        self.state = {k: np.asarray(v, dtype=np.float64).copy() for k, v in state.items()}


class FedAvg(Strategy):
    name = "fedavg"


class FedProx(Strategy):
    """FedAvg server step; clients add ``mu * (w - w_global)`` to their gradient."""

    name = "fedprox"
    defaults: ClassVar[dict[str, float]] = {"server_lr": 1.0, "mu": 0.01}

    def client_hook(self, client_id: int, global_vec: Vector) -> Callable[[Vector], Vector]:
        mu = self.opts["mu"]
        anchor = global_vec.copy()
        return lambda local: mu * (local - anchor)


class FedAvgM(Strategy):
    """Server momentum (Hsu et al. 2019): ``v <- beta v + delta; x <- x + lr v``."""

    name = "fedavgm"
    defaults: ClassVar[dict[str, float]] = {"server_lr": 1.0, "momentum": 0.9}

    def apply(self, global_vec: Vector, mean_update: Vector, *, participation: float) -> Vector:
        v = self.state.get("velocity", np.zeros(self.dim))
        v = self.opts["momentum"] * v + mean_update[: self.dim]
        self.state["velocity"] = v
        return global_vec + self.opts["server_lr"] * v


class _Adaptive(Strategy):
    defaults: ClassVar[dict[str, float]] = {
        "server_lr": 0.01,
        "beta1": 0.9,
        "beta2": 0.99,
        "tau": 1e-3,
    }

    def second_moment(self, v: Vector, g2: Vector) -> Vector:
        raise NotImplementedError

    def apply(self, global_vec: Vector, mean_update: Vector, *, participation: float) -> Vector:
        delta = mean_update[: self.dim]
        b1, tau = self.opts["beta1"], self.opts["tau"]
        m = b1 * self.state.get("m", np.zeros(self.dim)) + (1 - b1) * delta
        v = self.second_moment(self.state.get("v", np.full(self.dim, tau**2)), delta**2)
        self.state["m"], self.state["v"] = m, v
        return global_vec + self.opts["server_lr"] * m / (np.sqrt(v) + tau)


class FedAdam(_Adaptive):
    name = "fedadam"

    def second_moment(self, v: Vector, g2: Vector) -> Vector:
        b2 = self.opts["beta2"]
        return b2 * v + (1 - b2) * g2


class FedYogi(_Adaptive):
    name = "fedyogi"

    def second_moment(self, v: Vector, g2: Vector) -> Vector:
        b2 = self.opts["beta2"]
        return v - (1 - b2) * g2 * np.sign(v - g2)


class FedAdagrad(_Adaptive):
    name = "fedadagrad"

    def second_moment(self, v: Vector, g2: Vector) -> Vector:
        return v + g2


class Scaffold(Strategy):
    """SCAFFOLD (Karimireddy et al. 2020, option II control variates).

    Each client sends ``[delta_y, delta_c]`` as one vector through the same aggregation
    protocol as any update, so the control variates get the same protection. The server
    moves ``x`` by the mean ``delta_y`` and ``c`` by ``participation * mean(delta_c)``.
    """

    name = "scaffold"
    update_blocks = 2

    def __init__(self, dim: int, **options: float):
        super().__init__(dim, **options)
        self.client_controls: dict[int, Vector] = {}
        self._pending: dict[int, Vector] = {}

    def _c(self) -> Vector:
        return self.state.get("c", np.zeros(self.dim))

    def client_hook(self, client_id: int, global_vec: Vector) -> Callable[[Vector], Vector]:
        correction = self._c() - self.client_controls.get(client_id, np.zeros(self.dim))
        return lambda local: correction

    def client_payload(
        self, client_id: int, global_vec: Vector, local_vec: Vector, *, steps: int, lr: float
    ) -> Vector:
        ci = self.client_controls.get(client_id, np.zeros(self.dim))
        new_ci = ci - self._c() + (global_vec - local_vec) / (max(steps, 1) * lr)
        self._pending[client_id] = new_ci
        return np.concatenate([local_vec - global_vec, new_ci - ci])

    def commit_client(self, client_id: int) -> None:
        if client_id in self._pending:
            self.client_controls[client_id] = self._pending.pop(client_id)

    def apply(self, global_vec: Vector, mean_update: Vector, *, participation: float) -> Vector:
        self.state["c"] = self._c() + participation * mean_update[self.dim :]
        return global_vec + self.opts["server_lr"] * mean_update[: self.dim]

    def state_dict(self) -> dict[str, Vector]:
        out = super().state_dict()
        for cid, ci in self.client_controls.items():
            out[f"client_control/{cid}"] = ci.copy()
        return out

    def load_state_dict(self, state: dict[str, Vector]) -> None:
        plain = {k: v for k, v in state.items() if not k.startswith("client_control/")}
        super().load_state_dict(plain)
        self.client_controls = {
            int(k.split("/", 1)[1]): np.asarray(v, dtype=np.float64).copy()
            for k, v in state.items()
            if k.startswith("client_control/")
        }


def create_strategy(name: str, *, dim: int, options: dict[str, float]) -> Strategy:
    """Instantiate a strategy by name (unknown names list the known ones)."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; choose one of {', '.join(sorted(_REGISTRY))}"
        ) from None
    return cls(dim, **options)
