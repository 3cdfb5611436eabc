"""Benchmark secagg / secagg+ in process (crypto.run_round): time and bytes per party.

Usage::

    /tmp/venv/bin/python benchmarks/bench_secagg.py [--quick] [--json FILE] [--full-secagg]

Headline: n = 10 clients, 1,000,000 parameters, no dropout, 3 clients dropping after
sending their masked input, and 3 dropping before it. Scaling: n = 100 and 1,000 clients,
100,000 parameters, 10% dropouts (half before, half after the masked input), SecAgg vs
SecAgg+. SecAgg at n = 1,000 is extrapolated from n = 100 and 200 (a fit of
``a n + b n**2``) unless ``--full-secagg`` is given. Every round's result is checked against
the float64 weighted sum within the protocol's stated bound.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crypto import RoundSpec, create_protocol, run_round
from crypto.core import identity
from crypto.secagg import PairwiseMaskingProtocol


class _CpuTimed:
    """Proxy adding the thread CPU time of every call to ``handle``/``start``/``advance``.

    CPU time is less disturbed than wall time when other jobs share the machine.
    """

    def __init__(self, inner: Any):
        self.inner = inner
        self.cpu = 0.0

    def _timed(self, fn: Any, *args: Any) -> Any:
        t = time.thread_time()
        try:
            return fn(*args)
        finally:
            self.cpu += time.thread_time() - t

    def handle(self, message: bytes) -> Any:
        return self._timed(self.inner.handle, message)

    def start(self) -> Any:
        return self._timed(self.inner.start)

    def advance(self, replies: Any) -> Any:
        return self._timed(self.inner.advance, replies)

    def receive(self, client: int, reply: bytes) -> None:
        self._timed(self.inner.receive, client, reply)

    def close_stage(self) -> Any:
        return self._timed(self.inner.close_stage)

    def aggregate(self) -> Any:
        return self.inner.aggregate()

    def __getattr__(self, name: str) -> Any:  # spec, refused, ...
        return getattr(self.inner, name)


def run_case(
    name: str,
    n: int,
    dim: int,
    drop: dict[int, int],
    *,
    repeats: int = 1,
    seed: int = 0,
    authenticated: bool = True,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One configuration: median over ``repeats`` rounds of per-party time and bytes.

    ``authenticated=False`` runs the UNAUTHENTICATED mode (no roster, unsigned messages),
    only to measure what signing and checking cost.
    """
    proto = create_protocol(name, **(options or {}))
    assert isinstance(proto, PairwiseMaskingProtocol)
    proto.use_identities(identity.generate(range(n)) if authenticated else None)
    rng = np.random.default_rng(seed)  # not-secret: benchmark inputs
    vecs = {c: rng.uniform(-0.5, 0.5, dim).astype(np.float32) for c in range(n)}
    weights = {c: float(rng.uniform(0.5, 1.0)) for c in range(n)}
    rows = []
    for r in range(repeats):
        spec = RoundSpec("bench", r, tuple(range(n)), dim)
        params = proto.round_params(spec)
        server = _CpuTimed(proto.server_session(spec))
        clients = {
            c: _CpuTimed(proto.client_session(spec, c, vecs[c], weights[c])) for c in range(n)
        }
        t0 = time.perf_counter()
        out = run_round(server, clients, drop_at=drop)  # type: ignore[arg-type]
        wall = time.perf_counter() - t0
        agg = out.aggregate
        ids = agg.contributors
        want = np.sum([weights[c] * vecs[c].astype(np.float64) for c in ids], axis=0)
        err = float(np.max(np.abs(agg.weighted_sum - want)))
        if err > agg.error_bound:
            raise AssertionError(f"{name} n={n}: error {err} exceeds bound {agg.error_bound}")
        tr = out.traffic
        full = [c for c in range(n) if c not in drop]  # clients that ran every stage
        rows.append(
            {
                "client_ms": 1e3 * statistics.mean(tr.client_seconds[c] for c in full),
                "client_ms_max": 1e3 * max(tr.client_seconds[c] for c in full),
                "client_cpu_ms": 1e3 * statistics.mean(clients[c].cpu for c in full),
                "server_s": tr.server_seconds,
                "server_cpu_s": server.cpu,
                "upload_bytes": statistics.mean(tr.bytes_up[c] for c in full),
                "download_bytes": statistics.mean(tr.bytes_down[c] for c in full),
                "wall_s": wall,
                "max_abs_error": err,
                "error_bound": agg.error_bound,
            }
        )
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    g = params.graph
    return {
        "protocol": name,
        "n": n,
        "dim": dim,
        "neighbours": g.neighbours,
        "threshold": g.threshold,
        "modulus_bits": params.modulus_bits,
        "packed_bytes": params.packed_bytes,
        "dropped": len(drop),
        "contributors": len(ids),
        "repeats": repeats,
        "measured": True,
        "authenticated": authenticated,
        "options": dict(options or {}),
        **med,
    }


