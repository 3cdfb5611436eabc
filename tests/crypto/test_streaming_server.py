"""Servers that sum replies as they arrive: same sums, bounded intake memory, no double count."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from crypto import ProtocolError, RoundSpec, create_protocol
from crypto.core import wire
from crypto.secagg.encoding import RoundParams, accumulator, decode_in_place, pack, unpack_add
from crypto.secagg.graph import GraphParams
from tests.crypto.adversary import keyring
from tests.crypto.secagg_helpers import to_stage

_BLOCKS = 2 * (1 << 16) + 12  # spans block boundaries of the streamed code


def _params(bits: int, dim: int) -> RoundParams:
    return RoundParams(GraphParams(10, 9, 7), bits, dim, 2.0**16, 1.0, 1.0)


@pytest.mark.parametrize("bits", [8, 16, 24, 32])
def test_unpack_add_on_a_view_matches_python_integers(bits):
    rng = np.random.default_rng(bits)
    words = _BLOCKS
    acc = np.zeros(words, dtype=np.uint32)
    want = [0] * words
    for _ in range(3):
        values = rng.integers(0, 2**32, words, dtype=np.uint64).astype(np.uint32)
        unpack_add(acc, memoryview(b"xy" + pack(values, bits=bits))[2:], bits=bits)
        low = [int(v) % (1 << bits) for v in values]
        want = [(a + b) % 2**32 for a, b in zip(want, low, strict=True)]
    assert acc.tolist() == want


@pytest.mark.parametrize("bits", [8, 16, 24, 32])
@pytest.mark.parametrize("dim", [1, 7, _BLOCKS])
def test_decode_in_place_is_the_centred_lift(bits, dim):
    rng = np.random.default_rng(dim + bits)
    p = _params(bits, dim)
    buf = accumulator(p)
    words = rng.integers(0, 2**32, p.words, dtype=np.uint64).astype(np.uint32)
    buf[: p.words] = words
    mod = 1 << bits
    want = []
    for w in words[:dim].tolist():  # independent: Python integers
        r = w % mod
        want.append((r - mod if r >= mod // 2 else r) / 2.0**16)
    got = decode_in_place(buf, params=p)
    assert got.dtype == np.float64 and got.tolist() == want


def _replies(name: str, n: int, dim: int, **opts):
    """A server advanced to the stage before the big replies, and those replies."""
    proto = create_protocol(name, **({} if name == "plain" else {"max_weight": 1.0}), **opts)
    proto.use_identities(keyring())
    rng = np.random.default_rng(7)
    vecs = {c: rng.uniform(-0.5, 0.5, dim).astype(np.float32) for c in range(n)}
    spec = RoundSpec("stream", 1, tuple(range(n)), dim)
    big_stage = 0 if name == "plain" else 2
    weights = dict.fromkeys(range(n), 0.5)
    server, clients, messages = to_stage(proto, spec, vecs, weights, big_stage)
    replies = {c: clients[c].handle(m) for c, m in messages.items()}
    return server, clients, replies, vecs


@pytest.mark.parametrize("name", ["plain", "secagg", "secagg+"])
def test_intake_holds_a_running_sum_not_every_reply(name):
    n, dim = 12, 400_000
    server, _, replies, _ = _replies(name, n, dim)
    upload = sum(len(r) for r in replies.values())
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        for cid in sorted(replies):
            server.receive(cid, replies[cid])
        server.close_stage()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Holding the replies (or a copy of each payload) would take about ``upload`` bytes; a
    # running sum takes at most the float64 result (plain) plus small blocks.
    assert peak - base < 3 * 4 * dim < upload / 3


@pytest.mark.parametrize("name", ["plain", "secagg", "secagg+"])
def test_one_by_one_gives_the_weighted_sum_and_refuses_double_counting(name):
    n, dim = 6, 70_000
    server, clients, replies, vecs = _replies(name, n, dim)
    first = min(replies)
    server.receive(first, replies[first])
    with pytest.raises(ProtocolError, match="twice"):
        server.receive(first, replies[first])
    forged = bytearray(replies[first + 1])
    forged[wire.HEADER_SIZE + 40] ^= 1  # inside the payload: authentication must fail
    server.receive(first + 1, bytes(forged))
    assert first + 1 in server.refused
    for cid in sorted(replies):
        if cid not in (first, first + 1):
            server.receive(cid, replies[cid])
    step = server.close_stage()
    while not step.final:
        answers = {}
        for cid, m in step.messages.items():
            reply = clients[cid].handle(m)
            if reply is not None:
                answers[cid] = reply
        step = server.advance(answers)
    agg = server.aggregate()
    assert agg is not None
    assert first + 1 not in agg.contributors and len(agg.contributors) == n - 1
    want = sum(0.5 * vecs[c].astype(np.float64) for c in agg.contributors)
    assert np.max(np.abs(agg.weighted_sum - want)) <= agg.error_bound
    assert agg.total_weight == pytest.approx(0.5 * (n - 1))


def test_plain_client_frames_its_update_in_one_buffer():
    """The plain client writes weight || update straight into the authenticated frame: while
    it answers it allocates about one payload (not the payload and then a framed copy)."""
    dim = 1_000_000
    proto = create_protocol("plain")
    proto.use_identities(keyring())
    vec = np.random.default_rng(3).uniform(-1, 1, dim).astype(np.float32)
    spec = RoundSpec("frame", 1, (0, 1), dim)
    server = proto.server_session(spec)
    client = proto.client_session(spec, 0, vec, 0.25)
    requests = server.start()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        reply = client.handle(requests[0])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply is not None and len(reply) > 4 * dim
    assert peak - base < 1.2 * len(reply)  # two buffers would be >= 2 * len(reply)
    # ... and the frame is a valid authenticated message carrying exactly that update
    other = np.linspace(-1, 1, dim, dtype=np.float32)
    server.receive(0, reply)
    server.receive(1, proto.client_session(spec, 1, other, 0.5).handle(requests[1]))
    assert server.close_stage().final
    agg = server.aggregate()
    assert agg is not None and agg.contributors == (0, 1)
    want = 0.25 * vec.astype(np.float64) + 0.5 * other.astype(np.float64)
    assert np.max(np.abs(agg.weighted_sum - want)) <= 1e-12
