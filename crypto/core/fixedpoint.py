"""Fixed-point encoding of float vectors for integer aggregation schemes.

A value ``v`` is clipped to ``[-clip, clip]`` and encoded as ``round(v * scale)``; the
weighted sum of ``n`` encoded vectors is exact integer arithmetic, so the only error is
rounding: at most ``0.5 / scale`` per encoded term, hence ``n * 0.5 / scale`` per
coordinate of a sum of ``n`` terms.

>>> import numpy as np
>>> q = encode(np.array([0.25, -1.5]), scale=2**16, clip=1.0)
>>> decode(q, scale=2**16).tolist()
[0.25, -1.0]
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from ..errors import EncodingError


def encode(values: NDArray[np.floating], *, scale: float, clip: float) -> NDArray[np.int64]:
    """Clip to ``[-clip, clip]`` and round ``values * scale`` to the nearest integer."""
    if clip <= 0 or not math.isfinite(clip):
        raise EncodingError(f"clip must be a positive finite number, got {clip}")
    if clip * scale >= 2**62:
        raise EncodingError(
            f"clip * scale = {clip * scale:.3g} does not fit int64: lower scale or clip"
        )
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise EncodingError("vector holds NaN or infinity: check the local update")
    return np.rint(np.clip(arr, -clip, clip) * scale).astype(np.int64)


def decode(ints: NDArray[np.integer], *, scale: float) -> NDArray[np.float64]:
    """Inverse of :func:`encode` (up to clipping and rounding)."""
    return np.asarray(ints, dtype=np.float64) / scale


def rounding_bound(*, terms: int, scale: float) -> float:
    """Largest absolute error per coordinate of a decoded sum of ``terms`` encoded values."""
    return terms * 0.5 / scale


def bits_for_sum(*, max_abs_sum: float) -> int:
    """Bits of a two's-complement (centred) residue that hold any integer in ``±max_abs_sum``."""
    return max(1, math.ceil(math.log2(2 * max_abs_sum + 1)))


def to_residues(ints: NDArray[np.int64], *, modulus: int) -> NDArray[np.uint64]:
    """Map signed integers to ``[0, modulus)`` (modulus at most 2**62)."""
    return np.mod(ints, modulus).astype(np.uint64)


def from_residues(residues: NDArray[np.unsignedinteger], *, modulus: int) -> NDArray[np.int64]:
    """Centred lift of residues mod ``modulus`` back to signed integers."""
    r = np.asarray(residues, dtype=np.uint64) % np.uint64(modulus)
    signed = r.astype(np.int64)
    return np.where(r >= np.uint64((modulus + 1) // 2), signed - modulus, signed)
