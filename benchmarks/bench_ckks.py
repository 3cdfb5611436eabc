"""Benchmark of the ckks protocol against bare TenSEAL loops doing the same work.

Measures, for ``--params`` float parameters and ``--clients`` clients (defaults: 1,000,000 and
10, preset ``fast``: N = 8192): client encrypt+serialize time, server aggregate time, decrypt
time, bytes per parameter up and down, the maximum absolute error against the exact weighted
sum, and the framework's overhead over

* ``bare-seeded``: the same SEAL seeded encryption, TenSEAL sums and decryption, in a plain
  loop without framing, validation, packing or output rounding;
* ``bare-tenseal``: the usual TenSEAL idiom (``ts.ckks_vector(ctx, chunk).serialize()``,
  full ciphertexts) with the same parameters.

Variants run interleaved, ``--repeat`` times; medians are reported. Run from the repository
root: ``python benchmarks/bench_ckks.py [--quick] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crypto import RoundSpec, create_protocol
from crypto.ckks import CkksKeys, CkksProtocol
from crypto.ckks import params as cp

Inputs = tuple[dict[int, np.ndarray], dict[int, float]]


def make_inputs(n: int, dim: int, seed: int = 0) -> Inputs:
    """Update-like vectors (|x| log-uniform in [1e-3, 1e-1], random sign), example counts."""
    rng = np.random.default_rng(seed)  # not-secret: benchmark data
    vecs = {
        c: (
            rng.choice([-1.0, 1.0], dim) * np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), dim))
        ).astype(np.float32)
        for c in range(n)
    }
    return vecs, {c: float(rng.integers(50, 2000)) for c in range(n)}


def run_framework(proto: CkksProtocol, inputs: Inputs) -> dict[str, float]:
    """One round through the protocol's sessions, timed stage by stage."""
    vecs, weights = inputs
    dim = len(vecs[0])
    spec = RoundSpec("bench", 1, tuple(sorted(vecs)), dim)
    server = proto.server_session(spec)
    clients = {c: proto.client_session(spec, c, vecs[c], weights[c]) for c in spec.cohort}
    hello = server.start()
    replies: dict[int, bytes] = {}
    enc = []
    for c in spec.cohort:
        t = time.perf_counter()
        reply = clients[c].handle(hello[c])
        enc.append(time.perf_counter() - t)
        assert reply is not None
        replies[c] = reply
    t = time.perf_counter()
    step = server.advance(replies)
    agg_s = time.perf_counter() - t
    t = time.perf_counter()
    clients[0].handle(step.messages[0])
    dec_s = time.perf_counter() - t
    agg = clients[0].aggregate()
    assert agg is not None
    want = sum(weights[c] * vecs[c].astype(np.float64) for c in vecs)
    return {
        "encrypt_s": statistics.median(enc),
        "aggregate_s": agg_s,
        "decrypt_s": dec_s,
        "bytes_up_per_param": len(replies[0]) / dim,
        "bytes_down_per_param": len(step.messages[0]) / dim,
        "max_abs_error": float(np.max(np.abs(agg.weighted_sum - want))),
        "error_bound": agg.error_bound,
        "max_abs_error_of_mean": float(np.max(np.abs(agg.mean - want / sum(weights.values())))),
    }


def _bare(
    keys: CkksKeys, inputs: Inputs, encrypt: Callable[[np.ndarray], list[bytes]], wrapped: bool
) -> dict[str, float]:
    """Encrypt each client's weighted vector, sum chunk-wise on the keyless context, decrypt."""
    vecs, weights = inputs
    dim = len(vecs[0])
    sizes = cp.chunk_sizes(cp.resolve(), length=dim + 1)
    enc, uploads = [], []
    for c in sorted(vecs):
        t = time.perf_counter()
        values = np.append(weights[c] * vecs[c].astype(np.float64), weights[c])
        uploads.append(encrypt(values))
        enc.append(time.perf_counter() - t)

    def load(ctx: ts.Context, blob: bytes, size: int) -> ts.CKKSVector:
        proto = cp.wrap_chunk(blob, size=size, scale=keys.scale) if wrapped else blob
        return ts.ckks_vector_from(ctx, proto)

    t = time.perf_counter()
    acc = [load(keys.server, blob, s) for blob, s in zip(uploads[0], sizes, strict=True)]
    for up in uploads[1:]:
        for j, blob in enumerate(up):
            acc[j].add_(load(keys.server, blob, sizes[j]))
    out = [v.serialize() for v in acc]
    agg_s = time.perf_counter() - t
    t = time.perf_counter()
    assert keys.client is not None
    decoded = np.concatenate(
        [np.asarray(ts.ckks_vector_from(keys.client, b).decrypt()) for b in out]
    )
    dec_s = time.perf_counter() - t
    want = sum(weights[c] * vecs[c].astype(np.float64) for c in vecs)
    return {
        "encrypt_s": statistics.median(enc),
        "aggregate_s": agg_s,
        "decrypt_s": dec_s,
        "bytes_up_per_param": sum(map(len, uploads[0])) / dim,
        "bytes_down_per_param": sum(map(len, out)) / dim,
        "max_abs_error": float(np.max(np.abs(decoded[:dim] - want))),
    }


