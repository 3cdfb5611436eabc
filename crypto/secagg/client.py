"""Client state machine of secagg / secagg+ (see :mod:`crypto.secagg` for the protocol)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import struct
from typing import Any

from numpy.typing import NDArray

from ..core import keyagreement as ka
from ..core import shamir, valuerange, wire
from ..core.channel import Channel
from ..core.identity import Keyring
from ..core.protocol import ClientSession, RoundSpec
from ..errors import AuthenticationError, DropoutError, EncodingError, ProtocolError
from . import messages as msg
from .encoding import RoundParams, encode_weight, masked_payload
from .graph import Graph

log = logging.getLogger(__name__)
_U64 = (1 << 64) - 1


STAGES = ("advertise keys", "share keys", "masked input", "consistency check", "unmasking")


def commitment(*, session_id: bytes, client: int, seed: bytes) -> bytes:
    """Binding hash of a client's self-mask seed, checked after reconstruction."""
    return hashlib.sha256(
        b"secfed/secagg/v1/commit" + session_id + struct.pack("!I", client) + seed
    ).digest()


def share_aad(tag: str, session_id: bytes, sender: int, recipient: int) -> bytes:
    """Associated data binding an encrypted share to protocol, round and both parties."""
    return tag.encode("ascii") + session_id + struct.pack("!II", sender, recipient)


def survivor_statement(binding: bytes, survivors: list[int]) -> bytes:
    """What a client signs in the consistency check: this attempt and its survivor set."""
    ids = struct.pack(f"!{len(survivors)}I", *survivors)
    return b"secfed/secagg/v2/survivors" + binding + hashlib.sha256(ids).digest()


def endorsement_tag(key: bytes, *, sender: int, recipient: int, statement: bytes) -> bytes:
    """``sender``'s endorsement of ``statement`` to ``recipient`` (truncated HMAC-SHA256).

    ``key`` is HKDF of the pair's X25519(c) secret (their roster-signed keys), so only the
    two can make it; the direction is inside the MAC, so a tag cannot be reflected. It stands
    for ``sender``'s signature at the recipient's consistency check at a fraction of an
    Ed25519 verification.
    """
    data = b"secfed/secagg/v2/endorse" + struct.pack("!II", sender, recipient) + statement
    return hmac.digest(key, data, "sha256")[: msg.ENDORSEMENT_BYTES]


