"""Weighted fixed-point quantisation and slot packing for additive schemes (BatchCrypt-style).

Pure functions; :class:`Quantiser` and :class:`SlotLayout` only hold numbers.

Quantisation. A client with weight ``w`` (``0 < w <= max_weight``) clips each coordinate to
``[-clip, clip]`` and quantises the weighted value with :func:`crypto.core.fixedpoint.encode`::

    q = round(w * clip(v) * S),   S = 2**precision_bits / 2**ceil(log2(clip * max_weight))

so ``|q| <= 2**precision_bits``. Negatives are handled by an offset: the slot term is
``t = q + 2**precision_bits`` in ``[0, term_max]`` with ``term_max = 2**(precision_bits + 1)``.
The weight itself travels in two more slots (high and low halves of ``round(w * Sw)``) so that
key holders learn the total weight, exactly for dyadic weights such as integer counts.

Error bound. For ``m`` contributors and inputs inside ``[-clip, clip]`` every coordinate of the
decoded weighted sum is within ``m * 0.5 / S`` (rounding, see
:func:`crypto.core.fixedpoint.rounding_bound`) plus ``m * clip * max_weight * 2**-50``
(float64 rounding) of ``sum_i w_i v_i``; see :func:`error_bound`. Clipping beyond ``clip`` is
intended, not error.

Packing. ``slots_per_plaintext`` terms of ``slot_bits`` bits each form one big-endian integer
(first slot most significant). ``slot_bits`` is the bit length of ``parties * term_max``, so the
slot-wise sum of up to ``parties`` packed plaintexts never carries into the next slot; a term
above ``term_max`` is refused with :class:`~crypto.errors.EncodingError` before encryption.

>>> layout = slot_layout(term_max=15, parties=3, plaintext_bits=64, count=5)
>>> (layout.slot_bits, layout.slots_per_plaintext, layout.plaintexts)
(6, 10, 1)
>>> unpack(pack(np.array([1, 2, 3, 15, 0], np.uint64), layout=layout), layout=layout).tolist()
[1, 2, 3, 15, 0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..errors import EncodingError, ParameterError
from . import fixedpoint

WEIGHT_SLOTS = 2
_MAX_SLOT_BITS = 63


def ceil_log2(x: float) -> int:
    """Smallest integer ``e`` with ``2**e >= x`` (exact, for positive finite ``x``)."""
    mant, exp = math.frexp(x)
    return exp - 1 if mant == 0.5 else exp


@dataclass(frozen=True)
class Quantiser:
    """Public quantisation parameters every party of a round agrees on."""

    clip: float
    max_weight: float
    precision_bits: int

    def __post_init__(self) -> None:
        for name in ("clip", "max_weight"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not (value > 0 and math.isfinite(value)):
                raise ParameterError(f"{name} must be a positive finite number, got {value!r}")
        pb = self.precision_bits
        if not isinstance(pb, int) or isinstance(pb, bool) or not 4 <= pb <= 40:
            raise ParameterError(f"precision_bits must be an integer in [4, 40], got {pb!r}")

    @property
    def scale(self) -> float:
        """Fixed-point scale ``S`` of weighted values (a power of two)."""
        return 2.0 ** (self.precision_bits - ceil_log2(self.clip * self.max_weight))

    @property
    def offset(self) -> int:
        """Added to every quantised value so slot terms are non-negative."""
        return 1 << self.precision_bits

    @property
    def term_max(self) -> int:
        """Largest slot term one client may contribute."""
        return 1 << (self.precision_bits + 1)

    @property
    def weight_scale(self) -> float:
        """Fixed-point scale of the weight, split over two slots of ``precision_bits + 1`` bits."""
        return 2.0 ** (2 * (self.precision_bits + 1) - ceil_log2(self.max_weight))


@dataclass(frozen=True)
class SlotLayout:
    """How ``count`` slot terms are laid out in plaintexts."""

    slot_bits: int
    slots_per_plaintext: int
    count: int
    term_max: int

    @property
    def plaintexts(self) -> int:
        return -(-self.count // self.slots_per_plaintext)

    @property
    def plaintext_bytes(self) -> int:
        """Fixed width of one packed plaintext in bytes."""
        return -(-(self.slots_per_plaintext * self.slot_bits) // 8)


def slot_layout(*, term_max: int, parties: int, plaintext_bits: int, count: int) -> SlotLayout:
    """Layout whose slots hold the sum of ``parties`` terms each at most ``term_max``."""
    if term_max < 1 or parties < 1 or count < 1:
        raise ParameterError(
            f"term_max, parties and count must be positive, got {term_max}, {parties}, {count}"
        )
    slot_bits = (parties * term_max).bit_length()
    if slot_bits > _MAX_SLOT_BITS:
        raise ParameterError(
            f"a slot for {parties} parties needs {slot_bits} bits (> {_MAX_SLOT_BITS}): "
            "lower precision_bits or the cohort size"
        )
    slots = plaintext_bits // slot_bits
    if slots < 1:
        raise ParameterError(
            f"a {slot_bits}-bit slot does not fit a {plaintext_bits}-bit plaintext: "
            "use a larger key or lower precision_bits"
        )
    return SlotLayout(slot_bits, slots, count, term_max)


def pack(terms: NDArray[np.integer], *, layout: SlotLayout) -> bytes:
    """Pack slot terms into ``layout.plaintexts`` fixed-width big-endian plaintexts."""
    t = np.asarray(terms)
    if t.shape != (layout.count,):
        raise EncodingError(f"expected {layout.count} slot terms, got shape {t.shape}")
    if t.dtype.kind not in "iu":
        raise EncodingError(f"slot terms must be integers, got dtype {t.dtype}")
    if t.size and (int(t.min()) < 0 or int(t.max()) > layout.term_max):
        bad = int(np.argmax((t < 0) | (t > layout.term_max)))
        raise EncodingError(
            f"slot term {int(t[bad])} at index {bad} is outside [0, {layout.term_max}]: "
            "it could carry into the next slot; refused before encryption"
        )
    k, b, n_pt = layout.slots_per_plaintext, layout.slot_bits, layout.plaintexts
    padded = np.zeros(n_pt * k, dtype=">u8")
    padded[: layout.count] = t
    bits = np.unpackbits(padded.view(np.uint8).reshape(-1, 8), axis=1)[:, 64 - b :]
    rows = bits.reshape(n_pt, k * b)
    lead = layout.plaintext_bytes * 8 - k * b
    if lead:
        rows = np.concatenate([np.zeros((n_pt, lead), np.uint8), rows], axis=1)
    return np.packbits(rows, axis=1).tobytes()


def unpack(blob: bytes, *, layout: SlotLayout) -> NDArray[np.uint64]:
    """Inverse of :func:`pack`; refuses a plaintext with bits outside its slots."""
    width, n_pt = layout.plaintext_bytes, layout.plaintexts
    if len(blob) != width * n_pt:
        raise EncodingError(f"expected {width * n_pt} plaintext bytes, got {len(blob)}")
    k, b = layout.slots_per_plaintext, layout.slot_bits
    rows = np.unpackbits(np.frombuffer(blob, np.uint8).reshape(n_pt, width), axis=1)
    lead = width * 8 - k * b
    if rows[:, :lead].any():
        raise EncodingError("a plaintext overflows its slots: the aggregate is not a valid sum")
    full = np.zeros((n_pt * k, 64), np.uint8)
    full[:, 64 - b :] = rows[:, lead:].reshape(n_pt * k, b)
    values = np.packbits(full, axis=1).view(">u8").reshape(-1).astype(np.uint64)
    if values[layout.count :].any():
        raise EncodingError("padding slots are not zero: the aggregate is not a valid sum")
    return values[: layout.count]


def quantise_weighted(
    vector: NDArray[np.floating], *, weight: float, quantiser: Quantiser
) -> NDArray[np.uint64]:
    """Slot terms of one client: offset quantised ``weight * vector``, then two weight slots."""
    qz = quantiser
    if not (0 < weight <= qz.max_weight and math.isfinite(weight)):
        raise EncodingError(
            f"weight {weight} is outside (0, max_weight={qz.max_weight}]: raise the max_weight "
            "option to the largest client weight"
        )
    clipped = np.clip(np.asarray(vector, dtype=np.float64), -qz.clip, qz.clip)
    q = fixedpoint.encode(weight * clipped, scale=qz.scale, clip=qz.clip * qz.max_weight)
    w_int = round(weight * qz.weight_scale)
    if w_int < 1:
        raise EncodingError(f"weight {weight} rounds to 0 at weight scale {qz.weight_scale}")
    half = qz.precision_bits + 1
    weight_terms = np.array([w_int >> half, w_int & ((1 << half) - 1)], dtype=np.uint64)
    return np.concatenate([(q + qz.offset).astype(np.uint64), weight_terms])


def dequantise_sums(
    sums: NDArray[np.unsignedinteger], *, contributors: int, quantiser: Quantiser
) -> tuple[NDArray[np.float64], float]:
    """Weighted sum and total weight from slot sums of ``contributors`` clients.

    Raises :class:`~crypto.errors.EncodingError` if a sum is impossible for that many honest
    contributions (a malformed ciphertext or a cohort larger than the layout allowed).
    """
    qz, m = quantiser, contributors
    values = np.asarray(sums, dtype=np.uint64)
    if m < 1 or values.ndim != 1 or values.size <= WEIGHT_SLOTS:
        raise EncodingError(f"cannot decode {values.shape} slot sums from {m} contributors")
    body = values[:-WEIGHT_SLOTS]
    hi, lo = (int(v) for v in values[-WEIGHT_SLOTS:])
    half = qz.precision_bits + 1
    w_int = (hi << half) + lo
    too_big = body.size > 0 and int(body.max()) > m * qz.term_max
    if too_big or not m <= w_int <= m << (2 * half):
        raise EncodingError(
            f"decrypted sums are out of range for {m} contributors: a contribution was malformed"
        )
    centred = body.astype(np.int64) - np.int64(m * qz.offset)
    return centred.astype(np.float64) / qz.scale, w_int / qz.weight_scale


def error_bound(*, contributors: int, quantiser: Quantiser) -> float:
    """Largest error per coordinate of a decoded weighted sum (inputs within ``±clip``)."""
    qz = quantiser
    rounding = fixedpoint.rounding_bound(terms=contributors, scale=qz.scale)
    # float64: the product w * v (2**-53 relative) and int -> float of sums beyond 2**53.
    return rounding + contributors * qz.clip * qz.max_weight * 2.0**-50
