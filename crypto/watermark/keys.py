"""Per-owner watermark keys: a secret 256-bit seed and everything derived from it.

The message bits, the projection matrix and the trigger inputs are expanded from the seed
with SHAKE-256 under distinct domain-separation labels, so they are unpredictable without
the seed (no numpy or ``random`` generator is involved). A key also records the anchor
layout it was embedded into (module names and shapes) so verification needs no model
code. ``commitment(key)`` is SHA-256 over a canonical JSON encoding that includes a random
salt stored in the key: publishing it binds the owner to the key without revealing it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import WatermarkKeyError

SEED_BYTES = 32
MIN_BITS, MAX_BITS = 64, 256
_VERSION = 2  # 2: per-trigger random labels (v1 had one label per owner)
_READABLE = (1, 2)  # v1 keys without triggers read the same way and keep their commitment
_DOMAIN = b"secfed-watermark/v1/"


@dataclass(frozen=True)
class TriggerSpec:
    """Black-box trigger set: ``count`` random token sequences, each with a random label.

    Inputs (tokens drawn from ``alphabet`` after ``prefix``) and labels are both expanded
    from the key's seed (:func:`trigger_token_ids`, :func:`trigger_labels`), so the file
    stores only their shape and the alphabet.
    """

    count: int
    length: int
    alphabet: tuple[int, ...]
    num_labels: int
    prefix: tuple[int, ...] = ()


@dataclass(frozen=True)
class WatermarkKey:
    """One owner's secret watermark key."""

    owner: int
    seed: bytes
    salt: bytes
    bits: int
    anchor_kind: str
    layout: tuple[tuple[str, tuple[int, ...]], ...]
    triggers: TriggerSpec | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = _VERSION

    @property
    def dim(self) -> int:
        """Length of the anchor vector the projection acts on."""
        return int(sum(int(np.prod(s)) for _, s in self.layout))

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able form (hex bytes, lists)."""
        return {
            "version": self.version,
            "owner": self.owner,
            "seed": self.seed.hex(),
            "salt": self.salt.hex(),
            "bits": self.bits,
            "anchor_kind": self.anchor_kind,
            "layout": [[n, list(s)] for n, s in self.layout],
            "triggers": None if self.triggers is None else asdict(self.triggers),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WatermarkKey:
        """Inverse of :meth:`to_dict`, validating the fields."""
        try:
            version = data["version"]
            if version not in _READABLE:
                raise WatermarkKeyError(
                    f"watermark key version {version!r} unsupported; expected one of {_READABLE}"
                )
            if version == 1 and data.get("triggers") is not None:
                raise WatermarkKeyError(
                    "version-1 trigger sets (one label for all triggers) are no longer "
                    "supported; version-1 keys without triggers still verify"
                )
            trig = data.get("triggers")
            key = cls(
                owner=int(data["owner"]),
                seed=bytes.fromhex(data["seed"]),
                salt=bytes.fromhex(data["salt"]),
                bits=int(data["bits"]),
                anchor_kind=str(data["anchor_kind"]),
                layout=tuple((str(n), tuple(int(x) for x in s)) for n, s in data["layout"]),
                triggers=None
                if trig is None
                else TriggerSpec(
                    **{
                        **trig,
                        "alphabet": tuple(int(t) for t in trig["alphabet"]),
                        "prefix": tuple(int(t) for t in trig.get("prefix", ())),
                    }
                ),
                meta=dict(data.get("meta", {})),
                version=int(version),
            )
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, WatermarkKeyError):
                raise
            raise WatermarkKeyError(
                f"malformed watermark key ({err}); use a file written by save_key"
            ) from err
        _check_sizes(key.seed, key.bits)
        return key


def _check_sizes(seed: bytes, bits: int) -> None:
    if len(seed) != SEED_BYTES:
        raise WatermarkKeyError(f"seed has {len(seed)} bytes; a key needs {SEED_BYTES}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise WatermarkKeyError(f"bits={bits} out of range; choose {MIN_BITS}..{MAX_BITS}")


def generate_key(
    *,
    owner: int,
    bits: int,
    anchor_kind: str,
    layout: Sequence[tuple[str, tuple[int, ...]]],
    triggers: TriggerSpec | None = None,
) -> WatermarkKey:
    """A fresh key from ``secrets`` (256-bit seed, 256-bit commitment salt)."""
    seed = secrets.token_bytes(SEED_BYTES)
    _check_sizes(seed, bits)
    return WatermarkKey(
        owner=owner,
        seed=seed,
        salt=secrets.token_bytes(32),
        bits=bits,
        anchor_kind=anchor_kind,
        layout=tuple((n, tuple(s)) for n, s in layout),
        triggers=triggers,
    )


def _xof(seed: bytes, label: str, nbytes: int) -> bytes:
    return hashlib.shake_256(_DOMAIN + label.encode() + b"\x00" + seed).digest(nbytes)


def message_signs(key: WatermarkKey) -> NDArray[np.float32]:
    """The message as +-1 values (bit 1 -> +1), length ``key.bits``."""
    raw = np.frombuffer(_xof(key.seed, "message", (key.bits + 7) // 8), dtype=np.uint8)
    bits = np.unpackbits(raw)[: key.bits]
    return (bits.astype(np.float32) * 2.0 - 1.0).astype(np.float32)


def projection(key: WatermarkKey) -> NDArray[np.float32]:
    """Zero-mean Rademacher projection ``[bits, dim]`` with unit-norm rows."""
    dim = key.dim
    raw = np.frombuffer(_xof(key.seed, f"projection/{dim}", (key.bits * dim + 7) // 8), np.uint8)
    signs = np.unpackbits(raw)[: key.bits * dim].reshape(key.bits, dim).astype(np.float32)
    return (signs * 2.0 - 1.0) / np.float32(np.sqrt(dim))


def _trigger_spec(key: WatermarkKey) -> TriggerSpec:
    if key.triggers is None:
        raise WatermarkKeyError(f"key of owner {key.owner} has no trigger set")
    return key.triggers


def _uniform(key: WatermarkKey, label: str, count: int, span: int) -> NDArray[np.int64]:
    """``count`` values uniform in ``[0, span)`` from the key's XOF under ``label``."""
    raw = np.frombuffer(_xof(key.seed, label, count * 8), dtype="<u8")
    # 64-bit values reduced mod span: bias <= span / 2**64, negligible.
    return (raw % np.uint64(span)).astype(np.int64)