class SecAggClient(ClientSession):
    """One client's side: advertise keys, share secrets, send masked input, check, unmask."""

    def __init__(
        self,
        spec: RoundSpec,
        client_id: int,
        vector: NDArray[Any],
        weight: float,
        *,
        tag: str,
        params: RoundParams,
        keyring: Keyring | None,
        out_of_range: str = valuerange.REFUSE,
    ):
        super().__init__(spec, client_id, vector, weight)
        self.vector, self.clipped_coordinates = valuerange.enforce(
            self.vector, clip=params.clip, policy=out_of_range, who=f"client {client_id}"
        )
        if self.weight > params.max_weight:
            raise EncodingError(
                f"client {client_id}'s weight {self.weight} exceeds max_weight="
                f"{params.max_weight}: raise the protocol option max_weight (or normalise "
                "the weights), so the modulus can hold the cohort's sum"
            )
        self._weight_fixed = encode_weight(self.weight)
        self._tag = tag
        self._channel = Channel(
            tag=tag, session_id=spec.session_id, me=client_id, keyring=keyring, stage_names=STAGES
        )
        self._sid = b""  # the attempt's binding, known once the server opened the round
        self._params = params
        self._stage = 0
        self._failed = False
        self._graph: Graph | None = None
        self._c_key = ka.generate()
        self._s_key = ka.generate()
        self._b_seed = b""
        self._peer_keys: dict[int, tuple[bytes, bytes]] = {}
        self._c_shared: dict[int, bytes] = {}
        self._held: dict[int, tuple[int, int]] = {}  # peer -> (b share, sk share) it gave us
        self._mask_peers: frozenset[int] = frozenset()
        self._signed: list[int] | None = None  # the survivor set this client signed
        self._my_signature = b""
        self._endorse: dict[int, bytes] = {}  # peer -> consistency MAC key (authenticated)
        self._holder_only = False  # holds neighbours' shares but contributes no input

    # -- dispatch ------------------------------------------------------------------------
    def handle(self, message: bytes) -> bytes | None:
        if self._failed:
            raise ProtocolError(f"client {self.client_id} aborted this round after an error")
        if self._stage >= len(STAGES):
            raise ProtocolError(f"client {self.client_id} already finished this round: replay")
        body = self._channel.open(message, stage=self._stage, sender=wire.SERVER)
        self._sid = self._channel.binding
        handler = (self._advertise, self._share, self._mask, self._sign, self._unmask)[self._stage]
        try:
            payload = handler(body)
        except Exception:
            self._failed = True
            raise
        reply = self._channel.seal(self._stage, wire.SERVER, payload)
        self._stage += 1
        return reply

    # -- stage 0: advertise keys ---------------------------------------------------------
    def _advertise(self, body: bytes) -> bytes:
        setup = msg.decode_setup(body)
        g = self._params.graph
        mine = (g.neighbours, g.threshold, self._params.modulus_bits)
        theirs = (setup.neighbours, setup.threshold, setup.modulus_bits)
        if mine != theirs:
            raise ProtocolError(
                f"server announces (k, t, modulus bits) = {theirs} but client "
                f"{self.client_id} derives {mine}: both sides must use the same protocol options"
            )
        self._graph = Graph(self.spec.cohort, k=g.neighbours, seed=setup.graph_seed)
        return msg.encode_keys(ka.public_bytes(self._c_key), ka.public_bytes(self._s_key))

    # -- stage 1: share keys -------------------------------------------------------------
    def _share(self, body: bytes) -> bytes:
        assert self._graph is not None
        relayed = msg.decode_relayed(body)
        mine = self._graph.neighbours(self.client_id)
        stray = set(relayed) - mine
        if stray:
            raise ProtocolError(
                f"server lists clients {sorted(stray)}, who are not neighbours of client "
                f"{self.client_id} under the published graph"
            )
        peers = {}
        for pid, original in relayed.items():
            # The peer's own signed advertisement: a server cannot substitute its keys.
            advert = self._channel.open(original, stage=0, sender=pid, recipient=wire.SERVER)
            peers[pid] = msg.decode_keys(advert)
        t = self._params.graph.threshold
        own = {ka.public_bytes(self._c_key), ka.public_bytes(self._s_key)}
        for pid, (c_pk, s_pk) in peers.items():
            if c_pk in own or s_pk in own or c_pk == s_pk:
                raise ProtocolError(f"client {pid} advertises a reflected or reused public key")
        sid, me = self._sid, self.client_id
        for pid in sorted(peers):
            shared = self._exchange(self._c_key, peers[pid][0])
            self._c_shared[pid] = shared
            if self._channel.authenticated:
                self._endorse[pid] = ka.derive(
                    shared, session_id=sid, purpose="consistency", first=min(pid, me),
                    second=max(pid, me),
                )  # fmt: skip
        self._peer_keys = peers
        if len(peers) + 1 < t:
            # Too few live holders to share its own secrets: it contributes no input this
            # round but still holds its neighbours' shares (so its exclusion does not cascade).
            log.info("client %d holds shares only: %d neighbours advertised keys", me, len(peers))
            self._holder_only = True
            return msg.encode_routed([], commit=bytes(msg.COMMIT_BYTES))
        self._b_seed = secrets.token_bytes(32)
        sk_int = int.from_bytes(ka.private_bytes(self._s_key), "little")
        holders = sorted([*peers, self.client_id])
        shares = shamir.split(
            [int.from_bytes(self._b_seed, "big"), sk_int],
            threshold=t,
            xs=[h + 1 for h in holders],
        )
        b_own, sk_own = shares[self.client_id + 1]
        self._held[self.client_id] = (b_own, sk_own)
        rows = []
        for pid in sorted(peers):
            key = ka.derive(
                self._c_shared[pid], session_id=sid, purpose="share-enc", first=me, second=pid
            )
            b_sh, sk_sh = shares[pid + 1]
            plain = msg.share_plaintext(self.client_id, pid, b_sh, sk_sh)
            rows.append(
                (pid, ka.seal(key, plain, aad=share_aad(self._tag, sid, self.client_id, pid)))
            )
        commit = commitment(session_id=sid, client=self.client_id, seed=self._b_seed)
        return msg.encode_routed(rows, commit=commit)

    @staticmethod
    def _exchange(key: Any, peer_public: bytes) -> bytes:
        try:
            return bytes(key.exchange(ka.load_public(peer_public)))
        except ValueError as err:
            raise ProtocolError(f"peer public key is invalid (low order): {err}") from None

    # -- stage 2: masked input -----------------------------------------------------------
    def _mask(self, body: bytes) -> bytes | bytearray:
        contribute, sealed = msg.decode_share_delivery(body)
        stray = set(sealed) - set(self._peer_keys)
        if stray:
            raise ProtocolError(f"shares from clients {sorted(stray)} whose keys were never sent")
        if contribute and self._holder_only:
            raise ProtocolError(
                f"server asks client {self.client_id} for its input, but it shared no secrets"
            )
        # Whether enough of this client's holders are live is the server's check (a holder
        # that shares nothing itself still holds this client's shares).
        sid, me = self._sid, self.client_id
        for pid, blob in sealed.items():
            key = ka.derive(
                self._c_shared[pid], session_id=sid, purpose="share-enc", first=pid, second=me
            )
            plain = ka.open_sealed(key, blob, aad=share_aad(self._tag, sid, pid, me))
            sender, recipient, b_sh, sk_sh = msg.parse_share_plaintext(plain)
            if (sender, recipient) != (pid, me):
                raise ProtocolError(f"share routed from {pid} names ({sender} -> {recipient})")
            self._held[pid] = (b_sh, sk_sh)
        self._mask_peers = frozenset(sealed)
        if not contribute:  # excluded (too few of its holders left): it only holds shares
            self._holder_only = True
            self._b_seed, self._c_shared, self._held = (
                b"",
                {},
                {p: v for p, v in self._held.items() if p != me},
            )
            return b""
        plus = [ka.derive(self._b_seed, session_id=sid, purpose="self-mask", first=me, second=me)]
        minus: list[bytes] = []
        for pid in sorted(sealed):
            seed = ka.derive(
                self._exchange(self._s_key, self._peer_keys[pid][1]),
                session_id=sid,
                purpose="pair-mask",
                first=min(me, pid),
                second=max(me, pid),
            )
            (plus if me < pid else minus).append(seed)
        payload = masked_payload(
            self.vector,
            weight=self.weight,
            weight_fixed=self._weight_fixed,
            params=self._params,
            add=plus,
            subtract=minus,
        )
        # Secrets no longer needed: keep only the shares held for others.
        self._b_seed, self._c_shared = b"", {}
        del self._c_key, self._s_key
        return payload

    # -- stage 3: consistency check -----------------------------------------------------
    def _survivors(self, ids: list[int]) -> list[int]:
        if self._holder_only and self.client_id in ids:
            raise ProtocolError(
                f"server lists client {self.client_id} as a survivor, but it sent no input"
            )
        if not self._holder_only and self.client_id not in ids:
            raise ProtocolError(
                f"server lists client {self.client_id} as dropped although it sent its input"
            )
        if not set(ids) <= set(self.spec.cohort):
            raise ProtocolError("survivor set names clients outside the cohort")
        return ids

    def _sign(self, body: bytes) -> bytes:
        survivors = self._survivors(msg.decode_ids(body, "survivors"))
        self._signed = survivors
        statement = survivor_statement(self._sid, survivors)
        self._my_signature = self._channel.sign(statement) or bytes(msg.SIGNATURE_BYTES)
        me = self.client_id
        tags = [
            (pid, endorsement_tag(key, sender=me, recipient=pid, statement=statement))
            for pid, key in sorted(self._endorse.items())
        ]
        return msg.encode_endorsement(self._my_signature, tags)

    # -- stage 4: unmasking --------------------------------------------------------------
    def _unmask(self, body: bytes) -> bytes:
        assert self._graph is not None
        survivors, signatures, tags = msg.decode_unmask(body)
        if survivors != self._signed:
            raise ProtocolError(
                f"the unmask request to client {self.client_id} names another survivor set "
                "than the one it signed: the server shows clients inconsistent views; refusing"
            )
        statement = survivor_statement(self._sid, survivors)
        if stray := (set(signatures) | set(tags)) - set(self.spec.cohort):
            raise ProtocolError(
                f"consistency signatures of clients {sorted(stray)}, not in the cohort"
            )
        t = self._params.graph.threshold
        alive = set(survivors)
        # Ed25519 signatures are deterministic: our own needs no verification.
        mine = signatures.get(self.client_id) == self._my_signature
        valid: set[int] = {self.client_id} if mine else set()
        graph, me = self._graph, self.client_id
        endorsers = frozenset(signatures) | frozenset(tags)
        near = graph.holders(me)

        def check(signer: int) -> None:
            # A neighbour's tag is as good as its signature and far cheaper to check; without
            # a valid tag the signature must verify (refused otherwise).
            key, tag = self._endorse.get(signer), tags.get(signer)
            if key is not None and tag is not None:
                want = endorsement_tag(key, sender=signer, recipient=me, statement=statement)
                if hmac.compare_digest(tag, want):
                    return
            if signer not in signatures:
                raise AuthenticationError(
                    f"consistency check: the endorsement of client {signer} does not verify"
                )
            self._channel.check_signature(
                signer, signatures[signer], statement, what="consistency check"
            )

        def backed(pid: int) -> int:
            # Count endorsements already verified, then verify more only until t of pid's
            # holders are found to have endorsed; prefer our own holders (their tags are cheap
            # and they hold shares of most of our peers), so few checks are made in all.
            pool = graph.holders(pid) & endorsers
            count = len(pool & valid)
            if count >= t:
                return count
            fresh = pool - valid
            for signer in [*sorted(fresh & near), *sorted(fresh - near)]:
                check(signer)
                valid.add(signer)
                count += 1
                if count >= t:
                    break
            return count

        kept = self._mask_peers | (frozenset() if self._holder_only else {self.client_id})
        for pid in sorted(kept):
            # Reveal nothing about pid unless t of pid's own share holders signed this set:
            # two sets with t such signatures each would need 2t - |holders| > corrupt signers.
            backing = backed(pid) if self._channel.authenticated else t
            if backing < t:
                raise DropoutError(
                    f"only {backing} of client {pid}'s share holders signed the survivor set "
                    f"sent to client {self.client_id}; threshold {t}: refusing to unmask"
                )
        rows = [(p, msg.B_SHARE, self._held[p][0]) for p in sorted(kept & alive)]
        rows += [(p, msg.SK_SHARE, self._held[p][1]) for p in sorted(kept - alive)]
        rows.sort()
        self._held, self._endorse = {}, {}
        log.debug("client %d reveals %d shares", self.client_id, len(rows))
        return msg.encode_reveal(rows)
