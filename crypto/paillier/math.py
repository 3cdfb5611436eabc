"""Paillier arithmetic compatible with ``phe``, fast enough for whole adapters.

Encryption. With ``g = n + 1``, ``g**m = 1 + m*n (mod n**2)``, so a ciphertext is
``(1 + m*n) * R mod n**2`` for a random ``n``-th residue ``R``. ``phe`` draws ``R = r**n`` (a
2048-bit exponent). Damgard-Jurik-Nielsen instead fix ``h = -x**2 mod n`` for a random ``x`` and
``hs = h**n mod n**2``, and take ``R = hs**a`` for a random ``a`` of half the key length (1024
bits for a 2048-bit key). Because ``hs`` is fixed, a table ``T[i][d] = hs**(d * 256**i)`` turns
``hs**a`` into one multiplication per non-zero byte of ``a``: about 128 multiplications mod
``n**2`` instead of ~2,400. The table (``bytes(a)`` rows of 255 entries: 16 MiB for a 2048-bit
key) is built once per process and key. ``hs`` is public, as in DJN; ``a`` comes from ``secrets``.

Decryption uses the Chinese remainder theorem as ``phe`` does: ``m_p = L_p(c**(p-1) mod p**2) *
h_p mod p`` with ``L_p(u) = (u - 1) / p`` and ``h_p = L_p(g**(p-1) mod p**2)**-1 mod p``, the same
mod ``q``, then ``m = m_p + p * ((m_q - m_p) * p**-1 mod q)``.

Blobs. Plaintexts and ciphertexts travel as fixed-width big-endian integers concatenated in one
``bytes``; :func:`encrypt_blob` and :func:`decrypt_blob` cut a blob into chunks and map them over
a process pool (``workers`` processes, spawn start method, kept for reuse; ``workers=1`` runs in
this process). For decryption the primes go to those worker processes, on the same machine.
"""

from __future__ import annotations

import atexit
import math
import secrets
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from typing import TypeVar

import gmpy2
from gmpy2 import mpz

from ..errors import CryptoError, EncodingError, ProtocolError

_ONE = mpz(1)
_TABLES: dict[tuple[int, int, int], list[list[mpz]]] = {}
_CRT: dict[tuple[int, int], _CrtKey] = {}
_POOLS: dict[int, ProcessPoolExecutor] = {}
_POOL_LOCK = threading.Lock()
_T = TypeVar("_T")


@dataclass(frozen=True)
class DJNBase:
    """Public DJN randomiser base of one key: ``hs = h**n mod n**2`` and the exponent length."""

    n: int
    hs: int
    exponent_bytes: int