def trigger_token_ids(key: WatermarkKey) -> NDArray[np.int64]:
    """``[count, length]`` token ids: the prefix, then tokens uniform over the alphabet."""
    spec = _trigger_spec(key)
    body = spec.length - len(spec.prefix)
    if body < 1 or len(spec.alphabet) < 2:
        raise WatermarkKeyError(
            f"trigger length {spec.length} (prefix {len(spec.prefix)}) / alphabet of "
            f"{len(spec.alphabet)} tokens too small; use longer sequences or more tokens"
        )
    alphabet = np.asarray(spec.alphabet, dtype=np.int64)
    picks = _uniform(key, "triggers", spec.count * body, len(alphabet))
    tokens = alphabet[picks].reshape(spec.count, body)
    prefix = np.broadcast_to(
        np.asarray(spec.prefix, dtype=np.int64), (spec.count, len(spec.prefix))
    )
    return np.concatenate([prefix, tokens], axis=1)


def trigger_labels(key: WatermarkKey) -> NDArray[np.int64]:
    """``[count]`` labels, uniform in ``[0, num_labels)`` and independent of the inputs.

    Because the labels are fresh randomness from the key, a model that never saw the key
    matches each one with probability exactly ``1 / num_labels`` whatever its biases: the
    binomial null of the trigger test holds with no control set.
    """
    spec = _trigger_spec(key)
    if spec.num_labels < 2:
        raise WatermarkKeyError(f"trigger labels need num_labels >= 2, got {spec.num_labels}")
    return _uniform(key, "trigger-labels", spec.count, spec.num_labels)


def _canonical(key: WatermarkKey) -> bytes:
    return json.dumps(key.to_dict(), sort_keys=True, separators=(",", ":")).encode()


def commitment(key: WatermarkKey) -> str:
    """Hex SHA-256 commitment over the canonical key encoding (salted)."""
    return hashlib.sha256(b"secfed-watermark-commitment/v1\x00" + _canonical(key)).hexdigest()


def check_commitment(key: WatermarkKey, published: str) -> bool:
    """Constant-time comparison of ``commitment(key)`` with a published hex string."""
    return hmac.compare_digest(commitment(key), published.strip().lower())


def save_key(key: WatermarkKey, path: Path | str) -> None:
    """Write the key as JSON with owner-only permissions (0600), refusing to overwrite."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(_canonical(key) + b"\n")


def load_key(path: Path | str) -> WatermarkKey:
    """Read a key written by :func:`save_key`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WatermarkKeyError(f"cannot read watermark key {path}: {err}") from err
    return WatermarkKey.from_dict(data)
