"""Shared pieces of the Flower tests: small jobs, in-process deployments, organisation files."""

from __future__ import annotations

from pathlib import Path

import crypto
from secfed.flower import LocalExchange
from secfed.flower.agent import NodeAgent
from tests.secfed.conftest import tiny_job

DP = {"deterministic_noise": True, "sample": {"enabled": True, "noise_multiplier": 1.0}}


def job(protocol: str = "secagg+", privacy: dict | None = None, **fed):
    return tiny_job(
        federation={"rounds": 2, "optimizer": "sgd", "lr": 0.5, **fed},
        aggregation={"protocol": protocol},
        privacy=privacy if privacy is not None else DP,
    )


def local_deployment(cfg, key_dir=None):
    agents = {
        100 + c: NodeAgent(cfg, client_id=c, key_dir=key_dir) for c in range(cfg.federation.clients)
    }
    return agents, exchange_of(agents)


def exchange_of(agents):
    """An in-process exchange to ``agents`` (node id -> NodeAgent)."""
    return LocalExchange({node: a.handle for node, a in agents.items()})


def identities(cfg, root: Path) -> Path:
    """The job's roster and identity keys (secfed keys generate --scheme identity)."""
    crypto.core.identity.load_or_create(root / "identity", range(cfg.federation.clients))
    return root


def write_org_files(root: Path, sizes=(50, 70, 90), *, string_labels=False) -> list[Path]:
    """Three CSV files of the built-in task with different rows (one per organisation)."""
    from secfed import builtin_task

    texts, labels = builtin_task.generate(num_examples=sum(sizes), seed=41, label_noise=0.0)
    paths, at = [], 0
    for i, n in enumerate(sizes):
        path = root / f"org{i}.csv"
        rows = ["text,label"]
        for t, y in zip(texts[at : at + n], labels[at : at + n], strict=True):
            rows.append(f'"{t}",{["neg", "pos"][y] if string_labels else y}')
        path.write_text("\n".join(rows) + "\n")
        paths.append(path)
        at += n
    return paths


def org_agents(cfg, files, **extra):
    return {
        10 + c: NodeAgent(cfg, client_id=c, node_config={"data-path": str(f), **extra})
        for c, f in enumerate(files)
    }
