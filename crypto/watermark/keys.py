"""Watermark keys: a secret 256-bit seed plus a scheme version (see :data:`SCHEMES`).

Nothing a verifier uses is read from the key file. The message bits, the projection
(over every anchor module, in sorted canonical order), the trigger inputs and their labels
are expanded with SHAKE-256 from the seed and a fingerprint of what the verifier reads
from the model itself: the adapter's canonical :class:`Architecture` (anchor kind, module
names and shapes, sorted) and the :class:`TriggerDomain` (vocabulary, special tokens,
classes). Sizes (bits, trigger count and length) are constants of the scheme. So a
claimant controls one thing only, the seed, and each seed is one independent draw against
the security floor of :mod:`.stats` (see :data:`SCHEME`).

The file may also record, for a clear refusal on a mismatch, the anchor kind and the
architecture fingerprint the key was made for; these are checked, never used to derive.
``key_hash(key)`` (SHA-256 over the scheme and the seed) is the value a commitment record
publishes: the seed's 256 bits of entropy hide it, and collision resistance binds it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import WatermarkKeyError
from .stats import SECURITY_BITS

SEED_BYTES = 32
_KEY_FIELDS = {"scheme", "seed", "owner", "triggers", "anchor_kind", "architecture"}


@dataclass(frozen=True)
class Scheme:
    """Fixed sizes of one watermark scheme version (not choosable per key)."""

    name: str
    bits: int  # signature bits per key
    triggers: int  # triggers per key
    trigger_length: int  # tokens per trigger, the prefix token included
    security_bits: int  # a test counts only at p <= 2**-security_bits
    xof_domain: bytes  # separates what one seed expands to under different schemes


#: Every scheme a key may name; a key keeps its scheme for life, so old keys still verify.
#: ``secfed-wm/4`` differs from ``/3`` only in 6-token triggers (the prefix and five
#: alphabet tokens, not fifteen): on the watermark example they survive fine-tuning better
#: (``docs/watermark/scheme.md``). New keys use :data:`SCHEME`.
SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("secfed-wm/3", 256, 256, 16, SECURITY_BITS, b"secfed-watermark/v3/"),
        Scheme("secfed-wm/4", 256, 256, 6, SECURITY_BITS, b"secfed-watermark/v4/"),
    )
}
SCHEME = SCHEMES["secfed-wm/4"]


@dataclass(frozen=True)
class Architecture:
    """What the anchor looks like: its kind and ``(module, shape)``, sorted by name."""

    kind: str
    modules: tuple[tuple[str, tuple[int, ...]], ...]

    def __post_init__(self) -> None:
        names = [m for m, _ in self.modules]
        if list(self.modules) != sorted(self.modules) or len(set(names)) != len(names):
            raise WatermarkKeyError(
                "an architecture lists each anchor module once, sorted by name; build it "
                "with Architecture.of(kind, anchor)"
            )
        if not self.modules:
            raise WatermarkKeyError("an architecture needs at least one anchor module")

    @classmethod
    def of(cls, kind: str, shapes: Any) -> Architecture:
        """From ``{module: tensor or shape}`` (any order)."""
        items = shapes.items() if hasattr(shapes, "items") else shapes
        mods = []
        for name, value in items:
            shape = tuple(int(x) for x in getattr(value, "shape", value))
            mods.append((str(name), shape))
        return cls(kind=kind, modules=tuple(sorted(mods)))

    @property
    def dim(self) -> int:
        """Length of the flattened anchor vector."""
        return int(sum(int(np.prod(s)) for _, s in self.modules))

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the canonical encoding."""
        body = {"kind": self.kind, "modules": [[m, list(s)] for m, s in self.modules]}
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(b"secfed-wm-architecture\x00" + raw).hexdigest()


