"""Shared set-up of the secagg / secagg+ tests: options, protocols, inputs, partial rounds."""

from __future__ import annotations

import numpy as np

from crypto import RoundSpec, create_protocol, run_round
from crypto.core import wire
from crypto.core.channel import Channel
from crypto.secagg import PairwiseMaskingProtocol
from tests.crypto.adversary import keyring

#: The protocols' own defaults (out-of-range values refused), for the conformance classes.
BASE = {"max_weight": 64.0}
# Inputs reach 1.2 > clip: the other tests clip on purpose.
OPTS = BASE | {"out_of_range": "clip"}


def secagg_proto(name: str, **opts) -> PairwiseMaskingProtocol:
    proto = create_protocol(name, **opts)
    assert isinstance(proto, PairwiseMaskingProtocol)
    proto.use_identities(keyring())
    return proto


SPARSE_GRAPH = {"neighbours": 4, "threshold": 3, "max_corrupt_fraction": 0.0}
SPARSE = OPTS | SPARSE_GRAPH


def inputs(n, dim, seed=0, weight_max=50):
    rng = np.random.default_rng(seed)
    vecs = {c: rng.uniform(-1.2, 1.2, dim).astype(np.float32) for c in range(n)}
    weights = {c: float(rng.integers(1, weight_max)) for c in range(n)}
    return vecs, weights


def exact(proto, vecs, weights, ids):
    """The sum the integer arithmetic must reproduce bit for bit, written out with numpy
    (clip each weighted input to ``clip * w``, round to the grid, add as integers) rather
    than through the encoder under test."""
    c = proto.config
    ints = sum(
        np.rint(
            np.clip(vecs[i].astype(np.float64) * weights[i], -c.clip * weights[i],
                    c.clip * weights[i]) * c.scale
        ).astype(np.int64)
        for i in ids
    )  # fmt: skip
    return np.asarray(ints, dtype=np.float64) / c.scale


def run_case(name, opts, n, drop, dim=23, seed=0, weight_max=50):
    proto = secagg_proto(name, **opts)
    spec = RoundSpec("t", 1, tuple(range(n)), dim)
    vecs, weights = inputs(n, dim, seed, weight_max)
    server = proto.server_session(spec)
    clients = {c: proto.client_session(spec, c, vecs[c], weights[c]) for c in spec.cohort}
    out = run_round(server, clients, drop_at=drop)
    return proto, out, vecs, weights


def to_stage(proto, spec, vecs, weights, stage, *, absent=frozenset()):
    """Run the cohort up to the server message of ``stage`` (clients in ``absent`` never
    answer); returns its pieces."""
    server = proto.server_session(spec)
    clients = {c: proto.client_session(spec, c, vecs[c], weights[c]) for c in spec.cohort}
    messages = server.start()
    CHANNELS[server._channel.nonce] = {wire.SERVER: server._channel} | {
        c: s._channel for c, s in clients.items()
    }
    for _ in range(stage):
        replies = {c: clients[c].handle(m) for c, m in messages.items() if c not in absent}
        messages = server.advance(replies).messages
    return server, clients, messages


def fixed_graph_seed(monkeypatch, seed: bytes) -> bytes:
    """Make the secagg server draw ``seed`` as its round randomness (the secagg+ graph)."""
    import crypto.secagg.server as server_mod

    monkeypatch.setattr(server_mod.secrets, "token_bytes", lambda n: seed[:n])
    return seed


CHANNELS: dict[bytes, dict[int, Channel]] = {}  # attempt nonce -> party -> its channel


def reframe(message, payload):
    """``message`` with another payload, authenticated by its sender's own channel (a
    malicious server or client: it holds its signing and pair keys)."""
    head = wire.peek(message)
    return CHANNELS[head.nonce][head.sender].seal(head.stage, head.recipient, payload)


def payload_of(message):
    return wire.split(message)[2]
