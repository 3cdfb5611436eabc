"""Authenticated framing of one party's messages in one round attempt.

A :class:`Channel` frames (:mod:`crypto.core.wire`) and signs what its party sends, and checks
what it receives: protocol, session (job, round, cohort), the attempt's nonce, stage, sender,
recipient, and the sender's Ed25519 signature against the roster
(:mod:`crypto.core.identity`). The server's channel draws the nonce (16 bytes from
:mod:`secrets`) when the round opens; a client's adopts it from the server's first, signed
message. A reply from an earlier attempt of the same job, round and cohort carries another
nonce and is refused; so is anything unsigned, re-addressed, re-stamped or altered.

A refusal raises :class:`~crypto.errors.AuthenticationError` naming sender and stage. The
server side turns it into that sender's dropout (:meth:`Channel.collect`), so a bad message
can cost a round its contributor but never changes the sum.

Without a keyring (``keyring=None``) frames are unsigned: the UNAUTHENTICATED mode, kept only
to measure what signing costs; it is named in the protocols' threat models and logged.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Mapping, Sequence

from ..errors import AuthenticationError, DropoutError, ProtocolError
from . import wire
from .identity import Keyring, party_name

log = logging.getLogger(__name__)
_DOMAIN = b"secfed/msg/v2"


def _signed_data(head: bytes, payload: bytes) -> bytes:
    """What a frame's signature covers: domain, header and the payload's SHA-256 (hashing a
    large payload once with SHA-256 is cheaper than Ed25519's own pass over it)."""
    return _DOMAIN + head + hashlib.sha256(payload).digest()


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

    def seal(self, stage: int, recipient: int, payload: bytes) -> bytes:
        """Frame and sign ``payload`` for ``recipient``."""
        if self.nonce is None:
            raise ProtocolError("a client cannot send before the server opened the round")
        signed = self.keyring is not None
        head = wire.header(
            protocol=self.tag, session_id=self.session_id, nonce=self.nonce, stage=stage,
            sender=self.me, recipient=recipient, length=len(payload), signed=signed,
        )  # fmt: skip
        if self.keyring is None:
            return head + payload
        return head + payload + self.keyring.sign(self.me, _signed_data(head, payload))

    def open(
        self, message: bytes, *, stage: int, sender: int, recipient: int | None = None
    ) -> bytes:
        """The payload of ``message`` from ``sender`` at ``stage``, or AuthenticationError.

        ``recipient`` defaults to this party; a relayed original (a peer's message to the
        server, forwarded) is checked with ``recipient=SERVER``.
        """
        where = f"{self.stage_name(stage)} message from {party_name(sender)}"
        try:
            head, header_bytes, payload, signature = wire.split(message)
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
            if not head.signed:
                problem = "it is unsigned and this party holds a roster"
            elif not self.keyring.roster.verify(
                sender, signature, _signed_data(header_bytes, payload)
            ):
                problem = "its signature does not verify against the roster"
        elif head.signed:
            problem = "it is signed but this party holds no roster to check it"
        if problem is not None:
            raise AuthenticationError(f"refused {where}: {problem}")
        if self.nonce is None:
            if sender != wire.SERVER:
                raise AuthenticationError(f"refused {where}: the round was not opened yet")
            self.nonce = head.nonce
        return payload

    def collect(
        self,
        replies: Mapping[int, bytes],
        *,
        stage: int,
        expected: set[int] | frozenset[int],
        refused: dict[int, str],
    ) -> dict[int, bytes]:
        """Payloads of the replies that pass :meth:`open`, by ascending id.

        A reply from a client that was not asked, or one failing any check, is refused (added
        to ``refused`` with the reason) and counts as that client's dropout. Raises
        ``DropoutError`` when no reply is left.
        """
        bodies: dict[int, bytes] = {}
        for cid in sorted(replies):
            if cid not in expected:
                refused[cid] = f"reply from {party_name(cid)}, who was not asked at this stage"
                continue
            try:
                bodies[cid] = self.open(replies[cid], stage=stage, sender=cid)
            except AuthenticationError as err:
                refused[cid] = str(err)
        for why in refused.values():
            log.warning("%s: counted as a dropout", why)
        if not bodies:
            detail = f" ({len(refused)} refused: {next(iter(refused.values()))})" if refused else ""
            raise DropoutError(
                f"no valid reply at {self.stage_name(stage)}: every client of the cohort dropped "
                f"out{detail}"
            )
        return bodies
