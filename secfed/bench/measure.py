"""Time one sweep point: a stage-aware ferry loop over the public session API.

Per repetition, fresh sessions run one round. The loop mirrors :func:`crypto.run_round`
(same dropout and final-message semantics) but splits each party's time by stage:

* ``encode_s``: a client's time building its session plus every ``handle()`` call that
  answers the server (key setup, quantise/encrypt/mask, unmasking shares); reported as the
  max and the median over clients;
* ``aggregate_s``: the server's ``start()`` plus every ``advance()``;
* ``decode_s``: a key holder's ``handle()`` of the final messages plus its ``aggregate()``
  (0 where the server learns the result). Every client's final message is counted in
  ``bytes_down``, but only ``decode_clients`` of them (default 2) run the identical decoding;
  the max over those is reported.

Dropouts: a warm-up round without dropouts counts the stages at which clients reply
(``reply_stages``); the ``dropouts`` highest client ids then stop answering from stage
``max(reply_stages - 1, 0)``: after sending their input, before the last client stage
(unmasking for secagg). One-stage protocols (plain) can only drop before sending.

Memory: ``peak_mem_bytes`` is tracemalloc's peak over the warm-up round (all parties in
one process; Python and numpy allocations, not native buffers of gmpy2 or SEAL);
``rss_max_bytes`` is the process's ``ru_maxrss`` high-water mark after the point.
``peak_rss_bytes`` (per party: ``client``, ``server``) comes from one more round with client 0
and the server in their own processes (:mod:`secfed.bench.memory`); ``rss_over_update`` is
each party's peak above its post-import baseline over the float32 update size.
"""

from __future__ import annotations

import resource
import sys
import time
import tracemalloc
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

import crypto

from .workload import Point, exact_sum, synthetic_updates

_NEVER = 1 << 30

#: ``probe(vectors, weights) -> {party: {"peak_rss_bytes": .., "over_update": ..}}``.
MemoryProbe = Callable[[Mapping[int, Any], Mapping[int, float]], dict[str, dict[str, float]]]


@dataclass
class FerryResult:
    """One round's aggregate and per-party times and bytes."""

    aggregate: crypto.Aggregate
    encode_s: dict[int, float]
    decode_s: dict[int, float]
    server_s: float
    bytes_up: dict[int, int]
    bytes_down: dict[int, int]
    reply_stages: int
    dropped: tuple[int, ...]
    wall_s: float


def ferry(
    protocol: crypto.Protocol,
    spec: crypto.RoundSpec,
    vectors: Mapping[int, Any],
    weights: Mapping[int, float],
    *,
    drop_at: Mapping[int, int] | None = None,
    decode_clients: int = 2,
) -> FerryResult:
    """Run one round of ``protocol`` for ``spec.cohort``, timing each party per stage."""
    drops = dict(drop_at or {})
    t_wall = time.perf_counter()
    enc: dict[int, float] = {}
    dec: dict[int, float] = {}
    up: dict[int, int] = {cid: 0 for cid in spec.cohort}
    down: dict[int, int] = {cid: 0 for cid in spec.cohort}
    clients: dict[int, crypto.ClientSession] = {}
    for cid in spec.cohort:
        t = time.perf_counter()
        clients[cid] = protocol.client_session(spec, cid, vectors[cid], weights[cid])
        enc[cid] = time.perf_counter() - t
    server = protocol.server_session(spec)
    t = time.perf_counter()
    messages = server.start()
    server_s = time.perf_counter() - t
    stage, final, decoders = 0, False, 0
    while True:
        replies: dict[int, bytes] = {}
        for cid, msg in sorted(messages.items()):
            if drops.get(cid, _NEVER) <= stage:
                continue
            if cid not in clients:
                raise crypto.ProtocolError(f"server addressed client {cid}, not in the round")
            down[cid] += len(msg)
            if final:
                if decoders >= decode_clients:
                    continue  # bytes counted; identical decoding not rerun
                decoders += 1
            t = time.perf_counter()
            reply = clients[cid].handle(msg)
            dt = time.perf_counter() - t
            if final:
                dec[cid] = dec.get(cid, 0.0) + dt
            else:
                enc[cid] += dt
                if reply is not None:
                    up[cid] += len(reply)
                    replies[cid] = reply
        if final:
            break
        t = time.perf_counter()
        step = server.advance(replies)
        server_s += time.perf_counter() - t
        stage += 1
        if step.final and not step.messages:
            break
        messages, final = step.messages, step.final
    dropped = tuple(sorted(c for c in spec.cohort if drops.get(c, _NEVER) <= stage))
    aggregate = server.aggregate()
    if aggregate is None:
        for cid in sorted(dec):
            t = time.perf_counter()
            agg = clients[cid].aggregate()
            dec[cid] += time.perf_counter() - t
            if aggregate is None:
                aggregate = agg
    if aggregate is None:
        raise crypto.ProtocolError("round finished but nobody holds the aggregate")
    return FerryResult(
        aggregate, enc, dec, server_s, up, down, stage, dropped, time.perf_counter() - t_wall
    )


