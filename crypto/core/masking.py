"""Seed -> mask expansion for pairwise-mask secure aggregation.

A mask is the AES-256-CTR keystream under a 256-bit seed (counter starting at zero): the
first ``4 * words`` bytes read as little-endian ``uint32`` words mask the vector, the next
8 bytes read as a little-endian ``uint64`` mask the weight. Each seed is derived for one
round, one purpose and one (pair of) parties, so the all-zero initial counter is never
reused under a key. Arithmetic is modulo 2**32 (and 2**64 for the weight); a protocol that
works modulo a smaller power of two simply keeps the low bits.

:func:`apply_masks` adds and subtracts many masks in place, streaming the keystreams block
by block so the working set stays in cache; :class:`MaskStream` does the same over a vector
handed over in parts (encode, mask and pack a block at a time, in bounded memory).

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


class MaskStream:
    """Adds and subtracts many masks block by block: any vector length in bounded memory.

    Call :meth:`apply` on consecutive parts of the vector (each part takes the next words of
    every keystream), then :meth:`tail` once for the combined weight mask.
    """

    def __init__(self, *, add: Sequence[bytes], subtract: Sequence[bytes]):
        self._jobs = [(_stream(s), True) for s in add] + [(_stream(s), False) for s in subtract]
        self._raw = bytearray(4 * _BLOCK_WORDS)
        self._zeros = memoryview(bytearray(4 * _BLOCK_WORDS))
        self._view = np.frombuffer(self._raw, dtype="<u4")
        self._done = False

    def apply(self, part: NDArray[np.uint32]) -> None:
        """``part += sum(next words of add) - sum(next words of subtract)`` modulo 2**32."""
        if self._done:
            raise ValueError("the mask tail was already taken: the streams are finished")
        if part.dtype != np.uint32 or part.ndim != 1:
            raise ValueError("masks apply to 1-D uint32 arrays")
        buf = memoryview(self._raw)
        words = part.shape[0]
        for start in range(0, words, _BLOCK_WORDS):
            stop = min(words, start + _BLOCK_WORDS)
            n = stop - start
            piece = part[start:stop]
            for stream, plus in self._jobs:
                stream.update_into(self._zeros[: 4 * n], buf[: 4 * n])
                if plus:
                    np.add(piece, self._view[:n], out=piece)
                else:
                    np.subtract(piece, self._view[:n], out=piece)

    def tail(self) -> int:
        """Combined weight mask modulo 2**64 (after every word of the vector was applied)."""
        self._done = True
        tail = 0
        for stream, plus in self._jobs:
            t = int.from_bytes(stream.update(bytes(TAIL_BYTES)), "little")
            tail = tail + t if plus else tail - t
        return tail & _U64


def apply_masks(acc: NDArray[np.uint32], *, add: Sequence[bytes], subtract: Sequence[bytes]) -> int:
    """``acc += sum(mask(a)) - sum(mask(s))`` modulo 2**32, in place.

    Returns the same combination of the weight masks, modulo 2**64.
    """
    if acc.dtype != np.uint32 or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise ValueError("accumulator must be a contiguous 1-D uint32 array")
    if not add and not subtract:
        return 0
    masks = MaskStream(add=add, subtract=subtract)
    masks.apply(acc)
    return masks.tail()
