"""The ckks protocol: conformance, key separation, parameter refusal, error bound, packing."""

from __future__ import annotations

import doctest
import math
import os
import stat

import numpy as np
import pytest
import tenseal as ts

from crypto import (
    DropoutError,
    ParameterError,
    Protocol,
    ProtocolError,
    RoundSpec,
    create_protocol,
    run_round,
)
from crypto.ckks import CkksProtocol, load_or_create_keys
from crypto.ckks import params as cp
from crypto.core import wire
from crypto.core.channel import Channel
from crypto.core.stage_loop import InProcessTransport, drive_round
from crypto.errors import EncodingError, KeyMaterialError
from tests.crypto.conformance import ProtocolConformance


class TestCkksConformance(ProtocolConformance):
    protocol_name = "ckks"

    def make_protocol(self, tmp_path) -> Protocol:
        return create_protocol("ckks")


class TestCkksServerWeightingConformance(ProtocolConformance):
    protocol_name = "ckks"

    def make_protocol(self, tmp_path) -> Protocol:
        return create_protocol("ckks", weighting="server")


def _round(proto: Protocol, vecs, weights, *, server_proto: Protocol | None = None, drop=None):
    dim = len(next(iter(vecs.values())))
    spec = RoundSpec("t", 1, tuple(sorted(vecs)), dim)
    server = (server_proto or proto).server_session(spec)
    clients = {c: proto.client_session(spec, c, vecs[c], weights[c]) for c in spec.cohort}
    return run_round(server, clients, drop_at=drop)


def _inputs(n: int, dim: int, seed: int = 0, *, low: float = 1e-3, high: float = 1e-1):
    """Update-like values: magnitudes log-uniform in [low, high], random signs."""
    rng = np.random.default_rng(seed)
    vecs = {
        c: (
            rng.choice([-1.0, 1.0], dim) * np.exp(rng.uniform(np.log(low), np.log(high), dim))
        ).astype(np.float32)
        for c in range(n)
    }
    weights = {c: float(rng.integers(50, 2000)) for c in range(n)}
    return vecs, weights


# -- keys ----------------------------------------------------------------------------------
@pytest.fixture
def keyed(tmp_path):
    proto = CkksProtocol()
    proto.setup(job_id="keys", key_dir=tmp_path)
    return proto, tmp_path / "ckks"


def test_server_context_cannot_decrypt(keyed):
    proto, folder = keyed
    server_ctx = ts.context_from((folder / "public.ctx").read_bytes())
    assert not server_ctx.is_private()
    assert ts.context_from((folder / "secret.ctx").read_bytes()).is_private()
    # The server's copy holds parameters only: far smaller than one secret-key polynomial.
    assert (folder / "public.ctx").stat().st_size < 1024 < proto.params.poly_modulus_degree * 8
    vecs, weights = _inputs(2, 10)
    spec = RoundSpec("t", 1, (0, 1), 10)
    client = proto.client_session(spec, 0, vecs[0], weights[0])
    reply = client.handle(proto.server_session(spec).start()[0])
    body = wire.split(reply)[2][:-64]  # payload less the contribution signature
    (chunk,) = cp.unpack_chunks(body, offset=0, count=1, who="t")
    vec = ts.ckks_vector_from(server_ctx, cp.wrap_chunk(chunk, size=11, scale=2.0**36))
    with pytest.raises(ValueError, match="secret"):
        vec.decrypt()
    with pytest.raises(ValueError):
        ts.ckks_vector(server_ctx, [1.0])
    # The key holder's context decrypts the same bytes.
    own = ts.ckks_vector_from(proto.keys.client, cp.wrap_chunk(chunk, size=11, scale=2.0**36))
    assert np.allclose(own.decrypt()[:10], weights[0] * vecs[0], atol=1e-5)


