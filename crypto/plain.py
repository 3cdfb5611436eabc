"""``plain``: the baseline protocol, no protection.

Threat model: no confidentiality. Each client sends its float32 update and its weight in the
clear; the server sees every individual update and computes the weighted sum in float64.
Messages are signed against the job's roster (:mod:`crypto.core.channel`): a network
attacker's altered, re-stamped or replayed reply is refused as that client's dropout. Any number of
clients may drop; the sum covers whoever answered. Use it as the reference every secure
protocol is measured against.

Wire: one stage. Client reply payload = weight (float64, big-endian) || update (float32
little-endian), 4 bytes per parameter plus 8.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from .core import wire
from .core.channel import Channel
from .core.identity import Keyring
from .core.protocol import (
    Aggregate,
    ClientSession,
    Protocol,
    RoundSpec,
    ServerSession,
    ServerStep,
    ThreatModel,
    adversaries,
)
from .core.registry import register
from .errors import DropoutError, ProtocolError

_NAME = "plain"
_WEIGHT = struct.Struct("!d")
_BLOCK = 1 << 16


class PlainClient(ClientSession):
    """Sends its update in the clear, once."""

    _answered = False

    def __init__(self, *args: Any, keyring: Keyring | None):
        super().__init__(*args)
        self._channel = Channel(
            tag=_NAME, session_id=self.spec.session_id, me=self.client_id, keyring=keyring
        )

    def handle(self, message: bytes) -> bytes | None:
        if self._answered:
            raise ProtocolError(f"client {self.client_id} already answered this round: replay")
        self._channel.open(message, stage=0, sender=wire.SERVER)
        self._answered = True

        # weight || float32 update, written straight into the frame (the only buffer)
        def fill(payload: memoryview) -> None:
            _WEIGHT.pack_into(payload, 0, self.weight)
            np.frombuffer(payload, dtype="<f4", offset=_WEIGHT.size)[:] = self.vector

        size = _WEIGHT.size + 4 * self.vector.shape[0]
        # a bytearray, which every consumer reads through the buffer protocol like bytes
        return cast(bytes, self._channel.seal_in_place(0, wire.SERVER, size, fill))


class PlainServer(ServerSession):
    """Sums the weighted updates it receives."""

    def __init__(self, spec: RoundSpec, *, keyring: Keyring | None):
        super().__init__(spec)
        self._result: Aggregate | None = None
        self._channel = Channel(
            tag=_NAME, session_id=spec.session_id, me=wire.SERVER, keyring=keyring
        )
        self._total: NDArray[np.float64] | None = None  # running weighted sum
        self._weight = 0.0
        self._summed: set[int] = set()

    def start(self) -> dict[int, bytes]:
        return {cid: self._channel.seal(0, cid, b"") for cid in self.spec.cohort}

    def receive(self, client: int, reply: bytes) -> None:
        """Check one update and add it to the running weighted sum at once (then drop it).

        The server so holds the float64 sum and one reply, whatever the cohort size.
        """
        if self._result is not None:
            raise ProtocolError("plain round already finished")
        if client in self._summed:
            raise ProtocolError(f"client {client}'s update was handed over twice")
        body = self._channel.accept(
            reply, stage=0, sender=client, expected=frozenset(self.spec.cohort),
            refused=self.refused,
        )  # fmt: skip
        if body is None:
            return
        expected = _WEIGHT.size + 4 * self.spec.dim
        if len(body) != expected:
            raise ProtocolError(
                f"client {client} sent {len(body)} payload bytes, expected {expected} "
                f"for dim {self.spec.dim}"
            )
        (w,) = _WEIGHT.unpack_from(body)
        if not (w > 0 and np.isfinite(w)):
            raise ProtocolError(f"client {client} sent a non-finite or non-positive weight")
        if self._total is None:
            self._total = np.zeros(self.spec.dim, dtype=np.float64)
        vec = np.frombuffer(body, dtype="<f4", offset=_WEIGHT.size)
        _add_weighted(self._total, vec, w, client)
        self._weight += w
        self._summed.add(client)

    def advance(self, replies: Mapping[int, bytes]) -> ServerStep:
        if self._result is not None:
            raise ProtocolError("plain round already finished")
        for cid in sorted(replies):
            self.receive(cid, replies[cid])
        if not self._summed:
            detail = f" ({next(iter(self.refused.values()))})" if self.refused else ""
            raise DropoutError(f"no valid update arrived: every client dropped out{detail}")
        total = self._total if self._total is not None else np.zeros(self.spec.dim)
        largest = max(float(total.max(initial=0.0)), -float(total.min(initial=0.0)))  # no |.| copy
        bound = 1e-12 * largest * len(self._summed)
        self._result = Aggregate(total, self._weight, tuple(sorted(self._summed)), "server", bound)
        self._total = None
        return ServerStep(messages={}, final=True)

    def aggregate(self) -> Aggregate | None:
        return self._result


def _add_weighted(total: NDArray[np.float64], vec: NDArray[np.float32], w: float, cid: int) -> None:
    """``total += w * vec`` in float64, a block at a time (no vector-sized temporaries)."""
    buf = np.empty(min(_BLOCK, total.shape[0]), dtype=np.float64)
    for start in range(0, total.shape[0], _BLOCK):
        stop = min(total.shape[0], start + _BLOCK)
        part = buf[: stop - start]
        np.multiply(vec[start:stop], np.float64(w), out=part)
        if not np.all(np.isfinite(part)):
            raise ProtocolError(f"client {cid} sent a non-finite value")
        total[start:stop] += part


@register
class PlainProtocol(Protocol):
    """Baseline: updates in the clear, summed by the server."""

    name = _NAME
    learned_by = "server"

    def client_session(
        self, spec: RoundSpec, client_id: int, vector: NDArray[Any], weight: float
    ) -> ClientSession:
        return PlainClient(spec, client_id, vector, weight, keyring=self.keyring)

    def server_session(self, spec: RoundSpec) -> ServerSession:
        return PlainServer(spec, keyring=self.keyring)

    def max_dropouts(self, cohort_size: int) -> int:
        return cohort_size - 1

    def threat_model(self) -> ThreatModel:
        return ThreatModel(
            protocol=_NAME,
            key_holders="nobody: no keys",
            server_sees="every client's individual update and weight",
            dropouts="any number; the sum covers the clients that answered",
            breaks_if="always: offers no confidentiality (baseline only)",
            adversaries=adversaries(
                authenticated=self.authenticated,
                semi_honest="sees every individual update and weight",
                malicious="it sees every update and can drop clients; it cannot alter or forge "
                "a client's update (signed)",
            ),
        )
