"""Payload formats of secagg / secagg+ messages (inside the :mod:`crypto.core.wire` frame).

Every decoder checks the exact length and the ordering of id lists (strictly increasing,
so no duplicates) and raises :class:`~crypto.errors.ProtocolError` otherwise. Integers are
big-endian; ids are uint32.

======  =========================================  =======================================
stage   server -> client                           client -> server
======  =========================================  =======================================
0       graph seed(32) k(4) t(4) bits(1)           c_pk(32) s_pk(32)
1       n(4) [id len(4) signed stage-0 reply]*n    commit(32) n(4) [recipient sealed]*n
2       role(1) n(4) [sender sealed]*n             weight(8, LE) masked vector, or nothing
3       n(4) [survivor]*n                          signature(64) n(4) [recipient tag(16)]*n
4       n(4) [survivor]*n m(4) [signer sig(64)]*m  n(4) [peer kind(1) share(33)]*n
        p(4) [signer tag(16)]*p
======  =========================================  =======================================

At stage 2 ``role`` is 1 for a contributor and 0 for a client that only holds shares (too
few of its own holders are live for it to contribute; it answers with an empty payload).
A sealed share is AES-GCM of ``sender(4) recipient(4) b_share(33) sk_share(33)``. Stage 1
relays each neighbour's own signed key advertisement, so clients check each other's keys
against the roster; stages 3 and 4 are the consistency check of Bonawitz et al. At stage 3 a
client signs the survivor set and also endorses it to each neighbour with a 16-byte tag
(HMAC under a key only the two share, see :func:`crypto.secagg.client.endorsement_tag`); at
stage 4 the server relays the signatures and the tags addressed to that client (all zeros
stand for the signature in the UNAUTHENTICATED mode).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..core import shamir
from ..core.keyagreement import KEY_BYTES, NONCE_BYTES, TAG_BYTES
from ..errors import ProtocolError

_U32 = struct.Struct("!I")
_SETUP = struct.Struct("!32sIIB")
_SHARE_PLAIN = struct.Struct(f"!II{shamir.SHARE_BYTES}s{shamir.SHARE_BYTES}s")
SEALED_BYTES = NONCE_BYTES + _SHARE_PLAIN.size + TAG_BYTES
_ROUTED = struct.Struct(f"!I{SEALED_BYTES}s")
_REVEAL = struct.Struct(f"!IB{shamir.SHARE_BYTES}s")
_LEN = struct.Struct("!II")
_SIG = struct.Struct("!I64s")
ENDORSEMENT_BYTES = 16
_TAG = struct.Struct(f"!I{ENDORSEMENT_BYTES}s")
SIGNATURE_BYTES = 64
COMMIT_BYTES = 32
B_SHARE, SK_SHARE = 0, 1


@dataclass(frozen=True)
class Setup:
    graph_seed: bytes
    neighbours: int
    threshold: int
    modulus_bits: int


def encode_setup(s: Setup) -> bytes:
    return _SETUP.pack(s.graph_seed, s.neighbours, s.threshold, s.modulus_bits)


def decode_setup(body: bytes) -> Setup:
    _exact(body, _SETUP.size, "setup")
    return Setup(*_SETUP.unpack(body))


def encode_keys(c_pk: bytes, s_pk: bytes) -> bytes:
    return c_pk + s_pk


def decode_keys(body: bytes) -> tuple[bytes, bytes]:
    _exact(body, 2 * KEY_BYTES, "key advertisement")
    return body[:KEY_BYTES], body[KEY_BYTES:]


def _exact(body: bytes, size: int, what: str) -> None:
    if len(body) != size:
        raise ProtocolError(f"{what} payload is {len(body)} bytes, expected {size}")


def _pack_list(entry: struct.Struct, rows: Sequence[tuple[Any, ...]]) -> bytes:
    return _U32.pack(len(rows)) + b"".join(entry.pack(*r) for r in rows)


def _unpack_list(
    body: bytes, entry: struct.Struct, what: str, offset: int = 0
) -> tuple[list[tuple[Any, ...]], int]:
    if len(body) < offset + 4:
        raise ProtocolError(f"{what} list is truncated")
    (count,) = _U32.unpack_from(body, offset)
    end = offset + 4 + count * entry.size
    if len(body) < end:
        raise ProtocolError(f"{what} list announces {count} entries but is truncated")
    rows = [entry.unpack_from(body, offset + 4 + i * entry.size) for i in range(count)]
    ids = [r[0] for r in rows]
    if any(b <= a for a, b in itertools.pairwise(ids)):
        raise ProtocolError(f"{what} list ids are not strictly increasing (duplicate or reordered)")
    return rows, end


def _done(body: bytes, end: int, what: str) -> None:
    if end != len(body):
        raise ProtocolError(f"{what} payload has {len(body) - end} trailing bytes")


def encode_routed(rows: Sequence[tuple[int, bytes]], *, commit: bytes | None = None) -> bytes:
    """Sealed shares by recipient (client reply, with commitment) or by sender (server)."""
    return (commit or b"") + _pack_list(_ROUTED, rows)


def decode_routed(body: bytes, *, with_commit: bool) -> tuple[bytes, dict[int, bytes]]:
    start = COMMIT_BYTES if with_commit else 0
    if len(body) < start:
        raise ProtocolError("share payload is truncated")
    rows, end = _unpack_list(body, _ROUTED, "sealed shares", start)
    _done(body, end, "sealed shares")
    return body[:start], {int(r[0]): bytes(r[1]) for r in rows}


def encode_share_delivery(contribute: bool, rows: Sequence[tuple[int, bytes]]) -> bytes:
    """Stage 2: the client's role (contribute, or hold shares only) and its sealed shares."""
    return bytes([contribute]) + encode_routed(rows)


