"""Wire format of the Flower adapter: one envelope per Flower message.

An :class:`Envelope` is a kind (``hello``, ``train``, ``stage`` or ``error``), a small JSON
header and a bytes payload (a protocol message, a vector). Over Flower it travels as one
``ConfigRecord`` named ``secfed`` with a ``bytes`` value; between a ClientApp and its node
agent it travels as one length-prefixed frame. Protocol bytes are never re-encoded: the
crypto layer's own framing (``crypto.core.wire``) is carried as is. This module imports neither
torch nor the crypto package at import time, so the ClientApp relay starts fast.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from flwr.app import RecordDict

    import crypto

RECORD = "secfed"
AGENT_SOCKET = "agent.sock"  # in the agent dir: the node agent's Unix socket
AGENT_AUTHKEY = "authkey"  # in the agent dir: its connection key (mode 0600)
MESSAGE_TYPE = "query"
KINDS = frozenset({"hello", "train", "stage", "evaluate", "error"})
_HEAD = struct.Struct(">I")
MAX_HEADER = 1 << 20


class EnvelopeError(ValueError):
    """A Flower message or agent frame that is not a secfed envelope."""


@dataclass(frozen=True)
class Envelope:
    """One request or reply: kind, JSON header, payload bytes."""

    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    data: bytes = b""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EnvelopeError(f"unknown envelope kind {self.kind!r}; known: {sorted(KINDS)}")


def to_frame(env: Envelope) -> bytes:
    """Length-prefixed JSON header (with the kind) followed by the payload."""
    head = json.dumps({"kind": env.kind, "meta": env.meta}, sort_keys=True).encode()
    return _HEAD.pack(len(head)) + head + env.data


def from_frame(frame: bytes) -> Envelope:
    """Inverse of :func:`to_frame`; rejects truncated or oversized headers."""
    if len(frame) < _HEAD.size:
        raise EnvelopeError(f"frame of {len(frame)} bytes is shorter than its length prefix")
    (n,) = _HEAD.unpack_from(frame)
    if n > MAX_HEADER or _HEAD.size + n > len(frame):
        raise EnvelopeError(f"frame header length {n} does not fit a {len(frame)}-byte frame")
    try:
        head = json.loads(frame[_HEAD.size : _HEAD.size + n])
        kind, meta = head["kind"], head["meta"]
    except (ValueError, KeyError, TypeError) as err:
        raise EnvelopeError(f"frame header is not a secfed envelope header: {err}") from None
    if not isinstance(meta, dict):
        raise EnvelopeError("frame header's meta is not a JSON object")
    return Envelope(str(kind), meta, bytes(frame[_HEAD.size + n :]))


def to_record(env: Envelope) -> RecordDict:
    """The envelope as Flower message content (one ConfigRecord holding the frame)."""
    from flwr.app import ConfigRecord, RecordDict

    return RecordDict({RECORD: ConfigRecord({"frame": to_frame(env)})})


def from_record(content: RecordDict) -> Envelope:
    """Inverse of :func:`to_record`."""
    if RECORD not in content.config_records:
        raise EnvelopeError(
            f"Flower message has no {RECORD!r} ConfigRecord: it was not sent by secfed"
        )
    frame = content.config_records[RECORD].get("frame")
    if not isinstance(frame, bytes):
        raise EnvelopeError(f"ConfigRecord {RECORD!r} has no bytes value 'frame'")
    return from_frame(frame)


def vector_bytes(vec: NDArray[Any]) -> bytes:
    """A float64 vector as little-endian bytes."""
    return np.ascontiguousarray(vec, dtype="<f8").tobytes()


def bytes_vector(data: bytes, *, dim: int) -> NDArray[np.float64]:
    """Inverse of :func:`vector_bytes`, checking the length."""
    if len(data) != 8 * dim:
        raise EnvelopeError(f"vector payload has {len(data)} bytes, expected {8 * dim}")
    return np.frombuffer(data, dtype="<f8").astype(np.float64)


def aggregate_envelope(agg: crypto.Aggregate) -> Envelope:
    """A key holder's decoded aggregate, sent back to the coordinating server."""
    meta = {
        "total_weight": agg.total_weight,
        "contributors": list(agg.contributors),
        "learned_by": agg.learned_by,
        "error_bound": agg.error_bound,
        "dim": int(agg.weighted_sum.shape[0]),
    }
    return Envelope("stage", {"aggregate": meta}, vector_bytes(agg.weighted_sum))


def envelope_aggregate(env: Envelope) -> crypto.Aggregate | None:
    """The aggregate an envelope carries, if any."""
    import crypto

    meta = env.meta.get("aggregate")
    if meta is None:
        return None
    return crypto.Aggregate(
        weighted_sum=bytes_vector(env.data, dim=int(meta["dim"])),
        total_weight=float(meta["total_weight"]),
        contributors=tuple(int(c) for c in meta["contributors"]),
        learned_by=meta["learned_by"],
        error_bound=float(meta["error_bound"]),
    )
