"""The paillier protocol: conformance, phe interoperability, key custody, overflow, error bound."""

from __future__ import annotations

import json
import os
import shutil
import stat
from math import gcd

import numpy as np
import pytest
from phe import paillier as phe_paillier

from crypto import Protocol, RoundSpec, create_protocol, run_round
from crypto.core.wire import HEADER_SIZE
from crypto.errors import EncodingError, KeyMaterialError, ParameterError, ProtocolError
from crypto.paillier import PaillierProtocol, PaillierServer
from crypto.paillier import math as pm
from crypto.paillier.keys import PrivateKey, PublicKey, generate_keypair
from tests.crypto.conformance import ProtocolConformance

SMALL = 512  # insecure key size used for speed; real-size keys are tested below


def small_protocol(**options) -> PaillierProtocol:
    proto = create_protocol("paillier", insecure_key_bits=SMALL, workers=1, **options)
    assert isinstance(proto, PaillierProtocol)
    return proto


class TestPaillierConformance(ProtocolConformance):
    protocol_name = "paillier"

    def make_protocol(self, tmp_path) -> Protocol:
        return small_protocol()


@pytest.fixture(scope="module")
def key2048() -> PrivateKey:
    return generate_keypair(bits=2048)


def _phe_keys(key: PrivateKey):
    pub = phe_paillier.PaillierPublicKey(key.public.n)
    return pub, phe_paillier.PaillierPrivateKey(pub, key.p, key.q)


# -- interoperability with phe (real 2048-bit key) --------------------------------------------
def test_secfed_ciphertext_decrypts_with_phe(key2048):
    _, phe_priv = _phe_keys(key2048)
    base = pm.djn_base(n=key2048.public.n)
    assert base.exponent_bytes == 128  # 1024-bit DJN exponent for a 2048-bit key
    for m in (0, 1, 123456789, key2048.public.n - 1):
        assert phe_priv.raw_decrypt(pm.encrypt_int(m, base=base)) == m


def test_phe_ciphertext_decrypts_with_secfed(key2048):
    phe_pub, _ = _phe_keys(key2048)
    for m in (0, 42, 2**2000 + 7):
        c = phe_pub.raw_encrypt(m)
        assert pm.decrypt_int(c, p=key2048.p, q=key2048.q) == m


def test_encryption_is_randomised_and_homomorphic(key2048):
    base = pm.djn_base(n=key2048.public.n)
    c1, c2 = pm.encrypt_int(5, base=base), pm.encrypt_int(5, base=base)
    assert c1 != c2
    width = key2048.public.ciphertext_bytes
    n = key2048.public.n
    parts = [pm.parse_ciphertexts(c.to_bytes(width, "big"), n=n, width=width) for c in (c1, c2)]
    total = int.from_bytes(pm.ciphertext_product(parts, n=n, width=width), "big")
    assert pm.decrypt_int(total, p=key2048.p, q=key2048.q) == 10


def test_fixed_base_table_matches_powmod():
    modulus = 2**127 - 1
    table = pm.fixed_base_table(base=3, modulus=modulus, exponent_bytes=4)
    for exp in (b"\x00\x00\x00\x00", b"\x01\x00\x00\x00", b"\xff\x10\x00\x80", os.urandom(4)):
        assert pm.fixed_base_pow(table, exp, modulus=modulus) == pow(
            3, int.from_bytes(exp, "little"), modulus
        )


def test_round_with_real_2048_bit_key(tmp_path, key2048):
    proto = create_protocol("paillier", workers=1)
    proto.setup(job_id="real", key_dir=tmp_path)
    rng = np.random.default_rng(7)
    spec = RoundSpec("real", 1, (3, 5, 9), 300)
    vecs = {c: rng.uniform(-1, 1, spec.dim).astype(np.float32) for c in spec.cohort}
    weights = {3: 10.0, 5: 250.0, 9: 1.5}
    server = proto.server_session(spec)
    clients = {c: proto.client_session(spec, c, vecs[c], weights[c]) for c in spec.cohort}
    outcome = run_round(server, clients)
    agg = outcome.aggregate
    want = sum(weights[c] * vecs[c].astype(np.float64) for c in spec.cohort)
    assert agg.learned_by == "clients" and agg.total_weight == 261.5
    assert np.max(np.abs(agg.weighted_sum - want)) <= agg.error_bound
    # 3 parties x term_max 2**17 -> 19-bit slots, 107 per 2047-bit plaintext: 300 values and
    # 2 weight and 3 check slots take 3 ciphertexts of 512 bytes, plus the wire header, the
    # 16-byte randomiser nonce and the 64-byte contribution signature; nothing else
    # (unauthenticated here: no frame signature).
    assert all(up == HEADER_SIZE + 16 + 3 * 512 + 64 for up in outcome.traffic.bytes_up.values())