@dataclass
class BenchRecord:
    """One row of results: medians over repetitions, seconds and bytes per client."""

    protocol: str
    params: int
    clients: int
    dropouts: int
    kind: str = "secfed"
    repeats: int = 0
    encode_s: float = float("nan")
    encode_s_median_client: float = float("nan")
    aggregate_s: float = float("nan")
    decode_s: float = float("nan")
    round_s: float = float("nan")
    bytes_up: float = float("nan")
    bytes_down: float = float("nan")
    expansion: float = float("nan")
    max_abs_error: float = float("nan")
    error_bound: float = float("nan")
    weight_error: float = float("nan")
    peak_mem_bytes: float = float("nan")
    rss_max_bytes: float = float("nan")
    peak_rss_bytes: dict[str, float] = field(default_factory=dict)
    rss_over_update: dict[str, float] = field(default_factory=dict)
    setup_s: float = float("nan")
    reply_stages: int = 0
    drop_stage: int = -1
    learned_by: str = ""
    insecure: bool = False
    # secfed rows: signed (True) or the UNAUTHENTICATED mode (False); None for peers.
    authenticated: bool | None = None
    options: str = ""
    note: str = ""
    error: str = ""
    spread: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Flat dict: spread fields become ``<metric>_iqr``/``_min``/``_max`` columns."""
        data = asdict(self)
        data.update(data.pop("spread"))
        for name in ("peak_rss_bytes", "rss_over_update"):
            for party, value in data[name].items():
                data[f"{name}_{party}"] = value
        return data


def _rss_bytes() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(rss if sys.platform == "darwin" else rss * 1024)


def _summarise(rec: BenchRecord, name: str, values: list[float]) -> None:
    arr = np.asarray(values, dtype=np.float64)
    setattr(rec, name, float(np.median(arr)))
    q1, q3 = np.percentile(arr, [25, 75])
    rec.spread[f"{name}_iqr"] = float(q3 - q1)
    rec.spread[f"{name}_min"] = float(arr.min())
    rec.spread[f"{name}_max"] = float(arr.max())


def measure_point(
    protocol: crypto.Protocol,
    point: Point,
    *,
    repeats: int = 3,
    decode_clients: int = 2,
    point_budget_s: float = 600.0,
    insecure: bool = False,
    authenticated: bool = True,
    job_id: str = "secfed-bench",
    memory_probe: MemoryProbe | None = None,
) -> BenchRecord:
    """Warm-up round (memory, stage count), then up to ``repeats`` timed rounds.

    Timed repetitions are capped so that their estimated total stays within
    ``point_budget_s`` (at least one); ``record.repeats`` says how many ran.
    """
    rec = BenchRecord(point.protocol, point.params, point.clients, point.dropouts)
    rec.learned_by = protocol.learned_by
    rec.insecure = insecure
    rec.authenticated = authenticated
    rec.options = ",".join(f"{k}={v}" for k, v in sorted(protocol.options.items()))
    limit = protocol.max_dropouts(point.clients)
    if point.dropouts >= point.clients or point.dropouts > limit:
        rec.error = f"skipped: {point.dropouts} dropouts exceed max_dropouts={limit}"
        return rec
    vectors, weights = synthetic_updates(params=point.params, clients=point.clients)
    cohort = tuple(range(point.clients))

    def spec(round_: int) -> crypto.RoundSpec:
        return crypto.RoundSpec(job_id=job_id, round=round_, cohort=cohort, dim=point.params)

    tracemalloc.start()
    try:
        warm = ferry(protocol, spec(0), vectors, weights, decode_clients=decode_clients)
        rec.peak_mem_bytes = float(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()
    rec.reply_stages = warm.reply_stages
    drop_at: dict[int, int] = {}
    if point.dropouts:
        rec.drop_stage = max(warm.reply_stages - 1, 0)
        drop_at = {cid: rec.drop_stage for cid in cohort[-point.dropouts :]}
    runs = max(1, min(repeats, int(point_budget_s // max(warm.wall_s, 1e-9))))
    samples: dict[str, list[float]] = {k: [] for k in ("encode", "median", "agg", "dec", "wall")}
    errors: list[float] = []
    last = warm
    for r in range(runs):
        res = ferry(
            protocol, spec(r + 1), vectors, weights, drop_at=drop_at, decode_clients=decode_clients
        )
        samples["encode"].append(max(res.encode_s.values()))
        samples["median"].append(float(np.median(list(res.encode_s.values()))))
        samples["agg"].append(res.server_s)
        samples["dec"].append(max(res.decode_s.values(), default=0.0))
        samples["wall"].append(res.wall_s)
        exact, weight = exact_sum(vectors, weights, res.aggregate.contributors)
        errors.append(float(np.max(np.abs(res.aggregate.weighted_sum - exact))))
        rec.weight_error = abs(res.aggregate.total_weight - weight)
        rec.error_bound = float(res.aggregate.error_bound)
        last = res
    rec.repeats = runs
    _summarise(rec, "encode_s", samples["encode"])
    _summarise(rec, "encode_s_median_client", samples["median"])
    _summarise(rec, "aggregate_s", samples["agg"])
    _summarise(rec, "decode_s", samples["dec"])
    _summarise(rec, "round_s", samples["wall"])
    rec.max_abs_error = max(errors)
    survivors = [c for c in cohort if c not in last.dropped]
    rec.bytes_up = float(np.median([last.bytes_up[c] for c in survivors]))
    rec.bytes_down = float(np.median([last.bytes_down[c] for c in survivors]))
    rec.expansion = rec.bytes_up / (4.0 * point.params)
    rec.rss_max_bytes = _rss_bytes()
    if memory_probe is not None:
        parties = memory_probe(vectors, weights)
        rec.peak_rss_bytes = {k: v["peak_rss_bytes"] for k, v in parties.items()}
        rec.rss_over_update = {k: v["over_update"] for k, v in parties.items()}
    return rec