def ten_percent(n: int, fraction: float = 0.1) -> dict[int, int]:
    """``fraction`` (10%) of the cohort drops: half before sending the masked input, half after."""
    k = max(1, int(n * fraction))
    who = list(range(n - k, n))
    return {c: (2 if i % 2 == 0 else 3) for i, c in enumerate(who)}


def extrapolate(a: dict[str, Any], b: dict[str, Any], n: int) -> dict[str, Any]:
    """SecAgg at ``n`` from two measured rows: time fit ``p n + q n**2``, bytes affine in n.

    The masked vector's size is exact (it depends on the modulus, which grows with n);
    only the per-peer overhead (keys, sealed and revealed shares) is extrapolated.
    """
    proto = create_protocol("secagg")
    assert isinstance(proto, PairwiseMaskingProtocol)
    params = proto.round_params(RoundSpec("bench", 0, tuple(range(n)), b["dim"]))
    drop = ten_percent(n)
    out = dict(b)
    out.update(
        n=n,
        measured=False,
        dropped=len(drop),
        contributors=n - sum(1 for s in drop.values() if s == 2),
        neighbours=params.graph.neighbours,
        threshold=params.graph.threshold,
        modulus_bits=params.modulus_bits,
    )
    na, nb = a["n"], b["n"]
    det = na * nb * nb - nb * na * na
    for key in (
        "client_ms",
        "client_ms_max",
        "client_cpu_ms",
        "server_s",
        "server_cpu_s",
        "wall_s",
    ):
        ya, yb = a[key], b[key]
        p = (ya * nb * nb - yb * na * na) / det
        q = (yb * na - ya * nb) / det
        out[key] = max(p * n + q * n * n, yb * n / nb)  # never below linear growth
    vec = {r["n"]: r["packed_bytes"] for r in (a, b)}
    out["packed_bytes"] = params.packed_bytes
    for key in ("upload_bytes", "download_bytes"):
        extra = vec if key == "upload_bytes" else {na: 0, nb: 0}
        oa, ob = a[key] - extra[na], b[key] - extra[nb]
        base = params.packed_bytes if key == "upload_bytes" else 0
        out[key] = base + ob + (ob - oa) / (nb - na) * (n - nb)
    for key in ("max_abs_error", "error_bound"):
        out.pop(key, None)
    return out


def fmt(r: dict[str, Any]) -> str:
    tag = "" if r["measured"] else "  EXTRAPOLATED"
    return (
        f"{r['protocol']:8s} n={r['n']:5d} dim={r['dim']:8d} k={r['neighbours']:4d} "
        f"t={r['threshold']:4d} m={r['modulus_bits']:2d} drop={r['dropped']:3d} | "
        f"client {r['client_ms']:7.1f} ms (max {r['client_ms_max']:7.1f}, "
        f"cpu {r['client_cpu_ms']:7.1f}) | "
        f"server {r['server_s']:6.3f} s (cpu {r['server_cpu_s']:6.3f}) | "
        f"up {r['upload_bytes'] / 1e6:7.3f} MB | "
        f"down {r['download_bytes'] / 1e6:7.3f} MB | wall {r['wall_s']:7.1f} s{tag}"
    )


def auth_overhead(*, dim: int, repeats: int, out: Path | None) -> int:
    """Client CPU time of secagg+ at n = 10 with and without signatures, interleaved."""
    rows: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for r in range(repeats):
        for auth in (False, True):
            rows[auth].append(run_case("secagg+", 10, dim, {}, seed=r, authenticated=auth))
    summary = {}
    for auth, rs in rows.items():
        summary["signed" if auth else "unsigned"] = {
            k: statistics.median(x[k] for x in rs)
            for k in ("client_cpu_ms", "client_ms", "upload_bytes", "server_cpu_s")
        }
    s, u = summary["signed"], summary["unsigned"]
    summary["overhead_client_cpu_pct"] = 100 * (s["client_cpu_ms"] / u["client_cpu_ms"] - 1)
    summary["overhead_upload_pct"] = 100 * (s["upload_bytes"] / u["upload_bytes"] - 1)
    print(json.dumps(summary, indent=2))
    if out:
        out.write_text(json.dumps({"dim": dim, "n": 10, "repeats": repeats, **summary}, indent=2))
    return 0


