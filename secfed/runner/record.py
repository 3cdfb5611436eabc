"""A round's metrics record: phase timings and the fields of one metrics.jsonl line."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

import crypto

from .local import ClientResult


class RoundClock:
    """Wall time of a round and of its named phases."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


#: Bytes per adapter parameter of the global-model broadcast: the vector travels as float64
#: (``secfed.flower.codec.vector_bytes``), so in-process records count what a deployment sends.
MODEL_BYTES_PER_PARAM = 8


def round_record(
    round_: int,
    *,
    metrics: dict[str, float],
    cohort: list[int],
    results: list[ClientResult],
    outcome: crypto.RoundOutcome,
    clock: RoundClock,
    release_loss: bool,
    model_bytes: int,
) -> dict[str, Any]:
    """The metrics.jsonl record of a round that produced an aggregate.

    Traffic is per participating client: ``bytes_down`` is the global adapter every trained
    client received (``bytes_down_model`` = ``model_bytes``) plus the aggregation protocol's
    messages to it (``bytes_down_protocol``); ``bytes_up`` is protocol traffic only (the
    update travels inside the protocol). ``release_loss`` adds the clients' mean un-noised
    training loss: only where no DP promise covers the run.
    """
    traffic = outcome.traffic
    n = max(len(results), 1)
    down_protocol = {r.client_id: traffic.bytes_down.get(r.client_id, 0) for r in results}
    down = {cid: b + model_bytes for cid, b in down_protocol.items()}
    record: dict[str, Any] = {
        "round": round_,
        **metrics,
        "cohort": cohort,
        "contributors": sorted(outcome.aggregate.contributors),
        "dropped": list(outcome.dropped),
        "bytes_up": sum(traffic.bytes_up.values()) / n,
        "bytes_down": sum(down.values()) / n,
        "bytes_down_protocol": sum(down_protocol.values()) / n,
        "bytes_down_model": float(model_bytes),
        "bytes_up_per_client": {str(k): v for k, v in sorted(traffic.bytes_up.items())},
        "bytes_down_per_client": {str(k): v for k, v in sorted(down.items())},
        "phases": {
            "train": clock.phases.get("train", 0.0),
            "aggregate": clock.phases.get("aggregate", 0.0),
            "aggregate_server": traffic.server_seconds,
            "aggregate_client_max": max(traffic.client_seconds.values(), default=0.0),
            "evaluate": clock.phases.get("evaluate", 0.0),
        },
        "aggregate_error_bound": outcome.aggregate.error_bound,
    }
    if release_loss:
        record["train_loss"] = float(np.mean([r.loss for r in results]))
    return record


def skipped_record(
    round_: int, sampled: list[int], history: list[dict[str, Any]]
) -> dict[str, Any]:
    """The record of a round in which no sampled client could train within its budget
    (metrics carried over from the last record in ``history``)."""
    previous = history[-1] if history else None
    return {
        "round": round_,
        "accuracy": previous["accuracy"] if previous else None,
        "loss": previous["loss"] if previous else None,
        "cohort": [],
        "sampled": sampled,
        "contributors": [],
        "bytes_up": 0.0,
        "bytes_down": 0.0,
        "bytes_down_protocol": 0.0,
        "bytes_down_model": 0.0,
        "note": "every sampled client is out of privacy budget; global model unchanged",
    }
