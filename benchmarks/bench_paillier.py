"""Benchmark of the paillier protocol against naive per-value ``phe``.

For ``--params`` float parameters (default 1,000,000), ``--clients`` clients (default 10) and a
``--key-bits`` key (default 2048) it measures, through the protocol's own sessions:

* client encryption (encode + pack + CRT DJN encrypt + framing) on one core (``workers=1``) and on
  all cores (``workers=os.cpu_count()``, pool already started);
* the server's ciphertext product over the cohort;
* decryption + decoding of the aggregate by a client, on one core and on all cores;
* bytes on the wire per parameter, the error against the exact weighted sum and the stated bound;
* naive ``phe`` (``public_key.encrypt(float)`` / ``private_key.decrypt``) on ``--naive-values``
  values, extrapolated to ``--params``, and the speed-up ratio.

Inputs look like adapter updates (|x| log-uniform in [1e-3, 1e-1]) with example-count weights;
encoding options default to clip 0.1, max_weight 2000, precision_bits 16. Timings are
wall-clock on a possibly shared machine; one-core steps also report this process's CPU seconds,
which contention inflates less. Run from the repository root:
``python benchmarks/bench_paillier.py [--quick] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from phe import paillier as phe_paillier

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crypto import RoundSpec, create_protocol
from crypto.paillier import PaillierProtocol, holder
from crypto.paillier.keys import PrivateKey
from crypto.paillier.sessions import PaillierClient


def make_inputs(
    n: int, dim: int, *, max_weight: float, seed: int = 0
) -> tuple[dict[int, np.ndarray], dict[int, float]]:
    """Update-like vectors and integer example counts."""
    rng = np.random.default_rng(seed)  # not-secret: benchmark data
    vecs = {
        c: (
            rng.choice([-1.0, 1.0], dim) * np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), dim))
        ).astype(np.float32)
        for c in range(n)
    }
    weights = {c: float(rng.integers(50, int(max_weight) + 1)) for c in range(n)}
    return vecs, weights


_CPU: dict[str, float] = {}


def timed(fn: Any, *args: Any, label: str = "") -> tuple[Any, float]:
    """Wall seconds of ``fn(*args)``; this process's CPU seconds go to ``_CPU[label]``."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(*args)
    wall = time.perf_counter() - t0
    if label:
        _CPU[label] = time.process_time() - c0
    return out, wall


def naive_phe(key: PrivateKey, values: int) -> dict[str, float]:
    """Per-value phe encryption and decryption, ms per value."""
    pub = phe_paillier.PaillierPublicKey(key.public.n)
    priv = phe_paillier.PaillierPrivateKey(pub, key.p, key.q)
    data = np.random.default_rng(1).uniform(-0.1, 0.1, values).tolist()  # not-secret
    enc, t_enc = timed(lambda: [pub.encrypt(v) for v in data], label="naive_enc")
    dec, t_dec = timed(lambda: [priv.decrypt(c) for c in enc], label="naive_dec")
    assert max(abs(a - b) for a, b in zip(dec, data, strict=True)) < 1e-9
    return {
        "encrypt_ms_per_value": 1e3 * t_enc / values,
        "decrypt_ms_per_value": 1e3 * t_dec / values,
        "encrypt_cpu_ms_per_value": 1e3 * _CPU["naive_enc"] / values,
        "decrypt_cpu_ms_per_value": 1e3 * _CPU["naive_dec"] / values,
    }


