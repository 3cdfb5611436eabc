"""Paillier key pairs: generation (via ``phe``), serialisation and owner-only key files.

Key files live in ``key_dir/paillier/``: ``public.key`` (the server's copy holds only this) and
``private.key`` (clients only). Both are small JSON documents with hexadecimal integers, written
through ``os.open(..., 0o600)`` so they are never readable by group or others, even briefly; a
private key file that has become readable by others is refused on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import stat
from dataclasses import dataclass
from pathlib import Path

import gmpy2
from phe import paillier as phe_paillier

from ..core.keyfiles import write_owner_only
from ..errors import KeyMaterialError

log = logging.getLogger(__name__)

MIN_KEY_BITS = 2048
SUBDIR = "paillier"
PUBLIC_FILE = "public.key"
PRIVATE_FILE = "private.key"
_PUBLIC_FORMAT = "secfed/paillier-public/v1"
_PRIVATE_FORMAT = "secfed/paillier-private/v1"


@dataclass(frozen=True)
class PublicKey:
    """Paillier public key with ``g = n + 1`` (the ``phe`` convention)."""

    n: int

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 15 or self.n % 2 == 0:
            raise KeyMaterialError(f"a Paillier modulus must be an odd integer > 15, got {self.n}")

    @property
    def bits(self) -> int:
        return self.n.bit_length()

    @property
    def nsquare(self) -> int:
        return self.n * self.n

    @property
    def plaintext_bits(self) -> int:
        """Bits of a plaintext that is always below ``n``."""
        return self.bits - 1

    @property
    def ciphertext_bytes(self) -> int:
        """Fixed wire width of one ciphertext (an integer below ``n**2``)."""
        return 2 * (-(-self.bits // 8))

    @property
    def fingerprint(self) -> bytes:
        """16 bytes identifying this key."""
        return hashlib.sha256(b"secfed/paillier/n/" + _int_bytes(self.n)).digest()[:16]

    def to_bytes(self) -> bytes:
        return json.dumps({"format": _PUBLIC_FORMAT, "n": format(self.n, "x")}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicKey:
        doc = _parse(data, _PUBLIC_FORMAT)
        return cls(_hex_field(doc, "n"))


@dataclass(frozen=True, repr=False)
class PrivateKey:
    """Paillier private key: the primes ``p`` and ``q`` of ``n = p * q``."""

    p: int
    q: int

    def __post_init__(self) -> None:
        if self.p == self.q or min(self.p, self.q) < 3:
            raise KeyMaterialError("a Paillier private key needs two distinct odd primes")
        for name, value in (("p", self.p), ("q", self.q)):
            if not gmpy2.is_prime(value, 64):  # Miller-Rabin, 64 rounds: self-test at load
                raise KeyMaterialError(
                    f"Paillier private key: {name} is not prime; the key file is corrupt or "
                    "forged: generate a new key set (secfed keys generate --scheme paillier)"
                )

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.p * self.q)

    def __repr__(self) -> str:
        return f"PrivateKey(<{self.public.bits}-bit, {self.public.fingerprint.hex()}>)"

    def to_bytes(self) -> bytes:
        doc = {
            "format": _PRIVATE_FORMAT,
            "n": format(self.p * self.q, "x"),
            "p": format(self.p, "x"),
            "q": format(self.q, "x"),
        }
        return json.dumps(doc).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> PrivateKey:
        doc = _parse(data, _PRIVATE_FORMAT)
        key = cls(_hex_field(doc, "p"), _hex_field(doc, "q"))
        if key.p * key.q != _hex_field(doc, "n"):
            raise KeyMaterialError("private key file is inconsistent: p * q != n")
        return key


def generate_keypair(*, bits: int) -> PrivateKey:
    """A fresh key pair of exactly ``bits`` bits from ``phe`` (primes from the OS CSPRNG)."""
    public, private = phe_paillier.generate_paillier_keypair(n_length=bits)
    key = PrivateKey(int(private.p), int(private.q))
    if key.public.n != public.n:
        raise KeyMaterialError("phe returned an inconsistent key pair")
    return key


def check_strength(public: PublicKey, *, min_bits: int) -> None:
    """Refuse a key shorter than ``min_bits``."""
    if public.bits < min_bits:
        raise KeyMaterialError(
            f"Paillier key of {public.bits} bits is below the {min_bits}-bit minimum: "
            "generate a new key with key_bits >= 2048"
        )


def save_keys(directory: Path, private: PrivateKey) -> None:
    """Write ``public.key`` and ``private.key`` into ``directory`` with mode 0600."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_owner_only(directory / PRIVATE_FILE, private.to_bytes())
    _write_owner_only(directory / PUBLIC_FILE, private.public.to_bytes())


def load_keys(directory: Path) -> tuple[bytes, PrivateKey | None] | None:
    """Public key bytes and the private key (if this party holds it); ``None`` if no keys."""
    pub_path, priv_path = directory / PUBLIC_FILE, directory / PRIVATE_FILE
    private = None
    if priv_path.exists():
        mode = stat.S_IMODE(priv_path.stat().st_mode)
        if mode & 0o077:
            raise KeyMaterialError(
                f"private key file {priv_path} has mode {oct(mode)}, readable by others: "
                f"run 'chmod 600 {priv_path}' and consider the key exposed"
            )
        private = PrivateKey.from_bytes(priv_path.read_bytes())
    if pub_path.exists():
        public_bytes = pub_path.read_bytes()
        public = PublicKey.from_bytes(public_bytes)
        if private is not None and private.public != public:
            raise KeyMaterialError(f"{pub_path} and {priv_path} belong to different key pairs")
        return public_bytes, private
    if private is not None:
        return private.public.to_bytes(), private
    return None


def _write_owner_only(path: Path, data: bytes) -> None:
    write_owner_only(path, data)
    log.info("wrote %s (mode 0600)", path)


def _int_bytes(x: int) -> bytes:
    return x.to_bytes(-(-x.bit_length() // 8) or 1, "big")


def _parse(data: bytes, fmt: str) -> dict[str, object]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise KeyMaterialError(f"not a secfed Paillier key ({fmt}): {err}") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise KeyMaterialError(f"expected a {fmt!r} key, found {found!r}")
    return doc


def _hex_field(doc: dict[str, object], name: str) -> int:
    value = doc.get(name)
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return int(value, 16)
    except ValueError:
        raise KeyMaterialError(f"key field {name!r} is not a hexadecimal integer") from None
