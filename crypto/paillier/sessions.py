"""Client and server sessions of the ``paillier`` protocol (see :mod:`crypto.paillier`).

The client packs and encrypts its update, then decrypts and decodes the aggregate it is sent;
the server is built from the public key bytes alone and only multiplies ciphertexts.

Binding the aggregate to its contributors: each client signs ``(attempt, id, SHA-256 of its
ciphertexts)`` and appends :data:`CHECK_SLOTS` check terms to its plaintext, keyed values
``HMAC(K, attempt || id || j)`` with ``K`` derived from the private key (clients hold it, the
server does not). The final message lists the contributors with their signed statements; a
decoder checks every signature, its own membership, and that the decrypted check slots equal
the sum of the listed clients' check values, so an aggregate holding other ciphertexts than
the listed ones (a cut list, a swapped or repeated contributor) is refused except with
probability about ``2**-(CHECK_SLOTS * (precision_bits + 1))``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..core import valuerange, wire
from ..core.channel import Channel, UploadRound
from ..core.identity import Keyring
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
from ..errors import DropoutError, ProtocolError
from . import holder
from . import math as pm
from .keys import PrivateKey, PublicKey

NAME = "paillier"
STAGES = ("encrypted input", "aggregate")
CHECK_SLOTS = 3
_U32 = struct.Struct("!I")
NONCE = holder.NONCE_BYTES
_STATEMENT = struct.Struct(f"!I{NONCE}s32s64s")  # client, nonce, SHA-256(nonce||cipher), sig


def contribution_statement(binding: bytes, client: int, cipher_hash: bytes) -> bytes:
    """What a client signs about its upload: this attempt, its id and its ciphertexts' hash."""
    return b"secfed/paillier/v2/contribution" + binding + _U32.pack(client) + cipher_hash


def check_terms(private: PrivateKey, binding: bytes, client: int, term_max: int) -> list[int]:
    """The client's keyed check values for this attempt (only key holders can compute them)."""
    key = hashlib.sha256(b"secfed/paillier/v2/check-key" + private.to_bytes()).digest()
    out = []
    for j in range(CHECK_SLOTS):
        mac = hmac.new(key, binding + _U32.pack(client) + bytes([j]), hashlib.sha256).digest()
        out.append(int.from_bytes(mac, "big") % (term_max + 1))
    return out


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
        count=spec.dim + WEIGHT_SLOTS + CHECK_SLOTS,
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
        keyring: Keyring | None,
        out_of_range: str = valuerange.REFUSE,
    ):
        super().__init__(spec, client_id, vector, weight)
        self.vector, self.clipped_coordinates = valuerange.enforce(
            self.vector, clip=quantiser.clip, policy=out_of_range, who=f"client {client_id}"
        )
        self._private, self._quantiser = private, quantiser
        self._public = private.public
        self._workers = workers
        self._layout = _layout(spec, self._public, quantiser)
        self._channel = Channel(
            tag=NAME, session_id=spec.session_id, me=client_id, keyring=keyring,
            stage_names=STAGES,
        )  # fmt: skip
        # Encode now: an update that would overflow is refused before anything is encrypted.
        self._terms: NDArray[np.uint64] | None = quantise_weighted(
            self.vector, weight=self.weight, quantiser=quantiser
        )
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
        body = self._channel.open(message, stage=0, sender=wire.SERVER)
        if body != digest(self._public, self._quantiser):
            raise ProtocolError(
                "the server uses another Paillier key or other encoding options "
                "(clip, max_weight, precision_bits): check both sides' configuration"
            )
        assert self._terms is not None
        binding = self._channel.binding
        checks = check_terms(self._private, binding, self.client_id, self._quantiser.term_max)
        terms = np.concatenate([self._terms, np.array(checks, dtype=np.uint64)])
        cipher = holder.encrypt_message(  # the 16-byte randomiser nonce, then ciphertexts
            pack(terms, layout=self._layout),
            p=self._private.p,
            q=self._private.q,
            plain_width=self._layout.plaintext_bytes,
            session_id=self.spec.session_id,
            sender=self.client_id,
            workers=self._workers,
        )
        self._terms, self._stage = None, 1
        digest_ = hashlib.sha256(cipher).digest()
        sig = self._channel.sign(contribution_statement(binding, self.client_id, digest_))
        return self._channel.seal(0, wire.SERVER, cipher + sig.ljust(64, b"\0"))

    def _decode(self, message: bytes) -> None:
        body = self._channel.open(message, stage=1, sender=wire.SERVER)
        ids, nonces, statements, cipher = _parse_final(body, self.spec, self._layout, self._public)
        if self.client_id not in ids:
            raise ProtocolError(
                f"the aggregate sent to client {self.client_id} excludes it: refusing to decode "
                "another selection of clients' updates"
            )
        binding = self._channel.binding
        for cid, (digest_, sig) in zip(ids, statements, strict=True):
            self._channel.check_signature(
                cid, sig, contribution_statement(binding, cid, digest_),
                what=f"contribution of client {cid} listed in the aggregate",
            )  # fmt: skip
        plain = holder.decrypt_product(
            cipher,
            p=self._private.p,
            q=self._private.q,
            plain_width=self._layout.plaintext_bytes,
            session_id=self.spec.session_id,
            senders=ids,
            nonces=nonces,
            workers=self._workers,
        )
        sums = unpack(plain, layout=self._layout)
        term_max = self._quantiser.term_max
        want = [sum(col) for col in zip(*(check_terms(self._private, binding, c, term_max)
                                          for c in ids), strict=True)]  # fmt: skip
        if [int(v) for v in sums[-CHECK_SLOTS:]] != want:
            raise ProtocolError(
                f"the aggregate sent to client {self.client_id} does not hold exactly the "
                f"contributions of clients {list(ids)}: list cut, swapped or padded; refusing"
            )
        weighted, total = dequantise_sums(
            sums[:-CHECK_SLOTS], contributors=len(ids), quantiser=self._quantiser
        )
        bound = error_bound(contributors=len(ids), quantiser=self._quantiser)
        self._result = Aggregate(weighted, total, ids, "clients", bound)
        self._stage = 2

    def aggregate(self) -> Aggregate | None:
        return self._result


