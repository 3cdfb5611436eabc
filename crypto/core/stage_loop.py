"""The one stage loop: drives any protocol's round over a pluggable transport.

A :class:`Transport` carries one stage's server messages to the clients and brings back what
they answered; the loop does everything else once for every transport: it starts the server
session, stops addressing a client after it missed a stage (a dropout), counts bytes and
seconds per party, advances the server and reads the aggregate from the server or, where the
clients hold the key, from the key holders (who must agree). :class:`InProcessTransport`
calls client sessions directly (the simulator, benchmarks and the conformance suite); the
Flower adapter's transport sends the same bytes as Flower messages with a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import ProtocolError
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


@dataclass
class Delivery:
    """What came back from one stage: who answered, their replies and their own timings.

    ``answered`` holds every client that received its message and responded in time, whether
    or not the stage expects a reply; ``aggregates`` holds the key holders' decoded aggregates
    after the final stage.
    """

    answered: set[int] = field(default_factory=set)
    replies: dict[int, bytes] = field(default_factory=dict)
    client_seconds: dict[int, float] = field(default_factory=dict)
    aggregates: list[Aggregate] = field(default_factory=list)
    refusals: dict[int, str] = field(default_factory=dict)


class Transport(Protocol):
    """Carries one stage's messages (client id -> bytes) and returns the :class:`Delivery`."""

    def deliver(self, stage: int, messages: Mapping[int, bytes], *, final: bool) -> Delivery: ...


class InProcessTransport:
    """Calls the client sessions directly; ``drop_at`` simulates dropouts.

    ``drop_at`` maps a client id to the stage (0-based) from which it stops answering:
    ``{3: 2}`` makes client 3 answer stages 0 and 1, then vanish. A client that refuses a
    message (``ProtocolError``: it failed a check) does not answer either, as over Flower.
    """

    def __init__(
        self, clients: Mapping[int, ClientSession], *, drop_at: Mapping[int, int] | None = None
    ):
        self.clients = clients
        self.drop_at = dict(drop_at or {})

    def deliver(self, stage: int, messages: Mapping[int, bytes], *, final: bool) -> Delivery:
        out = Delivery()
        for cid, msg in messages.items():
            if self.drop_at.get(cid, 1 << 30) <= stage:
                continue
            if cid not in self.clients:
                raise ProtocolError(f"server addressed client {cid}, which has no session here")
            t0 = time.perf_counter()
            try:
                reply = self.clients[cid].handle(msg)
            except ProtocolError as err:  # the client refused the message: it drops out
                out.refusals[cid] = f"{type(err).__name__}: {err}"
                continue
            out.client_seconds[cid] = time.perf_counter() - t0
            out.answered.add(cid)
            if final:
                if (agg := self.clients[cid].aggregate()) is not None:
                    out.aggregates.append(agg)
            elif reply is not None:
                out.replies[cid] = reply
        return out


def drive_round(server: ServerSession, transport: Transport) -> RoundOutcome:
    """Run one round of ``server``'s protocol with the clients behind ``transport``."""
    traffic = Traffic()
    alive = set(server.spec.cohort)
    t0 = time.perf_counter()
    messages = server.start()
    traffic.server_seconds += time.perf_counter() - t0
    final, stage = False, 0
    aggregates: list[Aggregate] = []
    while True:
        if strangers := set(messages) - set(server.spec.cohort):
            raise ProtocolError(
                f"server addressed clients {sorted(strangers)}, which are not in the round"
            )
        sent = {cid: msg for cid, msg in messages.items() if cid in alive}
        delivery = transport.deliver(stage, sent, final=final)
        alive -= set(sent) - delivery.answered
        for cid in delivery.answered:
            traffic.add_down(cid, len(sent[cid]))
            traffic.add_client_time(cid, delivery.client_seconds.get(cid, 0.0))
        traffic.stages = stage + 1
        if final:
            aggregates = delivery.aggregates
            break
        for cid, reply in delivery.replies.items():
            traffic.add_up(cid, len(reply))
        t1 = time.perf_counter()
        # Hand replies over one at a time, letting go of each: a session that sums them as
        # they arrive (ServerSession.receive) then never holds the whole stage.
        for cid in sorted(delivery.replies):
            reply = delivery.replies.pop(cid)
            if cid in alive:
                server.receive(cid, reply)
            del reply
        step = server.close_stage()
        traffic.server_seconds += time.perf_counter() - t1
        alive -= set(server.refused)
        stage += 1
        messages, final = step.messages, step.final
        if final and not messages:
            break
    dropped = tuple(sorted(set(server.spec.cohort) - alive))
    return RoundOutcome(
        aggregate=read_aggregate(server, aggregates), traffic=traffic, dropped=dropped
    )


def read_aggregate(server: ServerSession, client_aggregates: list[Aggregate]) -> Aggregate:
    """The server's aggregate, or the key holders' (refused when they disagree)."""
    agg = server.aggregate()
    if agg is not None:
        return agg
    if not client_aggregates:
        raise ProtocolError(
            "round finished but neither the server nor any key holder holds the aggregate"
        )
    for other in client_aggregates[1:]:
        if not np.array_equal(other.weighted_sum, client_aggregates[0].weighted_sum):
            raise ProtocolError("key holders decoded different aggregates")
    return client_aggregates[0]


def run_round(
    server: ServerSession,
    clients: Mapping[int, ClientSession],
    *,
    drop_at: Mapping[int, int] | None = None,
) -> RoundOutcome:
    """One in-process round: :func:`drive_round` over an :class:`InProcessTransport`."""
    return drive_round(server, InProcessTransport(clients, drop_at=drop_at))