def run(args: argparse.Namespace, key_dir: Path) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    opts = {"clip": args.clip, "max_weight": args.max_weight, "precision_bits": args.precision_bits}
    one = create_protocol("paillier", key_bits=args.key_bits, workers=1, **opts)
    t0 = time.perf_counter()
    one.setup(job_id="bench", key_dir=key_dir)
    keygen_s = time.perf_counter() - t0
    many = create_protocol("paillier", key_bits=args.key_bits, workers=cores, **opts)
    many.setup(job_id="bench", key_dir=key_dir)
    assert isinstance(one, PaillierProtocol) and isinstance(many, PaillierProtocol)
    key = one._private
    assert key is not None

    vecs, weights = make_inputs(args.clients, args.params, max_weight=args.max_weight)
    spec = RoundSpec("bench", 1, tuple(range(args.clients)), args.params)
    server = many.server_session(spec)
    clients = {
        c: (one if c == 0 else many).client_session(spec, c, vecs[c], weights[c])
        for c in spec.cohort
    }
    # One-time costs, kept out of the per-round timings: the in-process CRT tables of the
    # one-core protocol, and the pool start plus the tables in its workers.
    _, table_build_s = timed(lambda: holder.holder_key(key.p, key.q))
    _, pool_start_s = timed(
        lambda: holder.encrypt_message(
            bytes(8 * cores * 255), p=key.p, q=key.q, plain_width=255, session_id=bytes(16),
            sender=0, workers=cores,
        )
    )  # fmt: skip
    hello = server.start()
    replies: dict[int, bytes] = {}
    enc_times: dict[int, float] = {}
    for cid in spec.cohort:
        reply, enc_times[cid] = timed(clients[cid].handle, hello[cid], label=f"enc{cid}")
        assert reply is not None
        replies[cid] = reply
    step, server_s = timed(server.advance, replies)
    _, dec_1 = timed(clients[0].handle, step.messages[0], label="dec0")
    dec_all = None
    if args.clients > 1:
        _, dec_all = timed(clients[1].handle, step.messages[1])
    agg = clients[0].aggregate()
    assert agg is not None
    exact = sum(weights[c] * vecs[c].astype(np.float64) for c in spec.cohort)
    err = float(np.max(np.abs(agg.weighted_sum - exact)))
    assert err <= agg.error_bound
    c0 = clients[0]
    assert isinstance(c0, PaillierClient)
    layout = c0.layout

    naive = naive_phe(key, args.naive_values)
    enc_one = enc_times[0]
    enc_all = float(np.mean([enc_times[c] for c in spec.cohort[1:]])) if args.clients > 1 else None
    naive_enc_s = naive["encrypt_ms_per_value"] * args.params / 1e3
    naive_dec_s = naive["decrypt_ms_per_value"] * args.params / 1e3
    return {
        "machine": {"cores": cores, "platform": platform.platform(), "shared": True},
        "params": args.params,
        "clients": args.clients,
        "key_bits": args.key_bits,
        "options": opts,
        "layout": {
            "slot_bits": layout.slot_bits,
            "slots_per_ciphertext": layout.slots_per_plaintext,
            "ciphertexts_per_client": layout.plaintexts,
        },
        "keygen_s": keygen_s,
        "table_build_s": table_build_s,
        "pool_start_s": pool_start_s,
        "encrypt_s": {"one_core": enc_one, "all_cores": enc_all},
        "encrypt_cpu_s_one_core": _CPU["enc0"],
        "server_aggregate_s": server_s,
        "decrypt_s": {"one_core": dec_1, "all_cores": dec_all},
        "decrypt_cpu_s_one_core": _CPU["dec0"],
        "load_average_at_end": os.getloadavg()[0],
        "bytes_up_per_client": len(replies[0]),
        "bytes_up_per_param": len(replies[0]) / args.params,
        "bytes_down_per_client": len(hello[0]) + len(step.messages[0]),
        "bytes_down_per_param": (len(hello[0]) + len(step.messages[0])) / args.params,
        "max_abs_error": err,
        "error_bound": agg.error_bound,
        "max_abs_error_of_mean": err / agg.total_weight,
        "naive_phe": {
            "values_measured": args.naive_values,
            **naive,
            "extrapolated_encrypt_s": naive_enc_s,
            "extrapolated_decrypt_s": naive_dec_s,
            "encrypt_speedup_one_core": naive_enc_s / enc_one,
            "decrypt_speedup_one_core": naive_dec_s / dec_1,
            "encrypt_speedup_one_core_cpu": naive["encrypt_cpu_ms_per_value"]
            * args.params
            / 1e3
            / _CPU["enc0"],
            "decrypt_speedup_one_core_cpu": naive["decrypt_cpu_ms_per_value"]
            * args.params
            / 1e3
            / _CPU["dec0"],
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20k params, 3 clients, 20 naive")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--naive-values", type=int, default=200)
    parser.add_argument("--clip", type=float, default=0.1)
    parser.add_argument("--max-weight", type=float, default=2000.0)
    parser.add_argument("--precision-bits", type=int, default=16)
    args = parser.parse_args(argv)
    if args.quick:
        args.params, args.clients, args.naive_values = 20_000, 3, 20
    key_dir = Path(tempfile.mkdtemp(prefix="bench-paillier-"))
    try:
        results = run(args, key_dir)
    finally:
        shutil.rmtree(key_dir, ignore_errors=True)  # holds a private key
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
