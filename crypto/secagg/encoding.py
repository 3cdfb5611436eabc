"""Options, per-round parameters and the integer encoding of secagg / secagg+.

A client with update ``v`` and weight ``w`` contributes, modulo ``2**m``:

* per coordinate ``round(w * clip(v) * scale)`` with ``clip`` to ``[-clip, clip]`` and
  ``scale = 2**scale_bits`` (the same rounding as :func:`crypto.core.fixedpoint.encode`, fused
  and streamed for speed);
* the weight as a 64-bit fixed-point number ``round(w * 2**32)`` (its own modulus 2**64).

``m`` is the smallest multiple of 8 (so packing is byte-aligned) with room for the sum of
the whole cohort, ``n * max_weight * clip * scale`` in absolute value (centred residues);
more than 32 bits raises :class:`~crypto.errors.EncodingError`. Each coordinate travels in
``m / 8`` bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from ..core import fixedpoint, valuerange
from ..core.masking import MaskStream
from ..errors import EncodingError, ParameterError, ProtocolError
from .graph import GraphParams, complete_params, sparse_params

WEIGHT_FRACTION_BITS = 32
MAX_MODULUS_BITS = 32
_BLOCK = 1 << 16


@dataclass(frozen=True)
class SecAggOptions:
    """Validated protocol options (see :mod:`crypto.secagg` for their meaning)."""

    clip: float = 1.0
    scale_bits: int = 16
    max_weight: float = 1.0
    max_dropout_fraction: float = 0.3
    max_corrupt_fraction: float = 0.2
    threshold: int | None = None
    neighbours: int | None = None
    out_of_range: str = valuerange.REFUSE

    def __post_init__(self) -> None:
        valuerange.policy({valuerange.OPTION: self.out_of_range})
        for name in ("clip", "max_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ParameterError(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ParameterError(f"{name} must be positive and finite, got {value}")
        sb = self.scale_bits
        if isinstance(sb, bool) or not isinstance(sb, int) or not 0 <= sb <= 30:
            raise ParameterError(f"scale_bits must be an integer in [0, 30], got {sb!r}")
        for name in ("max_dropout_fraction", "max_corrupt_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ParameterError(f"{name} must be a number, got {value!r}")
            if not 0.0 <= value < 0.5:
                raise ParameterError(f"{name} must lie in [0, 0.5), got {value}")
        for name in ("threshold", "neighbours"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ParameterError(f"{name} must be an integer or unset, got {value!r}")

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)


@dataclass(frozen=True)
class RoundParams:
    """Everything both sides derive, identically, for one round."""

    graph: GraphParams
    modulus_bits: int
    dim: int
    scale: float
    clip: float
    max_weight: float

    @property
    def words(self) -> int:
        """Vector length after padding to a multiple of 4 (for 3-byte packing)."""
        return -(-self.dim // 4) * 4

    @property
    def packed_bytes(self) -> int:
        return self.words * self.modulus_bits // 8


def modulus_bits(*, cohort_size: int, max_weight: float, clip: float, scale: float) -> int:
    """Bits (a multiple of 8, at most 32) of the modulus that holds the cohort's sum."""
    per_client = max_weight * clip * scale + 0.5
    need = fixedpoint.bits_for_sum(max_abs_sum=cohort_size * per_client)
    bits = -(-need // 8) * 8
    if bits > MAX_MODULUS_BITS:
        raise EncodingError(
            f"the sum of {cohort_size} clients with max_weight={max_weight}, clip={clip} and "
            f"scale={scale:g} needs a {need}-bit modulus, more than {MAX_MODULUS_BITS}: lower "
            "scale_bits, clip or max_weight, or split the cohort"
        )
    if cohort_size * max_weight * 2.0**WEIGHT_FRACTION_BITS >= 2.0**63:
        raise EncodingError(
            f"the total weight of {cohort_size} clients of weight up to {max_weight} overflows "
            "the 64-bit weight encoding: lower max_weight"
        )
    return bits


def graph_params(options: SecAggOptions, *, sparse: bool, cohort_size: int) -> GraphParams:
    """Neighbour count and threshold of the secagg (complete) or secagg+ (sparse) rule."""
    if not sparse and options.neighbours is not None:
        raise ParameterError("neighbours applies to secagg+ only; secagg uses the complete graph")
    dropout, corrupt = options.max_dropout_fraction, options.max_corrupt_fraction
    if sparse:
        return sparse_params(
            cohort_size,
            dropout=dropout,
            corrupt=corrupt,
            neighbours=options.neighbours,
            threshold=options.threshold,
        )
    return complete_params(
        cohort_size, dropout=dropout, corrupt=corrupt, threshold=options.threshold
    )


@lru_cache(maxsize=256)
def round_params(
    options: SecAggOptions, *, sparse: bool, cohort_size: int, dim: int
) -> RoundParams:
    """Graph, threshold and modulus for a cohort of ``cohort_size`` and ``dim`` parameters."""
    graph = graph_params(options, sparse=sparse, cohort_size=cohort_size)
    bits = modulus_bits(
        cohort_size=cohort_size,
        max_weight=options.max_weight,
        clip=options.clip,
        scale=options.scale,
    )
    return RoundParams(graph, bits, dim, options.scale, options.clip, options.max_weight)


def encode_weight(weight: float) -> int:
    """``round(weight * 2**32)``, refusing weights too small to register."""
    fixed = round(weight * 2**WEIGHT_FRACTION_BITS)
    if fixed < 1:
        raise EncodingError(f"weight {weight} is below the 2**-32 resolution of the encoding")
    return fixed


def decode_weight(fixed: int) -> float:
    return fixed / 2**WEIGHT_FRACTION_BITS


def encode_into(
    out: NDArray[np.uint32], vector: NDArray[np.floating], *, weight: float, params: RoundParams
) -> None:
    """``out[:dim] = round(weight * clip(vector) * scale) mod 2**32``, zero padding after."""
    dim = params.dim
    factor = np.float64(weight * params.scale)  # a float64 scalar: the product is float64
    limit = weight * params.clip * params.scale
    buf = np.empty(min(_BLOCK, dim), dtype=np.float64)
    signed = out.view(np.int32)
    for start in range(0, dim, _BLOCK):
        stop = min(dim, start + _BLOCK)
        part = buf[: stop - start]
        np.multiply(vector[start:stop], factor, out=part)
        np.clip(part, -limit, limit, out=part)
        np.rint(part, out=part)
        signed[start:stop] = part
    out[dim:] = 0


def masked_payload(
    vector: NDArray[np.floating],
    *,
    weight: float,
    weight_fixed: int,
    params: RoundParams,
    add: Sequence[bytes],
    subtract: Sequence[bytes],
) -> bytearray:
    """``uint64 tail || packed masked words``, encoded, masked and packed a block at a time.

    Same bytes as :func:`encode_into` + :func:`~crypto.core.masking.apply_masks` +
    :func:`pack`, but the only vector-sized allocation is the payload itself
    (``params.packed_bytes``), so a client needs its update plus about one packed copy.
    """
    dim, words, bits = params.dim, params.words, params.modulus_bits
    factor = np.float64(weight * params.scale)
    limit = weight * params.clip * params.scale
    masks = MaskStream(add=add, subtract=subtract)
    out = bytearray(8 + params.packed_bytes)
    block = np.empty(min(_BLOCK, words), dtype=np.uint32)
    work = np.empty(block.shape[0], dtype=np.float64)
    at = 8
    for start in range(0, words, _BLOCK):
        stop = min(words, start + _BLOCK)
        part, real = block[: stop - start], max(0, min(dim, stop) - start)
        tmp = work[:real]
        np.multiply(vector[start : start + real], factor, out=tmp)
        np.clip(tmp, -limit, limit, out=tmp)
        np.rint(tmp, out=tmp)
        part.view(np.int32)[:real] = tmp
        part[real:] = 0
        masks.apply(part)
        packed = pack(part, bits=bits)
        out[at : at + len(packed)] = packed
        at += len(packed)
    tail = (weight_fixed + masks.tail()) & 0xFFFFFFFFFFFFFFFF
    out[:8] = tail.to_bytes(8, "little")
    return out  # not copied into bytes: the channel's frame is its one copy


def accumulator(params: RoundParams) -> NDArray[np.uint32]:
    """A zeroed sum buffer: ``params.words`` uint32 words, with room to decode in place.

    It holds ``2 * words`` words (8 bytes per coordinate) so :func:`decode_in_place` can turn
    it into the float64 sum without a second vector; the upper half is never written before
    decoding, so its zero pages stay unmapped (not resident) while the inputs are summed.
    """
    return np.zeros(2 * params.words, dtype=np.uint32)


def decode_in_place(buffer: NDArray[np.uint32], *, params: RoundParams) -> NDArray[np.float64]:
    """Centred lift modulo ``2**m`` of ``buffer[:dim]``, scaled back to floats, in ``buffer``.

    Returns a float64 view of ``buffer`` (which :func:`accumulator` sized for this). Blocks go
    from the end: float64 ``i`` overwrites words ``2i`` and ``2i + 1``, never a word below ``i``
    that is still to be read.
    """
    dim, bits = params.dim, params.modulus_bits
    if buffer.dtype != np.uint32 or buffer.shape[0] < 2 * dim:
        raise ValueError("decode_in_place needs an accumulator() buffer")
    out = buffer.view(np.float64)[:dim]
    shift = np.uint32(32 - bits)
    inv_scale = 1.0 / params.scale
    for start in range(-(-dim // _BLOCK) * _BLOCK - _BLOCK, -1, -_BLOCK):
        stop = min(dim, start + _BLOCK)
        words = buffer[start:stop].copy()
        if shift:  # keep the low m bits, sign-extended: the centred residue
            np.left_shift(words, shift, out=words)
        signed = words.view(np.int32)
        if shift:
            np.right_shift(signed, shift.astype(np.int32), out=signed)
        np.multiply(signed, inv_scale, out=out[start:stop])
    return out


def pack(values: NDArray[np.uint32], *, bits: int) -> bytes:
    """The low ``bits`` of each value, little-endian, ``bits / 8`` bytes each."""
    if bits == 32:
        return values.astype("<u4", copy=False).tobytes()
    if bits == 16:
        return values.astype("<u2").tobytes()
    if bits == 8:
        return values.astype(np.uint8).tobytes()
    if bits != 24 or values.shape[0] % 4:
        raise ValueError(f"cannot pack {values.shape[0]} values at {bits} bits")
    q = values.reshape(-1, 4)
    out = np.empty((q.shape[0], 3), dtype=np.uint32)
    np.bitwise_or(q[:, 0] & 0xFFFFFF, q[:, 1] << 24, out=out[:, 0])
    np.bitwise_or((q[:, 1] >> 8) & 0xFFFF, q[:, 2] << 16, out=out[:, 1])
    np.bitwise_or((q[:, 2] >> 16) & 0xFF, q[:, 3] << 8, out=out[:, 2])
    return out.astype("<u4", copy=False).tobytes()


def unpack_add(acc: NDArray[np.uint32], raw: bytes | memoryview, *, bits: int) -> None:
    """``acc += unpack(raw)`` modulo 2**32 (inverse of :func:`pack`, fused with the sum).

    Works a block at a time on a view of ``raw``: no copy of the input, no vector-sized
    temporaries.
    """
    words = acc.shape[0]
    if len(raw) != words * bits // 8:
        raise ProtocolError(
            f"masked vector is {len(raw)} bytes, expected {words * bits // 8} "
            f"({words} values at {bits} bits)"
        )
    if bits != 24:
        kind: dict[int, str] = {32: "<u4", 16: "<u2", 8: "u1"}
        vals = np.frombuffer(raw, dtype=np.dtype(kind[bits]))
        for start in range(0, words, _BLOCK):
            stop = min(words, start + _BLOCK)
            np.add(acc[start:stop], vals[start:stop], out=acc[start:stop], casting="unsafe")
        return
    w = np.frombuffer(raw, dtype="<u4").reshape(-1, 3)
    q = acc.reshape(-1, 4)
    rows = _BLOCK // 4
    tmp = np.empty(min(rows, q.shape[0]), dtype=np.uint32)
    for start in range(0, q.shape[0], rows):
        stop = min(q.shape[0], start + rows)
        wb, qb, t = w[start:stop], q[start:stop], tmp[: stop - start]
        np.bitwise_and(wb[:, 0], 0xFFFFFF, out=t)
        qb[:, 0] += t
        np.right_shift(wb[:, 0], 24, out=t)
        t |= (wb[:, 1] & 0xFFFF) << 8
        qb[:, 1] += t
        np.right_shift(wb[:, 1], 16, out=t)
        t |= (wb[:, 2] & 0xFF) << 16
        qb[:, 2] += t
        np.right_shift(wb[:, 2], 8, out=t)
        qb[:, 3] += t