def decode_share_delivery(body: bytes) -> tuple[bool, dict[int, bytes]]:
    if not body or body[0] not in (0, 1):
        raise ProtocolError("share delivery has no valid role byte")
    _, rows = decode_routed(body[1:], with_commit=False)
    return bool(body[0]), rows


def share_plaintext(sender: int, recipient: int, b_share: int, sk_share: int) -> bytes:
    return _SHARE_PLAIN.pack(sender, recipient, shamir.to_bytes(b_share), shamir.to_bytes(sk_share))


def parse_share_plaintext(raw: bytes) -> tuple[int, int, int, int]:
    _exact(raw, _SHARE_PLAIN.size, "decrypted share")
    sender, recipient, b, sk = _SHARE_PLAIN.unpack(raw)
    try:
        return sender, recipient, shamir.from_bytes(b), shamir.from_bytes(sk)
    except ValueError as err:
        raise ProtocolError(f"decrypted share is malformed: {err}") from None


def encode_reveal(rows: Sequence[tuple[int, int, int]]) -> bytes:
    """Revealed shares: (peer, kind, share value) with kind B_SHARE or SK_SHARE."""
    return _pack_list(_REVEAL, [(p, k, shamir.to_bytes(v)) for p, k, v in rows])


def decode_reveal(body: bytes) -> dict[int, tuple[int, int]]:
    rows, end = _unpack_list(body, _REVEAL, "revealed shares")
    _done(body, end, "revealed shares")
    out: dict[int, tuple[int, int]] = {}
    for peer, kind, raw in rows:
        if kind not in (B_SHARE, SK_SHARE):
            raise ProtocolError(f"revealed share of kind {kind} is neither b nor sk")
        try:
            out[int(peer)] = (int(kind), shamir.from_bytes(bytes(raw)))
        except ValueError as err:
            raise ProtocolError(f"revealed share for client {peer} is malformed: {err}") from None
    return out


def encode_relayed(rows: Sequence[tuple[int, bytes]]) -> bytes:
    """Peers' original signed messages, by peer id."""
    return _U32.pack(len(rows)) + b"".join(_LEN.pack(pid, len(m)) + m for pid, m in rows)


def decode_relayed(body: bytes) -> dict[int, bytes]:
    if len(body) < 4:
        raise ProtocolError("relayed key list is truncated")
    (count,) = _U32.unpack_from(body)
    pos, out, last = 4, {}, -1
    for _ in range(count):
        if len(body) < pos + _LEN.size:
            raise ProtocolError("relayed key list is truncated")
        pid, size = _LEN.unpack_from(body, pos)
        pos += _LEN.size
        if pid <= last or len(body) < pos + size:
            raise ProtocolError("relayed key list is truncated or its ids are not increasing")
        out[int(pid)], pos, last = bytes(body[pos : pos + size]), pos + size, pid
    _done(body, pos, "relayed keys")
    return out


def encode_ids(ids: Sequence[int]) -> bytes:
    return _pack_list(_U32, [(i,) for i in ids])


def decode_ids(body: bytes, what: str) -> list[int]:
    rows, end = _unpack_list(body, _U32, what)
    _done(body, end, what)
    return [int(r[0]) for r in rows]


def encode_endorsement(signature: bytes, tags: Sequence[tuple[int, bytes]]) -> bytes:
    """A client's consistency reply: its signature and its tags by recipient."""
    if len(signature) != SIGNATURE_BYTES:
        raise ValueError(f"a consistency signature is {SIGNATURE_BYTES} bytes")
    return signature + _pack_list(_TAG, tags)


def decode_endorsement(body: bytes) -> tuple[bytes, dict[int, bytes]]:
    if len(body) < SIGNATURE_BYTES:
        raise ProtocolError("consistency signature is truncated")
    rows, end = _unpack_list(body, _TAG, "consistency tags", SIGNATURE_BYTES)
    _done(body, end, "consistency reply")
    return bytes(body[:SIGNATURE_BYTES]), {int(r[0]): bytes(r[1]) for r in rows}


def encode_unmask(
    survivors: Sequence[int],
    signatures: Sequence[tuple[int, bytes]],
    tags: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    return encode_ids(survivors) + _pack_list(_SIG, signatures) + _pack_list(_TAG, tags)


def decode_unmask(body: bytes) -> tuple[list[int], dict[int, bytes], dict[int, bytes]]:
    """Survivors, signatures by signer and the tags addressed to this client by signer."""
    surv, end = _unpack_list(body, _U32, "survivors")
    sigs, end = _unpack_list(body, _SIG, "consistency signatures", end)
    tags, end = _unpack_list(body, _TAG, "consistency tags", end)
    _done(body, end, "unmask request")
    return (
        [int(r[0]) for r in surv],
        {int(r[0]): bytes(r[1]) for r in sigs},
        {int(r[0]): bytes(r[1]) for r in tags},
    )
