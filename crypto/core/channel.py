"""Authenticated framing of one party's messages in one round attempt.

A :class:`Channel` frames (:mod:`crypto.core.wire`) and authenticates what its party sends,
and checks what it receives: protocol, session (job, round, cohort), the attempt's nonce,
stage, sender, recipient, and the sender's Ed25519 signature against the roster
(:mod:`crypto.core.identity`). The first message each way between the server and a client is
signed and carries a fresh X25519 key; later messages of that pair carry a GMAC under the
HKDF of their shared secret instead (bound to the attempt and both ids), which costs far
less than a signature over a large payload. Messages that others must check (a client's
first message, relayed to its peers) stay signed. The server's channel draws the nonce (16
bytes from :mod:`secrets`) when the round opens; a client's adopts it from the server's
first, signed message. A reply from an earlier attempt of the same job, round and cohort
carries another nonce and is refused; so is anything unauthenticated, re-addressed,
re-stamped or altered.

A refusal raises :class:`~crypto.errors.AuthenticationError` naming sender and stage. The
server side turns it into that sender's dropout (:meth:`Channel.collect`), so a bad message
can cost a round its contributor but never changes the sum.

Without a keyring (``keyring=None``) frames are unauthenticated: the UNAUTHENTICATED mode, kept
only to measure what authentication costs; it is named in the protocols' threat models and logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import AuthenticationError, DropoutError, ProtocolError
from . import identity, wire
from . import keyagreement as ka
from .identity import Keyring, party_name

log = logging.getLogger(__name__)
_DOMAIN = b"secfed/msg/v2"


def _signed_data(head: bytes, key: bytes, payload: bytes | bytearray | memoryview) -> bytes:
    """What a frame's signature covers: domain, header, carried key, the payload's SHA-256."""
    return _DOMAIN + head + key + hashlib.sha256(payload).digest()


def _mac(pair_key: bytes, head: bytes, payload: bytes | bytearray | memoryview) -> bytes:
    """GMAC of ``payload`` under a key unique to this header (and hence to this message)."""
    key = hmac.new(pair_key, _DOMAIN + b"/mac" + head, hashlib.sha256).digest()
    return AESGCM(key).encrypt(bytes(12), b"", payload)


class Channel:
    """Signs and checks the messages of party ``me`` in one attempt of one round."""

    def __init__(
        self,
        *,
        tag: str,
        session_id: bytes,
        me: int,
        keyring: Keyring | None,
        stage_names: Sequence[str] = (),
    ):
        self.tag, self.session_id, self.me = tag, session_id, me
        self.keyring = keyring
        self.stage_names = tuple(stage_names)
        self.nonce: bytes | None = (
            secrets.token_bytes(wire.NONCE_BYTES) if me == wire.SERVER else None
        )
        # Per-attempt X25519 key for the pair keys with the other end(s); see seal/open.
        self._eph = ka.generate() if keyring is not None else None
        self._sent_key: set[int] = set()
        self._their_key: dict[int, bytes] = {}
        self._pair: dict[int, bytes] = {}
        if keyring is not None and not keyring.can_sign(me):
            keyring.sign(me, b"")  # raises KeyMaterialError naming the missing key file
        if keyring is None and me == wire.SERVER:
            log.warning(
                "UNAUTHENTICATED %s round: no roster, messages are neither signed nor checked "
                "(nothing holds against a malicious server or a network attacker)",
                tag,
            )

    @property
    def authenticated(self) -> bool:
        return self.keyring is not None

    @property
    def binding(self) -> bytes:
        """32 bytes naming this attempt (session id and nonce), for key derivation and AAD."""
        if self.nonce is None:
            raise ProtocolError("no message of this round has been received yet: no nonce")
        return hashlib.sha256(b"secfed/attempt" + self.session_id + self.nonce).digest()

    def stage_name(self, stage: int) -> str:
        name = self.stage_names[stage] if 0 <= stage < len(self.stage_names) else ""
        return f"stage {stage}" + (f" ({name})" if name else "")

    def sign(self, data: bytes) -> bytes:
        """This party's signature over ``data`` (domain-separated), or b"" unauthenticated."""
        if self.keyring is None:
            return b""
        return self.keyring.sign(self.me, _DOMAIN + b"/stmt" + data)

    def check_signature(self, party: int, signature: bytes, data: bytes, *, what: str) -> None:
        """Refuse a statement ``party`` did not sign (see :meth:`sign`)."""
        if self.keyring is None:
            return
        if not self.keyring.roster.verify(party, signature, _DOMAIN + b"/stmt" + data):
            raise AuthenticationError(f"{what}: signature of {party_name(party)} does not verify")

    def _pair_key(self, peer: int) -> bytes | None:
        """The GMAC key shared with ``peer``, once each side has sent the other its key."""
        if peer in self._pair:
            return self._pair[peer]
        if self._eph is None or peer not in self._sent_key or peer not in self._their_key:
            return None
        client = peer if self.me == wire.SERVER else self.me
        try:
            self._pair[peer] = ka.agree(
                self._eph, ka.load_public(self._their_key[peer]), session_id=self.binding,
                purpose="channel-mac", first=client, second=wire.SERVER,
            )  # fmt: skip
        except (ProtocolError, ValueError) as err:
            raise AuthenticationError(
                f"{party_name(peer)}'s channel key is invalid: {err}"
            ) from None
        return self._pair[peer]

    def seal(self, stage: int, recipient: int, payload: bytes | bytearray) -> bytes:
        """Frame and authenticate ``payload`` for ``recipient``."""
        head, mode = self._head(stage, recipient, len(payload))
        # One join per frame: the payload (megabytes for a masked vector) is copied once.
        if mode is None:
            return b"".join((head, payload))
        if isinstance(mode, bytes):  # the pair key: MAC
            return b"".join((head, payload, _mac(mode, head, payload)))
        key = ka.public_bytes(mode)
        assert self.keyring is not None
        signature = self.keyring.sign(self.me, _signed_data(head, key, payload))
        return b"".join((head, key, payload, signature))

    def seal_in_place(
        self, stage: int, recipient: int, size: int, fill: Callable[[memoryview], None]
    ) -> bytearray:
        """:meth:`seal` for a ``size``-byte payload that ``fill`` writes straight into the frame.

        The frame is the only buffer: a large update is never held twice.
        """
        head, mode = self._head(stage, recipient, size)
        signed = mode is not None and not isinstance(mode, bytes)
        key = ka.public_bytes(mode) if signed else b""  # type: ignore[arg-type]
        auth = identity.SIGNATURE_BYTES if signed else wire.MAC_BYTES if mode is not None else 0
        start = len(head) + len(key)
        frame = bytearray(start + size + auth)
        frame[: len(head)] = head
        frame[len(head) : start] = key
        with memoryview(frame) as view:
            payload = view[start : start + size]
            fill(payload)
            if isinstance(mode, bytes):
                frame[start + size :] = _mac(mode, head, payload)
            elif mode is not None:
                assert self.keyring is not None
                frame[start + size :] = self.keyring.sign(self.me, _signed_data(head, key, payload))
            payload.release()
        return frame

    def _head(
        self, stage: int, recipient: int, size: int
    ) -> tuple[bytes, bytes | X25519PrivateKey | None]:
        """The header of a frame and how it is authenticated: None (no roster), the pair key
        (MAC) or this attempt's ephemeral key (signed, carrying the public key)."""
        if self.nonce is None:
            raise ProtocolError("a client cannot send before the server opened the round")
        if self.keyring is None or self._eph is None:
            head = wire.header(
                protocol=self.tag, session_id=self.session_id, nonce=self.nonce, stage=stage,
                sender=self.me, recipient=recipient, length=size, signed=False,
            )  # fmt: skip
            return head, None
        pair = self._pair_key(recipient)
        head = wire.header(
            protocol=self.tag, session_id=self.session_id, nonce=self.nonce, stage=stage,
            sender=self.me, recipient=recipient, length=size, signed=pair is None,
            keyed=pair is None, maced=pair is not None,
        )  # fmt: skip
        if pair is not None:
            return head, pair
        self._sent_key.add(recipient)
        return head, self._eph

    def open(
        self, message: bytes, *, stage: int, sender: int, recipient: int | None = None
    ) -> bytes:
        """The payload of ``message`` from ``sender`` at ``stage``, or AuthenticationError.

        ``recipient`` defaults to this party; a relayed original (a peer's message to the
        server, forwarded) is checked with ``recipient=SERVER``.
        """
        return bytes(self.open_view(message, stage=stage, sender=sender, recipient=recipient))

    def open_view(
        self, message: bytes, *, stage: int, sender: int, recipient: int | None = None
    ) -> memoryview | bytes:
        """:meth:`open`, returning the payload as a read-only view of ``message`` (no copy)."""
        where = f"{self.stage_name(stage)} message from {party_name(sender)}"
        try:
            head, header_bytes, payload, auth, key = wire.split(message, view=True)
        except ProtocolError as err:
            raise AuthenticationError(f"refused {where}: {err}") from None
        want_to = self.me if recipient is None else recipient
        problem = None
        if head.protocol != self.tag:
            problem = f"it is for protocol {head.protocol!r}, not {self.tag!r}"
        elif head.session_id != self.session_id:
            problem = "it belongs to another job, round or cohort (session id)"
        elif self.nonce is not None and head.nonce != self.nonce:
            problem = "it belongs to another attempt of this round (nonce): replayed"
        elif head.stage != stage:
            problem = f"it is a stage {head.stage} message: replayed or out of order"
        elif head.sender != sender:
            problem = f"it claims sender {party_name(head.sender)}"
        elif head.recipient != want_to:
            problem = f"it is addressed to {party_name(head.recipient)}"
        elif self.keyring is not None:
            pair = self._pair_key(sender) if recipient is None else None
            if pair is not None:
                if not head.maced:
                    problem = "it is not authenticated with the pair key of this attempt"
                elif not hmac.compare_digest(auth, _mac(pair, header_bytes, payload)):
                    problem = "its MAC does not verify"
            elif not head.signed:
                problem = "it is unsigned and this party holds a roster"
            elif not self.keyring.roster.verify(
                sender, auth, _signed_data(header_bytes, key, payload)
            ):
                problem = "its signature does not verify against the roster"
        elif head.signed or head.maced:
            problem = "it is authenticated but this party holds no roster to check it"
        if problem is not None:
            raise AuthenticationError(f"refused {where}: {problem}")
        if self.nonce is None:
            if sender != wire.SERVER:
                raise AuthenticationError(f"refused {where}: the round was not opened yet")
            self.nonce = head.nonce
        if recipient is None and head.keyed and self.keyring is not None:
            self._their_key[sender] = key  # signed above: the sender's key for this attempt
        return payload

    def accept(
        self,
        reply: bytes,
        *,
        stage: int,
        sender: int,
        expected: set[int] | frozenset[int],
        refused: dict[int, str],
    ) -> memoryview | bytes | None:
        """One reply's payload (a read-only view, as :meth:`open_view`), or None if refused.

        A reply from a client that was not asked at this stage, or one failing any check of
        :meth:`open`, is refused: the reason goes to ``refused`` (the client counts as a
        dropout) and is logged.
        """
        if sender not in expected:
            why = f"reply from {party_name(sender)}, who was not asked at this stage"
        else:
            try:
                return self.open_view(reply, stage=stage, sender=sender)
            except AuthenticationError as err:
                why = str(err)
        refused[sender] = why
        log.warning("%s: counted as a dropout", why)
        return None

    def collect(
        self,
        replies: Mapping[int, bytes],
        *,
        stage: int,
        expected: set[int] | frozenset[int],
        refused: dict[int, str],
    ) -> dict[int, bytes]:
        """Payloads of the replies that :meth:`accept` takes, by ascending id.

        Raises ``DropoutError`` when no reply is left.
        """
        bodies: dict[int, bytes] = {}
        for cid in sorted(replies):
            payload = self.accept(
                replies[cid], stage=stage, sender=cid, expected=expected, refused=refused
            )
            if payload is not None:
                bodies[cid] = bytes(payload)
        if not bodies:
            detail = f" ({len(refused)} refused: {next(iter(refused.values()))})" if refused else ""
            raise DropoutError(
                f"no valid reply at {self.stage_name(stage)}: every client of the cohort dropped "
                f"out{detail}"
            )
        return bodies


