"""Peer baselines measured in the same run, each clearly labelled.

* ``phe-naive``: python-paillier, one 2048-bit ciphertext per value. A sample of values is
  encrypted, added across the cohort and decrypted; per-value times are multiplied by the
  parameter count (``note`` says "extrapolated").
* ``tenseal-bare``: a bare TenSEAL CKKS loop with secfed's ``ckks`` default parameters:
  ``ts.ckks_vector`` + ``serialize`` per chunk of ``N/2`` values (one client, measured in
  full), the server deserialises and adds the cohort's ciphertexts, one key holder decrypts.
* ``flwr-secagg+``: Flower's SecAgg+ client masking step (stage 2 of its mod: ECDH shared
  keys with ``k`` neighbours, quantisation, private and pairwise masks from its numpy
  generator, modulo, int64 serialisation), timed for one client. Key setup and unmasking
  are not timed; ``aggregate_s`` and ``decode_s`` are left empty.

A baseline whose package is not importable yields a record with ``error`` saying so.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from crypto.ckks import params as ckks_params

from .measure import BenchRecord
from .workload import synthetic_updates

PHE_SAMPLE = 100
_PHE_KEYS: dict[int, Any] = {}


def _base(name: str, params: int, clients: int, note: str) -> BenchRecord:
    rec = BenchRecord(name, params, clients, 0, kind="baseline", note=note, repeats=1)
    return rec


def _missing(name: str, params: int, clients: int, package: str) -> BenchRecord | None:
    if importlib.util.find_spec(package) is None:
        rec = _base(name, params, clients, "")
        rec.error = f"skipped: {package} is not installed"
        return rec
    return None


def phe_naive(*, params: int, clients: int, key_bits: int = 2048) -> BenchRecord:
    """python-paillier per value, extrapolated from ``PHE_SAMPLE`` values."""
    name = "phe-naive"
    if (rec_missing := _missing(name, params, clients, "phe")) is not None:
        return rec_missing
    import phe

    if key_bits not in _PHE_KEYS:
        _PHE_KEYS[key_bits] = phe.generate_paillier_keypair(n_length=key_bits)
    pub, priv = _PHE_KEYS[key_bits]
    sample = min(params, PHE_SAMPLE)
    vectors, weights = synthetic_updates(params=sample, clients=clients)
    values = [float(weights[0] * v) for v in vectors[0]]
    t = time.perf_counter()
    cts = [pub.encrypt(v) for v in values]
    enc = (time.perf_counter() - t) / sample
    t = time.perf_counter()
    sums = []
    for ct in cts:
        acc = ct
        for _ in range(clients - 1):
            acc = acc + ct
        sums.append(acc)
    agg = (time.perf_counter() - t) / sample
    t = time.perf_counter()
    plain = [priv.decrypt(s) for s in sums]
    dec = (time.perf_counter() - t) / sample
    rec = _base(
        name,
        params,
        clients,
        f"extrapolated from {sample} values, {key_bits}-bit key, per-value ciphertexts",
    )
    rec.encode_s = enc * params
    rec.aggregate_s = agg * params
    rec.decode_s = dec * params
    ct_bytes = (pub.nsquare.bit_length() + 7) // 8 + 4  # ciphertext mod n^2 + int32 exponent
    rec.bytes_up = float(ct_bytes * params)
    rec.bytes_down = rec.bytes_up
    rec.expansion = rec.bytes_up / (4.0 * params)
    rec.max_abs_error = float(np.max(np.abs(np.asarray(plain) - clients * np.asarray(values))))
    rec.learned_by = "clients"
    return rec


def tenseal_bare(*, params: int, clients: int) -> BenchRecord:
    """Bare TenSEAL CKKS encrypt/serialize/add/decrypt with secfed's default parameters."""
    name = "tenseal-bare"
    if (rec_missing := _missing(name, params, clients, "tenseal")) is not None:
        return rec_missing
    import tenseal as ts

    p = ckks_params.resolve()
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=p.poly_modulus_degree,
        coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes),
    )
    ctx.global_scale = 2.0**p.scale_bits
    vectors, weights = synthetic_updates(params=params, clients=1)
    x = (weights[0] * vectors[0].astype(np.float64)).tolist()
    slots = p.slots
    t = time.perf_counter()
    blobs = [ts.ckks_vector(ctx, x[i : i + slots]).serialize() for i in range(0, params, slots)]
    enc = time.perf_counter() - t
    t = time.perf_counter()
    total = [ts.ckks_vector_from(ctx, b) for b in blobs]
    for _ in range(clients - 1):  # the cohort's ciphertexts cost the same to add
        total = [acc + ts.ckks_vector_from(ctx, b) for acc, b in zip(total, blobs, strict=True)]
    out = [c.serialize() for c in total]
    agg = time.perf_counter() - t
    t = time.perf_counter()
    dec_vals = np.concatenate([ts.ckks_vector_from(ctx, b).decrypt() for b in out])
    dec = time.perf_counter() - t
    rec = _base(
        name,
        params,
        clients,
        f"N={p.poly_modulus_degree}, moduli={list(p.coeff_mod_bit_sizes)}, "
        f"scale=2^{p.scale_bits}; one client's loop measured, server adds {clients} copies",
    )
    rec.encode_s, rec.aggregate_s, rec.decode_s = enc, agg, dec
    rec.bytes_up = float(sum(len(b) for b in blobs))
    rec.bytes_down = float(sum(len(b) for b in out))
    rec.expansion = rec.bytes_up / (4.0 * params)
    rec.max_abs_error = float(np.max(np.abs(dec_vals - clients * np.asarray(x))))
    rec.learned_by = "clients"
    return rec


def flwr_secaggplus(*, params: int, clients: int, neighbours: int) -> BenchRecord:
    """Flower's SecAgg+ client masking step for one client with ``neighbours`` peers."""
    name = "flwr-secagg+"
    if (rec_missing := _missing(name, params, clients, "flwr")) is not None:
        return rec_missing
    from flwr.common.secure_aggregation import ndarrays_arithmetic as na
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.quantization import quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import generate_key_pairs

    clip, target, modulus = 8.0, 4194304, 4294967296  # SecAggPlusWorkflow defaults
    sk, _ = generate_key_pairs()
    peers = [generate_key_pairs()[1] for _ in range(neighbours)]
    vectors, _ = synthetic_updates(params=params, clients=1)
    update = [vectors[0].astype(np.float64)]
    seed = bytes(32)  # timing only; Flower draws it with os.urandom
    t = time.perf_counter()
    q = na.factor_combine(target, quantize(update, clip, target))
    shapes = na.get_parameters_shape(q)
    q = na.parameters_addition(q, pseudo_rand_gen(seed, modulus, shapes))
    for i, pk in enumerate(peers):
        mask = pseudo_rand_gen(generate_shared_key(sk, pk), modulus, shapes)
        op: Callable[..., Any] = na.parameters_addition if i % 2 else na.parameters_subtraction
        q = op(q, mask)
    q = na.parameters_mod(q, modulus)
    wire = b"".join(np.ascontiguousarray(a).tobytes() for a in q)
    enc = time.perf_counter() - t
    rec = _base(
        name,
        params,
        clients,
        f"client masking step only, {neighbours} neighbours, flwr defaults "
        "(clip 8, 2^22 levels, mod 2^32); raw array bytes",
    )
    rec.encode_s = enc
    rec.bytes_up = float(len(wire))
    rec.expansion = rec.bytes_up / (4.0 * params)
    rec.learned_by = "server"
    return rec
