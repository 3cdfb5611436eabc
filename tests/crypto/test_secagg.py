"""secagg / secagg+: conformance, exact dropout recovery, refusals, encoding and the graph."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto import (
    DropoutError,
    Protocol,
    ProtocolError,
    RoundSpec,
    create_protocol,
    run_round,
)
from crypto.core import fixedpoint, wire
from crypto.core.channel import Channel
from crypto.core.identity import Roster
from crypto.errors import AuthenticationError, EncodingError
from crypto.secagg import PairwiseMaskingProtocol
from crypto.secagg import messages as msg
from crypto.secagg.client import endorsement_tag, survivor_statement
from crypto.secagg.encoding import pack, unpack_add
from crypto.secagg.graph import neighbours_of
from tests.crypto.adversary import keyring
from tests.crypto.conformance import ProtocolConformance

# Inputs reach 1.2 > clip: these tests clip on purpose (the conformance classes refuse).
OPTS = {"max_weight": 64.0, "out_of_range": "clip"}
REFUSE = {"out_of_range": "refuse"}


def _proto(name: str, **opts) -> PairwiseMaskingProtocol:
    proto = create_protocol(name, **opts)
    assert isinstance(proto, PairwiseMaskingProtocol)
    proto.use_identities(keyring())
    return proto


SPARSE = {
    "neighbours": 4,
    "threshold": 3,
    "max_corrupt_fraction": 0.0,
    "max_weight": 64.0,
    "out_of_range": "clip",
}


class TestSecAggConformance(ProtocolConformance):
    protocol_name = "secagg"
    fuzz_clients = 5  # t = 4: one refused party is survived, so fuzzed rounds can finish

    def make_protocol(self, tmp_path) -> Protocol:
        return _proto("secagg", **OPTS | REFUSE)


class TestSecAggPlusConformance(ProtocolConformance):
    protocol_name = "secagg+"
    fuzz_clients = 5

    def make_protocol(self, tmp_path) -> Protocol:
        return _proto("secagg+", **OPTS | REFUSE)


class TestSecAggPlusSparseConformance(ProtocolConformance):
    """A real sparse graph: 12 clients with 4 neighbours each."""

    protocol_name = "secagg+"
    n_clients = 12

    def make_protocol(self, tmp_path) -> Protocol:
        proto = _proto("secagg+", **SPARSE | REFUSE)
        assert not proto.graph_params(self.n_clients).complete
        return proto


# -- helpers ---------------------------------------------------------------------------
def _inputs(n, dim, seed=0, weight_max=50):
    rng = np.random.default_rng(seed)
    vecs = {c: rng.uniform(-1.2, 1.2, dim).astype(np.float32) for c in range(n)}
    weights = {c: float(rng.integers(1, weight_max)) for c in range(n)}
    return vecs, weights


def _exact(proto, vecs, weights, ids):
    """The sum the integer arithmetic must reproduce bit for bit."""
    c = proto.config
    ints = np.sum(
        [
            fixedpoint.encode(
                vecs[i].astype(np.float64) * weights[i], scale=c.scale, clip=c.clip * weights[i]
            )
            for i in ids
        ],
        axis=0,
    )
    return fixedpoint.decode(ints, scale=c.scale)


def _run(name, opts, n, drop, dim=23, seed=0, weight_max=50):
    proto = _proto(name, **opts)
    spec = RoundSpec("t", 1, tuple(range(n)), dim)
    vecs, weights = _inputs(n, dim, seed, weight_max)
    server = proto.server_session(spec)
    clients = {c: proto.client_session(spec, c, vecs[c], weights[c]) for c in spec.cohort}
    out = run_round(server, clients, drop_at=drop)
    return proto, out, vecs, weights


def _to_stage(proto, spec, vecs, weights, stage):
    """Run a full cohort up to the server message of ``stage``; returns its pieces."""
    server = proto.server_session(spec)
    clients = {c: proto.client_session(spec, c, vecs[c], weights[c]) for c in spec.cohort}
    messages = server.start()
    _CHANNELS[server._channel.nonce] = {wire.SERVER: server._channel} | {
        c: s._channel for c, s in clients.items()
    }
    for _ in range(stage):
        replies = {c: clients[c].handle(m) for c, m in messages.items()}
        messages = server.advance(replies).messages
    return server, clients, messages


_CHANNELS: dict[bytes, dict[int, Channel]] = {}  # attempt nonce -> party -> its channel


def _reframe(message, payload):
    """``message`` with another payload, authenticated by its sender's own channel (a
    malicious server or client: it holds its signing and pair keys)."""
    head = wire.peek(message)
    return _CHANNELS[head.nonce][head.sender].seal(head.stage, head.recipient, payload)


def _body(message):
    return wire.split(message)[2]


# -- dropouts --------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "opts", "n"), [("secagg", OPTS, 7), ("secagg+", SPARSE, 12)])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_dropouts_at_each_stage_are_exact(name, opts, n, stage):
    proto = _proto(name, **opts)
    k = proto.max_dropouts(n)
    assert k >= 2
    dropped = {c: stage for c in range(1, 1 + k)}
    proto, out, vecs, weights = _run(name, opts, n, dropped)
    # Clients dropping at stage 3 (unmasking) already sent their input and count.
    ids = list(range(n)) if stage == 3 else [c for c in range(n) if c not in dropped]
    assert out.aggregate.contributors == tuple(ids)
    assert np.array_equal(out.aggregate.weighted_sum, _exact(proto, vecs, weights, ids))
    assert out.aggregate.total_weight == sum(weights[c] for c in ids)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_dropout_patterns(data):
    n = 7
    proto = _proto("secagg", **OPTS)
    k = proto.max_dropouts(n)
    count = data.draw(st.integers(0, k + 2), label="dropouts")
    who = data.draw(st.lists(st.integers(0, n - 1), min_size=count, max_size=count, unique=True))
    drop = {c: data.draw(st.integers(0, 3), label=f"stage of {c}") for c in who}
    if count <= k:
        proto, out, vecs, weights = _run("secagg", OPTS, n, drop, seed=count)
        ids = [c for c in range(n) if drop.get(c, 4) >= 3]
        assert np.array_equal(out.aggregate.weighted_sum, _exact(proto, vecs, weights, ids))
    else:
        # Past the tolerance the round either still finishes exactly (enough shares were
        # revealed before the late dropouts) or fails: never a wrong sum.
        try:
            proto, out, vecs, weights = _run("secagg", OPTS, n, drop, seed=count)
        except DropoutError:
            return
        ids = list(out.aggregate.contributors)
        assert np.array_equal(out.aggregate.weighted_sum, _exact(proto, vecs, weights, ids))


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_below_threshold_fails_clearly(stage):
    n = 7
    proto = _proto("secagg", **OPTS)
    drop = {c: stage for c in range(proto.max_dropouts(n) + 1)}
    with pytest.raises(DropoutError, match="threshold"):
        _run("secagg", OPTS, n, drop)


def test_key_setup_survives_one_dropout_in_a_sparse_graph():
    # Flower's SecAgg+ halts when one client drops during key setup; here it only leaves.
    _, out, _, _ = _run("secagg+", SPARSE, 12, {5: 0, 6: 1})
    assert 5 not in out.aggregate.contributors and 6 not in out.aggregate.contributors
    assert len(out.aggregate.contributors) == 10


def test_client_left_without_enough_holders_is_excluded_not_fatal(monkeypatch):
    # Three of one client's four neighbours drop at key setup: past the worst-case tolerance
    # for that client, so it is excluded; everyone else still aggregates exactly.
    import crypto.secagg.server as server_mod

    seed = b"g" * 32
    monkeypatch.setattr(server_mod.secrets, "token_bytes", lambda n: seed[:n])
    victim = 0
    nbrs = sorted(neighbours_of(list(range(12)), k=4, seed=seed)[victim])
    drop = {c: 0 for c in nbrs[:3]}
    proto, out, vecs, weights = _run("secagg+", SPARSE, 12, drop)
    ids = [c for c in range(12) if c not in drop and c != victim]
    assert out.aggregate.contributors == tuple(ids)
    assert np.array_equal(out.aggregate.weighted_sum, _exact(proto, vecs, weights, ids))


# -- refusals and tampering ------------------------------------------------------------
def _unmask_setup(stage=3):
    proto = _proto("secagg", **OPTS)
    spec = RoundSpec("t", 1, tuple(range(5)), 9)
    vecs, weights = _inputs(5, 9)
    return _to_stage(proto, spec, vecs, weights, stage)


@pytest.mark.parametrize(
    ("survivors", "match"),
    [([1, 2, 3, 4], "dropped although"), ([0, 1, 2, 3, 4, 9], "outside the cohort")],
)
def test_client_refuses_to_sign_a_wrong_survivor_set(survivors, match):
    _, clients, messages = _unmask_setup()
    forged = _reframe(messages[0], msg.encode_ids(survivors))
    with pytest.raises(ProtocolError, match=match):
        clients[0].handle(forged)
    with pytest.raises(ProtocolError, match="aborted"):
        clients[0].handle(messages[0])  # no second chance after a refusal


def test_client_unmasks_only_the_survivor_set_it_signed():
    _, clients, messages = _unmask_setup(4)
    survivors, sigs, tags = msg.decode_unmask(_body(messages[0]))
    other = _reframe(
        messages[0],
        msg.encode_unmask(survivors[:-1], sorted(sigs.items()), sorted(tags.items())),
    )
    with pytest.raises(ProtocolError, match="another survivor set"):
        clients[0].handle(other)


def test_client_unmasks_only_with_t_signatures_of_each_peers_holders():
    server, clients, messages = _unmask_setup(4)
    survivors, sigs, _ = msg.decode_unmask(_body(messages[1]))  # signatures only, no tags
    t = server._params.graph.threshold
    few = sorted(sigs.items())[: t - 1]
    with pytest.raises(DropoutError, match="signed the survivor set"):
        clients[1].handle(_reframe(messages[1], msg.encode_unmask(survivors, few)))
    forged = dict(sigs)
    forged[2] = bytes(64)  # a signature the server made up
    _, clients, messages = _unmask_setup(4)
    with pytest.raises(ProtocolError, match="does not verify"):
        clients[1].handle(
            _reframe(messages[1], msg.encode_unmask(survivors, sorted(forged.items())))
        )


def _endorsements(clients, messages, who=1):
    survivors, sigs, tags = msg.decode_unmask(_body(messages[who]))
    statement = survivor_statement(clients[who]._sid, survivors)
    return survivors, sigs, tags, statement


def test_neighbour_tags_stand_for_signatures_and_save_every_verification(monkeypatch):
    # secagg's complete graph: every signer is a neighbour, so no Ed25519 verification at all.
    _, clients, messages = _unmask_setup(4)
    _, _, tags, _ = _endorsements(clients, messages)
    assert set(tags) == {0, 2, 3, 4}
    calls = []
    original = Roster.verify
    monkeypatch.setattr(Roster, "verify", lambda *a: calls.append(a) or original(*a))
    shares = msg.decode_reveal(_body(clients[1].handle(messages[1])))
    assert set(shares) == {0, 1, 2, 3, 4} and calls == []


def test_forged_or_reflected_tag_does_not_count_as_an_endorsement():
    for forge in ("made up", "reflected"):
        _, clients, messages = _unmask_setup(4)
        survivors, _, tags, statement = _endorsements(clients, messages)
        if forge == "made up":
            tags[2] = bytes(msg.ENDORSEMENT_BYTES)
        else:  # client 1's own endorsement to 2, handed back to 1 as 2's
            tags[2] = endorsement_tag(
                clients[1]._endorse[2], sender=1, recipient=2, statement=statement
            )
        request = msg.encode_unmask(survivors, [], sorted(tags.items()))  # no signatures
        with pytest.raises(AuthenticationError, match="endorsement of client 2"):
            clients[1].handle(_reframe(messages[1], request))


def test_bad_tag_falls_back_to_the_signature():
    # A client cannot stall its neighbours with a garbage tag: its signature still counts.
    _, clients, messages = _unmask_setup(4)
    survivors, sigs, tags, _ = _endorsements(clients, messages)
    tags[2] = bytes(msg.ENDORSEMENT_BYTES)
    request = msg.encode_unmask(survivors, sorted(sigs.items()), sorted(tags.items()))
    shares = msg.decode_reveal(_body(clients[1].handle(_reframe(messages[1], request))))
    assert set(shares) == {0, 1, 2, 3, 4}


def test_client_answers_one_unmask_request_only():
    _, clients, messages = _unmask_setup(4)
    clients[2].handle(messages[2])
    with pytest.raises(ProtocolError):
        clients[2].handle(messages[2])


def test_altered_sealed_share_is_rejected():
    proto = _proto("secagg", **OPTS)
    spec = RoundSpec("t", 1, tuple(range(5)), 9)
    vecs, weights = _inputs(5, 9)
    _, clients, messages = _to_stage(proto, spec, vecs, weights, 2)
    raw = bytearray(_body(messages[0]))
    raw[-5] ^= 1  # inside a sealed share: even the (signing) server cannot alter it
    with pytest.raises(ProtocolError, match="authentication"):
        clients[0].handle(_reframe(messages[0], bytes(raw)))


def test_misrouted_sealed_share_is_rejected():
    proto = _proto("secagg", **OPTS)
    spec = RoundSpec("t", 1, tuple(range(5)), 9)
    vecs, weights = _inputs(5, 9)
    _, clients, messages = _to_stage(proto, spec, vecs, weights, 2)
    # Deliver client 1's share list to client 0 under client 0's header.
    body = _body(messages[1])
    contribute, rows = msg.decode_share_delivery(body)
    rows = {0 if s == 1 else s: blob for s, blob in rows.items()}
    forged = _reframe(messages[0], msg.encode_share_delivery(contribute, sorted(rows.items())))
    with pytest.raises(ProtocolError):
        clients[0].handle(forged)


def test_altered_revealed_share_is_detected():
    proto = _proto("secagg", **OPTS)
    spec = RoundSpec("t", 1, tuple(range(5)), 9)
    vecs, weights = _inputs(5, 9)
    server, clients, messages = _to_stage(proto, spec, vecs, weights, 4)
    replies = {c: clients[c].handle(m) for c, m in messages.items()}
    body = _body(replies[0])
    shares = msg.decode_reveal(body)
    rows = [(p, k, (v + 1) % 2**256) for p, (k, v) in sorted(shares.items())]
    replies[0] = _reframe(replies[0], msg.encode_reveal(rows))
    with pytest.raises(ProtocolError, match="commitment"):
        server.advance(replies)


def test_mismatched_options_are_caught_at_stage_zero():
    spec = RoundSpec("t", 1, tuple(range(5)), 9)
    vecs, weights = _inputs(5, 9)
    server = _proto("secagg", **OPTS).server_session(spec)
    client = _proto("secagg", **OPTS, threshold=5).client_session(spec, 0, vecs[0], weights[0])
    with pytest.raises(ProtocolError, match="same protocol options"):
        client.handle(server.start()[0])


def test_server_holds_no_client_secret():
    proto = _proto("secagg", **OPTS)
    spec = RoundSpec("t", 1, tuple(range(5)), 9)
    vecs, weights = _inputs(5, 9)
    server, clients, messages = _to_stage(proto, spec, vecs, weights, 2)
    secrets_ = set()
    for c in clients.values():
        secrets_.add(c._b_seed)
        secrets_.add(c._s_key.private_bytes_raw())
        secrets_.add(c._c_key.private_bytes_raw())
    secret_ints = {int.from_bytes(s, "big") for s in secrets_}
    secret_ints |= {int.from_bytes(s, "little") for s in secrets_}
    for _ in range(3):
        replies = {c: clients[c].handle(m) for c, m in messages.items()}
        messages = server.advance(replies).messages
    assert server.aggregate() is not None

    def walk(obj, depth=0):
        if depth > 6:
            return
        if isinstance(obj, bytes | bytearray):
            assert not any(s in bytes(obj) for s in secrets_)
        elif isinstance(obj, int):
            assert obj not in secret_ints
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(k, depth + 1)
                walk(v, depth + 1)
        elif isinstance(obj, list | tuple | set | frozenset):
            for v in obj:
                walk(v, depth + 1)
        elif hasattr(obj, "__dict__"):
            for v in vars(obj).values():
                walk(v, depth + 1)

    walk(server)


# -- encoding --------------------------------------------------------------------------
def test_overflow_is_refused_with_a_clear_message():
    proto = _proto("secagg", scale_bits=30, max_weight=4.0)
    with pytest.raises(EncodingError, match="modulus"):
        proto.server_session(RoundSpec("t", 1, tuple(range(5)), 9))


def test_weight_above_bound_is_refused():
    proto = _proto("secagg")
    spec = RoundSpec("t", 1, tuple(range(3)), 4)
    with pytest.raises(EncodingError, match="max_weight"):
        proto.client_session(spec, 0, np.zeros(4, np.float32), 2.0)


def test_modulus_grows_with_the_cohort_and_bytes_follow():
    proto = _proto("secagg")
    small = proto.round_params(RoundSpec("t", 1, tuple(range(4)), 100))
    large = proto.round_params(RoundSpec("t", 1, tuple(range(300)), 100))
    assert small.modulus_bits == 24 and large.modulus_bits == 32
    _, out, _, _ = _run(
        "secagg", {"max_weight": 1.0, "out_of_range": "clip"}, 3, {}, dim=1000, weight_max=2
    )
    per_param = (max(out.traffic.bytes_up.values()) - 2000) / 1000
    assert per_param <= 3.0  # 24-bit masked vectors, plus keys and shares


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([8, 16, 24, 32]), n4=st.integers(0, 50), data=st.data())
def test_pack_round_trip(bits, n4, data):
    values = np.array(
        data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=4 * n4, max_size=4 * n4)),
        dtype=np.uint32,
    )
    acc = np.zeros_like(values)
    raw = pack(values, bits=bits)
    assert len(raw) == values.size * bits // 8
    unpack_add(acc, raw, bits=bits)
    assert np.array_equal(acc, values & np.uint32(2**bits - 1))


def test_integer_dp_noise_passes_through_exactly():
    # The runner adds noise_int * quantum; with weight 1 the sum moves by exactly that.
    proto = _proto("secagg", clip=4.0)
    assert proto.quantum == 2.0**-16
    n, dim = 4, 50
    spec = RoundSpec("t", 1, tuple(range(n)), dim)
    rng = np.random.default_rng(3)
    base = {c: np.round(rng.uniform(-1, 1, dim) * 2**10) / 2**10 for c in range(n)}
    noise = {c: rng.integers(-500, 500, dim) for c in range(n)}
    sums = []
    for vecs in (base, {c: base[c] + noise[c] * proto.quantum for c in range(n)}):
        clients = {c: proto.client_session(spec, c, vecs[c], 1.0) for c in range(n)}
        sums.append(run_round(proto.server_session(spec), clients).aggregate.weighted_sum)
    assert np.array_equal(sums[1] - sums[0], sum(noise.values()) * proto.quantum)


def test_two_adjacent_dropouts_at_key_setup_exclude_only_their_weak_neighbours(monkeypatch):
    # Issue 15 item 5. k = 4, t = 4 (one dropout per neighbourhood guaranteed). Two
    # ring-adjacent clients drop before key setup: the two clients next to the pair keep
    # 3 < t live holders and cannot share; everyone else still has t. The other 12 aggregate
    # exactly. (Before holder-only clients, excluding those two dropped their neighbours
    # below t in turn, round the ring, until the round ended in DropoutError.)
    import crypto.secagg.server as server_mod
    from crypto.secagg.graph import ring_order

    seed = b"r" * 32
    monkeypatch.setattr(server_mod.secrets, "token_bytes", lambda n: seed[:n])
    opts = {**SPARSE, "threshold": 4}
    n = 16
    order = ring_order(list(range(n)), seed=seed)
    drop = {order[5]: 0, order[6]: 0}
    weak = {order[4], order[7]}  # each loses both ring neighbours on one side
    proto, out, vecs, weights = _run("secagg+", opts, n, drop, weight_max=20)
    ids = [c for c in range(n) if c not in drop and c not in weak]
    assert out.aggregate.contributors == tuple(ids)
    assert np.array_equal(out.aggregate.weighted_sum, _exact(proto, vecs, weights, ids))


def test_a_client_holding_shares_only_refuses_to_be_listed_as_a_survivor(monkeypatch):
    import crypto.secagg.server as server_mod
    from crypto.secagg.graph import ring_order

    seed = b"r" * 32
    monkeypatch.setattr(server_mod.secrets, "token_bytes", lambda n: seed[:n])
    proto = _proto("secagg+", **{**SPARSE, "threshold": 4})
    n = 16
    order = ring_order(list(range(n)), seed=seed)
    spec = RoundSpec("t", 1, tuple(range(n)), 9)
    vecs, weights = _inputs(n, 9, weight_max=20)
    server = proto.server_session(spec)
    clients = {c: proto.client_session(spec, c, vecs[c], weights[c]) for c in spec.cohort}
    messages = server.start()
    gone = {order[5], order[6]}
    for _ in range(3):  # keys, shares, masked input; two ring neighbours never answer
        replies = {c: clients[c].handle(m) for c, m in messages.items() if c not in gone}
        messages = server.advance(replies).messages
    holder = order[4]
    assert holder in messages and holder not in server._survivors  # it sent no input
    lie = server._channel.seal(3, holder, msg.encode_ids(sorted([*server._survivors, holder])))
    with pytest.raises(ProtocolError, match="sent no input"):
        clients[holder].handle(lie)
