"""Party identities: Ed25519 signing keys and the job's roster (the PKI protocols trust).

The *roster* maps every party of a job (client ids, and :data:`~crypto.core.wire.SERVER` for
the aggregator) to an Ed25519 public key. Every party loads the same roster; a party holds
the private keys of the identities it acts as (in the in-process simulator: all of them; a
deployed client: its own). :class:`Keyring` is the two together. Messages are signed by their
sender and verified against the roster (:mod:`crypto.core.channel`), so a network attacker
cannot alter, inject or re-address a message and a malicious server cannot forge a client's.

Files (``key_dir/identity/``): ``roster.json`` (public, every party) and ``party-<id>.key``
(one private key each, raw 32 bytes as hex, written owner-only). The roster is trusted as
distributed: whoever can edit a party's copy of it can impersonate any client to that party.

Keys are made and signatures produced by ``cryptography`` (OpenSSL); signatures are verified by
libsodium (PyNaCl), whose Ed25519 verification takes about 60% of OpenSSL's time: a client
checks one signature per neighbour each round. Both implement RFC 8032 (libsodium also refuses
small-order keys and non-canonical encodings; honest keys and signatures pass both).
"""

from __future__ import annotations

import hashlib
import json
import logging
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import KeyMaterialError
from .keyfiles import write_owner_only

log = logging.getLogger(__name__)

SUBDIR = "identity"
ROSTER_FILE = "roster.json"
SIGNATURE_BYTES = 64
PUBLIC_BYTES = 32
SERVER_ID = 0xFFFFFFFF
_FORMAT = "secfed/roster/v1"


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def party_name(party: int) -> str:
    """``server`` or ``client <id>``, for error messages."""
    return "server" if party == SERVER_ID else f"client {party}"


@dataclass(frozen=True)
class Roster:
    """Party id -> Ed25519 public key (raw 32 bytes)."""

    keys: Mapping[int, bytes]
    _loaded: dict[int, nacl.signing.VerifyKey] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for party, raw in self.keys.items():
            if not isinstance(party, int) or not 0 <= party <= SERVER_ID:
                raise KeyMaterialError(f"roster party id {party!r} is not a uint32")
            if len(raw) != PUBLIC_BYTES:
                raise KeyMaterialError(f"roster key of {party_name(party)} is not 32 bytes")
            try:
                Ed25519PublicKey.from_public_bytes(raw)
                self._loaded[party] = nacl.signing.VerifyKey(bytes(raw))
            except (ValueError, nacl.exceptions.CryptoError) as err:
                raise KeyMaterialError(f"roster key of {party_name(party)}: {err}") from None
        if len(set(self.keys.values())) != len(self.keys):
            raise KeyMaterialError("two parties of the roster share one public key")

    @property
    def fingerprint(self) -> bytes:
        """16 bytes identifying this roster."""
        text = ",".join(f"{p}:{k.hex()}" for p, k in sorted(self.keys.items()))
        return hashlib.sha256(b"secfed/roster/" + text.encode()).digest()[:16]

    def verify(self, party: int, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is ``party``'s over ``data`` (False for unknown parties)."""
        key = self._loaded.get(party)
        if key is None or len(signature) != SIGNATURE_BYTES:
            return False
        try:
            key.verify(data, signature)
        except nacl.exceptions.BadSignatureError:
            return False
        return True

    def to_bytes(self) -> bytes:
        doc = {
            "format": _FORMAT,
            "parties": {str(p): k.hex() for p, k in sorted(self.keys.items())},
        }
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Roster:
        try:
            doc = json.loads(data)
            if doc.get("format") != _FORMAT:
                raise ValueError(f"format {doc.get('format')!r}")
            return cls({int(p): bytes.fromhex(k) for p, k in doc["parties"].items()})
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise KeyMaterialError(f"not a secfed roster ({_FORMAT}): {err}") from None


@dataclass
class Keyring:
    """The roster every party trusts plus the signing keys this process acts as."""

    roster: Roster
    signers: dict[int, Ed25519PrivateKey]

    def __post_init__(self) -> None:
        for party, key in self.signers.items():
            if self.roster.keys.get(party) != _raw_public(key.public_key()):
                raise KeyMaterialError(
                    f"the identity key held for {party_name(party)} is not the roster's: "
                    "the key files come from another job or the roster was changed"
                )

    def sign(self, party: int, data: bytes) -> bytes:
        key = self.signers.get(party)
        if key is None:
            raise KeyMaterialError(
                f"this process holds no identity key for {party_name(party)}: give it "
                f"key_dir/{SUBDIR}/party-{party}.key (secfed keys generate --scheme identity)"
            )
        return key.sign(data)

    def can_sign(self, party: int) -> bool:
        return party in self.signers

    def restricted_to(self, parties: Iterable[int]) -> Keyring:
        """The same roster with only ``parties``' signing keys (one party's view)."""
        keep = set(parties)
        return Keyring(self.roster, {p: k for p, k in self.signers.items() if p in keep})


def generate(parties: Iterable[int]) -> Keyring:
    """Fresh identities for ``parties`` and the server, with the roster of all of them."""
    ids = sorted(set(parties) | {SERVER_ID})
    signers = {p: Ed25519PrivateKey.generate() for p in ids}
    roster = Roster({p: _raw_public(k.public_key()) for p, k in signers.items()})
    return Keyring(roster, signers)


def save(keyring: Keyring, directory: Path) -> None:
    """Write the roster and every held private key (owner-only) into ``directory``."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_owner_only(directory / ROSTER_FILE, keyring.roster.to_bytes())
    for party, key in keyring.signers.items():
        raw = key.private_bytes_raw()
        write_owner_only(directory / f"party-{party}.key", raw.hex().encode())


def load(directory: Path) -> Keyring | None:
    """The keyring in ``directory`` (roster and whatever private keys are there), or None."""
    path = directory / ROSTER_FILE
    if not path.exists():
        return None
    roster = Roster.from_bytes(path.read_bytes())
    signers = {}
    for key_path in sorted(directory.glob("party-*.key")):
        mode = stat.S_IMODE(key_path.stat().st_mode)
        if mode & 0o077:
            raise KeyMaterialError(
                f"identity key {key_path} has mode {oct(mode)}, readable by others: run "
                f"'chmod 600 {key_path}' and consider the key exposed"
            )
        try:
            party = int(key_path.stem.removeprefix("party-"))
            key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key_path.read_text()))
        except ValueError as err:
            raise KeyMaterialError(f"{key_path} is not a secfed identity key: {err}") from None
        signers[party] = key
    return Keyring(roster, signers)


def load_or_create(directory: Path, parties: Iterable[int]) -> Keyring:
    """Load the job's identities from ``directory`` or make them for ``parties`` (+ server)."""
    found = load(directory)
    if found is not None:
        missing = set(parties) - set(found.roster.keys)
        if missing:
            raise KeyMaterialError(
                f"the roster in {directory} has no key for clients {sorted(missing)}: "
                "make the job's identities for all its clients"
            )
        return found
    ring = generate(parties)
    save(ring, directory)
    log.info("made identities for %d parties in %s", len(ring.signers), directory)
    return ring