def scaling_only(
    sizes: list[int], json_path: Path | None, plot: Path | None, *, dropout: float, corrupt: float
) -> int:
    """secagg+ at each cohort size: 100,000 parameters, 10% dropouts, one round each.

    The protocol is configured for the dropouts it meets (``max_dropout_fraction=dropout``,
    ``max_corrupt_fraction=corrupt``): the graph rule of :mod:`crypto.secagg.graph` then picks
    ``k`` and ``t``. ``wall_s`` is the whole round with every party run one after another in
    this process (all clients' and the server's work added up): an upper bound on a
    deployment's round.
    """
    rows = []
    options = {"max_dropout_fraction": dropout, "max_corrupt_fraction": corrupt}
    for n in sizes:
        row = run_case("secagg+", n, 100_000, ten_percent(n, dropout), options=options)
        row["load_average"] = os.getloadavg()[0]
        rows.append(row)
        print(fmt(row), f"round {row['wall_s']:.1f} s (load {row['load_average']:.1f})", flush=True)
    if json_path:
        meta = {"machine": "shared 2-core machine; figures are noisy", "argv": sys.argv[1:]}
        json_path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4))
        ns = [r["n"] for r in rows]
        ax.plot(ns, [r["wall_s"] for r in rows], "o-", label="whole round (all parties, 1 process)")
        ax.plot(ns, [r["server_s"] for r in rows], "s--", label="server")
        ax.plot(ns, [r["client_ms"] / 1e3 for r in rows], "^:", label="one client (mean)")
        ax.axhline(60, color="grey", lw=0.8, label="60 s target")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients (10% drop: half before, half after the masked input)")
        ax.set_ylabel("seconds")
        ax.set_title("secagg+, 100,000 parameters")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plot, dpi=110)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--json", type=Path, help="write the results as JSON to this file")
    ap.add_argument("--full-secagg", action="store_true", help="measure SecAgg at n=1000 too")
    ap.add_argument(
        "--auth-overhead",
        action="store_true",
        help="only: secagg+ at n=10 signed vs UNAUTHENTICATED, side by side (interleaved)",
    )
    ap.add_argument(
        "--scaling-only",
        type=str,
        default=None,
        help="only secagg+ at these cohort sizes (e.g. 100,1000), 100k params, "
        "--dropout-fraction of them dropping",
    )
    ap.add_argument("--plot", type=Path, help="with --scaling-only: round time vs cohort (PNG)")
    ap.add_argument(
        "--dropout-fraction",
        type=float,
        default=0.1,
        help="with --scaling-only: the share of clients that drop, which the round is "
        "configured for (max_dropout_fraction; 0.1)",
    )
    ap.add_argument(
        "--corrupt-fraction",
        type=float,
        default=0.1,
        help="with --scaling-only: max_corrupt_fraction the round is configured for (0.1)",
    )
    args = ap.parse_args(argv)
    if args.auth_overhead:
        return auth_overhead(dim=100_000 if args.quick else 1_000_000, repeats=9, out=args.json)
    if args.scaling_only:
        return scaling_only(
            [int(x) for x in args.scaling_only.split(",")],
            args.json,
            args.plot,
            dropout=args.dropout_fraction,
            corrupt=args.corrupt_fraction,
        )

    head_dim = 100_000 if args.quick else 1_000_000
    scale_dim = 10_000 if args.quick else 100_000
    sizes = (50, 200) if args.quick else (100, 1000)
    repeats = 1 if args.quick else 3
    results: list[dict[str, Any]] = []

    def emit(row: dict[str, Any], section: str) -> None:
        row["section"] = section
        results.append(row)
        print(fmt(row), flush=True)

    print(f"# headline: n=10, dim={head_dim} (median of {repeats})")
    for name in ("secagg", "secagg+"):
        emit(run_case(name, 10, head_dim, {}, repeats=repeats), "headline")
        after = {7: 3, 8: 3, 9: 3}
        emit(run_case(name, 10, head_dim, after, repeats=repeats), "headline-drop-after-input")
        before = {7: 2, 8: 2, 9: 2}
        emit(run_case(name, 10, head_dim, before, repeats=repeats), "headline-drop-before-input")

    print(f"# scaling: dim={scale_dim}, 10% dropouts (half before, half after masked input)")
    for n in sizes:
        emit(run_case("secagg+", n, scale_dim, ten_percent(n)), "scaling")
    small, large = sizes
    measured = [run_case("secagg", small, scale_dim, ten_percent(small))]
    emit(measured[0], "scaling")
    if args.full_secagg:
        emit(run_case("secagg", large, scale_dim, ten_percent(large)), "scaling")
    else:
        # Fit points with the same modulus width as n = large (32 bits past 127 clients).
        fit = (2 * small, 4 * small) if large > 4 * small else (small, 2 * small)
        rows = [r for r in measured if r["n"] in fit]
        for m in fit:
            if m not in {r["n"] for r in rows}:
                rows.append(run_case("secagg", m, scale_dim, ten_percent(m)))
                emit(rows[-1], "scaling")
        emit(extrapolate(rows[0], rows[1], large), "scaling")

    if args.json:
        meta = {"machine": "shared 2-core machine; figures are noisy", "argv": sys.argv[1:]}
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
