"""Party identities: the roster, key files, and what a channel accepts."""

from __future__ import annotations

import os

import pytest

from crypto.core import identity, wire
from crypto.core.channel import Channel
from crypto.errors import AuthenticationError, KeyMaterialError


def test_roster_and_keys_round_trip_owner_only(tmp_path):
    ring = identity.load_or_create(tmp_path / "identity", range(4))
    again = identity.load_or_create(tmp_path / "identity", range(4))
    assert again.roster == ring.roster and set(again.signers) == {0, 1, 2, 3, wire.SERVER}
    for f in (tmp_path / "identity").iterdir():
        assert f.stat().st_mode & 0o077 == 0
    with pytest.raises(KeyMaterialError, match="clients \\[4\\]"):
        identity.load_or_create(tmp_path / "identity", range(5))


def test_readable_identity_key_is_refused(tmp_path):
    identity.load_or_create(tmp_path, range(2))
    os.chmod(tmp_path / "party-1.key", 0o644)
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        identity.load(tmp_path)


def test_key_of_another_job_is_refused():
    a, b = identity.generate(range(2)), identity.generate(range(2))
    with pytest.raises(KeyMaterialError, match="not the roster's"):
        identity.Keyring(a.roster, {0: b.signers[0]})


def test_a_party_without_its_key_cannot_send():
    ring = identity.generate(range(2)).restricted_to([0])
    with pytest.raises(KeyMaterialError, match=r"party-1\.key"):
        Channel(tag="plain", session_id=bytes(16), me=1, keyring=ring)


def test_message_signed_by_a_party_outside_the_roster_is_refused():
    job, outsider = identity.generate(range(2)), identity.generate(range(2))
    server = Channel(tag="plain", session_id=bytes(16), me=wire.SERVER, keyring=job)
    hello = server.seal(0, 0, b"")
    forged_server = Channel(tag="plain", session_id=bytes(16), me=wire.SERVER, keyring=outsider)
    forged_server.nonce = server.nonce
    client = Channel(tag="plain", session_id=bytes(16), me=0, keyring=job)
    with pytest.raises(AuthenticationError, match="signature does not verify"):
        client.open(forged_server.seal(0, 0, b""), stage=0, sender=wire.SERVER)
    assert client.open(hello, stage=0, sender=wire.SERVER) == b""
    with pytest.raises(AuthenticationError, match="addressed to client 0"):
        Channel(tag="plain", session_id=bytes(16), me=1, keyring=job).open(
            hello, stage=0, sender=wire.SERVER
        )


def test_small_order_roster_key_admits_no_universal_signature():
    # The identity point as a public key with R = identity, S = 0 "signs" every message for
    # a verifier that accepts small-order keys (OpenSSL's does); libsodium, which the roster
    # verifies with, refuses it.
    identity_point = b"\x01" + bytes(31)
    universal = identity_point + bytes(32)
    roster = identity.Roster({5: identity_point})
    for message in (b"", b"survivors", os.urandom(64)):
        assert not roster.verify(5, universal, message)