def test_parallel_workers_agree_with_in_process(key2048):
    base = pm.djn_base(n=key2048.public.n)
    plain = b"".join(os.urandom(255) for _ in range(24))
    cipher = pm.encrypt_blob(plain, base=base, plain_width=255, workers=2)
    assert len(cipher) == 24 * 512
    assert pm.decrypt_blob(cipher, p=key2048.p, q=key2048.q, plain_width=255, workers=2) == plain
    assert pm.decrypt_blob(cipher, p=key2048.p, q=key2048.q, plain_width=255, workers=1) == plain


# -- key custody -------------------------------------------------------------------------------
def test_short_keys_refused_unless_explicitly_insecure():
    with pytest.raises(ParameterError, match="insecure_key_bits"):
        create_protocol("paillier", key_bits=1024)
    with pytest.raises(ParameterError):
        create_protocol("paillier", insecure_key_bits=4096)
    with pytest.raises(ParameterError):
        create_protocol("paillier", key_bits=2048, insecure_key_bits=512)
    assert small_protocol().threat_model().notes[-1].startswith("INSECURE")


def test_loaded_short_key_refused_for_secure_protocol(tmp_path):
    small_protocol().setup(job_id="k", key_dir=tmp_path)
    with pytest.raises(KeyMaterialError, match="below the 2048-bit minimum"):
        create_protocol("paillier").setup(job_id="k", key_dir=tmp_path)


def test_key_files_are_owner_only_and_reloaded(tmp_path):
    proto = small_protocol()
    proto.setup(job_id="keys", key_dir=tmp_path)
    kdir = tmp_path / "paillier"
    assert stat.S_IMODE(kdir.stat().st_mode) == 0o700
    for name in ("public.key", "private.key"):
        assert stat.S_IMODE((kdir / name).stat().st_mode) == 0o600
    assert b'"p"' not in (kdir / "public.key").read_bytes()
    again = small_protocol()
    again.setup(job_id="other-job", key_dir=tmp_path)
    assert again.public_key_bytes == proto.public_key_bytes


def test_world_readable_private_key_refused(tmp_path):
    small_protocol().setup(job_id="k", key_dir=tmp_path)
    os.chmod(tmp_path / "paillier" / "private.key", 0o644)
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        small_protocol().setup(job_id="k", key_dir=tmp_path)