@dataclass(frozen=True)
class TriggerDomain:
    """Where triggers live, read from the base model: token alphabet, prefix, classes."""

    vocab_size: int
    special_ids: tuple[int, ...]
    prefix: tuple[int, ...]
    num_labels: int

    def __post_init__(self) -> None:
        if self.num_labels < 2 or len(self.alphabet) < 2:
            raise WatermarkKeyError(
                f"trigger domain with {self.num_labels} labels and {len(self.alphabet)} "
                "tokens; triggers need >= 2 classes and >= 2 non-special tokens"
            )

    @property
    def alphabet(self) -> NDArray[np.int64]:
        """Every non-special token id of the vocabulary."""
        keep = np.ones(self.vocab_size, dtype=bool)
        special = [i for i in self.special_ids if 0 <= i < self.vocab_size]
        keep[special] = False
        return np.flatnonzero(keep).astype(np.int64)

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the canonical encoding."""
        body = {
            "vocab_size": self.vocab_size,
            "special_ids": sorted(set(self.special_ids)),
            "prefix": list(self.prefix),
            "num_labels": self.num_labels,
        }
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(b"secfed-wm-trigger-domain\x00" + raw).hexdigest()


@dataclass(frozen=True)
class WatermarkKey:
    """One secret key: the seed, plus labels that are checked but never derived from."""

    seed: bytes
    owner: int = 0
    triggers: bool = False  # whether the key's trigger set was embedded (then it is tested)
    anchor_kind: str | None = None
    architecture: str | None = None  # fingerprint of the Architecture it was made for
    scheme: str = SCHEME.name

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_BYTES:
            raise WatermarkKeyError(f"seed has {len(self.seed)} bytes; a key needs {SEED_BYTES}")
        if self.scheme not in SCHEMES:
            raise WatermarkKeyError(
                f"scheme {self.scheme!r} unsupported; this version verifies "
                f"{', '.join(SCHEMES)} and makes {SCHEME.name} keys"
            )

    @property
    def sizes(self) -> Scheme:
        """The key's scheme (its sizes and derivation domain)."""
        return SCHEMES[self.scheme]

    @property
    def bits(self) -> int:
        """Signature bits (a scheme constant)."""
        return self.sizes.bits

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the key file)."""
        return {
            "scheme": self.scheme,
            "seed": self.seed.hex(),
            "owner": self.owner,
            "triggers": self.triggers,
            "anchor_kind": self.anchor_kind,
            "architecture": self.architecture,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WatermarkKey:
        """Inverse of :meth:`to_dict`; refuses old schemes and any field it would not use."""
        if not isinstance(data, dict):
            raise WatermarkKeyError("a watermark key file holds one JSON object")
        if "scheme" not in data and "version" in data:
            raise WatermarkKeyError(
                f"watermark key version {data['version']!r} stores its own layout and trigger "
                "set, which a claimant can choose (forgeable); make a new key with "
                f"`secfed watermark keygen` ({SCHEME.name}) and embed it again"
            )
        extra = sorted(set(data) - _KEY_FIELDS)
        if extra:
            raise WatermarkKeyError(
                f"key fields {extra} are not part of a watermark key: modules, projections, "
                "trigger alphabet, lengths and labels all derive from the seed and the model; "
                "remove them"
            )
        if not isinstance(data.get("triggers", False), bool):
            raise WatermarkKeyError(
                f"key field 'triggers' is {data['triggers']!r}; it only says whether the key's "
                "trigger set was embedded (true/false): the set itself derives from the seed"
            )
        if data.get("anchor_kind") not in (None, "lora", "ia3", "prompt"):
            raise WatermarkKeyError(
                f"anchor_kind {data['anchor_kind']!r} unknown; use lora, ia3, prompt or null"
            )
        try:
            return cls(
                seed=bytes.fromhex(data["seed"]),
                owner=int(data.get("owner", 0)),
                triggers=bool(data.get("triggers", False)),
                anchor_kind=None if data.get("anchor_kind") is None else str(data["anchor_kind"]),
                architecture=None
                if data.get("architecture") is None
                else str(data["architecture"]),
                scheme=str(data["scheme"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise WatermarkKeyError(
                f"malformed watermark key ({err!r}); use a file written by "
                "`secfed watermark keygen` or save_key"
            ) from err


def generate_key(
    *, owner: int = 0, triggers: bool = False, architecture: Architecture | None = None
) -> WatermarkKey:
    """A fresh key: 256-bit seed from :mod:`secrets`, optionally bound to an architecture."""
    return WatermarkKey(
        seed=secrets.token_bytes(SEED_BYTES),
        owner=owner,
        triggers=triggers,
        anchor_kind=None if architecture is None else architecture.kind,
        architecture=None if architecture is None else architecture.fingerprint,
    )


def check_fits(key: WatermarkKey, arch: Architecture) -> None:
    """Refuse a key made for another anchor kind or another architecture."""
    if key.anchor_kind is not None and key.anchor_kind != arch.kind:
        raise WatermarkKeyError(
            f"key of owner {key.owner} is for {key.anchor_kind} adapters, this one is "
            f"{arch.kind}; verify it against the adapter type it was made for"
        )
    if key.architecture is not None and key.architecture != arch.fingerprint:
        raise WatermarkKeyError(
            f"key of owner {key.owner} was made for architecture {key.architecture[:16]}..., "
            f"the adapter at hand is {arch.fingerprint[:16]}... ({len(arch.modules)} "
            f"{arch.kind} modules, {arch.dim} values); it does not derive to this adapter"
        )


def _xof(key: WatermarkKey, label: str, nbytes: int) -> bytes:
    raw = key.sizes.xof_domain + label.encode() + b"\x00" + key.seed
    return hashlib.shake_256(raw).digest(nbytes)


def _pm1(raw: bytes, count: int) -> NDArray[np.float32]:
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:count]
    return (bits.astype(np.float32) * 2.0 - 1.0).astype(np.float32)


def message_signs(key: WatermarkKey) -> NDArray[np.float32]:
    """The message as +-1 values (bit 1 -> +1), ``key.bits`` long."""
    return _pm1(_xof(key, "message", (key.bits + 7) // 8), key.bits)


def projection(key: WatermarkKey, arch: Architecture) -> NDArray[np.float32]:
    """Zero-mean Rademacher projection ``[bits, arch.dim]`` with unit-norm rows."""
    n = key.bits * arch.dim
    signs = _pm1(_xof(key, f"projection/{arch.fingerprint}", (n + 7) // 8), n)
    return signs.reshape(key.bits, arch.dim) / np.float32(np.sqrt(arch.dim))


def _uniform(key: WatermarkKey, label: str, count: int, span: int) -> NDArray[np.int64]:
    raw = np.frombuffer(_xof(key, label, count * 8), dtype="<u8")
    # 64-bit values reduced mod span: bias <= span / 2**64, negligible.
    return (raw % np.uint64(span)).astype(np.int64)


def trigger_token_ids(
    key: WatermarkKey, domain: TriggerDomain, *, scheme: Scheme | None = None
) -> NDArray[np.int64]:
    """``[triggers, trigger_length]`` ids: the domain's prefix, then uniform alphabet tokens.

    The sizes are the key's scheme's; ``scheme`` overrides them for design-space
    benchmarks only (verification never passes it).
    """
    scheme = scheme or key.sizes
    body = scheme.trigger_length - len(domain.prefix)
    if body < 1:
        raise WatermarkKeyError(f"trigger prefix {domain.prefix} leaves no room for tokens")
    alphabet = domain.alphabet
    picks = _uniform(key, f"triggers/{domain.fingerprint}", scheme.triggers * body, len(alphabet))
    tokens = alphabet[picks].reshape(scheme.triggers, body)
    prefix = np.broadcast_to(
        np.asarray(domain.prefix, np.int64), (scheme.triggers, len(domain.prefix))
    )
    return np.concatenate([prefix, tokens], axis=1)


def trigger_labels(
    key: WatermarkKey, domain: TriggerDomain, *, scheme: Scheme | None = None
) -> NDArray[np.int64]:
    """``[triggers]`` labels uniform in ``[0, num_labels)``, independent of the inputs.

    A model that never saw the key matches each with probability exactly ``1/num_labels``
    whatever its biases: the binomial null of the trigger test holds with no control set.
    """
    count = (scheme or key.sizes).triggers
    return _uniform(key, f"trigger-labels/{domain.fingerprint}", count, domain.num_labels)


def key_hash(key: WatermarkKey) -> str:
    """Hex SHA-256 of the scheme and seed: the value a commitment record publishes."""
    return hashlib.sha256(
        b"secfed-watermark-commitment/v3\x00" + key.scheme.encode() + b"\x00" + key.seed
    ).hexdigest()


def check_key_hash(key: WatermarkKey, published: str) -> bool:
    """Constant-time comparison of ``key_hash(key)`` with a published hex string."""
    return hmac.compare_digest(key_hash(key), published.strip().lower())


def save_key(key: WatermarkKey, path: Path | str) -> None:
    """Write the key as JSON with owner-only permissions (0600), refusing to overwrite."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(key.to_dict(), indent=2) + "\n")


def load_key(path: Path | str) -> WatermarkKey:
    """Read a key file (refusing fields the scheme does not use)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WatermarkKeyError(f"cannot read watermark key {path}: {err}") from err
    return WatermarkKey.from_dict(data)
