"""Key-holder Paillier: CRT encryption and decryption with randomisers the key holders derive.

In this protocol only holders of the private key encrypt (the clients), and only they decrypt
(see :mod:`crypto.paillier.protocol`). Both steps use that:

Randomisers. Every key holder derives the same 256-bit randomiser key ``K = HKDF-SHA256(p || q,
info="secfed/paillier/randomiser/v1")`` and the same DJN base ``hs = h**n mod n**2`` with ``h =
-x**2 mod n`` and ``x`` from HKDF of ``K``. A message gets a fresh 16-byte nonce from
``secrets``; its ``j``-th ciphertext is ``(1 + m*n) * hs**a_j mod n**2`` with ``a_j`` the
``j``-th block of half the key length (1024 bits, little-endian, for a 2048-bit key) of
AES-256-CTR under ``HMAC-SHA256(K, session_id || sender || nonce)``. The ciphertext is an
ordinary Paillier (DJN-randomised) ciphertext: ``phe`` decrypts it. To anybody without ``K``
(the server) the exponents are pseudorandom, so this is DJN encryption with a 1024-bit exponent,
as before; a fresh nonce per message means no randomiser is ever reused, even when a round is
rerun.

Encryption. With ``p`` and ``q`` known, ``hs**a`` is computed modulo ``p**2`` and ``q**2``
(2048-bit moduli, each multiplication ~4x cheaper than modulo ``n**2``) from fixed-base tables
of ``WINDOW_BITS``-bit windows (``T[i][d] = hs**(d * 2**(w*i))``: 103 rows of 1023 entries per
prime, about 60 MiB per process, built once per key), then recombined by CRT.

Decryption of a product ``C = prod_i c_i`` needs no ``(p - 1)``-bit exponentiation: the key
holders know the contributors' nonces, so ``A_j = sum_i a_ij`` and ``C * hs**-A_j = 1 + M*n``
(mod ``n**2``). As ``hs`` has order dividing ``p - 1`` modulo ``p**2``, ``hs**-A`` is
``hs**((-A) mod (p - 1))`` from the same table; ``M mod p = L_p(...) * q**-1 mod p`` and the
same for ``q``, recombined by CRT. A product whose randomisers do not match the contributor list
(a ciphertext missing, added or from another session) leaves a residue ``!= 1 (mod n)`` and is
refused: a consistency check, not integrity against a malicious server (who can still multiply
in ``1 + k*n``).
"""

from __future__ import annotations

import hmac
import secrets
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import gmpy2
import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from gmpy2 import mpz

from ..errors import EncodingError, ProtocolError
from . import math as pm

WINDOW_BITS = 10
NONCE_BYTES = 16
_CTX: dict[tuple[int, int], HolderKey] = {}
_U32 = struct.Struct("!I")
_BLOCK = 1024  # ciphertexts per exponent batch: bounds memory at any vector size


@dataclass(frozen=True)
class HolderKey:
    """A key holder's precomputed context: primes, CRT constants, ``K``, ``hs`` tables."""

    p: mpz
    q: mpz
    n: mpz
    psq: mpz
    qsq: mpz
    psq_inv_q: mpz
    q_inv_p: mpz
    p_inv_q: mpz
    prf_key: bytes
    exp_bytes: int
    hs: mpz
    table_p: list[list[mpz]]
    table_q: list[list[mpz]]


def holder_key(p: int, q: int) -> HolderKey:
    """The (cached, one per process) context of the key ``(p, q)``."""
    p, q = min(p, q), max(p, q)
    key = _CTX.get((p, q))
    if key is None:
        key = _build(p, q)
        _CTX.clear()
        _CTX[(p, q)] = key
    return key


