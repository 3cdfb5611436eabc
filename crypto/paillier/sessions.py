"""Client and server sessions of the ``paillier`` protocol (see :mod:`crypto.paillier`).

The client packs and encrypts its update, then decrypts and decodes the aggregate it is sent;
the server is built from the public key bytes alone and only multiplies ciphertexts.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from typing import Any

from numpy.typing import NDArray

from ..core import wire
from ..core.packing import (
    WEIGHT_SLOTS,
    Quantiser,
    SlotLayout,
    dequantise_sums,
    error_bound,
    pack,
    quantise_weighted,
    slot_layout,
    unpack,
)
from ..core.protocol import Aggregate, ClientSession, RoundSpec, ServerSession, ServerStep
from ..errors import ProtocolError
from . import holder
from . import math as pm
from .keys import PrivateKey, PublicKey

NAME = "paillier"
_U32 = struct.Struct("!I")
NONCE = holder.NONCE_BYTES


def digest(public: PublicKey, quantiser: Quantiser) -> bytes:
    """Binds a round to one key and one set of encoding options."""
    qz = quantiser
    text = f"{float(qz.clip)!r}/{float(qz.max_weight)!r}/{qz.precision_bits}"
    return hashlib.sha256(public.fingerprint + text.encode()).digest()[:16]


def _layout(spec: RoundSpec, public: PublicKey, quantiser: Quantiser) -> SlotLayout:
    return slot_layout(
        term_max=quantiser.term_max,
        parties=len(spec.cohort),
        plaintext_bits=public.plaintext_bits,
        count=spec.dim + WEIGHT_SLOTS,
    )


class PaillierClient(ClientSession):
    """Encrypts its packed update, then decrypts and decodes the aggregate it is sent."""

    def __init__(
        self,
        spec: RoundSpec,
        client_id: int,
        vector: NDArray[Any],
        weight: float,
        *,
        private: PrivateKey,
        quantiser: Quantiser,
        workers: int,
    ):
        super().__init__(spec, client_id, vector, weight)
        self._private, self._quantiser = private, quantiser
        self._public = private.public
        self._workers = workers
        self._layout = _layout(spec, self._public, quantiser)
        # Encode now: an update that would overflow is refused before anything is encrypted.
        terms = quantise_weighted(self.vector, weight=self.weight, quantiser=quantiser)
        self._plain: bytes | None = pack(terms, layout=self._layout)
        self._stage = 0
        self._result: Aggregate | None = None

    @property
    def layout(self) -> SlotLayout:
        """How this round's update is packed (slot width, slots and ciphertexts)."""
        return self._layout

    def handle(self, message: bytes) -> bytes | None:
        if self._stage == 0:
            return self._answer(message)
        if self._stage == 1:
            self._decode(message)
            return None
        raise ProtocolError(f"client {self.client_id} already finished this round: replay")

    def _answer(self, message: bytes) -> bytes:
        sid = self.spec.session_id
        body = wire.unframe(message, protocol=NAME, session_id=sid, stage=0, sender=wire.SERVER)
        if body != digest(self._public, self._quantiser):
            raise ProtocolError(
                "the server uses another Paillier key or other encoding options "
                "(clip, max_weight, precision_bits): check both sides' configuration"
            )
        assert self._plain is not None
        cipher = holder.encrypt_message(
            self._plain,
            p=self._private.p,
            q=self._private.q,
            plain_width=self._layout.plaintext_bytes,
            session_id=sid,
            sender=self.client_id,
            workers=self._workers,
        )
        self._plain, self._stage = None, 1
        return wire.frame(
            protocol=NAME, session_id=sid, stage=0, sender=self.client_id, payload=cipher
        )

    def _decode(self, message: bytes) -> None:
        sid = self.spec.session_id
        body = wire.unframe(message, protocol=NAME, session_id=sid, stage=1, sender=wire.SERVER)
        ids, nonces, cipher = _parse_final(body, self.spec, self._layout, self._public)
        plain = holder.decrypt_product(
            cipher,
            p=self._private.p,
            q=self._private.q,
            plain_width=self._layout.plaintext_bytes,
            session_id=sid,
            senders=ids,
            nonces=nonces,
            workers=self._workers,
        )
        sums = unpack(plain, layout=self._layout)
        weighted, total = dequantise_sums(sums, contributors=len(ids), quantiser=self._quantiser)
        bound = error_bound(contributors=len(ids), quantiser=self._quantiser)
        self._result = Aggregate(weighted, total, ids, "clients", bound)
        self._stage = 2

    def aggregate(self) -> Aggregate | None:
        return self._result


