"""CKKS key material: TenSEAL contexts, the seeded symmetric encryptor, key files.

Clients hold the secret context; the server's ``public.ctx`` carries parameters only (no
secret, public, relinearisation or Galois key). Files are owner-only.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi
from numpy.typing import NDArray

from ..errors import KeyMaterialError, ParameterError
from . import params as cp

TS_ERRORS = (ValueError, RuntimeError, TypeError)


def chain(params: cp.CkksParams) -> tuple[float, list[int]]:
    """Exact scale and key-level parms id of ``params`` (raises ParameterError if SEAL can't)."""
    n, bits = params.poly_modulus_degree, list(params.coeff_mod_bit_sizes)
    try:
        primes = sealapi.CoeffModulus.Create(n, bits)
        enc = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
        enc.set_poly_modulus_degree(n)
        enc.set_coeff_modulus(primes)
        ctx = sealapi.SEALContext(enc, True, sealapi.SEC_LEVEL_TYPE.TC128)
    except TS_ERRORS as err:
        raise ParameterError(f"SEAL refuses N={n}, primes {bits}: {err}") from None
    if not ctx.parameters_set():
        raise ParameterError(f"SEAL refuses N={n}, primes {bits}: {ctx.parameters_error_message()}")
    scale = float(primes[-2].value()) if params.depth else 2.0**params.scale_bits
    return scale, list(ctx.key_parms_id())


@dataclass
class CkksKeys:
    """The server's keyless context and, on key holders, the secret context."""

    server: ts.Context
    client: ts.Context | None
    scale: float
    _encryptor: Any = field(default=None, repr=False)

    def encrypt(self, values: NDArray[np.float64], sizes: Sequence[int]) -> list[bytes]:
        """Seeded symmetric encryption of ``values`` in chunks of ``sizes``: SEAL bytes each."""
        if self.client is None:
            raise KeyMaterialError("this party holds no CKKS secret key: it cannot encrypt")
        if self._encryptor is None:
            seal = self.client.seal_context().data
            sk = self.client.secret_key().data
            self._encryptor = (sealapi.CKKSEncoder(seal), sealapi.Encryptor(seal, sk))
        encoder, encryptor = self._encryptor
        out, start = [], 0
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        # SEAL's seeded form is only reachable through a file: ciphertexts, never key material.
        with tempfile.TemporaryDirectory(prefix="secfed-ckks-", dir=shm) as tmp:
            path = os.path.join(tmp, "ct")
            for size in sizes:
                plain = sealapi.Plaintext()
                encoder.encode(values[start : start + size].tolist(), self.scale, plain)
                encryptor.encrypt_symmetric(plain).save(path)
                with open(path, "rb") as fh:
                    out.append(fh.read())
                start += size
        return out


def _new_contexts(params: cp.CkksParams, scale: float) -> tuple[bytes, bytes]:
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    ctx.global_scale = scale
    secret = ctx.serialize(
        save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    return _keyless(ctx), secret


def _keyless(ctx: ts.Context) -> bytes:
    return ctx.serialize(  # type: ignore[no-any-return]
        save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )


def _open(data: bytes, what: str, *, private: bool, scale: float, parms: list[int]) -> ts.Context:
    try:
        ctx = ts.context_from(data)
    except TS_ERRORS as err:
        raise KeyMaterialError(f"{what} is not a TenSEAL context: {err}") from None
    if ctx.is_private() != private:
        fix = "regenerate the key set" if private else "give the server a context without it"
        raise KeyMaterialError(f"{what} {'lacks' if private else 'holds'} the secret key: {fix}")
    if list(ctx.seal_context().data.key_parms_id()) != parms or ctx.global_scale != scale:
        raise KeyMaterialError(
            f"{what} was made for other CKKS parameters (or scale {ctx.global_scale} != {scale}):"
            " use the options it was generated with, or generate a new key set"
        )
    return ctx


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(data)


def _read_private(path: Path) -> bytes:
    mode = path.stat().st_mode
    if os.name == "posix" and mode & 0o077:
        raise KeyMaterialError(
            f"{path} is readable by others (mode {oct(stat.S_IMODE(mode))}): chmod 600 {path}"
        )
    return path.read_bytes()


def load_or_create_keys(params: cp.CkksParams, key_dir: Path | None) -> CkksKeys:
    """Load ``key_dir/ckks/{public,secret}.ctx`` if present, else generate (and write) them.

    Only ``public.ctx`` present: a server-only party. Only ``secret.ctx``: the keyless server
    context is derived from it in memory. ``key_dir=None``: in memory, nothing written.
    """
    scale, parms = chain(params)
    public = secret = None
    if key_dir is not None:
        folder = Path(key_dir) / "ckks"
        pub_path, sec_path = folder / "public.ctx", folder / "secret.ctx"
        if pub_path.exists() or sec_path.exists():
            public = _read_private(pub_path) if pub_path.exists() else None
            secret = _read_private(sec_path) if sec_path.exists() else None
        else:
            public, secret = _new_contexts(params, scale)
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_private(sec_path, secret)
            _write_private(pub_path, public)
    else:
        public, secret = _new_contexts(params, scale)
    client = None
    if secret is not None:
        client = _open(secret, "secret.ctx", private=True, scale=scale, parms=parms)
        public = public if public is not None else _keyless(client)
    assert public is not None
    server = _open(public, "public.ctx", private=False, scale=scale, parms=parms)
    keys = CkksKeys(server=server, client=client, scale=scale)
    if client is not None:
        self_test(keys, params)
    return keys


def self_test(keys: CkksKeys, params: cp.CkksParams) -> None:
    """Encrypt and decrypt a test vector with the secret context (KeyMaterialError if wrong)."""
    probe = np.linspace(-1.0, 1.0, 16) * min(1.0, params.clip)
    try:
        (ct,) = keys.encrypt(probe, [probe.size])
        vec = ts.ckks_vector_from(keys.client, cp.wrap_chunk(ct, size=probe.size, scale=keys.scale))
        got = np.asarray(vec.decrypt(), dtype=np.float64)
    except TS_ERRORS as err:
        raise KeyMaterialError(f"CKKS secret.ctx fails its self-test: {err}") from None
    if got.shape != probe.shape or float(np.max(np.abs(got - probe))) > 1e-3:
        raise KeyMaterialError(
            "CKKS secret.ctx fails its self-test (a test vector does not decrypt to itself): "
            "the key file is corrupt; generate a new key set (secfed keys generate --scheme ckks)"
        )
