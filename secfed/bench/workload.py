"""What a sweep measures: points, synthetic updates and per-protocol options."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import SecfedError

#: Coordinates of synthetic updates lie in [-UPDATE_RANGE, UPDATE_RANGE] (inside every
#: protocol's default clipping range), weights in [0.5, 1.0] (within default max weights).
UPDATE_RANGE = 0.5


@dataclass(frozen=True)
class Point:
    """One cell of the sweep."""

    protocol: str
    params: int
    clients: int
    dropouts: int


def sweep_points(
    protocols: Iterable[str],
    params: Iterable[int],
    clients: Iterable[int],
    dropouts: Iterable[int],
) -> list[Point]:
    """Cartesian product, protocol-major, growing sizes last (cheap points first)."""
    return [
        Point(p, n, c, d)
        for p, c, d, n in itertools.product(
            list(protocols), sorted(clients), sorted(dropouts), sorted(params)
        )
    ]


def synthetic_updates(
    *, params: int, clients: int, seed: int = 0
) -> tuple[dict[int, NDArray[np.float32]], dict[int, float]]:
    """Deterministic test updates and weights for client ids ``0..clients-1``.

    Benchmark data, not key material: a seeded numpy generator is fine here.
    """
    rng = np.random.default_rng(seed)  # not-secret: synthetic benchmark updates
    vectors = {
        cid: rng.uniform(-UPDATE_RANGE, UPDATE_RANGE, params).astype(np.float32)
        for cid in range(clients)
    }
    weights = {cid: float(rng.uniform(0.5, 1.0)) for cid in range(clients)}
    return vectors, weights


def exact_sum(
    vectors: Mapping[int, NDArray[np.float32]],
    weights: Mapping[int, float],
    contributors: Iterable[int],
) -> tuple[NDArray[np.float64], float]:
    """The exact weighted sum (float64) of the contributors' float32 vectors."""
    ids = sorted(contributors)
    total = np.zeros(len(next(iter(vectors.values()))), dtype=np.float64)
    for cid in ids:
        total += weights[cid] * vectors[cid].astype(np.float64)
    return total, float(sum(weights[cid] for cid in ids))


def parse_value(text: str) -> Any:
    """``3072`` -> int, ``0.5`` -> float, ``true``/``false`` -> bool, anything else -> str."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_protocol_options(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``["paillier.key_bits=3072"]`` -> ``{"paillier": {"key_bits": 3072}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        proto, dot, name = key.partition(".")
        if not eq or not dot or not proto or not name:
            raise SecfedError(
                f"--option {item!r} must look like PROTOCOL.NAME=VALUE, e.g. paillier.key_bits=3072"
            )
        out.setdefault(proto, {})[name] = parse_value(value)
    return out


def parse_int_list(text: str, *, what: str) -> list[int]:
    """``"10000,1e6"`` -> ``[10000, 1000000]``; rejects negatives and junk."""
    values: list[int] = []
    for part in text.split(","):
        part = part.strip().replace("_", "")
        if not part:
            continue
        try:
            value = int(float(part)) if any(c in part for c in ".eE") else int(part)
        except ValueError:
            raise SecfedError(f"--{what}: {part!r} is not an integer") from None
        if value < 0:
            raise SecfedError(f"--{what}: {value} is negative")
        values.append(value)
    if not values:
        raise SecfedError(f"--{what} needs at least one value, got {text!r}")
    return values
