"""End-to-end: the default federated job once per protocol (round time, bytes, accuracy)."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import load_config
from ..runner import FederatedRunner

DEFAULT_JOB = Path(__file__).resolve().parents[2] / "examples" / "default.toml"


def run_e2e(
    protocols: Sequence[str],
    *,
    job: Path = DEFAULT_JOB,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    rounds: int | None = None,
    advance: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``job`` with each protocol into a temporary directory; one record per protocol."""
    base = load_config(job)
    if rounds is not None:
        base = base.with_overrides(federation={"rounds": rounds})
    records: list[dict[str, Any]] = []
    for name in protocols:
        if advance is not None:
            advance(f"e2e {name}")
        opts = dict((options or {}).get(name, {}))
        rec: dict[str, Any] = {
            "protocol": name,
            "kind": "e2e",
            "job": str(job),
            "options": ",".join(f"{k}={v}" for k, v in sorted(opts.items())),
            "insecure": any(k.startswith("insecure") for k in opts),
            "error": "",
        }
        try:
            cfg = base.with_overrides(aggregation={"protocol": name, "options": opts})
            with tempfile.TemporaryDirectory(prefix="secfed-bench-e2e-") as tmp:
                runner = FederatedRunner(cfg, Path(tmp) / "run")
                t = time.perf_counter()
                summary = runner.run()
                wall = time.perf_counter() - t
                rows = runner.dir.read_metrics()
        except Exception as err:
            rec["error"] = f"{type(err).__name__}: {err}"
            records.append(rec)
            continue
        rec.update(
            rounds=len(rows),
            clients=cfg.federation.clients,
            params=summary.get("adapter_parameters"),
            job_s=wall,
            round_s=statistics.median(r["seconds"] for r in rows),
            aggregate_s=statistics.median(r["phases"]["aggregate"] for r in rows),
            train_s=statistics.median(r["phases"]["train"] for r in rows),
            bytes_up=statistics.median(r["bytes_up"] for r in rows),
            bytes_down=statistics.median(r["bytes_down"] for r in rows),
            bytes_down_protocol=statistics.median(r.get("bytes_down_protocol", 0.0) for r in rows),
            accuracy=summary.get("accuracy"),
        )
        records.append(rec)
    return records
