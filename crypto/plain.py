"""``plain``: the baseline protocol, no protection.

Threat model: none. Each client sends its float32 update and its weight in the clear; the
server sees every individual update and computes the weighted sum in float64. Any number of
clients may drop; the sum covers whoever answered. Use it as the reference every secure
protocol is measured against.

Wire: one stage. Client reply payload = weight (float64, big-endian) || update (float32
little-endian), 4 bytes per parameter plus 8.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .core import wire
from .core.protocol import (
    Aggregate,
    ClientSession,
    Protocol,
    RoundSpec,
    ServerSession,
    ServerStep,
    ThreatModel,
)
from .core.registry import register
from .errors import ProtocolError

_NAME = "plain"
_WEIGHT = struct.Struct("!d")
_BLOCK = 1 << 16


class PlainClient(ClientSession):
    """Sends its update in the clear, once."""

    _answered = False

    def handle(self, message: bytes) -> bytes | None:
        if self._answered:
            raise ProtocolError(f"client {self.client_id} already answered this round: replay")
        wire.unframe(
            message, protocol=_NAME, session_id=self.spec.session_id, stage=0, sender=wire.SERVER
        )
        self._answered = True
        values = np.ascontiguousarray(self.vector, dtype="<f4")
        return wire.frame_parts(
            protocol=_NAME,
            session_id=self.spec.session_id,
            stage=0,
            sender=self.client_id,
            parts=(_WEIGHT.pack(self.weight), values.data),
        )


class PlainServer(ServerSession):
    """Sums the weighted updates it receives."""

    def __init__(self, spec: RoundSpec):
        super().__init__(spec)
        self._result: Aggregate | None = None

    def start(self) -> dict[int, bytes]:
        hello = wire.frame(
            protocol=_NAME,
            session_id=self.spec.session_id,
            stage=0,
            sender=wire.SERVER,
            payload=b"",
        )
        return {cid: hello for cid in self.spec.cohort}

    def advance(self, replies: Mapping[int, bytes]) -> ServerStep:
        if self._result is not None:
            raise ProtocolError("plain round already finished")
        bodies = wire.collect_replies(
            replies, protocol=_NAME, session_id=self.spec.session_id, stage=0,
            cohort=self.spec.cohort,
        )  # fmt: skip
        total = np.zeros(self.spec.dim, dtype=np.float64)
        weight = 0.0
        expected = _WEIGHT.size + 4 * self.spec.dim
        for cid, body in bodies.items():
            if len(body) != expected:
                raise ProtocolError(
                    f"client {cid} sent {len(body)} payload bytes, expected {expected} "
                    f"for dim {self.spec.dim}"
                )
            (w,) = _WEIGHT.unpack_from(body)
            vec = np.frombuffer(body, dtype="<f4", offset=_WEIGHT.size)
            if not (w > 0 and np.isfinite(w)):
                raise ProtocolError(f"client {cid} sent a non-finite or non-positive weight")
            _add_weighted(total, vec, w, cid)
            weight += w
        bound = 1e-12 * float(np.max(np.abs(total), initial=0.0)) * len(replies)
        self._result = Aggregate(total, weight, tuple(sorted(replies)), "server", bound)
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
        return PlainClient(spec, client_id, vector, weight)

    def server_session(self, spec: RoundSpec) -> ServerSession:
        return PlainServer(spec)

    def max_dropouts(self, cohort_size: int) -> int:
        return cohort_size - 1

    def threat_model(self) -> ThreatModel:
        return ThreatModel(
            protocol=_NAME,
            key_holders="nobody: no keys",
            server_sees="every client's individual update and weight",
            dropouts="any number; the sum covers the clients that answered",
            breaks_if="always: offers no confidentiality (baseline only)",
        )
