"""In-process message ferry: runs one round of any protocol and counts every byte.

The in-process runner, the benchmarks and the conformance suite all use :func:`run_round`;
the Flower adapter ferries the same bytes over Flower messages instead.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .errors import ProtocolError
from .protocol import Aggregate, ClientSession, ServerSession


@dataclass
class Traffic:
    """Bytes and seconds of one round, per party."""

    bytes_up: dict[int, int] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    client_seconds: dict[int, float] = field(default_factory=dict)
    server_seconds: float = 0.0
    stages: int = 0

    def add_down(self, cid: int, n: int) -> None:
        self.bytes_down[cid] = self.bytes_down.get(cid, 0) + n

    def add_up(self, cid: int, n: int) -> None:
        self.bytes_up[cid] = self.bytes_up.get(cid, 0) + n

    def add_client_time(self, cid: int, seconds: float) -> None:
        self.client_seconds[cid] = self.client_seconds.get(cid, 0.0) + seconds


@dataclass(frozen=True)
class RoundOutcome:
    """The aggregate (as learned by whoever may read it) and the round's traffic."""

    aggregate: Aggregate
    traffic: Traffic
    dropped: tuple[int, ...]


def run_round(
    server: ServerSession,
    clients: Mapping[int, ClientSession],
    *,
    drop_at: Mapping[int, int] | None = None,
) -> RoundOutcome:
    """Ferry messages between ``server`` and ``clients`` until the server finishes.

    ``drop_at`` maps a client id to the stage (0-based) from which it stops answering:
    ``{3: 2}`` makes client 3 answer stages 0 and 1, then vanish.
    """
    drop_at = dict(drop_at or {})
    traffic = Traffic()
    t0 = time.perf_counter()
    messages = server.start()
    traffic.server_seconds += time.perf_counter() - t0
    stage = 0
    while True:
        alive = {cid for cid in messages if drop_at.get(cid, 1 << 30) > stage}
        step_final = getattr(messages, "final", False)
        replies: dict[int, bytes] = {}
        for cid, msg in messages.items():
            if cid not in alive:
                continue
            if cid not in clients:
                raise ProtocolError(f"server addressed client {cid}, which is not in the round")
            traffic.add_down(cid, len(msg))
            t1 = time.perf_counter()
            reply = clients[cid].handle(msg)
            traffic.add_client_time(cid, time.perf_counter() - t1)
            if reply is not None and not step_final:
                traffic.add_up(cid, len(reply))
                replies[cid] = reply
        traffic.stages = stage + 1
        if step_final:
            break
        t2 = time.perf_counter()
        step = server.advance(replies)
        traffic.server_seconds += time.perf_counter() - t2
        stage += 1
        if step.final:
            messages = _FinalMessages(step.messages)
            if not step.messages:
                break
        else:
            messages = step.messages
    dropped = tuple(sorted(cid for cid in clients if drop_at.get(cid, 1 << 30) <= stage))
    aggregate = server.aggregate()
    if aggregate is None:
        readers = [
            agg
            for cid, c in sorted(clients.items())
            if cid not in dropped and (agg := c.aggregate()) is not None
        ]
        if not readers:
            raise ProtocolError(
                "round finished but neither the server nor any client holds the aggregate"
            )
        aggregate = readers[0]
        for other in readers[1:]:
            if not np.array_equal(other.weighted_sum, aggregate.weighted_sum):
                raise ProtocolError("key holders decoded different aggregates")
    return RoundOutcome(aggregate=aggregate, traffic=traffic, dropped=dropped)


class _FinalMessages(dict[int, bytes]):
    """Messages of the server's final step (no replies expected)."""

    final = True
