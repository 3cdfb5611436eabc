"""X25519 key agreement, HKDF key derivation and AES-GCM sealing for masking protocols.

Every derived key is domain-separated by the round's session id (which binds job, round
and cohort), a purpose label and the ordered pair of parties, so a key never serves two
purposes, two rounds or two directions. Private keys come from ``cryptography``'s
generator (the OS CSPRNG); nonces from :func:`os.urandom`.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import KeyMaterialError, ProtocolError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_DOMAIN = b"secfed/secagg/v1"
_PAIR = struct.Struct("!II")


def generate() -> X25519PrivateKey:
    """A fresh X25519 private key from the OS CSPRNG."""
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey) -> bytes:
    """Raw 32-byte public key of ``key``."""
    return key.public_key().public_bytes_raw()


def private_bytes(key: X25519PrivateKey) -> bytes:
    """Raw 32-byte private key (only ever Shamir-shared, never sent whole)."""
    return key.private_bytes_raw()


def load_private(raw: bytes) -> X25519PrivateKey:
    """X25519 private key from its 32 raw bytes."""
    if len(raw) != KEY_BYTES:
        raise KeyMaterialError(f"an X25519 private key is 32 bytes, got {len(raw)}")
    return X25519PrivateKey.from_private_bytes(raw)


def load_public(raw: bytes) -> X25519PublicKey:
    """X25519 public key from its 32 raw bytes; ``ProtocolError`` if malformed."""
    if len(raw) != KEY_BYTES:
        raise ProtocolError(f"an X25519 public key is 32 bytes, got {len(raw)}")
    return X25519PublicKey.from_public_bytes(raw)


def derive(secret: bytes, *, session_id: bytes, purpose: str, first: int, second: int) -> bytes:
    """HKDF-SHA256 of ``secret`` bound to session, purpose and the ordered pair of parties."""
    info = _DOMAIN + b"/" + purpose.encode("ascii") + b"/" + session_id + _PAIR.pack(first, second)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def agree(
    private: X25519PrivateKey,
    peer_public: X25519PublicKey,
    *,
    session_id: bytes,
    purpose: str,
    first: int,
    second: int,
) -> bytes:
    """X25519 shared secret with ``peer_public``, passed through :func:`derive`.

    Raises ``ProtocolError`` for a low-order peer key (an all-zero shared secret).
    """
    try:
        shared = private.exchange(peer_public)
    except ValueError as err:
        raise ProtocolError(f"peer public key is invalid (low order): {err}") from err
    return derive(shared, session_id=session_id, purpose=purpose, first=first, second=second)


def seal(key: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
    """AES-256-GCM: ``nonce || ciphertext || tag`` authenticating ``aad``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, *, aad: bytes) -> bytes:
    """Inverse of :func:`seal`; ``ProtocolError`` if the blob was altered, misrouted or forged."""
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise ProtocolError(f"sealed blob of {len(blob)} bytes is truncated")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise ProtocolError(
            "authentication of an encrypted share failed: altered, misrouted or forged"
        ) from None
