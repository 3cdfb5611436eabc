"""What a job may use over Flower (checked by the launcher, the server and every agent), and
what the local launcher refuses before it starts anything.

Imports no torch, so the launcher refuses an unsupported job at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import crypto

from ..config import ExperimentConfig
from ..errors import ConfigError
from ..rundir import RunDir


def check_deployable(cfg: ExperimentConfig) -> None:
    """Refuse job features the Flower adapter does not carry yet."""
    if cfg.federation.strategy == "scaffold":
        raise ConfigError(
            "federation.strategy = 'scaffold' keeps per-client control variates on the server; "
            "the Flower adapter does not ship them yet: use fedavg, fedprox, fedavgm or an "
            "adaptive strategy, or run in-process with `secfed run`"
        )
    if cfg.watermark.enabled:
        raise ConfigError(
            "watermark.enabled = true needs the owners' keys on every client; the Flower "
            "adapter does not distribute them yet: disable it or run in-process"
        )


def check_launch(cfg: ExperimentConfig, args: argparse.Namespace, out: Path) -> int:
    """Refuse, before any process starts, what would fail or mislead later."""
    check_deployable(cfg)
    n = cfg.federation.clients
    if args.supernodes is not None and args.supernodes != n:
        raise ConfigError(
            f"--supernodes {args.supernodes} but the job has federation.clients = {n}: one "
            f"SuperNode serves one client; drop --supernodes or set clients = {args.supernodes}"
        )
    if args.data and len(args.data) != n:
        raise ConfigError(
            f"{len(args.data)} --data files for {n} clients: give one file per client"
        )
    for path in args.data or []:
        if not path.is_file():
            raise ConfigError(f"--data {path}: no such file")
    if args.resume:
        if RunDir(out).summary.exists():
            raise ConfigError(f"{out} holds a finished run (summary.json): nothing to resume")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(
            f"{out} already exists and is not empty: choose another --out, or continue an "
            f"interrupted run with --resume {out}"
        )
    if crypto.get_protocol(cfg.aggregation.protocol).learned_by == "clients" and not args.key_dir:
        raise ConfigError(
            f"protocol {cfg.aggregation.protocol!r} needs --key-dir (make it with `secfed keys "
            f"generate --scheme {cfg.aggregation.protocol} --out DIR`)"
        )
    return n
