"""Binary framing shared by every protocol message.

Each message is ``header || payload``. The header binds the message to one protocol, one
round of one job (the session id), one stage and one sender, so a truncated, foreign,
replayed or out-of-order message is rejected before its payload is parsed::

    magic  b"SFD1"      4 bytes
    tag    protocol     8 bytes, ASCII name padded with NUL
    sid    session id  16 bytes
    stage  uint8
    sender uint32       client id, or SERVER for the server
    length uint64       payload length in bytes
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import DropoutError, ProtocolError

MAGIC = b"SFD1"
SERVER = 0xFFFFFFFF
_HEADER = struct.Struct("!4s8s16sBIQ")
HEADER_SIZE = _HEADER.size


def _tag(protocol: str) -> bytes:
    raw = protocol.encode("ascii")
    if len(raw) > 8:
        raise ValueError(f"protocol tag {protocol!r} is longer than 8 ASCII characters")
    return raw.ljust(8, b"\0")


@dataclass(frozen=True)
class Header:
    """Decoded header of one message."""

    protocol: str
    session_id: bytes
    stage: int
    sender: int
    length: int


def frame(*, protocol: str, session_id: bytes, stage: int, sender: int, payload: bytes) -> bytes:
    """Prefix ``payload`` with a header binding it to protocol, session, stage and sender."""
    if len(session_id) != 16:
        raise ValueError(f"session id must be 16 bytes, got {len(session_id)}")
    header = _HEADER.pack(MAGIC, _tag(protocol), session_id, stage, sender, len(payload))
    return header + payload


def peek(message: bytes) -> Header:
    """Decode a header without checking it against expectations."""
    if not isinstance(message, bytes | bytearray | memoryview):
        raise ProtocolError(f"message must be bytes, got {type(message).__name__}")
    if len(message) < HEADER_SIZE:
        raise ProtocolError(
            f"message of {len(message)} bytes is shorter than the {HEADER_SIZE}-byte header: "
            "truncated or not a secfed message"
        )
    magic, tag, sid, stage, sender, length = _HEADER.unpack_from(message)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}: not a secfed protocol message")
    return Header(tag.rstrip(b"\0").decode("ascii", "replace"), sid, stage, sender, length)


def unframe(
    message: bytes,
    *,
    protocol: str,
    session_id: bytes,
    stage: int,
    sender: int | None = None,
) -> bytes:
    """Check the header against what the receiver expects and return the payload.

    Raises ``ProtocolError`` naming the mismatch: wrong protocol, another job or round,
    a replayed or out-of-order stage, an unexpected sender, or a truncated payload.
    """
    head = peek(message)
    if head.protocol != protocol:
        raise ProtocolError(f"message for protocol {head.protocol!r}, expected {protocol!r}")
    if head.session_id != session_id:
        raise ProtocolError(
            "message belongs to another job or round (session id mismatch): foreign or replayed"
        )
    if head.stage != stage:
        raise ProtocolError(
            f"stage {head.stage} message where stage {stage} was expected: replayed or out of order"
        )
    if sender is not None and head.sender != sender:
        raise ProtocolError(f"message claims sender {head.sender}, expected {sender}")
    body = bytes(message[HEADER_SIZE:])
    if len(body) != head.length:
        raise ProtocolError(
            f"payload is {len(body)} bytes but the header announces {head.length}: "
            "truncated or padded"
        )
    return body


def collect_replies(
    replies: Mapping[int, bytes],
    *,
    protocol: str,
    session_id: bytes,
    stage: int,
    cohort: Iterable[int],
) -> dict[int, bytes]:
    """Payloads of one stage's replies, by client id in ascending order.

    Raises ``DropoutError`` when nobody answered and ``ProtocolError`` for a reply from
    outside the cohort or one whose header does not match (see :func:`unframe`).
    """
    if not replies:
        raise DropoutError("every client of the cohort dropped out: nothing to aggregate")
    members = set(cohort)
    bodies = {}
    for cid in sorted(replies):
        if cid not in members:
            raise ProtocolError(f"reply from client {cid}, who is not in the cohort")
        bodies[cid] = unframe(
            replies[cid], protocol=protocol, session_id=session_id, stage=stage, sender=cid
        )
    return bodies


def frame_parts(
    *,
    protocol: str,
    session_id: bytes,
    stage: int,
    sender: int,
    parts: Sequence[bytes | memoryview],
) -> bytes:
    """:func:`frame` for a payload given in parts, joined once (no payload-sized copy first)."""
    if len(session_id) != 16:
        raise ValueError(f"session id must be 16 bytes, got {len(session_id)}")
    views = [memoryview(p).cast("B") for p in parts]
    length = sum(v.nbytes for v in views)
    header = _HEADER.pack(MAGIC, _tag(protocol), session_id, stage, sender, length)
    return b"".join([header, *views])
