"""Seed -> mask expansion for pairwise-mask secure aggregation.

A mask is the AES-256-CTR keystream under a 256-bit seed (counter starting at zero): the
first ``4 * words`` bytes read as little-endian ``uint32`` words mask the vector, the next
8 bytes read as a little-endian ``uint64`` mask the weight. Each seed is derived for one
round, one purpose and one (pair of) parties, so the all-zero initial counter is never
reused under a key. Arithmetic is modulo 2**32 (and 2**64 for the weight); a protocol that
works modulo a smaller power of two simply keeps the low bits.

:func:`apply_masks` adds and subtracts many masks in place, streaming the keystreams block
by block so the working set stays in cache.

>>> import numpy as np
>>> acc = np.zeros(5, dtype=np.uint32)
>>> tail = apply_masks(acc, add=[b"k" * 32], subtract=[b"k" * 32])
>>> acc.tolist(), tail
([0, 0, 0, 0, 0], 0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from numpy.typing import NDArray

SEED_BYTES = 32
TAIL_BYTES = 8
_BLOCK_WORDS = 1 << 16
_ZERO_IV = bytes(16)
_U64 = (1 << 64) - 1


def _stream(seed: bytes) -> CipherContext:
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes")
    return Cipher(algorithms.AES(seed), modes.CTR(_ZERO_IV)).encryptor()


def expand_mask(seed: bytes, *, words: int) -> tuple[NDArray[np.uint32], int]:
    """The mask of ``seed``: ``words`` uint32 values and the uint64 weight mask."""
    if words < 0:
        raise ValueError(f"words must be non-negative, got {words}")
    raw = _stream(seed).update(bytes(4 * words + TAIL_BYTES))
    vec = np.frombuffer(raw, dtype="<u4", count=words).astype(np.uint32)
    return vec, int.from_bytes(raw[4 * words :], "little")


def apply_masks(acc: NDArray[np.uint32], *, add: Sequence[bytes], subtract: Sequence[bytes]) -> int:
    """``acc += sum(mask(a)) - sum(mask(s))`` modulo 2**32, in place.

    Returns the same combination of the weight masks, modulo 2**64.
    """
    if acc.dtype != np.uint32 or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise ValueError("accumulator must be a contiguous 1-D uint32 array")
    jobs = [(_stream(s), True) for s in add] + [(_stream(s), False) for s in subtract]
    if not jobs:
        return 0
    words = acc.shape[0]
    block = min(_BLOCK_WORDS, max(words, 1))
    zeros = memoryview(bytearray(4 * block))
    raw = bytearray(4 * block)
    buf = memoryview(raw)
    view = np.frombuffer(raw, dtype="<u4")
    for start in range(0, words, block):
        stop = min(words, start + block)
        n = stop - start
        part = acc[start:stop]
        for stream, plus in jobs:
            stream.update_into(zeros[: 4 * n], buf[: 4 * n])
            if plus:
                np.add(part, view[:n], out=part)
            else:
                np.subtract(part, view[:n], out=part)
    tail = 0
    for stream, plus in jobs:
        t = int.from_bytes(stream.update(bytes(TAIL_BYTES)), "little")
        tail = tail + t if plus else tail - t
    return tail & _U64