class PaillierServer(ServerSession):
    """Multiplies the ciphertexts it receives; holds the public key only."""

    def __init__(self, spec: RoundSpec, *, public_key: bytes, quantiser: Quantiser):
        super().__init__(spec)
        self._public = PublicKey.from_bytes(public_key)
        self._quantiser = quantiser
        self._layout = _layout(spec, self._public, quantiser)
        self._done = False

    def start(self) -> dict[int, bytes]:
        hello = wire.frame(
            protocol=NAME,
            session_id=self.spec.session_id,
            stage=0,
            sender=wire.SERVER,
            payload=digest(self._public, self._quantiser),
        )
        return {cid: hello for cid in self.spec.cohort}

    def advance(self, replies: Mapping[int, bytes]) -> ServerStep:
        if self._done:
            raise ProtocolError("paillier round already finished")
        bodies = wire.collect_replies(
            replies, protocol=NAME, session_id=self.spec.session_id, stage=0,
            cohort=self.spec.cohort,
        )  # fmt: skip
        width = self._public.ciphertext_bytes
        expected = NONCE + self._layout.plaintexts * width
        parts, nonces = [], {}
        for cid, body in bodies.items():
            if len(body) != expected:
                raise ProtocolError(
                    f"client {cid} sent {len(body)} payload bytes, expected {expected} "
                    f"(a {NONCE}-byte nonce, {self._layout.plaintexts} ciphertexts of "
                    f"{width} bytes)"
                )
            nonces[cid] = body[:NONCE]
            try:
                parts.append(pm.parse_ciphertexts(body[NONCE:], n=self._public.n, width=width))
            except ProtocolError as err:
                raise ProtocolError(f"client {cid}: {err}") from None
        total = pm.ciphertext_product(parts, n=self._public.n, width=width)
        ids = sorted(replies)
        head = _U32.pack(len(ids)) + b"".join(_U32.pack(c) for c in ids)
        payload = head + b"".join(nonces[c] for c in ids) + total
        self._done = True
        messages = {
            cid: wire.frame(
                protocol=NAME,
                session_id=self.spec.session_id,
                stage=1,
                sender=wire.SERVER,
                payload=payload,
            )
            for cid in ids
        }
        return ServerStep(messages=messages, final=True)


def _parse_final(
    body: bytes, spec: RoundSpec, layout: SlotLayout, public: PublicKey
) -> tuple[tuple[int, ...], tuple[bytes, ...], bytes]:
    if len(body) < _U32.size:
        raise ProtocolError("final message is truncated: no contributor count")
    (count,) = _U32.unpack_from(body)
    head = _U32.size * (1 + count) + NONCE * count
    expected = head + layout.plaintexts * public.ciphertext_bytes
    if not 1 <= count <= len(spec.cohort) or len(body) != expected:
        raise ProtocolError(
            f"final message of {len(body)} bytes for {count} contributors is malformed "
            f"(expected {expected} bytes, at most {len(spec.cohort)} contributors)"
        )
    ids = tuple(_U32.unpack_from(body, _U32.size * (1 + i))[0] for i in range(count))
    if list(ids) != sorted(set(ids)) or not set(ids) <= set(spec.cohort):
        raise ProtocolError(f"contributor list {ids} is not a sorted subset of the cohort")
    start = _U32.size * (1 + count)
    nonces = tuple(body[start + NONCE * i : start + NONCE * (i + 1)] for i in range(count))
    return ids, nonces, body[head:]
