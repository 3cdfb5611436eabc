"""The adversarial half of the conformance suite: a network attacker against every protocol.

Mixed into :class:`tests.crypto.conformance.ProtocolConformance`, so every registered protocol
runs it. The attacker mutates random bytes of real messages, re-stamps senders and replays
replies from an earlier attempt of the same job, round and cohort. What must hold: no mutated
message is accepted, no round ends with a wrong sum, and every failure is a ``ProtocolError``
(a refusal, counted as the sender's dropout, or a ``DropoutError`` when too few are left).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping

import numpy as np
import pytest

from crypto import DropoutError, ProtocolError, RoundSpec, drive_round
from crypto.core import identity, wire
from crypto.core.stage_loop import Delivery, InProcessTransport
from crypto.errors import AuthenticationError

FUZZ_ROUNDS = 25  # full rounds with one mutated message each, per protocol (default suite)
FUZZ_CACHED = 1000  # mutations of recorded messages, per protocol (default suite)


@functools.cache
def keyring() -> identity.Keyring:
    """One roster for the suite (clients 0..255 and the server)."""
    return identity.generate(range(256))


class Recorder(InProcessTransport):
    """Records every message (stage, sender, recipient, bytes); mutates the ``target``-th."""

    def __init__(self, clients, *, target: int = -1, rng: np.random.Generator | None = None):
        super().__init__(clients)
        self.log: list[tuple[int, int, int, bytes]] = []
        self.target, self.rng = target, rng

    def _pass(self, stage: int, sender: int, recipient: int, msg: bytes) -> bytes:
        if len(self.log) == self.target and self.rng is not None:
            msg = mutate(msg, self.rng)
        self.log.append((stage, sender, recipient, msg))
        return msg

    def deliver(self, stage: int, messages: Mapping[int, bytes], *, final: bool) -> Delivery:
        sent = {c: self._pass(stage, wire.SERVER, c, m) for c, m in sorted(messages.items())}
        out = super().deliver(stage, sent, final=final)
        out.replies = {
            c: self._pass(stage, c, wire.SERVER, r) for c, r in sorted(out.replies.items())
        }
        return out


def mutate(msg: bytes, rng: np.random.Generator) -> bytes:
    """``msg`` with one byte changed (xor with a non-zero value)."""
    pos = int(rng.integers(len(msg)))
    out = bytearray(msg)
    out[pos] ^= int(rng.integers(1, 256))
    return bytes(out)


class AdversarialConformance:
    """Network-attacker tests; relies on ProtocolConformance's helpers."""

    fuzz_dim = 3
    fuzz_clients = 3

    def _fuzz_setup(self, protocol, seed: int):
        rng = np.random.default_rng(seed)
        n = self.fuzz_clients
        vecs = {c: rng.uniform(-0.5, 0.5, self.fuzz_dim).astype(np.float32) for c in range(n)}
        weights = dict.fromkeys(range(n), 1.0)
        spec = RoundSpec("fuzz", 1, tuple(range(n)), self.fuzz_dim)
        server = protocol.server_session(spec)
        clients = {c: protocol.client_session(spec, c, vecs[c], 1.0) for c in range(n)}
        return spec, server, clients, vecs, weights

    def _fuzz_full_rounds(self, protocol, rounds: int) -> dict[str, int]:
        self.protocol_obj = protocol
        _, server, clients, _, _ = self._fuzz_setup(protocol, 0)
        honest = Recorder(clients)
        drive_round(server, honest)
        count = len(honest.log)
        tally = {"exact": 0, "refused": 0, "wrong": 0}
        rng = np.random.default_rng(1)
        for i in range(rounds):
            _, server, clients, vecs, _ = self._fuzz_setup(protocol, 100 + i)
            transport = Recorder(clients, target=int(rng.integers(count)), rng=rng)
            try:
                outcome = drive_round(server, transport)
            except ProtocolError:  # DropoutError or a refusal the round cannot survive
                tally["refused"] += 1
                continue
            ids = outcome.aggregate.contributors
            want = sum(vecs[c].astype(np.float64) for c in ids)
            err = float(np.max(np.abs(outcome.aggregate.weighted_sum - want)))
            ok = (
                err <= outcome.aggregate.error_bound + 1e-12
                and outcome.aggregate.total_weight == (pytest.approx(len(ids), abs=1e-6))
            )
            tally["exact" if ok else "wrong"] += 1
        return tally

    def _fuzz_cached(self, protocol, mutations: int) -> tuple[int, float]:
        """Mutate recorded messages; each must be refused by its recipient's channel check
        (the recipient's own channel after the round: it holds the attempt's pair keys)."""
        _, server, clients, _, _ = self._fuzz_setup(protocol, 0)
        rec = Recorder(clients)
        drive_round(server, rec)
        channels = {c: s._channel for c, s in clients.items()} | {wire.SERVER: server._channel}
        for stage, sender, recipient, msg in rec.log:  # the honest MACed replies pass
            if stage > 0 and recipient == wire.SERVER:
                channels[recipient].open(msg, stage=stage, sender=sender)
        rng = np.random.default_rng(7)
        accepted = 0
        t0 = time.perf_counter()
        for _ in range(mutations):
            stage, sender, recipient, msg = rec.log[int(rng.integers(len(rec.log)))]
            try:
                channels[recipient].open(mutate(msg, rng), stage=stage, sender=sender)
                accepted += 1
            except AuthenticationError as err:
                assert ("server" if sender == wire.SERVER else f"client {sender}") in str(err)
                assert f"stage {stage}" in str(err)
        return accepted, time.perf_counter() - t0

    def test_mutated_messages_are_all_refused(self, protocol):
        accepted, _ = self._fuzz_cached(protocol, FUZZ_CACHED)
        assert accepted == 0

    def test_rounds_with_a_mutated_message_never_give_a_wrong_sum(self, protocol):
        tally = self._fuzz_full_rounds(protocol, FUZZ_ROUNDS)
        assert tally["wrong"] == 0, tally

    @pytest.mark.slow
    def test_mutation_campaign(self, protocol):
        accepted, _ = self._fuzz_cached(protocol, 10_000)
        assert accepted == 0
        tally = self._fuzz_full_rounds(protocol, 1000)
        assert tally["wrong"] == 0, tally

    def test_reply_from_an_earlier_attempt_is_refused(self, protocol):
        self.protocol_obj = protocol
        vecs, weights = self.inputs()
        spec = self.spec()
        server1, clients1 = self.sessions(protocol, spec, vecs, weights)
        first = server1.start()
        old = clients1[0].handle(first[0])
        server2, clients2 = self.sessions(protocol, spec, vecs, weights)  # same job/round/cohort

        class Replay(InProcessTransport):
            def deliver(self, stage, messages, *, final):
                out = super().deliver(stage, messages, final=final)
                if stage == 0:
                    out.replies[0] = old
                return out

        outcome = drive_round(server2, Replay(clients2))
        assert 0 not in outcome.aggregate.contributors and 0 in outcome.dropped
        assert "another attempt" in server2.refused[0]
        self.check(outcome, vecs, weights, outcome.aggregate.contributors)

    def test_reply_restamped_with_another_sender_is_refused(self, protocol):
        self.protocol_obj = protocol
        vecs, weights = self.inputs()
        spec = self.spec()
        server, clients = self.sessions(protocol, spec, vecs, weights)

        class Restamp(InProcessTransport):
            def deliver(self, stage, messages, *, final):
                out = super().deliver(stage, messages, final=final)
                if stage == 0:  # client 0's reply, claimed for client 1 (whose own is lost)
                    head = bytearray(out.replies.pop(0))
                    at = wire.HEADER_SIZE - 16  # sender field: uint32 before recipient, length
                    head[at : at + 4] = (1).to_bytes(4, "big")
                    out.replies[1] = bytes(head)
                return out

        try:
            outcome = drive_round(server, Restamp(clients))
        except DropoutError:  # two dropouts may exceed what the protocol survives at n = 5
            outcome = None
        assert "signature" in server.refused[1]
        if outcome is not None:
            assert not {0, 1} & set(outcome.aggregate.contributors)
            self.check(outcome, vecs, weights, outcome.aggregate.contributors)

    def test_unauthenticated_mode_is_explicit(self, protocol):
        spec = self.spec()
        with pytest.raises(DropoutError):
            # a roster-holding server refuses every unsigned reply
            fresh = type(protocol)(**protocol.options)
            fresh.__dict__.update({k: v for k, v in protocol.__dict__.items() if k != "keyring"})
            fresh.use_identities(None)
            assert not fresh.authenticated
            vecs, weights = self.inputs()
            server = protocol.server_session(spec)
            clients = {c: fresh.client_session(spec, c, vecs[c], weights[c]) for c in spec.cohort}
            drive_round(server, InProcessTransport(clients))

    def test_threat_model_states_each_adversary(self, protocol):
        # Each statement is attacked above (network), in test_split_attack.py (secagg
        # malicious server) and in the protocol's own tests (paillier / ckks list checks).
        adv = protocol.threat_model().as_dict()["adversaries"]
        assert set(adv) == {
            "semi_honest_server",
            "malicious_server_with_roster",
            "network_attacker",
        }
        assert "roster" in adv["malicious_server_with_roster"]
        assert "never a wrong sum" in adv["network_attacker"]
        protocol.use_identities(None)
        adv = protocol.threat_model().as_dict()["adversaries"]
        assert "UNAUTHENTICATED" in adv["network_attacker"]
