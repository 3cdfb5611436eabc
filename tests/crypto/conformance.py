"""Shared conformance suite every registered protocol must pass.

A protocol's test module subclasses :class:`ProtocolConformance`, sets ``protocol_name`` and
implements :meth:`make_protocol`; pytest then runs every test below against it.
``test_every_protocol_has_conformance`` checks no registered protocol escapes the suite.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from crypto import (
    DropoutError,
    ParameterError,
    Protocol,
    ProtocolError,
    RoundSpec,
    run_round,
)
from crypto.core import valuerange
from crypto.core.wire import HEADER_SIZE
from crypto.errors import EncodingError

from .adversary import AdversarialConformance, keyring


class ProtocolConformance(AdversarialConformance):
    """Property tests of the protocol contract in crypto/core/protocol.py."""

    protocol_name: ClassVar[str]
    n_clients: ClassVar[int] = 5
    dim: ClassVar[int] = 37
    # Inputs are drawn in [-value_range, value_range].
    value_range: ClassVar[float] = 0.5

    def make_protocol(self, tmp_path: Path) -> Protocol:
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------
    @pytest.fixture
    def protocol(self, tmp_path: Path) -> Protocol:
        proto = self.make_protocol(tmp_path)
        proto.use_identities(keyring())
        proto.setup(job_id="conformance", key_dir=tmp_path / "keys")
        assert proto.authenticated
        return proto

    def inputs(self, seed: int = 0, n: int | None = None):
        rng = np.random.default_rng(seed)
        n = n or self.n_clients
        vecs = {
            cid: rng.uniform(-self.value_range, self.value_range, self.dim).astype(np.float32)
            for cid in range(n)
        }
        weights = {cid: float(rng.integers(1, 50)) for cid in range(n)}
        return vecs, weights

    def spec(self, n: int | None = None, round_: int = 1) -> RoundSpec:
        return RoundSpec("conformance", round_, tuple(range(n or self.n_clients)), self.dim)

    def sessions(self, protocol: Protocol, spec: RoundSpec, vecs, weights):
        server = protocol.server_session(spec)
        clients = {
            cid: protocol.client_session(spec, cid, vecs[cid], weights[cid]) for cid in spec.cohort
        }
        return server, clients

    @staticmethod
    def expected(vecs, weights, ids):
        total = sum(weights[c] * vecs[c].astype(np.float64) for c in ids)
        return total, sum(weights[c] for c in ids)

    def check(self, outcome, vecs, weights, ids):
        agg = outcome.aggregate
        want, wsum = self.expected(vecs, weights, ids)
        assert agg.contributors == tuple(sorted(ids))
        assert agg.total_weight == pytest.approx(wsum, rel=1e-9, abs=1e-6)
        err = float(np.max(np.abs(agg.weighted_sum - want)))
        assert err <= agg.error_bound + 1e-12, f"error {err} exceeds stated bound {agg.error_bound}"
        assert agg.learned_by == type(self.protocol_obj).learned_by

    # -- the contract ------------------------------------------------------------------
    def test_weighted_sum_matches_plain(self, protocol):
        self.protocol_obj = protocol
        vecs, weights = self.inputs()
        spec = self.spec()
        outcome = run_round(*self.sessions(protocol, spec, vecs, weights))
        self.check(outcome, vecs, weights, spec.cohort)

    def test_error_bound_is_tight_enough_to_matter(self, protocol):
        self.protocol_obj = protocol
        vecs, weights = self.inputs(seed=5)
        outcome = run_round(*self.sessions(protocol, self.spec(), vecs, weights))
        want, _ = self.expected(vecs, weights, range(self.n_clients))
        # A bound as large as the signal would make "within the bound" meaningless.
        assert outcome.aggregate.error_bound < 1e-2 * float(np.max(np.abs(want)))

    def test_dropouts_within_tolerance_are_exact(self, protocol):
        self.protocol_obj = protocol
        vecs, weights = self.inputs(seed=1)
        spec = self.spec()
        k = protocol.max_dropouts(len(spec.cohort))
        assert 0 <= k < len(spec.cohort)
        if k == 0:
            pytest.skip(f"{self.protocol_name} documents that it tolerates no dropout")
        server, clients = self.sessions(protocol, spec, vecs, weights)
        # The last k clients drop after answering the first stage (or at once if 1 stage).
        drop = {cid: 1 for cid in spec.cohort[-k:]}
        outcome = run_round(server, clients, drop_at=drop)
        survivors = [c for c in spec.cohort if c not in drop]
        if outcome.aggregate.contributors != tuple(survivors):
            # Single-stage protocols collect inputs at stage 0, so stage-1 dropouts still count.
            survivors = list(outcome.aggregate.contributors)
            assert set(survivors) >= {c for c in spec.cohort if c not in drop}
        self.check(outcome, vecs, weights, survivors)

    def test_dropout_before_input_is_excluded(self, protocol):
        self.protocol_obj = protocol
        vecs, weights = self.inputs(seed=2)
        spec = self.spec()
        if protocol.max_dropouts(len(spec.cohort)) == 0:
            pytest.skip(f"{self.protocol_name} documents that it tolerates no dropout")
        server, clients = self.sessions(protocol, spec, vecs, weights)
        outcome = run_round(server, clients, drop_at={0: 0})
        self.check(outcome, vecs, weights, spec.cohort[1:])

    def test_too_many_dropouts_fail_clearly(self, protocol):
        self.protocol_obj = protocol
        vecs, weights = self.inputs(seed=3)
        spec = self.spec()
        server, clients = self.sessions(protocol, spec, vecs, weights)
        with pytest.raises(DropoutError):
            run_round(server, clients, drop_at={cid: 0 for cid in spec.cohort})

    def test_single_client_round(self, protocol):
        self.protocol_obj = protocol
        vecs, weights = self.inputs(seed=4, n=1)
        spec = self.spec(n=1)
        if not self.supports_single_client():
            pytest.skip(f"{self.protocol_name} needs several clients by design")
        outcome = run_round(*self.sessions(protocol, spec, vecs, weights))
        self.check(outcome, vecs, weights, (0,))

    def supports_single_client(self) -> bool:
        return True

    def _first_reply(self, protocol):
        vecs, weights = self.inputs()
        spec = self.spec()
        server, clients = self.sessions(protocol, spec, vecs, weights)
        first = server.start()
        replies = {cid: clients[cid].handle(msg) for cid, msg in first.items()}
        return server, clients, first, replies

    def _refused_as_dropout(self, protocol, tamper):
        """Tamper with the first replies; the server refuses them and the sum stays exact."""
        self.protocol_obj = protocol
        vecs, weights = self.inputs()
        spec = self.spec()
        server, clients = self.sessions(protocol, spec, vecs, weights)
        first = server.start()
        replies = {cid: clients[cid].handle(msg) for cid, msg in first.items()}
        bad = tamper(replies)
        # DropoutError: more refusals than this protocol survives at this cohort size
        with contextlib.suppress(DropoutError):
            server.advance(replies)
        assert set(server.refused) == set(bad), server.refused
        for cid in bad:
            assert f"client {cid}" in server.refused[cid] or "not asked" in server.refused[cid]
            assert "stage 0" in server.refused[cid]

    def test_truncated_reply_rejected(self, protocol):
        def tamper(replies):
            cid = min(replies)
            replies[cid] = replies[cid][: max(HEADER_SIZE - 3, len(replies[cid]) - 5)]
            return [cid]

        self._refused_as_dropout(protocol, tamper)

    def test_garbage_reply_rejected(self, protocol):
        def tamper(replies):
            replies[min(replies)] = b"\x00" * 64
            return [min(replies)]

        self._refused_as_dropout(protocol, tamper)

    def test_foreign_round_reply_rejected(self, protocol):
        vecs, weights = self.inputs()
        server_a, _, _, _ = self._first_reply(protocol)
        other = self.spec(round_=2)
        server_b, clients_b = self.sessions(protocol, other, vecs, weights)
        first_b = server_b.start()
        replies_b = {cid: clients_b[cid].handle(m) for cid, m in first_b.items()}
        with pytest.raises(DropoutError):  # every reply refused: nobody left
            server_a.advance(replies_b)
        assert set(server_a.refused) == set(replies_b)

    def test_reply_under_wrong_sender_rejected(self, protocol):
        def tamper(replies):
            a, b = sorted(replies)[:2]
            replies[a], replies[b] = replies[b], replies[a]
            return [a, b]

        self._refused_as_dropout(protocol, tamper)

    def test_replayed_server_message_rejected(self, protocol):
        vecs, weights = self.inputs()
        spec = self.spec()
        server, clients = self.sessions(protocol, spec, vecs, weights)
        first = server.start()
        cid = min(first)
        clients[cid].handle(first[cid])
        with pytest.raises(ProtocolError):
            clients[cid].handle(first[cid])

    def test_client_rejects_foreign_protocol_message(self, protocol):
        vecs, weights = self.inputs()
        spec = self.spec()
        _, clients = self.sessions(protocol, spec, vecs, weights)
        from crypto.core import wire

        bogus = wire.header(
            protocol="bogus", session_id=spec.session_id, nonce=b"\0" * 16, stage=0,
            sender=wire.SERVER, recipient=0, length=0, signed=False,
        )  # fmt: skip
        with pytest.raises(ProtocolError):
            clients[0].handle(bogus)

    def test_unsigned_message_refused_by_a_party_with_a_roster(self, protocol):
        vecs, weights = self.inputs()
        spec = self.spec()
        _, clients = self.sessions(protocol, spec, vecs, weights)
        from crypto.core import wire

        unsigned = wire.header(
            protocol=protocol.name, session_id=spec.session_id, nonce=b"\1" * 16, stage=0,
            sender=wire.SERVER, recipient=0, length=0, signed=False,
        )  # fmt: skip
        with pytest.raises(ProtocolError, match="unsigned"):
            clients[0].handle(unsigned)

    def test_bytes_are_counted_not_estimated(self, protocol):
        self.protocol_obj = protocol
        vecs, weights = self.inputs()
        spec = self.spec()
        server, clients = self.sessions(protocol, spec, vecs, weights)
        seen_up: dict[int, int] = {}
        seen_down: dict[int, int] = {}

        class Spy:
            def __init__(self, inner, cid):
                self.inner, self.cid = inner, cid

            def handle(self, msg):
                seen_down[self.cid] = seen_down.get(self.cid, 0) + len(msg)
                out = self.inner.handle(msg)
                if out is not None:
                    seen_up[self.cid] = seen_up.get(self.cid, 0) + len(out)
                return out

            def aggregate(self):
                return self.inner.aggregate()

        outcome = run_round(server, {c: Spy(s, c) for c, s in clients.items()})
        assert outcome.traffic.bytes_down == seen_down
        # Replies to a final delivery are not sent; all others count.
        for cid, up in outcome.traffic.bytes_up.items():
            assert up <= seen_up[cid]
            assert up >= 4 * self.dim // 8  # an update of dim parameters cannot be tiny

    def test_out_of_range_input_is_refused_by_default_and_clipped_on_request(
        self, protocol, tmp_path
    ):
        vecs, weights = self.inputs(seed=3)
        spec = self.spec()
        if valuerange.OPTION not in type(protocol).option_names:
            # No range (plain sends float32): a large value is summed as it is.
            vecs[1][[0, 5]] = [3e6, -2.5e6]
            self.protocol_obj = protocol
            self.check(run_round(*self.sessions(protocol, spec, vecs, weights)), vecs, weights,
                       spec.cohort)  # fmt: skip
            return
        clip = float(protocol.options.get("clip", 1.0))
        vecs[1][[0, 5]] = [3 * clip, -2.5 * clip]
        with pytest.raises(EncodingError, match=r"client 1.* 2 of \d+ coordinates.*out_of_range"):
            protocol.client_session(spec, 1, vecs[1], weights[1])
        with pytest.raises(ParameterError, match="'wrap'"):
            type(protocol)(**{**protocol.options, "out_of_range": "wrap"})
        clipper = type(protocol)(**{**protocol.options, "out_of_range": "clip"})
        clipper.use_identities(protocol.keyring)
        clipper.setup(job_id="conformance", key_dir=tmp_path / "keys")
        server, clients = self.sessions(clipper, spec, vecs, weights)
        assert clients[1].clipped_coordinates == 2 and clients[0].clipped_coordinates == 0
        self.protocol_obj = clipper
        clipped = {c: np.clip(v.astype(np.float64), -clip, clip) for c, v in vecs.items()}
        self.check(run_round(server, clients), clipped, weights, spec.cohort)

    def test_wrong_dimension_rejected(self, protocol):
        spec = self.spec()
        with pytest.raises(ValueError):
            protocol.client_session(spec, 0, np.zeros(self.dim + 1, np.float32), 1.0)

    def test_threat_model_is_stated(self, protocol):
        tm = protocol.threat_model()
        assert tm.protocol == self.protocol_name
        for text in (tm.key_holders, tm.server_sees, tm.dropouts, tm.breaks_if):
            assert len(text) > 10
        doc = type(protocol).__module__
        import importlib

        module_doc = importlib.import_module(doc).__doc__ or ""
        assert "threat model" in module_doc.lower()