@dataclass(frozen=True)
class SignedUpload:
    """One client's upload in a one-upload round: the body and the signature appended to it."""

    client: int
    body: bytes
    digest: bytes  # SHA-256 of ``body``: what the client's signed statement names
    signature: bytes

    def statement_row(self, extra: bytes = b"") -> bytes:
        """``client (uint32) || extra || digest || signature``: relayed to the decoders."""
        return struct.pack("!I", self.client) + extra + self.digest + self.signature


class UploadRound:
    """Server side of the one-upload protocols (paillier, ckks).

    Stage 0 sends one hello to every cohort member and collects one upload each: a body
    followed by the client's 64-byte signature over a statement naming the body's SHA-256
    (checked by the decoders, who relay nothing). Stage 1 sends the result to the
    contributors. Refusals count as dropouts (see :meth:`Channel.collect`).
    """

    def __init__(
        self,
        *,
        tag: str,
        session_id: bytes,
        cohort: Sequence[int],
        keyring: Keyring | None,
        stage_names: Sequence[str],
    ):
        self.channel = Channel(
            tag=tag, session_id=session_id, me=wire.SERVER, keyring=keyring,
            stage_names=stage_names,
        )  # fmt: skip
        self.cohort = tuple(cohort)

    def start(self, hello: bytes) -> dict[int, bytes]:
        return {cid: self.channel.seal(0, cid, hello) for cid in self.cohort}

    def collect(
        self, replies: Mapping[int, bytes], *, refused: dict[int, str], body_bytes: int | None
    ) -> dict[int, SignedUpload]:
        """The uploads that pass the channel and the size check (``body_bytes``, if known)."""
        frames = self.channel.collect(
            replies, stage=0, expected=frozenset(self.cohort), refused=refused
        )
        uploads: dict[int, SignedUpload] = {}
        for cid, frame in frames.items():
            size = len(frame) - identity.SIGNATURE_BYTES
            if size < 0 or (body_bytes is not None and size != body_bytes):
                want = "" if body_bytes is None else f" ({body_bytes} + signature expected)"
                refused[cid] = f"client {cid}'s upload of {len(frame)} bytes is malformed{want}"
                log.warning("%s: counted as a dropout", refused[cid])
                continue
            body = frame[:size]
            uploads[cid] = SignedUpload(cid, body, hashlib.sha256(body).digest(), frame[size:])
        return uploads

    def finish(self, contributors: Sequence[int], payload: bytes) -> dict[int, bytes]:
        """The final message (``payload``) to each contributor."""
        return {cid: self.channel.seal(1, cid, payload) for cid in contributors}