def _build(p_int: int, q_int: int) -> HolderKey:
    p, q = mpz(p_int), mpz(q_int)
    n = p * q
    nbytes = -(-int(n).bit_length() // 8)
    ikm = p_int.to_bytes(nbytes, "big") + q_int.to_bytes(nbytes, "big")
    prf_key = _hkdf(ikm, b"secfed/paillier/randomiser/v1", 32)
    x = mpz(int.from_bytes(_hkdf(prf_key, b"secfed/paillier/djn-base/v1", nbytes + 32), "big"))
    x = x % (n - 2) + 2
    if gmpy2.gcd(x, n) != 1:  # only if x reveals a factor: impossible for a sound key
        raise ProtocolError("derived DJN base shares a factor with n: the key is malformed")
    hs = gmpy2.powmod((-x * x) % n, n, n * n)
    psq, qsq = p * p, q * q
    # DJN: exponents of half the key length (1024 bits for 2048-bit keys), whole AES blocks.
    exp_bytes = 16 * -(-int(n).bit_length() // 256)
    bits = max(8 * exp_bytes, int(q).bit_length())
    return HolderKey(
        p=p,
        q=q,
        n=n,
        psq=psq,
        qsq=qsq,
        psq_inv_q=gmpy2.invert(psq, qsq),
        q_inv_p=gmpy2.invert(q, p),
        p_inv_q=gmpy2.invert(p, q),
        prf_key=prf_key,
        exp_bytes=exp_bytes,
        hs=hs,
        table_p=window_table(hs % psq, psq, bits=bits),
        table_q=window_table(hs % qsq, qsq, bits=bits),
    )


def window_table(base: mpz, modulus: mpz, *, bits: int, w: int = WINDOW_BITS) -> list[list[mpz]]:
    """``T[i][d] = base**(d * 2**(w*i)) mod modulus`` for exponents below ``2**bits``."""
    rows: list[list[mpz]] = []
    step = base % modulus
    for _ in range(-(-bits // w)):
        row = [mpz(1), step]
        acc = step
        for _ in range(2, 1 << w):
            acc = acc * step % modulus
            row.append(acc)
        rows.append(row)
        step = acc * step % modulus
    return rows


def window_pow(table: list[list[mpz]], exponent: int, modulus: mpz, *, w: int = WINDOW_BITS) -> mpz:
    """``base**exponent mod modulus`` from a :func:`window_table` (``exponent`` must fit it)."""
    if exponent < 0 or exponent.bit_length() > w * len(table):
        raise ValueError(f"a {exponent.bit_length()}-bit exponent does not fit the table")
    mask = (1 << w) - 1
    acc: mpz | None = None
    for row in table:
        if not exponent:
            break
        d = exponent & mask
        exponent >>= w
        if d:
            acc = row[d] if acc is None else acc * row[d] % modulus
    return mpz(1) if acc is None else acc


def window_digits(
    exponents: bytes, *, count: int, rows: int, w: int = WINDOW_BITS
) -> list[list[int]]:
    """Base-``2**w`` digits (least significant first, ``rows`` each) of little-endian exponents."""
    bits = np.unpackbits(np.frombuffer(exponents, np.uint8), bitorder="little").reshape(count, -1)
    padded = np.zeros((count, rows * w), np.uint16)
    padded[:, : bits.shape[1]] = bits[:, : rows * w]
    weights = (1 << np.arange(w, dtype=np.uint16)).astype(np.uint16)
    digits: list[list[int]] = (padded.reshape(count, rows, w) * weights).sum(axis=2).tolist()
    return digits


def _digit_pow(table: list[list[mpz]], digits: list[int], modulus: mpz) -> mpz:
    acc: mpz | None = None
    for row, d in zip(table, digits, strict=False):
        if d:
            acc = row[d] if acc is None else acc * row[d] % modulus
    return mpz(1) if acc is None else acc


def exponent_stream(
    key: HolderKey, *, session_id: bytes, sender: int, nonce: bytes, start: int, count: int
) -> bytes:
    """Randomiser exponents ``a_start .. a_{start+count-1}`` of one message (``exp_bytes`` each)."""
    if len(nonce) != NONCE_BYTES:
        raise ProtocolError(f"a randomiser nonce has {NONCE_BYTES} bytes, got {len(nonce)}")
    msg_key = hmac.new(key.prf_key, session_id + _U32.pack(sender) + nonce, "sha256").digest()
    iv = (start * key.exp_bytes // 16).to_bytes(16, "big")
    enc = Cipher(algorithms.AES(msg_key), modes.CTR(iv)).encryptor()
    return enc.update(bytes(key.exp_bytes * count)) + enc.finalize()


def encrypt_chunk(
    key: HolderKey, plain: bytes, *, plain_width: int, exponents: bytes, width_out: int
) -> bytes:
    """Encrypt fixed-width plaintexts with the given exponent blocks (one per plaintext)."""
    count, eb = len(plain) // plain_width, key.exp_bytes
    if len(exponents) != eb * count:
        raise ValueError(f"one {eb}-byte exponent block per plaintext is needed")
    n, p, q, psq, qsq = key.n, key.p, key.q, key.psq, key.qsq
    digits = window_digits(exponents, count=count, rows=len(key.table_p))
    out = bytearray()
    for i in range(count):
        m = mpz(int.from_bytes(plain[i * plain_width : (i + 1) * plain_width], "big"))
        if m >= n:
            raise EncodingError(f"plaintext {i} is not below n: the packing layout is wrong")
        d = digits[i]
        # 1 + m*n is 1 + p * (m*q mod p) modulo p**2, and the same for q.
        cp = (1 + p * (m * q % p)) * _digit_pow(key.table_p, d, psq) % psq
        cq = (1 + q * (m * p % q)) * _digit_pow(key.table_q, d, qsq) % qsq
        c = cp + psq * ((cq - cp) * key.psq_inv_q % qsq)
        out += int(c).to_bytes(width_out, "big")
    return bytes(out)


def summed_exponents(streams: Sequence[bytes], count: int) -> list[int]:
    """``A_j = sum_i a_ij`` for each ``j < count`` from the contributors' exponent streams."""
    limbs = len(streams[0]) // (4 * count)
    total = np.zeros((count, limbs), np.uint64)
    for s in streams:
        total += np.frombuffer(s, "<u4").reshape(count, limbs)
    lo = (total & np.uint64(0xFFFFFFFF)).astype("<u4")
    hi = (total >> np.uint64(32)).astype("<u4")
    return [
        int.from_bytes(lo[j].tobytes(), "little")
        + (int.from_bytes(hi[j].tobytes(), "little") << 32)
        for j in range(count)
    ]


def decrypt_chunk(
    key: HolderKey, cipher: bytes, *, width_in: int, sums: Sequence[int], width_out: int
) -> bytes:
    """Decrypt fixed-width ciphertext products whose summed exponents are ``sums``."""
    p, q, psq, qsq = key.p, key.q, key.psq, key.qsq
    pm1, qm1 = p - 1, q - 1
    nsq = key.n * key.n
    limit = 1 << (8 * width_out)
    out = bytearray()
    for i, big_a in enumerate(sums):
        c = mpz(int.from_bytes(cipher[i * width_in : (i + 1) * width_in], "big"))
        if not 0 < c < nsq:
            raise ProtocolError(f"ciphertext {i} is not in (0, n**2): malformed")
        a = mpz(big_a)
        xp = c % psq * window_pow(key.table_p, int((-a) % pm1), psq) % psq
        xq = c % qsq * window_pow(key.table_q, int((-a) % qm1), qsq) % qsq
        if xp % p != 1 or xq % q != 1:
            raise ProtocolError(
                f"ciphertext {i} does not match the listed contributors' randomisers: a "
                "contribution is missing, extra or from another round"
            )
        mp = (xp - 1) // p * key.q_inv_p % p
        mq = (xq - 1) // q * key.p_inv_q % q
        m = mp + p * ((mq - mp) * key.p_inv_q % q)
        if m >= limit:
            raise EncodingError(f"plaintext {i} exceeds {width_out} bytes: overflow")
        out += int(m).to_bytes(width_out, "big")
    return bytes(out)


def _hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def encrypt_message(
    plain: bytes, *, p: int, q: int, plain_width: int, session_id: bytes, sender: int, workers: int
) -> bytes:
    """``nonce || ciphertexts`` of fixed-width plaintexts (``2 * bytes(n)`` per ciphertext)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    width_out = 2 * (-(-(p * q).bit_length() // 8))
    tasks = [
        (p, q, chunk, plain_width, width_out, session_id, sender, nonce, start)
        for start, chunk in _ranges(plain, plain_width, workers)
    ]
    return nonce + b"".join(pm._map(_encrypt_task, tasks, workers))


def decrypt_product(
    cipher: bytes,
    *,
    p: int,
    q: int,
    plain_width: int,
    session_id: bytes,
    senders: Sequence[int],
    nonces: Sequence[bytes],
    workers: int,
) -> bytes:
    """Decrypt the product of the ciphertexts that ``senders`` sent with ``nonces``."""
    width_in = 2 * (-(-(p * q).bit_length() // 8))
    if len(cipher) % width_in:
        raise ProtocolError(f"{len(cipher)} bytes is not a whole number of ciphertexts")
    if len(senders) != len(nonces) or not senders:
        raise ProtocolError("every contributor needs exactly one nonce")
    tasks = [
        (p, q, chunk, width_in, plain_width, session_id, tuple(senders), tuple(nonces), start)
        for start, chunk in _ranges(cipher, width_in, workers)
    ]
    return b"".join(pm._map(_decrypt_task, tasks, workers))


def _ranges(blob: bytes, width: int, workers: int) -> list[tuple[int, bytes]]:
    chunks = pm._chunks(blob, width, workers)
    out, start = [], 0
    for chunk in chunks:
        out.append((start, chunk))
        start += len(chunk) // width
    return out


def _blocks(data: bytes, width: int) -> Iterator[tuple[int, bytes, int]]:
    """``data`` (values of ``width`` bytes) in blocks of ``_BLOCK`` values: (first value's
    offset, the block, its value count)."""
    for off in range(0, len(data) // width, _BLOCK):
        block = data[off * width : (off + _BLOCK) * width]
        yield off, block, len(block) // width


def _encrypt_task(task: tuple[int, int, bytes, int, int, bytes, int, bytes, int]) -> bytes:
    p, q, plain, width_in, width_out, sid, sender, nonce, start = task
    key = holder_key(p, q)
    out = []
    for off, block, count in _blocks(plain, width_in):
        exps = exponent_stream(
            key, session_id=sid, sender=sender, nonce=nonce, start=start + off, count=count
        )
        out.append(
            encrypt_chunk(key, block, plain_width=width_in, exponents=exps, width_out=width_out)
        )
    return b"".join(out)


def _decrypt_task(
    task: tuple[int, int, bytes, int, int, bytes, tuple[int, ...], tuple[bytes, ...], int],
) -> bytes:
    p, q, cipher, width_in, width_out, sid, senders, nonces, start = task
    key = holder_key(p, q)
    out = []
    for off, block, count in _blocks(cipher, width_in):
        streams = [
            exponent_stream(key, session_id=sid, sender=s, nonce=nc, start=start + off, count=count)
            for s, nc in zip(senders, nonces, strict=True)
        ]
        sums = summed_exponents(streams, count)
        out.append(decrypt_chunk(key, block, width_in=width_in, sums=sums, width_out=width_out))
    return b"".join(out)
