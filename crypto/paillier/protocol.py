"""``paillier``: packed Paillier aggregation; the server adds ciphertexts, clients decode.

Threat model
------------
* Key holders: every client of the job holds the same Paillier private key (made once per job
  by :meth:`PaillierProtocol.setup` or ``secfed keys generate``); the server holds the public key
  only, and its session is built from the public key bytes alone.
* The server sees each client's ciphertexts (semantically secure under the decisional composite
  residuosity assumption, with DJN short-exponent randomisers that the key holders derive from
  the private key and a fresh per-message nonce, see :mod:`crypto.paillier.holder`), their
  sizes, the nonces, and which clients answered. It never sees an update nor the aggregate:
  it multiplies ciphertexts and sends the encrypted sum back to the key holders, who alone
  learn it (``learned_by = "clients"``).
* Collusion: because all clients share the private key, ANY single client colluding with the
  server decrypts every other client's individual update (the server holds their ciphertexts).
  Only a server that colludes with no client is kept blind.
* Clients are assumed to follow the encoding (semi-honest): a malicious client can corrupt the
  aggregate with out-of-range plaintexts (no range proofs). Decoding refuses sums that are
  impossible for honest inputs, but cannot catch every bad contribution.
* Malicious server given the roster: clients sign ``(attempt, id, SHA-256 of their
  ciphertexts)``; decoders verify the listed contributors' statements, refuse an aggregate
  that excludes them, and check keyed check slots (see :mod:`crypto.paillier.sessions`), so a
  cut, swapped or padded contributor list is refused rather than decoded into a wrong sum.
* Network attacker: every message is signed and bound to the attempt (:mod:`crypto.core.
  channel`); an altered or replayed message is refused as its sender's dropout.
* Dropouts: one collection stage; clients that do not send are left out of the sum, so up to
  ``n - 1`` of ``n`` may drop; if none sends, :class:`~crypto.errors.DropoutError`.

Encoding: see :mod:`crypto.core.packing`. A coordinate outside ``[-clip, clip]`` is refused
(``out_of_range = "refuse"``, the default) or clipped (``"clip"``, explicit), as in every
protocol with a range (:mod:`crypto.core.valuerange`); the weighted value ``w * v`` is
quantised to ``precision_bits`` bits relative to ``clip * max_weight``, offset to be
non-negative and packed with headroom for the whole cohort.
Per coordinate the decoded weighted sum of ``m`` contributors is within
``m * 0.5 / S + m * clip * max_weight * 2**-50`` with
``S = 2**precision_bits / 2**ceil(log2(clip * max_weight))``. A weight above ``max_weight`` is
refused with :class:`~crypto.errors.EncodingError` before anything is encrypted.

Wire (sessions in :mod:`crypto.paillier.sessions`; after the :mod:`crypto.core.wire` header):
stage 0 server -> client: 16-byte digest of the key and encoding options. Stage 0 client ->
server: a 16-byte randomiser nonce, then the ciphertexts, ``2 * bytes(n)`` each, big-endian
(about ``512 / floor(2047 / slot_bits)`` bytes per parameter with a 2048-bit key), then the
client's 64-byte signature over (attempt, id, SHA-256 of nonce and ciphertexts). Stage 1
server -> each contributor (final): ``uint32`` count, one row per contributor (``uint32`` id,
its nonce, its SHA-256, its signature) in ascending id order, then the aggregated
ciphertexts. Key holders check every listed signature and their own membership, decrypt the
product with the contributors' randomisers (no ``(p - 1)``-bit exponentiation; a product
that does not match the listed nonces is refused) and check the keyed check slots.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from ..core import valuerange
from ..core.packing import Quantiser
from ..core.protocol import (
    ClientSession,
    Protocol,
    RoundSpec,
    ServerSession,
    ThreatModel,
    adversaries,
)
from ..core.registry import register
from ..errors import KeyMaterialError, ParameterError
from .keys import (
    MIN_KEY_BITS,
    SUBDIR,
    PrivateKey,
    PublicKey,
    check_strength,
    generate_keypair,
    load_keys,
    save_keys,
)
from .sessions import NAME, PaillierClient, PaillierServer

log = logging.getLogger(__name__)

_INSECURE_MIN_BITS = 256


@register
class PaillierProtocol(Protocol):
    """Packed Paillier: DJN-fast encryption, server-side ciphertext sums, client decoding.

    Options: ``key_bits`` (2048 or more, default 2048; 3072 available), ``insecure_key_bits``
    (tests only: a key below 2048 bits, loudly logged), ``clip`` (default 1.0), ``max_weight``
    (default 1024.0), ``precision_bits`` (default 16), ``workers`` (processes for encryption
    and decryption, default ``os.cpu_count()``; 1 runs in-process) and ``out_of_range``
    (``"refuse"``, the default, or ``"clip"``: :mod:`crypto.core.valuerange`).
    """

    name = NAME
    learned_by = "clients"
    option_names = frozenset(
        {
            "key_bits",
            "insecure_key_bits",
            "clip",
            "max_weight",
            "precision_bits",
            "workers",
            "out_of_range",
        }
    )

    def __init__(self, **options: Any):
        super().__init__(**options)
        insecure = options.get("insecure_key_bits")
        if insecure is not None:
            if "key_bits" in options:
                raise ParameterError("set key_bits or insecure_key_bits, not both")
            if not _is_int(insecure) or not _INSECURE_MIN_BITS <= insecure < MIN_KEY_BITS:
                raise ParameterError(
                    f"insecure_key_bits must be an integer in [{_INSECURE_MIN_BITS}, "
                    f"{MIN_KEY_BITS}), got {insecure!r}; for real keys use key_bits"
                )
            log.warning(
                "INSECURE: paillier uses a %d-bit key (below %d bits); tests only, never real data",
                insecure,
                MIN_KEY_BITS,
            )
            self.key_bits, self.min_bits = int(insecure), int(insecure)
        else:
            bits = options.get("key_bits", MIN_KEY_BITS)
            if not _is_int(bits) or bits < MIN_KEY_BITS or bits % 2:
                raise ParameterError(
                    f"key_bits={bits!r} is refused: Paillier keys need an even size of at least "
                    f"{MIN_KEY_BITS} bits (3072 for long-term use); for fast tests only, set "
                    "insecure_key_bits instead"
                )
            self.key_bits, self.min_bits = int(bits), MIN_KEY_BITS
        self.quantiser = Quantiser(
            clip=options.get("clip", 1.0),
            max_weight=options.get("max_weight", 1024.0),
            precision_bits=options.get("precision_bits", 16),
        )
        self.out_of_range = valuerange.policy(options)
        workers = options.get("workers", os.cpu_count() or 1)
        if not _is_int(workers) or workers < 1:
            raise ParameterError(f"workers must be a positive integer, got {workers!r}")
        self.workers = int(workers)
        self._public_bytes: bytes | None = None
        self._private: PrivateKey | None = None

    def setup(self, *, job_id: str, key_dir: Path | None = None) -> None:
        """Load the job's keys from ``key_dir/paillier`` or generate and write them there.

        A directory holding only ``public.key`` (the server's copy) gives a server-only party;
        ``key_dir=None`` keeps freshly generated keys in memory.
        """
        self.load_identities(key_dir)
        if key_dir is None:
            if self._public_bytes is None:
                private = generate_keypair(bits=self.key_bits)
                self._adopt(private.public.to_bytes(), private)
            log.info("paillier keys for job %s kept in memory", job_id)
            return
        directory = Path(key_dir) / SUBDIR
        found = load_keys(directory)
        if found is None:
            private = generate_keypair(bits=self.key_bits)
            save_keys(directory, private)
            found = (private.public.to_bytes(), private)
            log.info(
                "generated %d-bit paillier keys for job %s in %s", self.key_bits, job_id, directory
            )
        self._adopt(*found)

    @property
    def public_key_bytes(self) -> bytes:
        """The job's serialised public key (what the server's ``public.key`` holds)."""
        if self._public_bytes is None:
            raise KeyMaterialError("paillier needs keys: call setup(job_id=..., key_dir=...) first")
        return self._public_bytes

    @property
    def holds_private_key(self) -> bool:
        """Whether this party can act as a client (and decrypt)."""
        return self._private is not None

    def _adopt(self, public_bytes: bytes, private: PrivateKey | None) -> None:
        public = PublicKey.from_bytes(public_bytes)
        check_strength(public, min_bits=self.min_bits)
        if public.bits != self.key_bits:
            log.info(
                "using the existing %d-bit paillier key (key_bits=%d)", public.bits, self.key_bits
            )
        self._public_bytes, self._private = public_bytes, private

    def client_session(
        self, spec: RoundSpec, client_id: int, vector: NDArray[Any], weight: float
    ) -> ClientSession:
        if self._private is None:
            raise KeyMaterialError(
                "this party holds no paillier private key: clients need key_dir/paillier/"
                "private.key (run setup, or copy the client's key files)"
            )
        return PaillierClient(
            spec,
            client_id,
            vector,
            weight,
            private=self._private,
            quantiser=self.quantiser,
            workers=self.workers,
            keyring=self.keyring,
            out_of_range=self.out_of_range,
        )

    def server_session(self, spec: RoundSpec) -> ServerSession:
        return PaillierServer(
            spec, public_key=self.public_key_bytes, quantiser=self.quantiser, keyring=self.keyring
        )

    def max_dropouts(self, cohort_size: int) -> int:
        return cohort_size - 1

    def threat_model(self) -> ThreatModel:
        return ThreatModel(
            protocol=NAME,
            key_holders="every client holds the same Paillier private key; the server holds "
            "only the public key",
            server_sees="each client's ciphertexts, their sizes and who answered; neither the "
            "updates nor the aggregate, which only the key-holding clients decrypt",
            dropouts="up to n - 1 of n: clients that do not send are left out of the sum",
            breaks_if="any single client colludes with the server: the shared private key "
            "decrypts every other client's individual update held by the server",
            adversaries=adversaries(
                authenticated=self.authenticated,
                semi_honest="sees ciphertexts, their sizes and who answered; never an update "
                "nor the aggregate",
                malicious="decoders check every listed contributor's signed statement over its "
                "ciphertext hash, their own membership, and keyed check slots that only key "
                "holders can compute, so an aggregate of other ciphertexts than the listed ones "
                "(a cut, swapped or repeated list, or one client's ciphertext passed off as a "
                "sum) is refused; it can still drop clients, and it learns nothing it could not "
                "as a semi-honest server",
            ),
            notes=(
                "clients are assumed semi-honest: a malicious client can corrupt the aggregate "
                "(no range proofs)",
                f"quantisation: clip={self.quantiser.clip}, max_weight="
                f"{self.quantiser.max_weight}, precision_bits={self.quantiser.precision_bits}",
            )
            + (
                ("INSECURE key size (insecure_key_bits): tests only",)
                if self.min_bits < MIN_KEY_BITS
                else ()
            ),
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