def djn_base(*, n: int, exponent_bits: int | None = None) -> DJNBase:
    """Draw ``x``, set ``h = -x**2 mod n`` and return ``hs = h**n mod n**2`` (one per job)."""
    bits = -(-n.bit_length() // 2) if exponent_bits is None else exponent_bits
    if bits < 64:
        raise ValueError(f"randomiser exponent of {bits} bits is too short (use >= 64)")
    while True:
        x = secrets.randbelow(n - 2) + 2
        if math.gcd(x, n) == 1:
            break
    h = (-x * x) % n
    return DJNBase(n=n, hs=int(gmpy2.powmod(h, n, n * n)), exponent_bytes=-(-bits // 8))


def fixed_base_table(*, base: int, modulus: int, exponent_bytes: int) -> list[list[mpz]]:
    """``T[i][d] = base**(d * 256**i) mod modulus`` for ``i < exponent_bytes``, ``d < 256``."""
    rows: list[list[mpz]] = []
    step = mpz(base) % modulus
    for _ in range(exponent_bytes):
        row = [_ONE, step]
        acc = step
        for _ in range(2, 256):
            acc = acc * step % modulus
            row.append(acc)
        rows.append(row)
        step = acc * step % modulus
    return rows


def fixed_base_pow(table: list[list[mpz]], exponent: bytes, *, modulus: int) -> mpz:
    """``base**int.from_bytes(exponent, "little") mod modulus`` from a :func:`fixed_base_table`."""
    if len(exponent) > len(table):
        raise ValueError(f"exponent of {len(exponent)} bytes exceeds the {len(table)}-row table")
    acc: mpz | None = None
    for row, digit in zip(table, exponent, strict=False):
        if digit:
            acc = row[digit] if acc is None else acc * row[digit] % modulus
    return _ONE if acc is None else acc


def encrypt_int(m: int, *, base: DJNBase) -> int:
    """DJN-randomised Paillier encryption of ``0 <= m < n``."""
    n = base.n
    if not 0 <= m < n:
        raise EncodingError(f"plaintext must lie in [0, n), got a {int(m).bit_length()}-bit value")
    nsq = n * n
    r = fixed_base_pow(_table_for(base), secrets.token_bytes(base.exponent_bytes), modulus=nsq)
    return int((m * n + 1) * r % nsq)


def decrypt_int(c: int, *, p: int, q: int) -> int:
    """CRT decryption of one ciphertext ``0 < c < n**2``."""
    key = _crt_for(p, q)
    if not 0 < c < key.nsq:
        raise ProtocolError("ciphertext is not in (0, n**2): malformed or for another key")
    return int(key.decrypt(mpz(c)))


def parse_ciphertexts(blob: bytes, *, n: int, width: int) -> list[mpz]:
    """Split a blob of fixed-width ciphertexts, refusing any outside ``(0, n**2)``."""
    if width < 1 or len(blob) % width:
        raise ProtocolError(f"{len(blob)} bytes is not a whole number of {width}-byte ciphertexts")
    nsq = mpz(n) * n
    out = []
    for i in range(0, len(blob), width):
        c = mpz(int.from_bytes(blob[i : i + width], "big"))
        if not 0 < c < nsq:
            raise ProtocolError(f"ciphertext {i // width} is not in (0, n**2): malformed")
        out.append(c)
    return out


def ciphertext_product(parts: Sequence[Sequence[mpz]], *, n: int, width: int) -> bytes:
    """Homomorphic sum: element-wise product mod ``n**2`` of equally long ciphertext lists."""
    if not parts or len({len(p) for p in parts}) != 1:
        raise ProtocolError("ciphertext lists to add must be non-empty and equally long")
    nsq = mpz(n) * n
    acc = list(parts[0])
    for other in parts[1:]:
        acc = [a * b % nsq for a, b in zip(acc, other, strict=True)]
    return b"".join(int(c).to_bytes(width, "big") for c in acc)


def encrypt_blob(plain: bytes, *, base: DJNBase, plain_width: int, workers: int) -> bytes:
    """Encrypt fixed-width plaintexts into fixed-width ciphertexts (``2 * bytes(n)`` each)."""
    width_out = 2 * (-(-base.n.bit_length() // 8))
    tasks = [
        (base, plain_width, width_out, chunk) for chunk in _chunks(plain, plain_width, workers)
    ]
    return b"".join(_map(_encrypt_chunk, tasks, workers))


def decrypt_blob(cipher: bytes, *, p: int, q: int, plain_width: int, workers: int) -> bytes:
    """Decrypt fixed-width ciphertexts into fixed-width plaintexts of ``plain_width`` bytes."""
    width_in = 2 * (-(-(p * q).bit_length() // 8))
    if len(cipher) % width_in:
        raise ProtocolError(f"{len(cipher)} bytes is not a whole number of ciphertexts")
    tasks = [(p, q, width_in, plain_width, c) for c in _chunks(cipher, width_in, workers)]
    return b"".join(_map(_decrypt_chunk, tasks, workers))


def shutdown_pools() -> None:
    """Stop the worker pools (they restart on demand)."""
    with _POOL_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown_pools)


# -- worker side -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _CrtKey:
    p: mpz
    q: mpz
    psq: mpz
    qsq: mpz
    hp: mpz
    hq: mpz
    p_inv: mpz
    nsq: mpz

    def decrypt(self, c: mpz) -> mpz:
        mp = (gmpy2.powmod(c, self.p - 1, self.psq) - 1) // self.p * self.hp % self.p
        mq = (gmpy2.powmod(c, self.q - 1, self.qsq) - 1) // self.q * self.hq % self.q
        return mp + (mq - mp) * self.p_inv % self.q * self.p


def _crt_for(p: int, q: int) -> _CrtKey:
    key = _CRT.get((p, q))
    if key is None:
        mp_, mq_ = mpz(p), mpz(q)
        n = mp_ * mq_
        psq, qsq = mp_ * mp_, mq_ * mq_

        def h(x: mpz, xsq: mpz) -> mpz:
            return gmpy2.invert((gmpy2.powmod(n + 1, x - 1, xsq) - 1) // x, x)

        key = _CrtKey(mp_, mq_, psq, qsq, h(mp_, psq), h(mq_, qsq), gmpy2.invert(mp_, mq_), n * n)
        _CRT.clear()
        _CRT[(p, q)] = key
    return key


def _table_for(base: DJNBase) -> list[list[mpz]]:
    key = (base.n, base.hs, base.exponent_bytes)
    table = _TABLES.get(key)
    if table is None:
        table = fixed_base_table(
            base=base.hs, modulus=base.n * base.n, exponent_bytes=base.exponent_bytes
        )
        if len(_TABLES) >= 2:
            _TABLES.clear()
        _TABLES[key] = table
    return table


def _encrypt_chunk(task: tuple[DJNBase, int, int, bytes]) -> bytes:
    base, width_in, width_out, blob = task
    table = _table_for(base)
    n = mpz(base.n)
    nsq = n * n
    eb = base.exponent_bytes
    count = len(blob) // width_in
    exps = secrets.token_bytes(eb * count)
    out = bytearray()
    for i in range(count):
        m = mpz(int.from_bytes(blob[i * width_in : (i + 1) * width_in], "big"))
        if m >= n:
            raise EncodingError(f"plaintext {i} is not below n: the packing layout is wrong")
        r = fixed_base_pow(table, exps[i * eb : (i + 1) * eb], modulus=nsq)
        out += int((m * n + 1) * r % nsq).to_bytes(width_out, "big")
    return bytes(out)


def _decrypt_chunk(task: tuple[int, int, int, int, bytes]) -> bytes:
    p, q, width_in, width_out, blob = task
    key = _crt_for(p, q)
    limit = 1 << (8 * width_out)
    out = bytearray()
    for i in range(0, len(blob), width_in):
        c = mpz(int.from_bytes(blob[i : i + width_in], "big"))
        if not 0 < c < key.nsq:
            raise ProtocolError(f"ciphertext {i // width_in} is not in (0, n**2): malformed")
        m = key.decrypt(c)
        if m >= limit:
            raise EncodingError(f"plaintext {i // width_in} exceeds {width_out} bytes: overflow")
        out += int(m).to_bytes(width_out, "big")
    return bytes(out)


# -- pool ------------------------------------------------------------------------------------
def _chunks(blob: bytes, width: int, workers: int) -> list[bytes]:
    if width < 1 or len(blob) % width:
        raise ValueError(f"{len(blob)} bytes is not a whole number of {width}-byte integers")
    count = len(blob) // width
    if workers <= 1:
        return [blob] if blob else []
    per = max(8, -(-count // (4 * workers)))
    return [blob[i * width : (i + per) * width] for i in range(0, count, per)]


def _pool(workers: int) -> ProcessPoolExecutor:
    with _POOL_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
            _POOLS[workers] = pool
        return pool


def _map(fn: Callable[[_T], bytes], tasks: list[_T], workers: int) -> list[bytes]:
    if workers <= 1 or len(tasks) <= 1:
        return [fn(t) for t in tasks]
    try:
        return list(_pool(workers).map(fn, tasks))
    except BrokenProcessPool as err:
        with _POOL_LOCK:
            _POOLS.pop(workers, None)
        raise CryptoError(
            f"a Paillier worker process died ({err}); retry or set workers=1"
        ) from err