class PaillierServer(ServerSession):
    """Multiplies the ciphertexts it receives; holds the public key only."""

    def __init__(
        self,
        spec: RoundSpec,
        *,
        public_key: bytes,
        quantiser: Quantiser,
        keyring: Keyring | None,
    ):
        super().__init__(spec)
        self._public = PublicKey.from_bytes(public_key)
        self._quantiser = quantiser
        self._layout = _layout(spec, self._public, quantiser)
        self._round = UploadRound(
            tag=NAME, session_id=spec.session_id, cohort=spec.cohort, keyring=keyring,
            stage_names=STAGES,
        )  # fmt: skip
        self._channel = self._round.channel
        self._done = False

    def start(self) -> dict[int, bytes]:
        return self._round.start(digest(self._public, self._quantiser))

    def advance(self, replies: Mapping[int, bytes]) -> ServerStep:
        if self._done:
            raise ProtocolError("paillier round already finished")
        width = self._public.ciphertext_bytes
        # A nonce and the ciphertexts, then the signature.
        uploads = self._round.collect(
            replies, refused=self.refused, body_bytes=NONCE + self._layout.plaintexts * width
        )
        parts, rows, ids = [], [], []
        for cid, up in uploads.items():
            try:
                parts.append(pm.parse_ciphertexts(up.body[NONCE:], n=self._public.n, width=width))
            except ProtocolError as err:
                self.refused[cid] = f"client {cid}: {err}"
                continue
            rows.append(up.statement_row(up.body[:NONCE]))
            ids.append(cid)
        if not parts:
            raise DropoutError("no valid encrypted input: every client dropped out")
        total = pm.ciphertext_product(parts, n=self._public.n, width=width)
        payload = _U32.pack(len(rows)) + b"".join(rows) + total
        self._done = True
        return ServerStep(messages=self._round.finish(ids, payload), final=True)


def _parse_final(
    body: bytes, spec: RoundSpec, layout: SlotLayout, public: PublicKey
) -> tuple[tuple[int, ...], tuple[bytes, ...], list[tuple[bytes, bytes]], bytes]:
    """Contributor ids, their randomiser nonces, their signed statements, the product."""
    if len(body) < _U32.size:
        raise ProtocolError("final message is truncated: no contributor count")
    (count,) = _U32.unpack_from(body)
    head = _U32.size + _STATEMENT.size * count
    expected = head + layout.plaintexts * public.ciphertext_bytes
    if not 1 <= count <= len(spec.cohort) or len(body) != expected:
        raise ProtocolError(
            f"final message of {len(body)} bytes for {count} contributors is malformed "
            f"(expected {expected} bytes, at most {len(spec.cohort)} contributors)"
        )
    rows = [_STATEMENT.unpack_from(body, _U32.size + _STATEMENT.size * i) for i in range(count)]
    ids = tuple(int(r[0]) for r in rows)
    if list(ids) != sorted(set(ids)) or not set(ids) <= set(spec.cohort):
        raise ProtocolError(f"contributor list {ids} is not a sorted subset of the cohort")
    nonces = tuple(bytes(r[1]) for r in rows)
    return ids, nonces, [(bytes(r[2]), bytes(r[3])) for r in rows], body[head:]
