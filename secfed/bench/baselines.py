"""Peer baselines measured in the same run, each clearly labelled.

* ``phe-naive``: python-paillier, one 2048-bit ciphertext per value. A sample of values is
  encrypted, added across the cohort and decrypted; per-value times are multiplied by the
  parameter count (``note`` says "extrapolated").
* ``tenseal-bare``: a bare TenSEAL CKKS loop with secfed's ``ckks`` default parameters:
  ``ts.ckks_vector`` + ``serialize`` per chunk of ``N/2`` values (one client, measured in
  full), the server deserialises and adds the cohort's ciphertexts, one key holder decrypts.
* ``flwr-secagg+``: Flower's SecAgg+ client, its own stage functions (``secaggplus_mod``:
  key pairs, Shamir shares encrypted to each neighbour, decryption of the received shares,
  quantisation, private and pairwise masks, modulo, serialisation, share reveal), timed for
  one client of a share group of ``k + 1``, median of 3. The server is not run;
  ``aggregate_s`` and ``decode_s`` are left empty.

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


def flwr_secaggplus(
    *, params: int, clients: int, neighbours: int, threshold: int, repeats: int = 3
) -> BenchRecord:
    """Flower's SecAgg+ client, all four stages, for one client with ``neighbours`` peers.

    Flower's own stage functions (``secaggplus_mod``: setup, share keys, collect masked
    vectors, unmask) run for the whole share group; only client 0's calls are timed, like
    secfed's per-client figure. The median over ``repeats`` rounds is reported.
    """
    name = "flwr-secagg+"
    if (rec_missing := _missing(name, params, clients, "flwr")) is not None:
        return rec_missing
    # the package re-exports the mod function under the module's name: import the module
    mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    from flwr.common import ndarrays_to_parameters
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    vectors, _ = synthetic_updates(params=params, clients=1)
    update = ndarrays_to_parameters([vectors[0].astype(np.float64)])
    group = list(range(1, neighbours + 2))  # Flower node ids; client 0 of the cohort is 1
    config: dict[str, Any] = {
        Key.SAMPLE_NUMBER: len(group), Key.SHARE_NUMBER: len(group), Key.THRESHOLD: threshold,
        Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 4194304, Key.MOD_RANGE: 4294967296,
        Key.MAX_WEIGHT: 1.0,
    }  # fmt: skip
    rounds = [_flwr_client_round(mod, Key, group, config, update) for _ in range(repeats)]
    times = sorted(t for t, _ in rounds)
    upload = rounds[0][1]
    rec = _base(
        name,
        params,
        clients,
        f"Flower's SecAgg+ client (secaggplus_mod stages 0-3), {neighbours} neighbours, "
        f"threshold {threshold}, clip 8, 2^22 levels, mod 2^32; median of {repeats}",
    )
    rec.encode_s = times[len(times) // 2]
    rec.bytes_up = float(upload)
    rec.expansion = rec.bytes_up / (4.0 * params)
    rec.learned_by = "server"
    return rec


def _flwr_client_round(
    mod: Any, Key: Any, group: list[int], config: dict[str, Any], update: Any
) -> tuple[float, int]:
    """One SecAgg+ round of Flower's client stages over ``group``: (seconds, upload bytes)
    of its first member."""
    states = {nid: mod.SecAggPlusState(nid=nid) for nid in group}
    me, timed = group[0], 0.0

    def call(nid: int, fn: Callable[..., Any], *args: Any) -> Any:
        nonlocal timed
        t = time.perf_counter()
        out = fn(states[nid], *args)
        if nid == me:
            timed += time.perf_counter() - t
        return out

    keys = {nid: call(nid, mod._setup, config) for nid in group}
    adverts = {str(n): (k[Key.PUBLIC_KEY_1], k[Key.PUBLIC_KEY_2]) for n, k in keys.items()}
    sources: list[int] = []
    inbox: list[bytes] = []
    sent = {}
    for nid in group:
        sent[nid] = call(nid, mod._share_keys, dict(adverts))
        rows = zip(sent[nid][Key.DESTINATION_LIST], sent[nid][Key.CIPHERTEXT_LIST], strict=True)
        for dst, ct in rows:
            if dst == me:
                sources.append(nid)
                inbox.append(ct)
    masked = call(
        me, mod._collect_masked_vectors,
        {Key.SOURCE_LIST: sources, Key.CIPHERTEXT_LIST: inbox}, 1, update,
    )  # fmt: skip
    reveal = call(me, mod._unmask, {Key.ACTIVE_NODE_ID_LIST: group, Key.DEAD_NODE_ID_LIST: []})
    upload = (
        len(keys[me][Key.PUBLIC_KEY_1]) + len(keys[me][Key.PUBLIC_KEY_2])
        + sum(len(c) for c in sent[me][Key.CIPHERTEXT_LIST])
        + sum(len(b) for b in masked[Key.MASKED_PARAMETERS])
        + sum(len(b) for b in reveal[Key.SHARE_LIST])
    )  # fmt: skip
    return timed, upload
