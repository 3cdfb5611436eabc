"""Binary framing shared by every protocol message.

Each message is ``header || [key] || payload || authenticator``. The header binds the
message to one protocol, one round of one job (the session id: job, round, cohort), one
attempt of that round (a fresh nonce the server draws when it opens the round), one stage, its
sender and its recipient. The authenticator is either the sender's Ed25519 signature (see
:mod:`crypto.core.identity`) over header, key and the payload's SHA-256, or, once the two
ends of a client-server pair have exchanged signed per-attempt X25519 keys (``key``, carried
by their first messages), a 16-byte GMAC under their pair key. Checking is done by
:class:`crypto.core.channel.Channel`::

    magic     b"SFD2"      4 bytes
    tag       protocol     8 bytes, ASCII name padded with NUL
    sid       session id  16 bytes
    nonce     attempt     16 bytes
    stage     uint8
    flags     uint8        bit 0: signed, bit 1: carries a key, bit 2: MACed
    sender    uint32       client id, or SERVER for the server
    recipient uint32
    length    uint64       payload length in bytes

An unsigned frame (flag 0) is only produced and accepted where no roster was given (the
loudly named unauthenticated mode); a party holding a roster refuses it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import ProtocolError
from .identity import SERVER_ID, SIGNATURE_BYTES

MAGIC = b"SFD2"
SERVER = SERVER_ID
NONCE_BYTES = 16
SIGNED = 1
KEYED = 2
MACED = 4
KEY_BYTES = 32
MAC_BYTES = 16
_HEADER = struct.Struct("!4s8s16s16sBBIIQ")
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
    nonce: bytes
    stage: int
    flags: int
    sender: int
    recipient: int
    length: int

    @property
    def signed(self) -> bool:
        return bool(self.flags & SIGNED)

    @property
    def keyed(self) -> bool:
        return bool(self.flags & KEYED)

    @property
    def maced(self) -> bool:
        return bool(self.flags & MACED)


def header(
    *,
    protocol: str,
    session_id: bytes,
    nonce: bytes,
    stage: int,
    sender: int,
    recipient: int,
    length: int,
    signed: bool,
    keyed: bool = False,
    maced: bool = False,
) -> bytes:
    """The header of a message (the authenticator covers it and the payload)."""
    if len(session_id) != 16 or len(nonce) != NONCE_BYTES:
        raise ValueError("session id and nonce must be 16 bytes each")
    flags = (SIGNED if signed else 0) | (KEYED if keyed else 0) | (MACED if maced else 0)
    return _HEADER.pack(
        MAGIC, _tag(protocol), session_id, nonce, stage, flags, sender, recipient, length
    )


def peek(message: bytes) -> Header:
    """Decode a header without checking it against expectations."""
    if not isinstance(message, bytes | bytearray | memoryview):
        raise ProtocolError(f"message must be bytes, got {type(message).__name__}")
    if len(message) < HEADER_SIZE:
        raise ProtocolError(
            f"message of {len(message)} bytes is shorter than the {HEADER_SIZE}-byte header: "
            "truncated or not a secfed message"
        )
    magic, tag, sid, nonce, stage, flags, sender, recipient, length = _HEADER.unpack_from(message)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}: not a secfed protocol message")
    name = tag.rstrip(b"\0").decode("ascii", "replace")
    return Header(name, sid, nonce, stage, flags, sender, recipient, length)


def split(
    message: bytes, *, view: bool = False
) -> tuple[Header, bytes, bytes | memoryview, bytes, bytes]:
    """Decoded header, raw header bytes, payload, authenticator and carried key.

    ``view=True`` returns the payload as a read-only view of ``message`` instead of a copy
    (for large payloads a server sums and drops).
    """
    head = peek(message)
    if head.flags & ~(SIGNED | KEYED | MACED) or (head.signed and head.maced):
        raise ProtocolError(f"message has unknown or conflicting flags {head.flags:#x}")
    key_len = KEY_BYTES if head.keyed else 0
    auth_len = SIGNATURE_BYTES if head.signed else MAC_BYTES if head.maced else 0
    if len(message) != HEADER_SIZE + key_len + head.length + auth_len:
        raise ProtocolError(
            f"message is {len(message)} bytes but its header announces a {head.length}-byte "
            "payload and its flags: truncated or padded"
        )
    start = HEADER_SIZE + key_len
    end = start + head.length
    whole = memoryview(message).toreadonly()
    return (
        head,
        bytes(whole[:HEADER_SIZE]),
        whole[start:end] if view else bytes(whole[start:end]),
        bytes(whole[end:]),
        bytes(whole[HEADER_SIZE:start]),
    )
