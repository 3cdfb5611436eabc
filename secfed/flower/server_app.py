"""The Flower ServerApp: runs a secfed job file against the SuperNodes of a SuperLink.

Run config keys (``[tool.flwr.app.config]`` or ``flwr run --run-config``): ``job`` (path to
the experiment file), ``out`` (run directory, default: the job's ``output.dir``), ``key-dir``
(public key dir for paillier/ckks), ``train-timeout`` and ``stage-timeout`` (seconds a node
may take before it counts as dropped), ``connect-timeout`` (seconds to wait for SuperNodes).
"""

from __future__ import annotations

import json
import logging

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..config import load_config
from ..errors import ConfigError
from ..rundir import RunDir
from .exchange import GridExchange
from .server import FlowerRunner

log = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run every round of the job, then write the run directory's final outputs."""
    torch.set_num_threads(1)
    rc = context.run_config
    job = rc.get("job")
    if not isinstance(job, str) or not job:
        raise ConfigError("the run config lacks 'job': pass --run-config 'job=\"/path/job.toml\"'")
    cfg = load_config(job)
    if rc.get("key-dir"):
        cfg = cfg.with_overrides(aggregation={"key_dir": str(rc["key-dir"])})
    out = str(rc.get("out") or cfg.output.dir)
    runner = FlowerRunner(
        cfg,
        out,
        GridExchange(grid),
        train_timeout=float(rc.get("train-timeout", 600.0)),
        stage_timeout=float(rc.get("stage-timeout", 120.0)),
        connect_timeout=float(rc.get("connect-timeout", 120.0)),
    )
    summary = runner.run(on_round=lambda r: log.info("round %s: %s", r["round"], r["accuracy"]))
    brief = {k: summary.get(k) for k in ("rounds", "accuracy", "protocol")}
    log.info("secfed job finished: %s", json.dumps(brief))
    log.info("results in %s", RunDir(out).root)
