"""CKKS parameters for aggregation: presets, validation, error bound, chunk packing (pure).

A parameter set is a ring degree ``N``, a coefficient-modulus chain
``coeff_mod_bit_sizes = [data primes..., special prime]``, a scale ``2**scale_bits``, a weighting
mode, and the input range (``clip`` per coordinate, ``max_weight`` per client) that fixes how
large a decrypted sum can get. :func:`resolve` builds and validates one; anything insecure or
unable to hold the aggregate is refused with :class:`~crypto.errors.ParameterError`.

Security: the total coefficient-modulus size must not exceed the HomomorphicEncryption.org
standard limit for ``N`` at the requested level (ternary secret, classical attacks).

Depth: aggregation is additions only (``weighting="client"``: depth 0, one data prime) or
additions plus one plaintext-scalar multiply (``weighting="server"``: depth 1, the last data
prime is the rescaling prime, and the scale *is* that prime so rescaling is exact).

Error bound (per coordinate of the decrypted weighted sum), :func:`error_bound`:

* every fresh ciphertext carries, per coefficient, the encryption error (SEAL's sampler:
  centred binomial of variance 10.5, or a normal of sigma 3.2 clipped at 6 sigma, both
  sub-Gaussian with variance proxy <= 10.5) plus the encoder's rounding (uniform in
  ``[-1/2, 1/2]``, proxy 1/4, modelled as independent as in the CKKS literature);
* decoding takes the real part of ``sum_j e_j zeta^j``, and ``sum_j cos^2 = N/2``, so one
  ciphertext contributes a slot-domain variance proxy ``(N/2)(10.5 + 1/4) / scale**2``;
* n clients add their proxies (client weighting) or ``w_i**2`` times theirs plus one rescale
  rounding each, proxy ``(N/2)(1 + N)/4 / scale**2`` (server weighting, secret key ternary);
* a sub-Gaussian tail with ``z = sqrt(2 ln(2 / 2**-60))`` gives the noise term (each
  coordinate exceeds it with probability below 2**-60);
* deterministic terms: the server-side weight is encoded as ``round(w * scale) / scale``
  (``clip / (2 scale)`` per client); double-precision FFTs in encode and decode err by about
  ``(log2 N) 2**-53`` of the magnitude per slot (measured: std 1.5, max over 2**16 slots 7,
  in units of ``2**-53`` times the magnitude): the bound takes ``8 (log2 N + 1) 2**-53`` times
  the magnitudes encoded plus decoded.

Decrypted values are then rounded to a power-of-two grid just above that bound (so released
aggregates do not expose the exact decryption, see the threat model in :mod:`crypto.ckks`);
:func:`released_bound` adds the half-grid.

>>> p = resolve(preset="fast")
>>> p.poly_modulus_degree, p.coeff_mod_bit_sizes, p.slots
(8192, (60, 60), 4096)
>>> error_bound(p, scale=2.0**36, n_clients=10, weight_sum=10.0, weight_sq_sum=10.0) < 1e-6
True
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ParameterError, ProtocolError

Weighting = Literal["client", "server"]

# HomomorphicEncryption.org standard, ternary secret: max total coefficient-modulus bits.
MAX_COEFF_BITS: dict[int, dict[int, int]] = {
    128: {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881},
    192: {1024: 19, 2048: 37, 4096: 75, 8192: 152, 16384: 305, 32768: 611},
    256: {1024: 14, 2048: 29, 4096: 58, 8192: 118, 16384: 237, 32768: 476},
}

PRESETS: dict[str, dict[str, Any]] = {
    # One 60-bit data prime: the smallest ciphertext that holds a depth-0 sum.
    "fast": {
        "poly_modulus_degree": 8192,
        "scale_bits": 36,
        "coeff_mod_bit_sizes": {"client": (60, 60), "server": (60, 36, 60)},
    },
    # Two data primes and a 2**50 scale: ~2**14 times less noise, room for huge sums.
    "precise": {
        "poly_modulus_degree": 16384,
        "scale_bits": 50,
        "coeff_mod_bit_sizes": {"client": (60, 60, 60), "server": (60, 60, 50, 60)},
    },
}

ENC_PROXY = 10.5  # variance proxy of SEAL's encryption error, per coefficient
ROUND_PROXY = 0.25  # variance proxy of a rounding error in [-1/2, 1/2]
TAIL_LOG2 = 60  # each coordinate exceeds the bound with probability < 2**-TAIL_LOG2
TAIL_Z = math.sqrt(2.0 * math.log(2.0) * (TAIL_LOG2 + 1))
FP_EPS = 2.0**-53
MIN_PRECISION_BITS = 20  # a unit-weight input of size clip must keep this many bits
MIN_PRIME_BITS, MAX_PRIME_BITS = 20, 60
_U32 = struct.Struct("!I")
Buffer = bytes | memoryview


@dataclass(frozen=True)
class CkksParams:
    """A validated CKKS parameter set for aggregation (build it with :func:`resolve`)."""

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    weighting: Weighting
    clip: float
    max_weight: float
    security_bits: int

    @property
    def slots(self) -> int:
        """Real values packed into one ciphertext."""
        return self.poly_modulus_degree // 2

    @property
    def data_primes(self) -> tuple[int, ...]:
        """Bit sizes of the primes ciphertexts are encrypted under (all but the special one)."""
        return self.coeff_mod_bit_sizes[:-1]

    @property
    def depth(self) -> int:
        """Rescalings the aggregation needs."""
        return 1 if self.weighting == "server" else 0

    def headroom_bits(self) -> int:
        """log2 of the largest |weighted sum| the decryption modulus holds without wrapping."""
        kept = self.data_primes[: len(self.data_primes) - self.depth]
        # Each b-bit prime is >= 2**(b-1); keep a factor 2 for the sign and 2 for noise.
        return sum(kept) - len(kept) - self.scale_bits - 2

    def max_clients(self) -> int:
        """Largest cohort whose sum fits, every client at ``max_weight`` and ``clip``."""
        top = self.clip * self.max_weight
        if self.depth:
            primes = self.data_primes
            # Server weighting: each w * x sits at scale**2 on the top level before rescaling.
            if math.log2(top) > sum(primes) - len(primes) - 2 * self.scale_bits - 2:
                return 0
        return int(2.0 ** self.headroom_bits() // top)


def resolve(
    *,
    preset: str = "fast",
    poly_modulus_degree: int | None = None,
    coeff_mod_bit_sizes: tuple[int, ...] | list[int] | None = None,
    scale_bits: int | None = None,
    weighting: str = "client",
    clip: float = 1.0,
    max_weight: float = 1e4,
    security_bits: int = 128,
) -> CkksParams:
    """Apply ``preset``, override it with the explicit values, validate, return the set."""
    if preset not in PRESETS:
        raise ParameterError(f"unknown CKKS preset {preset!r}; choose one of {sorted(PRESETS)}")
    if weighting not in ("client", "server"):
        raise ParameterError(
            f"weighting={weighting!r} is unknown: use 'client' (clients pre-multiply, weights "
            "stay encrypted) or 'server' (server multiplies by plaintext weights it sees)"
        )
    base = PRESETS[preset]
    coeffs = base["coeff_mod_bit_sizes"][weighting] if coeff_mod_bit_sizes is None else None
    params = CkksParams(
        poly_modulus_degree=_int("poly_modulus_degree", poly_modulus_degree)
        if poly_modulus_degree is not None
        else base["poly_modulus_degree"],
        coeff_mod_bit_sizes=tuple(coeffs)
        if coeffs is not None
        else tuple(_int("coeff_mod_bit_sizes", b) for b in coeff_mod_bit_sizes or ()),
        scale_bits=_int("scale_bits", scale_bits) if scale_bits is not None else base["scale_bits"],
        weighting="server" if weighting == "server" else "client",
        clip=_positive("clip", clip),
        max_weight=_positive("max_weight", max_weight),
        security_bits=_int("security_bits", security_bits),
    )
    validate(params)
    return params


def validate(p: CkksParams) -> None:
    """Refuse insecure parameters and those that cannot hold the aggregate precisely."""
    n = p.poly_modulus_degree
    if p.security_bits not in MAX_COEFF_BITS:
        raise ParameterError(
            f"security_bits={p.security_bits} is not supported; use one of "
            f"{sorted(MAX_COEFF_BITS)} (128 is the default and the minimum)"
        )
    limits = MAX_COEFF_BITS[p.security_bits]
    if n not in limits:
        raise ParameterError(
            f"poly_modulus_degree={n} must be one of {sorted(limits)} (8192 or 16384 usual)"
        )
    bits = p.coeff_mod_bit_sizes
    if len(bits) < 2 + p.depth:
        raise ParameterError(
            f"coeff_mod_bit_sizes={list(bits)} needs at least {2 + p.depth} primes "
            f"(data primes then the special prime) for weighting={p.weighting!r}; "
            f"e.g. {list(PRESETS['fast']['coeff_mod_bit_sizes'][p.weighting])}"
        )
    if any(not MIN_PRIME_BITS <= b <= MAX_PRIME_BITS for b in bits):
        raise ParameterError(
            f"coeff_mod_bit_sizes={list(bits)}: each prime must have {MIN_PRIME_BITS} to "
            f"{MAX_PRIME_BITS} bits"
        )
    if sum(bits) > limits[n]:
        bigger = [m for m in sorted(limits) if limits[m] >= sum(bits)]
        raise ParameterError(
            f"coeff_mod_bit_sizes={list(bits)} total {sum(bits)} bits, over the "
            f"{limits[n]}-bit limit for {p.security_bits}-bit security at poly_modulus_degree="
            f"{n}: drop or shrink primes"
            + (f", or raise poly_modulus_degree to {bigger[0]}" if bigger else "")
        )
    if p.depth and bits[-2] != p.scale_bits:
        raise ParameterError(
            f"weighting='server' rescales by the last data prime, which must have scale_bits="
            f"{p.scale_bits} bits, got {bits[-2]}: set coeff_mod_bit_sizes[-2] = {p.scale_bits}"
        )
    if p.max_clients() < 1:
        raise ParameterError(
            f"clip={p.clip} * max_weight={p.max_weight} overflows a {sum(p.data_primes)}-bit "
            f"data modulus at scale 2**{p.scale_bits}: lower scale_bits, clip or max_weight, "
            "or add a data prime (preset 'precise')"
        )
    bound = error_bound(p, scale=2.0**p.scale_bits, n_clients=1, weight_sum=1.0, weight_sq_sum=1.0)
    if bound > p.clip * 2.0**-MIN_PRECISION_BITS:
        raise ParameterError(
            f"scale 2**{p.scale_bits} leaves noise {bound:.2e} on inputs of range clip="
            f"{p.clip}: fewer than {MIN_PRECISION_BITS} bits of precision; raise scale_bits"
        )


def check_cohort(p: CkksParams, *, n_clients: int) -> None:
    """Refuse a cohort whose weighted sum could wrap around the decryption modulus."""
    cap = p.max_clients()
    if n_clients > cap:
        raise ParameterError(
            f"a cohort of {n_clients} clients at max_weight={p.max_weight} and clip={p.clip} "
            f"can overflow these CKKS parameters (at most {cap} clients): lower max_weight "
            "(normalise the weights), lower scale_bits, or use preset 'precise'"
        )


def chunk_sizes(p: CkksParams, *, length: int) -> list[int]:
    """Lengths of the ciphertext chunks packing ``length`` values (all full but the last)."""
    if length <= 0:
        raise ParameterError(f"cannot pack {length} values")
    full, rest = divmod(length, p.slots)
    return [p.slots] * full + ([rest] if rest else [])


def error_bound(
    p: CkksParams, *, scale: float, n_clients: int, weight_sum: float, weight_sq_sum: float
) -> float:
    """Per-coordinate bound on |decrypted weighted sum - exact weighted sum| (before release).

    ``scale`` is the exact encoding scale; ``weight_sum``/``weight_sq_sum`` are the sum and
    the sum of squares of the contributors' weights (only the sum matters for client
    weighting). Holds except with probability 2**-60 per coordinate (see the module doc).
    """
    n = p.poly_modulus_degree
    fresh = (n / 2) * (ENC_PROXY + ROUND_PROXY)
    if p.weighting == "client":
        proxy = n_clients * fresh
        fixed = 0.0
        magnitude = 2.0 * p.clip * weight_sum
    else:
        proxy = weight_sq_sum * fresh + n_clients * (n / 2) * (1 + n) * ROUND_PROXY
        fixed = n_clients * p.clip / (2.0 * scale)
        magnitude = n_clients * p.clip + p.clip * weight_sum
    fp = 8.0 * (math.log2(n) + 1) * FP_EPS * magnitude
    return TAIL_Z * math.sqrt(proxy) / scale + fixed + fp


def release_grid(bound: float) -> float:
    """Power-of-two grid that released values are rounded to (just above ``bound``)."""
    return 2.0 ** math.ceil(math.log2(bound))


def released_bound(bound: float) -> float:
    """Error bound of values rounded to :func:`release_grid`."""
    return bound + release_grid(bound) / 2


# -- chunk packing: TenSEAL CKKSVectorProto (sizes=1, ciphertexts=2, scale=3) and lists
def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def wrap_chunk(ct: Buffer, *, size: int, scale: float) -> bytes:
    """A serialized one-ciphertext TenSEAL ``CKKSVector`` around a SEAL ciphertext."""
    sizes = _varint(size)
    head = (b"\x0a", _varint(len(sizes)), sizes, b"\x12", _varint(len(ct)))
    return b"".join((*head, ct, b"\x19", struct.pack("<d", scale)))


def unwrap_chunk(proto: bytes) -> memoryview:
    """The SEAL ciphertext inside a serialized one-ciphertext TenSEAL ``CKKSVector`` (a view)."""
    pos, found, view = 0, [], memoryview(proto)
    while pos < len(proto):
        key, pos = _read_varint(proto, pos)
        kind = key & 7
        if kind == 0:
            _, pos = _read_varint(proto, pos)
        elif kind == 1:
            pos += 8
        elif kind == 2:
            length, pos = _read_varint(proto, pos)
            if key >> 3 == 2:
                found.append(view[pos : pos + length])
            pos += length
        else:
            raise ProtocolError(f"unexpected protobuf wire type {kind} in a CKKS vector")
    if len(found) != 1 or pos != len(proto):
        raise ProtocolError(f"expected one ciphertext in a CKKS vector, found {len(found)}")
    return found[0]


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(buf):
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ProtocolError("truncated varint in a CKKS vector")


def pack_chunks(chunks: Sequence[Buffer]) -> bytes:
    """``u32 count`` then ``u32 length || bytes`` per chunk."""
    parts: list[Buffer] = [_U32.pack(len(chunks))]
    for c in chunks:
        parts += (_U32.pack(len(c)), c)
    return b"".join(parts)


def unpack_chunks(body: bytes, *, offset: int, count: int, who: str) -> list[memoryview]:
    """Inverse of :func:`pack_chunks` (views into ``body``); the list must fill it exactly."""
    view = memoryview(body)
    try:
        (n,) = _U32.unpack_from(view, offset)
        if n != count:
            raise ProtocolError(f"{who} sent {n} ciphertext chunks, expected {count}")
        pos, out = offset + _U32.size, []
        for _ in range(n):
            (length,) = _U32.unpack_from(view, pos)
            pos += _U32.size
            if pos + length > len(body):
                raise ProtocolError(f"{who}'s chunk list is truncated")
            out.append(view[pos : pos + length])
            pos += length
    except struct.error:
        raise ProtocolError(f"{who}'s chunk list is truncated") from None
    if pos != len(body):
        raise ProtocolError(f"{who}'s message has {len(body) - pos} trailing bytes")
    return out


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(f"{name} must be an integer, got {value!r}")
    return value


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ParameterError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ParameterError(f"{name} must be positive and finite, got {value}")
    return float(value)