def test_key_files_are_owner_only(keyed):
    _, folder = keyed
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("public.ctx", "secret.ctx"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600


def test_keys_are_loaded_not_regenerated(keyed):
    proto, folder = keyed
    before = (folder / "secret.ctx").read_bytes()
    again = create_protocol("ckks")
    again.setup(job_id="keys", key_dir=folder.parent)
    assert (folder / "secret.ctx").read_bytes() == before
    vecs, weights = _inputs(3, 20, seed=1)
    # Clients of one instance, server of the other: the same key set.
    out = _round(proto, vecs, weights, server_proto=again)
    want = sum(weights[c] * vecs[c].astype(np.float64) for c in vecs)
    assert np.max(np.abs(out.aggregate.weighted_sum - want)) <= out.aggregate.error_bound


def test_server_only_party_cannot_open_client_sessions(keyed):
    _, folder = keyed
    (folder / "secret.ctx").unlink()
    server_only = CkksProtocol()
    server_only.setup(job_id="keys", key_dir=folder.parent)
    assert server_only.keys.client is None
    spec = RoundSpec("t", 1, (0, 1), 4)
    server_only.server_session(spec).start()
    with pytest.raises(KeyMaterialError, match=r"secret\.ctx"):
        server_only.client_session(spec, 0, np.zeros(4, np.float32), 1.0)


def test_key_set_of_other_parameters_is_refused(keyed):
    _, folder = keyed
    with pytest.raises(KeyMaterialError, match="other CKKS parameters"):
        create_protocol("ckks", preset="precise").setup(job_id="k", key_dir=folder.parent)


def test_readable_secret_key_is_refused(keyed):
    _, folder = keyed
    os.chmod(folder / "secret.ctx", 0o644)
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        create_protocol("ckks").setup(job_id="k", key_dir=folder.parent)


def test_public_context_with_secret_key_is_refused(keyed):
    _, folder = keyed
    secret = (folder / "secret.ctx").read_bytes()
    (folder / "public.ctx").unlink()
    fd = os.open(folder / "public.ctx", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, secret)
    os.close(fd)
    with pytest.raises(KeyMaterialError, match="holds the secret key"):
        create_protocol("ckks").setup(job_id="k", key_dir=folder.parent)


def test_session_before_setup_is_refused():
    proto = create_protocol("ckks")
    with pytest.raises(KeyMaterialError, match="setup"):
        proto.server_session(RoundSpec("t", 1, (0,), 3))


def test_client_of_another_key_set_is_detected():
    a, b = create_protocol("ckks"), create_protocol("ckks")
    a.setup(job_id="a")
    b.setup(job_id="b")
    vecs, weights = _inputs(2, 30, seed=2)
    spec = RoundSpec("t", 1, (0, 1), 30)
    server = a.server_session(spec)
    clients = {
        0: a.client_session(spec, 0, vecs[0], weights[0]),
        1: b.client_session(spec, 1, vecs[1], weights[1]),
    }
    transport = InProcessTransport(clients)
    with pytest.raises(ProtocolError, match="key holder"):
        drive_round(server, transport)
    # both key holders refused the aggregate as out of range: no wrong sum was released


# -- parameters ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "fix"),
    [
        ({"coeff_mod_bit_sizes": [60, 60, 60, 60]}, "poly_modulus_degree to 16384"),
        ({"security_bits": 256}, "limit for 256-bit security"),
        ({"security_bits": 80}, "128 is the default and the minimum"),
        ({"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": [60, 60]}, "drop or shrink"),
        ({"poly_modulus_degree": 3000}, "must be one of"),
        ({"scale_bits": 25}, "raise scale_bits"),
        ({"coeff_mod_bit_sizes": [61, 60]}, "60 bits"),
        ({"coeff_mod_bit_sizes": [60]}, "special prime"),
        ({"weighting": "server", "coeff_mod_bit_sizes": [60, 60]}, "at least 3 primes"),
        ({"weighting": "server", "coeff_mod_bit_sizes": [60, 40, 60]}, "coeff_mod_bit_sizes[-2]"),
        ({"max_weight": 1e9}, "lower scale_bits, clip or max_weight"),
        ({"clip": -1.0}, "positive"),
        ({"preset": "turbo"}, "fast"),
        ({"weighting": "both"}, "'client'"),
        ({"scale_bits": 36.5}, "integer"),
    ],
)
def test_bad_parameters_are_refused_with_the_fix(options, fix):
    with pytest.raises(ParameterError) as err:
        create_protocol("ckks", **options)
    assert fix in str(err.value)


def test_presets_are_secure_and_sized_for_their_depth():
    for preset, limit in (("fast", 218), ("precise", 438)):
        for weighting in ("client", "server"):
            p = cp.resolve(preset=preset, weighting=weighting)
            assert sum(p.coeff_mod_bit_sizes) <= limit
            assert len(p.data_primes) == (1 if preset == "fast" else 2) + p.depth
            assert p.max_clients() >= 100


