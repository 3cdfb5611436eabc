"""The Flower ServerApp: runs a secfed job file against the SuperNodes of a SuperLink.

Run config keys (``[tool.flwr.app.config]`` or ``flwr run --run-config``): ``job`` (path to
the experiment file), ``out`` (run directory, default: the job's ``output.dir``), ``key-dir``
(public key dir for paillier/ckks), ``train-timeout`` and ``stage-timeout`` (seconds a node
may take before it counts as dropped), ``connect-timeout`` (seconds to wait for SuperNodes),
``eval-path`` (a server-side evaluation file when the nodes hold their own data; without it
evaluation is federated), ``resume`` (a run directory to continue instead of ``job``).
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
from .supernode import shorten_pull_backoff

log = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) every round of the job, then write the run directory's outputs."""
    torch.set_num_threads(1)
    shorten_pull_backoff()  # replies are pulled as soon as their objects arrive
    rc = context.run_config
    job = rc.get("job")
    resume = str(rc.get("resume") or "")
    if (not isinstance(job, str) or not job) and not resume:
        raise ConfigError("the run config lacks 'job': pass --run-config 'job=\"/path/job.toml\"'")
    options = {
        "train_timeout": float(rc.get("train-timeout", 600.0)),
        "stage_timeout": float(rc.get("stage-timeout", 120.0)),
        "connect_timeout": float(rc.get("connect-timeout", 120.0)),
        "eval_path": str(rc.get("eval-path") or "") or None,
    }
    if resume:
        out = resume
        runner = FlowerRunner.resume_over(resume, GridExchange(grid), **options)  # type: ignore[arg-type]
    else:
        cfg = load_config(str(job))
        if rc.get("key-dir"):
            cfg = cfg.with_overrides(aggregation={"key_dir": str(rc["key-dir"])})
        out = str(rc.get("out") or cfg.output.dir)
        runner = FlowerRunner(cfg, out, GridExchange(grid), **options)  # type: ignore[arg-type]
    summary = runner.run(on_round=lambda r: log.info("round %s: %s", r["round"], r["accuracy"]))
    brief = {k: summary.get(k) for k in ("rounds", "accuracy", "protocol")}
    log.info("secfed job finished: %s", json.dumps(brief))
    log.info("results in %s", RunDir(out).root)