def _ints_in(obj, seen=None):
    """Every int reachable from ``obj`` through attributes and containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, bool):
        return
    if isinstance(obj, int):
        yield obj
    elif isinstance(obj, bytes | str | float | type(None)):
        return
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _ints_in(k, seen)
            yield from _ints_in(v, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for v in obj:
            yield from _ints_in(v, seen)
    elif hasattr(obj, "__dict__") or hasattr(obj, "__slots__"):
        for name in getattr(obj, "__dict__", {}):
            yield from _ints_in(getattr(obj, name), seen)
        for name in getattr(obj, "__slots__", ()):
            if hasattr(obj, name):
                yield from _ints_in(getattr(obj, name), seen)
    elif type(obj).__name__ == "mpz":
        yield int(obj)


def test_server_party_holds_only_the_public_key(tmp_path):
    clients_side = small_protocol()
    clients_side.setup(job_id="j", key_dir=tmp_path / "clients")
    server_dir = tmp_path / "server" / "paillier"
    server_dir.mkdir(parents=True)
    shutil.copy(tmp_path / "clients" / "paillier" / "public.key", server_dir / "public.key")
    server_side = small_protocol()
    server_side.setup(job_id="j", key_dir=tmp_path / "server")
    assert not (server_dir / "private.key").exists() and not server_side.holds_private_key
    with pytest.raises(KeyMaterialError):
        server_side.client_session(RoundSpec("j", 1, (0,), 4), 0, np.zeros(4), 1.0)

    spec = RoundSpec("j", 1, (0, 1, 2), 50)
    rng = np.random.default_rng(3)
    vecs = {c: rng.uniform(-1, 1, 50).astype(np.float32) for c in spec.cohort}
    server = server_side.server_session(spec)
    assert isinstance(server, PaillierServer)
    clients = {c: clients_side.client_session(spec, c, vecs[c], 2.0) for c in spec.cohort}
    outcome = run_round(server, clients)
    want = sum(2.0 * vecs[c].astype(np.float64) for c in spec.cohort)
    assert np.max(np.abs(outcome.aggregate.weighted_sum - want)) <= outcome.aggregate.error_bound

    # No integer the server session (or its protocol) holds shares a factor with n.
    n = PublicKey.from_bytes(clients_side.public_key_bytes).n
    held = list(_ints_in(server)) + list(_ints_in(server_side))
    assert n in held
    assert all(gcd(x, n) in (1, n) for x in held if x > 1)
    assert not any(isinstance(v, PrivateKey) for v in vars(server).values())


def test_private_key_repr_hides_primes(key2048):
    assert str(key2048.p) not in repr(key2048) and format(key2048.p, "x") not in repr(key2048)


def test_key_serialisation_round_trip_and_rejects_tampering(key2048):
    assert PrivateKey.from_bytes(key2048.to_bytes()) == key2048
    assert PublicKey.from_bytes(key2048.public.to_bytes()) == key2048.public
    with pytest.raises(KeyMaterialError):
        PublicKey.from_bytes(key2048.to_bytes())  # a private key file is not a public one
    with pytest.raises(KeyMaterialError):
        PublicKey.from_bytes(b"\x00garbage")


def test_cli_style_setup_writes_keys(tmp_path):
    # What `secfed keys generate --scheme paillier --out DIR` does.
    create_protocol("paillier", key_bits=2048).setup(job_id="keys", key_dir=tmp_path)
    assert PublicKey.from_bytes((tmp_path / "paillier" / "public.key").read_bytes()).bits == 2048


# -- encoding limits ---------------------------------------------------------------------------
def test_overweight_update_refused_before_encryption():
    proto = small_protocol(max_weight=10.0)
    proto.setup(job_id="o")
    spec = RoundSpec("o", 1, (0, 1), 8)
    with pytest.raises(EncodingError, match="max_weight"):
        proto.client_session(spec, 0, np.zeros(8), 10.5)


def test_client_rejects_server_with_other_options(tmp_path):
    proto = small_protocol()
    proto.setup(job_id="x", key_dir=tmp_path)
    other = small_protocol(precision_bits=20)
    other.setup(job_id="x", key_dir=tmp_path)
    spec = RoundSpec("x", 1, (0,), 4)
    client = proto.client_session(spec, 0, np.zeros(4), 1.0)
    hello = other.server_session(spec).start()[0]
    with pytest.raises(ProtocolError, match="encoding options"):
        client.handle(hello)


def test_tampered_aggregate_rejected():
    proto = small_protocol()
    proto.setup(job_id="t")
    spec = RoundSpec("t", 1, (0, 1), 10)
    server = proto.server_session(spec)
    clients = {c: proto.client_session(spec, c, np.full(10, 0.25), 1.0) for c in (0, 1)}
    hello = server.start()
    replies = {c: clients[c].handle(hello[c]) for c in (0, 1)}
    step = server.advance({c: r for c, r in replies.items() if r is not None})
    msg = bytearray(step.messages[0])
    msg[-1] ^= 1  # corrupt the last aggregated ciphertext
    with pytest.raises((ProtocolError, EncodingError)):
        clients[0].handle(bytes(msg))


def test_error_bound_holds_and_is_tight():
    proto = small_protocol(clip=1.0, max_weight=8.0, precision_bits=12)
    proto.setup(job_id="e")
    qz = proto.quantiser
    spec = RoundSpec("e", 1, (0, 1, 2, 3), 64)
    # Values half a quantum off the grid make every client's rounding error ~0.5 / S.
    grid = (np.arange(64) - 32 + 0.4999) / qz.scale
    vecs = {c: (grid / 2.0).astype(np.float64) for c in spec.cohort}
    vecs = {c: v.astype(np.float32) for c, v in vecs.items()}
    server = proto.server_session(spec)
    clients = {c: proto.client_session(spec, c, vecs[c], 2.0) for c in spec.cohort}
    agg = run_round(server, clients).aggregate
    want = sum(2.0 * vecs[c].astype(np.float64) for c in spec.cohort)
    err = float(np.max(np.abs(agg.weighted_sum - want)))
    assert err <= agg.error_bound
    assert err >= 0.9 * agg.error_bound  # the bound is nearly attained: it is not vacuous
    assert agg.error_bound == pytest.approx(4 * 0.5 / qz.scale, rel=1e-6)


def test_private_key_with_composite_factors_refused_at_load(tmp_path):
    # p and q not prime but p * q = n: refused when the key is read, before any round.
    from crypto.paillier.keys import PRIVATE_FILE, SUBDIR, _write_owner_only

    p, q = 3 * 1000003, 5 * 1000033  # odd, distinct, composite
    doc = {"format": "secfed/paillier-private/v1", "n": format(p * q, "x"),
           "p": format(p, "x"), "q": format(q, "x")}  # fmt: skip
    (tmp_path / SUBDIR).mkdir(mode=0o700)
    _write_owner_only(tmp_path / SUBDIR / PRIVATE_FILE, json.dumps(doc).encode())
    proto = create_protocol("paillier", insecure_key_bits=512, workers=1)
    with pytest.raises(KeyMaterialError, match="not prime"):
        proto.setup(job_id="j", key_dir=tmp_path)


# -- key-holder encryption (CRT, derived randomisers) -----------------------------------------
def _holder_messages(key: PrivateKey, plains: list[bytes], *, sid: bytes, workers: int = 1):
    from crypto.paillier import holder

    return [
        holder.encrypt_message(
            m, p=key.p, q=key.q, plain_width=255, session_id=sid, sender=i, workers=workers
        )
        for i, m in enumerate(plains)
    ]


def test_holder_ciphertexts_are_plain_paillier_for_phe(key2048):
    _, phe_priv = _phe_keys(key2048)
    plains = [os.urandom(255 * 3) for _ in range(2)]
    msgs = _holder_messages(key2048, plains, sid=b"x" * 16)
    for plain, msg in zip(plains, msgs, strict=True):
        assert len(msg) == 16 + 3 * 512
        for j in range(3):
            c = int.from_bytes(msg[16 + 512 * j : 16 + 512 * (j + 1)], "big")
            assert phe_priv.raw_decrypt(c) == int.from_bytes(plain[255 * j : 255 * (j + 1)], "big")
    # Same plaintext, same session and sender: fresh nonce, so nothing repeats.
    again = _holder_messages(key2048, plains[:1], sid=b"x" * 16)[0]
    assert again[:16] != msgs[0][:16] and again[16:528] != msgs[0][16:528]


def test_holder_decrypts_products_and_refuses_mismatched_contributors(key2048):
    from crypto.paillier import holder

    n, sid = key2048.public.n, b"s" * 16
    plains = [os.urandom(255 * 4) for _ in range(3)]
    msgs = _holder_messages(key2048, plains, sid=sid)
    parts = [pm.parse_ciphertexts(m[16:], n=n, width=512) for m in msgs]
    product = pm.ciphertext_product(parts, n=n, width=512)
    holder._CTX.clear()  # another key holder derives everything afresh from p and q
    kwargs = {"p": key2048.p, "q": key2048.q, "plain_width": 256}
    nonces = [m[:16] for m in msgs]
    out, two = (
        holder.decrypt_product(product, session_id=sid, senders=[0, 1, 2], nonces=nonces,
                               workers=workers, **kwargs)
        for workers in (1, 2)
    )  # fmt: skip
    _, phe_priv = _phe_keys(key2048)
    for j in range(4):
        want = sum(int.from_bytes(p[255 * j : 255 * (j + 1)], "big") for p in plains)
        assert int.from_bytes(out[256 * j : 256 * (j + 1)], "big") == want
        assert phe_priv.raw_decrypt(int.from_bytes(product[512 * j : 512 * (j + 1)], "big")) == want
    assert two == out
    bad = [
        ([0, 1], [m[:16] for m in msgs[:2]], sid),  # a contribution not listed
        ([0, 1, 2], [msgs[1][:16], msgs[0][:16], msgs[2][:16]], sid),  # nonces swapped
        ([0, 1, 2], [m[:16] for m in msgs], b"t" * 16),  # another session
    ]
    for senders, nonces, session in bad:
        with pytest.raises(ProtocolError, match="randomisers"):
            holder.decrypt_product(
                product, session_id=session, senders=senders, nonces=nonces, workers=1, **kwargs
            )


def test_final_message_with_a_forged_nonce_is_refused():
    proto = small_protocol()
    proto.setup(job_id="nonce", key_dir=None)
    spec = RoundSpec("nonce", 1, (1, 2), 10)
    rng = np.random.default_rng(3)
    server = proto.server_session(spec)
    clients = {c: proto.client_session(spec, c, rng.uniform(-1, 1, 10), 1.0) for c in (1, 2)}
    hello = server.start()
    step = server.advance({c: clients[c].handle(hello[c]) for c in (1, 2)})
    msg = bytearray(step.messages[1])
    nonce_at = HEADER_SIZE + 4 * 2  # count, the first id, then its nonce
    msg[nonce_at] ^= 1
    with pytest.raises(ProtocolError, match="randomisers"):
        clients[1].handle(bytes(msg))
    clients[2].handle(step.messages[2])
    assert clients[2].aggregate() is not None