def test_cohort_too_large_for_the_headroom_is_refused():
    proto = CkksProtocol(max_weight=1e5)  # at clip 1: 2**21 / 1e5 -> 20 clients
    proto.setup(job_id="t")
    assert proto.params.max_clients() == 20
    spec = RoundSpec("t", 1, tuple(range(21)), 3)
    with pytest.raises(ParameterError, match="at most 20 clients"):
        proto.server_session(spec)
    with pytest.raises(ParameterError, match="at most 20 clients"):
        proto.client_session(spec, 0, np.zeros(3, np.float32), 1.0)


def test_inputs_outside_the_declared_range_are_refused():
    proto = create_protocol("ckks", clip=0.1, max_weight=10.0)
    proto.setup(job_id="t")
    spec = RoundSpec("t", 1, (0,), 2)
    with pytest.raises(EncodingError, match="clip"):
        proto.client_session(spec, 0, np.array([0.05, -0.2], np.float32), 1.0)
    with pytest.raises(EncodingError, match="max_weight"):
        proto.client_session(spec, 0, np.array([0.05, 0.0], np.float32), 11.0)


def test_params_doctests():
    assert doctest.testmod(cp).failed == 0


# -- error bound -----------------------------------------------------------------------
@pytest.mark.parametrize("weighting", ["client", "server"])
def test_error_bound_holds_at_realistic_update_scales(weighting):
    proto = create_protocol("ckks", weighting=weighting)
    proto.setup(job_id="t")
    vecs, weights = _inputs(10, 3000, seed=7)
    agg = _round(proto, vecs, weights).aggregate
    want = sum(weights[c] * vecs[c].astype(np.float64) for c in vecs)
    err = float(np.max(np.abs(agg.weighted_sum - want)))
    assert err <= agg.error_bound
    assert agg.error_bound >= err / 20 or err == 0.0  # a real bound, not a huge one
    assert agg.total_weight == pytest.approx(sum(weights.values()), abs=agg.error_bound)
    # The mean keeps >= 3 significant digits on the smallest updates (1e-3).
    assert agg.error_bound / agg.total_weight < 1e-6
    mean_err = np.abs(agg.mean - want / sum(weights.values()))
    assert float(np.max(mean_err / np.abs(want / sum(weights.values())))) < 1e-3


def test_bound_formula_matches_measured_noise():
    """Noise std of one fresh ciphertext equals the model's sqrt(N/2 (10.5 + 1/12)) / scale."""
    params = cp.resolve()
    keys = load_or_create_keys(params, None)
    x = np.random.default_rng(3).uniform(-1, 1, 2 * params.slots)
    sizes = cp.chunk_sizes(params, length=x.size)
    chunks = keys.encrypt(x, sizes)
    y = np.concatenate(
        [
            ts.ckks_vector_from(keys.client, cp.wrap_chunk(c, size=s, scale=keys.scale)).decrypt()
            for c, s in zip(chunks, sizes, strict=True)
        ]
    )
    model = math.sqrt(params.poly_modulus_degree / 2 * (10.5 + 1 / 12)) / keys.scale
    assert 0.9 * model < float(np.std(y - x)) < 1.1 * model
    one = cp.error_bound(params, scale=keys.scale, n_clients=1, weight_sum=1, weight_sq_sum=1)
    assert float(np.max(np.abs(y - x))) < one


# -- packing and wire size ------------------------------------------------------------------
def test_long_vector_packs_into_few_seeded_ciphertexts():
    proto = CkksProtocol()
    proto.setup(job_id="t")
    slots = proto.params.slots
    dim = 2 * slots + 17
    vecs, weights = _inputs(3, dim, seed=4)
    out = _round(proto, vecs, weights)
    want = sum(weights[c] * vecs[c].astype(np.float64) for c in vecs)
    assert np.max(np.abs(out.aggregate.weighted_sum - want)) <= out.aggregate.error_bound
    # 3 chunks (dim + the weight slot); TenSEAL's own symmetric ciphertext, for comparison:
    full = len(ts.ckks_vector(proto.keys.client, [0.0] * slots).serialize())
    up = out.traffic.bytes_up[0]
    assert 3 * 0.49 * full < up < 3 * 0.52 * full  # seeded: half a ciphertext per chunk
    assert up / dim < 16.2 * 3 / (dim / slots)
    assert out.traffic.bytes_down[0] < 3 * 1.01 * full + 200


