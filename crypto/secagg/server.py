"""Server state machine of secagg / secagg+ (see :mod:`crypto.secagg` for the protocol).

The server routes public keys and encrypted shares, sums masked inputs, and finally
reconstructs the self-mask seeds of the survivors and the mask keys of clients that dropped
after sharing, only as local values inside :meth:`SecAggServer.advance`; it never stores a
client secret.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping

import numpy as np

from ..core import keyagreement as ka
from ..core import shamir, wire
from ..core.channel import Channel
from ..core.identity import Keyring
from ..core.masking import apply_masks
from ..core.protocol import Aggregate, RoundSpec, ServerSession, ServerStep
from ..errors import DropoutError, KeyMaterialError, ProtocolError
from . import messages as msg
from .client import STAGES, commitment, survivor_statement
from .encoding import RoundParams, accumulator, decode_in_place, decode_weight, unpack_add
from .graph import Graph

log = logging.getLogger(__name__)
_U64 = (1 << 64) - 1
_MASKED = STAGES.index("masked input")


class SecAggServer(ServerSession):
    """Routes keys and shares, sums masked inputs, unmasks the sum."""

    def __init__(self, spec: RoundSpec, *, tag: str, params: RoundParams, keyring: Keyring | None):
        super().__init__(spec)
        self._tag = tag
        self._channel = Channel(
            tag=tag, session_id=spec.session_id, me=wire.SERVER, keyring=keyring,
            stage_names=STAGES,
        )  # fmt: skip
        self._sid = self._channel.binding
        self._params = params
        self._stage = -1
        self._expected: set[int] = set()
        self._graph: Graph | None = None
        self._adverts: dict[int, bytes] = {}  # clients' signed key advertisements, relayed
        self._survivors: list[int] = []
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._commits: dict[int, bytes] = {}
        self._shared: set[int] = set()  # U2: clients whose shares were delivered
        self._contributors: set[int] = set()  # clients with t live holders at key setup
        self._present: set[int] = set()  # clients holding shares (answered stage 1)
        self._requests: dict[int, tuple[list[int], list[int]]] = {}
        self._buffer = np.zeros(0, dtype=np.uint32)  # accumulator(): the sum, decoded in place
        self._acc = self._buffer  # its first ``words`` words: the running sum of masked inputs
        self._tail = 0
        self._absorbed: set[int] = set()  # clients whose masked input is in the sum
        self._answered: set[int] = set()  # ... and holders only who answered the masked stage
        self._result: Aggregate | None = None

    def start(self) -> dict[int, bytes]:
        if self._stage != -1:
            raise ProtocolError("secagg round already started")
        self._stage = 0
        seed = secrets.token_bytes(32)
        g = self._params.graph
        self._graph = Graph(self.spec.cohort, k=g.neighbours, seed=seed)
        setup = msg.encode_setup(
            msg.Setup(seed, g.neighbours, g.threshold, self._params.modulus_bits)
        )
        self._expected = set(self.spec.cohort)
        return {cid: self._channel.seal(0, cid, setup) for cid in self.spec.cohort}

    def advance(self, replies: Mapping[int, bytes]) -> ServerStep:
        if self._stage < 0 or self._result is not None or self._stage >= len(STAGES):
            raise ProtocolError(f"secagg server cannot advance at stage {self._stage}")
        if self._stage == _MASKED:
            for cid in sorted(replies):
                self.receive(cid, replies[cid])
            bodies: dict[int, bytes] = {}
        elif not replies:
            raise DropoutError(
                f"every client dropped at {self._channel.stage_name(self._stage)}: nothing to "
                "aggregate"
            )
        else:
            bodies = self._channel.collect(
                replies, stage=self._stage, expected=frozenset(self._expected),
                refused=self.refused,
            )  # fmt: skip
        if self._stage == 0:
            self._adverts = {c: bytes(replies[c]) for c in bodies}
        handlers = (self._on_keys, self._on_shares, self._on_masked, self._on_signed,
                    self._on_reveal)  # fmt: skip
        messages = handlers[self._stage](bodies)
        self._stage += 1
        if self._result is not None:
            return ServerStep(messages={}, final=True)
        self._expected = set(messages)
        return ServerStep(
            messages={c: self._channel.seal(self._stage, c, m) for c, m in messages.items()}
        )

    def receive(self, client: int, reply: bytes) -> None:
        """Masked inputs are checked and added to the sum as they arrive (then dropped).

        The server so holds the running sum and one reply, whatever the cohort size. Other
        stages' replies wait for :meth:`advance`.
        """
        if self._stage != _MASKED or self._result is not None:
            super().receive(client, reply)
            return
        if client in self._absorbed:
            raise ProtocolError(f"client {client}'s masked input was handed over twice")
        opened = self._channel.accept(
            reply, stage=_MASKED, sender=client, expected=self._expected, refused=self.refused
        )
        if opened is None:
            return
        body = memoryview(opened)
        if client not in self._shared:  # a holder only: it owes no input
            if len(body):
                raise ProtocolError(f"client {client} holds shares only but sent an input")
            self._answered.add(client)
            return
        if len(body) != 8 + self._params.packed_bytes:
            raise ProtocolError(
                f"client {client} sent a masked input of {len(body)} bytes, expected "
                f"{8 + self._params.packed_bytes}"
            )
        unpack_add(self._acc, body[8:], bits=self._params.modulus_bits)
        self._tail = (self._tail + int.from_bytes(body[:8], "little")) & _U64
        self._absorbed.add(client)
        self._answered.add(client)

    def _nbrs(self, u: int) -> frozenset[int]:
        assert self._graph is not None
        return self._graph.neighbours(u)

    def aggregate(self) -> Aggregate | None:
        return self._result

    # -- helpers -------------------------------------------------------------------------
    def _able(self, candidates: set[int], holders: set[int], what: str) -> set[int]:
        """The candidates with at least ``t`` live holders among ``holders`` (and themselves).

        The others stay in the round as holders of their neighbours' shares, contributing no
        input, so excluding one never takes a holder from anyone else: no cascade.
        """
        t = self._params.graph.threshold
        live = {u for u in candidates if len(self._nbrs(u) & holders) + 1 >= t}
        if weak := candidates - live:
            log.info("secagg: %s hold shares only, too few live holders %s", sorted(weak), what)
        if not live:
            raise DropoutError(
                f"too many clients dropped {what}: no client of the cohort of "
                f"{len(self.spec.cohort)} keeps {t} live share holders (threshold {t}, "
                f"{self._params.graph.max_dropouts} dropouts tolerated)"
            )
        return live

    # -- stage 0 -> 1 --------------------------------------------------------------------
    def _on_keys(self, bodies: dict[int, bytes]) -> dict[int, bytes]:
        seen: dict[bytes, int] = {}
        keys = {}
        for cid, body in bodies.items():
            c_pk, s_pk = msg.decode_keys(body)
            for pk in (c_pk, s_pk):
                if pk in seen:
                    raise ProtocolError(f"client {cid} reuses a public key of client {seen[pk]}")
                seen[pk] = cid
            keys[cid] = (c_pk, s_pk)
        present = set(keys)
        self._contributors = self._able(present, present, "before key sharing")
        self._keys = keys
        return {
            u: msg.encode_relayed([(v, self._adverts[v]) for v in sorted(self._nbrs(u) & present)])
            for u in sorted(present)
        }

    # -- stage 1 -> 2 --------------------------------------------------------------------
    def _on_shares(self, bodies: dict[int, bytes]) -> dict[int, bytes]:
        sealed: dict[int, dict[int, bytes]] = {}
        for cid, body in bodies.items():
            commit, rows = msg.decode_routed(body, with_commit=True)
            mine = self._nbrs(cid) & set(self._keys) if cid in self._contributors else set()
            want = sorted(mine)
            if sorted(rows) != want:
                raise ProtocolError(
                    f"client {cid} sent shares for {sorted(rows)}, expected its live "
                    f"neighbours {want}"
                )
            self._commits[cid] = commit
            sealed[cid] = rows
        self._present = set(sealed)  # they hold shares from now on
        live = self._able(self._present & self._contributors, self._present, "while sharing keys")
        self._shared = live
        self._buffer = accumulator(self._params)
        self._acc = self._buffer[: self._params.words]
        return {
            v: msg.encode_share_delivery(
                v in live, [(u, sealed[u][v]) for u in sorted(self._nbrs(v) & live)]
            )
            for v in sorted(self._present)
        }

    # -- stage 2 -> 3 --------------------------------------------------------------------
    def _on_masked(self, bodies: dict[int, bytes]) -> dict[int, bytes]:
        # The inputs were summed by receive() as they arrived; holders only answered empty.
        survived, answered = set(self._absorbed), set(self._answered)
        if not survived:
            raise DropoutError("every client dropped before sending its masked input")
        t = self._params.graph.threshold
        for u in sorted(self._shared):
            holders = (self._nbrs(u) & self._present) | {u}
            needed = u in survived or bool(self._nbrs(u) & survived)
            if needed and len(holders & answered) < t:
                raise DropoutError(
                    f"client {u}'s masks cannot be removed: only {len(holders & answered)} of "
                    f"its share holders are left, threshold {t} "
                    f"({self._params.graph.max_dropouts} dropouts tolerated)"
                )
        for u in sorted(answered):
            peers = self._nbrs(u) & self._shared
            own = {u} & survived
            self._requests[u] = (sorted((peers & survived) | own), sorted(peers - survived))
        self._survivors = sorted(survived)
        listing = msg.encode_ids(self._survivors)
        return dict.fromkeys(sorted(answered), listing)

    # -- stage 3 -> 4: consistency check -------------------------------------------------
    def _on_signed(self, bodies: dict[int, bytes]) -> dict[int, bytes]:
        assert self._graph is not None
        statement = survivor_statement(self._sid, self._survivors)
        signatures: dict[int, bytes] = {}
        tags: dict[int, dict[int, bytes]] = {}  # signer -> recipient -> endorsement tag
        for cid, body in bodies.items():
            try:
                signature, tags[cid] = msg.decode_endorsement(body)
                if stray := set(tags[cid]) - self._nbrs(cid):
                    raise ProtocolError(f"client {cid} endorses to non-neighbours {sorted(stray)}")
                self._channel.check_signature(cid, signature, statement, what="consistency check")
            except ProtocolError as err:
                self.refused[cid] = str(err)
                log.warning("%s: counted as a dropout", err)
                continue
            signatures[cid] = signature
        t = self._params.graph.threshold
        signers = set(signatures)
        backed: dict[int, int] = {}  # p -> how many of p's holders signed (once per p)
        for u in sorted(signers):
            for p in [*self._requests[u][0], *self._requests[u][1]]:
                if p not in backed:
                    backed[p] = len(signers & self._graph.holders(p))
                backing = backed[p]
                if backing < t:
                    raise DropoutError(
                        f"only {backing} of client {p}'s share holders signed the survivor set, "
                        f"threshold {t}: too many clients dropped at the consistency check"
                    )
        out = {}
        for u in sorted(signers):
            kept = {*self._requests[u][0], *self._requests[u][1]}
            relevant = set().union(*(self._graph.holders(p) for p in kept)) & signers
            out[u] = msg.encode_unmask(
                self._survivors,
                [(s, signatures[s]) for s in sorted(relevant)],
                [(s, tags[s][u]) for s in sorted(relevant) if u in tags[s]],
            )
        return out

    # -- stage 4 -> result ---------------------------------------------------------------
    def _on_reveal(self, bodies: dict[int, bytes]) -> dict[int, bytes]:
        b_shares: dict[int, dict[int, int]] = {}
        sk_shares: dict[int, dict[int, int]] = {}
        for cid, body in bodies.items():
            shares = msg.decode_reveal(body)
            survivors, dropped = self._requests[cid]
            want = {p: msg.B_SHARE for p in survivors} | {p: msg.SK_SHARE for p in dropped}
            if {p: k for p, (k, _) in shares.items()} != want:
                raise ProtocolError(f"client {cid} revealed shares other than those requested")
            for peer, (kind, value) in shares.items():
                target = b_shares if kind == msg.B_SHARE else sk_shares
                target.setdefault(peer, {})[cid + 1] = value
        survived = self._survivors
        t = self._params.graph.threshold
        sid = self._sid
        lagrange = _LagrangeCache(t)
        subtract: list[bytes] = []
        add: list[bytes] = []
        for u in survived:
            b_seed = lagrange.secret(b_shares.get(u, {}), f"self-mask seed of client {u}")
            seed = b_seed.to_bytes(32, "big") if b_seed < 2**256 else b""
            if commitment(session_id=sid, client=u, seed=seed) != self._commits[u]:
                raise ProtocolError(
                    f"reconstructed self-mask seed of client {u} does not match its commitment: "
                    "a revealed share was altered"
                )
            subtract.append(ka.derive(seed, session_id=sid, purpose="self-mask", first=u, second=u))
        gone = sorted(self._shared - set(survived))
        for v in gone:
            partners = sorted(self._nbrs(v) & set(survived))
            if not partners:
                continue
            sk_int = lagrange.secret(sk_shares.get(v, {}), f"mask key of dropped client {v}")
            try:
                sk = ka.load_private(sk_int.to_bytes(32, "little"))
            except (OverflowError, KeyMaterialError, ValueError):
                sk = None
            if sk is None or ka.public_bytes(sk) != self._keys[v][1]:
                raise ProtocolError(
                    f"reconstructed mask key of dropped client {v} does not match its public "
                    "key: a revealed share was altered"
                )
            for u in partners:
                seed = ka.agree(
                    sk,
                    ka.load_public(self._keys[u][1]),
                    session_id=sid,
                    purpose="pair-mask",
                    first=min(u, v),
                    second=max(u, v),
                )
                # u added +mask(seed) if u < v, -mask(seed) otherwise: undo it.
                (subtract if u < v else add).append(seed)
        tail = (self._tail + apply_masks(self._acc, add=add, subtract=subtract)) & _U64
        self._finish(survived, tail)
        return {}

    def _finish(self, survived: list[int], tail: int) -> None:
        p = self._params
        pad = self._acc[p.dim :]
        if p.modulus_bits < 32:
            pad = pad & np.uint32((1 << p.modulus_bits) - 1)
        if np.any(pad):
            raise ProtocolError("unmasked padding is not zero: a masked input was corrupted")
        if tail >= 1 << 63:
            raise ProtocolError("unmasked total weight is negative: a masked input was corrupted")
        total = decode_in_place(self._buffer, params=p)
        n = len(survived)
        bound = n * 0.5 / p.scale + n * p.max_weight * p.clip * 2.0**-50
        self._result = Aggregate(total, decode_weight(tail), tuple(survived), "server", bound)
        self._buffer = self._acc = np.zeros(0, dtype=np.uint32)


class _LagrangeCache:
    """Shamir reconstruction reusing Lagrange weights across secrets with the same holders."""

    def __init__(self, threshold: int):
        self.t = threshold
        self._coeffs: dict[tuple[int, ...], list[int]] = {}

    def secret(self, shares: dict[int, int], what: str) -> int:
        if len(shares) < self.t:
            raise DropoutError(
                f"only {len(shares)} shares of the {what} came back, threshold {self.t}: "
                "too many clients dropped during unmasking"
            )
        xs = tuple(sorted(shares)[: self.t])
        if xs not in self._coeffs:
            self._coeffs[xs] = shamir.lagrange_at_zero(xs)
        return shamir.combine([shares[x] for x in xs], self._coeffs[xs])