def run_bare_seeded(keys: CkksKeys, inputs: Inputs) -> dict[str, float]:
    """Same SEAL seeded encryption as the protocol, in a bare loop."""
    assert keys.client is not None
    seal = keys.client.seal_context().data
    encoder = sealapi.CKKSEncoder(seal)
    encryptor = sealapi.Encryptor(seal, keys.client.secret_key().data)
    slots = cp.resolve().slots

    def encrypt(values: np.ndarray) -> list[bytes]:
        out = []
        with tempfile.TemporaryDirectory(
            dir="/dev/shm" if os.path.isdir("/dev/shm") else None
        ) as d:
            path = os.path.join(d, "ct")
            for start in range(0, len(values), slots):
                plain = sealapi.Plaintext()
                encoder.encode(values[start : start + slots].tolist(), keys.scale, plain)
                encryptor.encrypt_symmetric(plain).save(path)
                with open(path, "rb") as fh:
                    out.append(fh.read())
        return out

    return _bare(keys, inputs, encrypt, wrapped=True)


def run_bare_tenseal(keys: CkksKeys, inputs: Inputs) -> dict[str, float]:
    """The usual TenSEAL idiom: one ``ckks_vector`` per slot-sized chunk, full ciphertexts."""
    assert keys.client is not None
    slots = cp.resolve().slots
    ctx = keys.client

    def encrypt(values: np.ndarray) -> list[bytes]:
        return [
            ts.ckks_vector(ctx, values[s : s + slots].tolist()).serialize()
            for s in range(0, len(values), slots)
        ]

    return _bare(keys, inputs, encrypt, wrapped=False)


def tenseal_default_bytes_per_param() -> float:
    """Bytes per parameter of TenSEAL's tutorial parameters ([60, 40, 40, 60], asymmetric)."""
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    ctx.global_scale = 2.0**40
    return len(ts.ckks_vector(ctx, [0.0] * 4096).serialize()) / 4096


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k parameters, 3 clients, 1 repeat")
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the results to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.params, args.clients, args.repeat = 100_000, 3, 1
    proto = create_protocol("ckks", preset="fast")
    assert isinstance(proto, CkksProtocol)
    t = time.perf_counter()
    proto.setup(job_id="bench")
    keygen_s = time.perf_counter() - t
    inputs = make_inputs(args.clients, args.params)
    variants: dict[str, Callable[[], dict[str, float]]] = {
        "secfed": lambda: run_framework(proto, inputs),
        "bare-seeded": lambda: run_bare_seeded(proto.keys, inputs),
        "bare-tenseal": lambda: run_bare_tenseal(proto.keys, inputs),
    }
    warm = make_inputs(2, 3 * proto.params.slots, seed=1)
    (
        run_framework(proto, warm),
        run_bare_seeded(proto.keys, warm),
        run_bare_tenseal(proto.keys, warm),
    )
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    names = list(variants)
    for i in range(args.repeat):  # interleaved, rotating order: load hits every variant alike
        for name in names[i % 3 :] + names[: i % 3]:
            runs[name].append(variants[name]())
    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()
    }
    phases = ("encrypt_s", "aggregate_s", "decrypt_s")

    def total(m: dict[str, float]) -> float:
        # The whole round's compute: every client encrypts, the server sums, one decrypts.
        return args.clients * m["encrypt_s"] + m["aggregate_s"] + m["decrypt_s"]

    overhead = {
        base: {
            **{p: med["secfed"][p] / med[base][p] - 1 for p in phases},
            "round": total(med["secfed"]) / total(med[base]) - 1,
        }
        for base in ("bare-seeded", "bare-tenseal")
    }
    result = {
        "params": args.params,
        "clients": args.clients,
        "repeat": args.repeat,
        "preset": "fast",
        "poly_modulus_degree": proto.params.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(proto.params.coeff_mod_bit_sizes),
        "scale_bits": proto.params.scale_bits,
        "keygen_s": keygen_s,
        "medians": med,
        "overhead_vs": overhead,
        "tenseal_default_bytes_per_param": tenseal_default_bytes_per_param(),
        "float32_bytes_per_param": 4.0,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_avg": os.getloadavg(),
    }
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    sys.stdout.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