def test_chunk_list_round_trip_and_truncation():
    chunks = [b"a" * 5, b"", b"xyz"]
    packed = cp.pack_chunks(chunks)
    assert cp.unpack_chunks(b"HEAD" + packed, offset=4, count=3, who="t") == chunks
    with pytest.raises(ProtocolError, match="expected 2"):
        cp.unpack_chunks(packed, offset=0, count=2, who="t")
    with pytest.raises(ProtocolError, match="truncated"):
        cp.unpack_chunks(packed[:-1], offset=0, count=3, who="t")
    with pytest.raises(ProtocolError, match="trailing"):
        cp.unpack_chunks(packed + b"!", offset=0, count=3, who="t")
    assert cp.chunk_sizes(cp.resolve(), length=4097) == [4096, 1]


def test_proto_wrapping_matches_tenseal():
    keys = load_or_create_keys(cp.resolve(), None)
    native = ts.ckks_vector(keys.client, [0.5, -0.25]).serialize()
    inner = cp.unwrap_chunk(native)
    again = ts.ckks_vector_from(keys.client, cp.wrap_chunk(inner, size=2, scale=keys.scale))
    assert np.allclose(again.decrypt(), [0.5, -0.25], atol=1e-7)
    with pytest.raises(ProtocolError):
        cp.unwrap_chunk(native[:-12])


def test_tampered_ciphertext_is_rejected():
    proto = create_protocol("ckks")
    proto.setup(job_id="t")
    vecs, weights = _inputs(2, 8, seed=5)
    spec = RoundSpec("t", 1, (0, 1), 8)
    server = proto.server_session(spec)
    hello = server.start()
    replies: dict[int, bytes] = {}
    for c in (0, 1):
        reply = proto.client_session(spec, c, vecs[c], weights[c]).handle(hello[c])
        assert reply is not None
        replies[c] = reply
    body = bytearray(replies[0][wire.HEADER_SIZE :])
    body[20:28] = b"\xff" * 8  # inside the SEAL ciphertext header
    channel = Channel(tag="ckks", session_id=spec.session_id, me=0, keyring=None)
    channel.nonce = wire.peek(hello[0]).nonce
    replies[0] = channel.seal(0, wire.SERVER, bytes(body))
    with pytest.raises(ProtocolError, match="client 0"):
        server.advance(replies)


def test_all_dropped_is_a_dropout_error():
    proto = create_protocol("ckks")
    proto.setup(job_id="t")
    with pytest.raises(DropoutError):
        proto.server_session(RoundSpec("t", 1, (0, 1), 3)).advance({})


def test_threat_model_names_weights_per_mode():
    assert "no weight" in CkksProtocol().threat_model().server_sees
    assert "clear" in CkksProtocol(weighting="server").threat_model().server_sees
    assert CkksProtocol.learned_by == "clients"


def test_secret_context_with_a_flipped_byte_fails_at_load_or_works(tmp_path):
    # A corrupted secret.ctx either fails its self-test at setup or still aggregates exactly:
    # never a late "out of range" after a round.
    proto = create_protocol("ckks")
    proto.setup(job_id="j", key_dir=tmp_path)
    path = tmp_path / "ckks" / "secret.ctx"
    good = path.read_bytes()
    vecs, weights = _inputs(2, 6, seed=3)
    spec = RoundSpec("t", 1, (0, 1), 6)
    refused = 0
    for pos in np.linspace(64, len(good) - 1, 6).astype(int):
        raw = bytearray(good)
        raw[pos] ^= 0x10
        path.write_bytes(bytes(raw))
        other = create_protocol("ckks")
        try:
            other.setup(job_id="j", key_dir=tmp_path)
        except KeyMaterialError:
            refused += 1
            continue
        server = other.server_session(spec)
        clients = {c: other.client_session(spec, c, vecs[c], weights[c]) for c in (0, 1)}
        got = run_round(server, clients).aggregate.weighted_sum
        want = weights[0] * vecs[0] + weights[1] * vecs[1]
        assert np.allclose(got, want, atol=1e-4)
    assert refused >= 1
