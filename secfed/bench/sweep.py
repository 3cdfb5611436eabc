"""Run a whole sweep: every protocol x point, then the peer baselines."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crypto
from crypto.core import identity

from . import baselines
from .measure import BenchRecord, MemoryProbe, measure_point
from .memory import party_peaks
from .workload import Point, sweep_points

log = logging.getLogger(__name__)

#: Explicitly named insecure options ``--quick`` may switch on, and the value it uses.
QUICK_INSECURE: dict[str, Any] = {"insecure_key_bits": 1024}

Progress = Callable[[str], None]


@dataclass
class SweepConfig:
    """What to measure."""

    protocols: Sequence[str]
    params: Sequence[int]
    clients: Sequence[int]
    dropouts: Sequence[int]
    repeats: int = 3
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    workers: int | None = None
    quick: bool = False
    baselines: bool = True
    decode_clients: int = 2
    point_budget_s: float = 600.0
    caps: Mapping[str, int] = field(default_factory=dict)
    memory: bool = True
    # Every protocol runs with a roster (signed messages), as jobs do; False is the loudly
    # named UNAUTHENTICATED mode, only to measure what authentication costs.
    authenticated: bool = True

    def points(self) -> list[Point]:
        return sweep_points(self.protocols, self.params, self.clients, self.dropouts)

    def baseline_points(self) -> list[tuple[str, int, int]]:
        if not self.baselines:
            return []
        names = ("phe-naive", "tenseal-bare", "flwr-secagg+")
        return [(b, n, c) for b in names for c in sorted(self.clients) for n in sorted(self.params)]


def protocol_options(cfg: SweepConfig, name: str) -> tuple[dict[str, Any], bool]:
    """Options for ``name`` (user's, ``workers``, quick's insecure ones) and whether insecure."""
    cls = crypto.get_protocol(name)
    opts = dict(cfg.options.get(name, {}))
    if cfg.workers is not None and "workers" in cls.option_names:
        opts.setdefault("workers", cfg.workers)
    if cfg.quick:
        for opt, value in QUICK_INSECURE.items():
            if opt in cls.option_names and not any(k.startswith("key_bits") for k in opts):
                opts.setdefault(opt, value)
    insecure = any(k.startswith("insecure") for k in opts)
    return opts, insecure


def _graph(clients: int) -> tuple[int, int]:
    """Neighbours and threshold for the Flower baseline: secfed's secagg+ graph if registered."""
    if "secagg+" in crypto.protocol_names():
        proto: Any = crypto.create_protocol("secagg+")
        g = proto.graph_params(clients)
        return int(g.neighbours), int(g.threshold)
    k = min(clients - 1, max(2, math.ceil(math.log2(clients))))
    return k, max(2, (k + 1) // 2 + 1)


def run_baseline(name: str, params: int, clients: int) -> BenchRecord:
    """One peer baseline record (errors become the record's ``error``)."""
    try:
        if name == "phe-naive":
            return baselines.phe_naive(params=params, clients=clients)
        if name == "tenseal-bare":
            return baselines.tenseal_bare(params=params, clients=clients)
        k, t = _graph(clients)
        return baselines.flwr_secaggplus(params=params, clients=clients, neighbours=k, threshold=t)
    except Exception as err:
        rec = BenchRecord(name, params, clients, 0, kind="baseline")
        rec.error = f"{type(err).__name__}: {err}"
        return rec


def _probe(proto: crypto.Protocol, name: str, opts: dict[str, Any], key_dir: Path) -> MemoryProbe:
    def probe(vectors: Mapping[int, Any], weights: Mapping[int, float]) -> Any:
        return party_peaks(
            proto,
            name=name,
            options=opts,
            key_dir=key_dir,
            job_id="secfed-bench",
            vectors=vectors,
            weights=weights,
        )

    return probe


def run_sweep(cfg: SweepConfig, *, advance: Progress | None = None) -> list[dict[str, Any]]:
    """Measure every point, then the baselines; ``advance(label)`` after each one."""
    records: list[dict[str, Any]] = []
    step = advance or (lambda _label: None)
    by_protocol: dict[str, list[Point]] = {}
    for p in cfg.points():
        by_protocol.setdefault(p.protocol, []).append(p)
    with tempfile.TemporaryDirectory(prefix="secfed-bench-keys-") as keys:
        for name, points in by_protocol.items():
            proto: crypto.Protocol | None = None
            setup_s, failure, insecure = math.nan, "", False
            opts: dict[str, Any] = {}
            try:
                opts, insecure = protocol_options(cfg, name)
                proto = crypto.create_protocol(name, **opts)
                if cfg.authenticated:  # the job's roster: loaded by setup (and by the probes)
                    ring = identity.generate(range(max(cfg.clients)))
                    identity.save(ring, Path(keys) / name / identity.SUBDIR)
                t = time.perf_counter()
                proto.setup(job_id="secfed-bench", key_dir=Path(keys) / name)
                setup_s = time.perf_counter() - t
            except Exception as err:
                failure = f"setup failed: {type(err).__name__}: {err}"
            for point in points:
                step(f"{name} n={point.params:,} c={point.clients} d={point.dropouts}")
                cap = cfg.caps.get(name)
                if cap is not None and point.params > cap:
                    rec = BenchRecord(name, point.params, point.clients, point.dropouts)
                    rec.error = f"skipped: above --cap {name}={cap}"
                elif proto is None:
                    rec = BenchRecord(name, point.params, point.clients, point.dropouts)
                    rec.error = failure
                else:
                    probe = _probe(proto, name, opts, Path(keys) / name) if cfg.memory else None
                    try:
                        rec = measure_point(
                            proto,
                            point,
                            repeats=cfg.repeats,
                            decode_clients=cfg.decode_clients,
                            point_budget_s=cfg.point_budget_s,
                            insecure=insecure,
                            memory_probe=probe,
                            authenticated=proto.authenticated,
                        )
                    except Exception as err:
                        log.exception("protocol %s failed at %s", name, point)
                        rec = BenchRecord(name, point.params, point.clients, point.dropouts)
                        rec.error = f"{type(err).__name__}: {err}"
                rec.setup_s = setup_s
                records.append(rec.as_dict())
    for name, params, clients in cfg.baseline_points():
        step(f"{name} n={params:,} c={clients}")
        records.append(run_baseline(name, params, clients).as_dict())
    return records
