"""In-process simulation of a federated job: rounds, sampling, local training, aggregation.

One :class:`FederatedRunner` owns a run directory. Each round it samples a cohort, trains
every member's adapter locally, ferries the updates through the configured aggregation
protocol (bytes counted), applies the server strategy, evaluates, records metrics and writes
a checkpoint; :meth:`FederatedRunner.resume` continues from the last complete checkpoint and
ends where an uninterrupted run ends.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

import crypto
import models

from . import training
from .assembly import JobParts, build_parts, client_dataset
from .checkpoint import JobState, load_checkpoint, save_checkpoint
from .config import ExperimentConfig, load_config
from .errors import ConfigError, ResumeError
from .plugins import TrainingPlugin
from .rundir import RunDir, write_json_atomic
from .strategies import Strategy, create_strategy

log = logging.getLogger(__name__)

RoundCallback = Callable[[dict[str, Any]], None]


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed derived from the job seed and a position (round, client, purpose)."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


@dataclass
class ClientResult:
    """One client's contribution to a round, before aggregation."""

    client_id: int
    payload: np.ndarray
    weight: float
    steps: int
    loss: float
    seconds: float


class FederatedRunner:
    """Runs (or resumes) one job in-process."""

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path):
        self.cfg = cfg
        self.dir = RunDir(run_dir)
        self.parts: JobParts = build_parts(cfg)
        self.dim = models.adapter_size(self.parts.model)
        self.strategy: Strategy = create_strategy(
            cfg.federation.strategy, dim=self.dim, options=dict(cfg.federation.strategy_options)
        )
        self.protocol = crypto.create_protocol(
            cfg.aggregation.protocol, **dict(cfg.aggregation.options)
        )
        self.loss_fn = _classification_loss
        self.plugins: list[TrainingPlugin] = build_plugins(cfg, self.parts)
        initial = models.adapter_vector(self.parts.model).astype(np.float64)
        self.state = JobState(round=0, job_id="", global_vector=initial)

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def resume(cls, run_dir: str | Path) -> FederatedRunner:
        """Reopen a run directory at its last complete checkpoint."""
        rd = RunDir(run_dir)
        if not rd.config.exists():
            raise ResumeError(f"{run_dir} has no config.toml: it is not a secfed run directory")
        runner = cls(load_config(rd.config), run_dir)
        latest = rd.latest_checkpoint()
        if latest is None:
            raise ResumeError(
                f"{run_dir} has no complete checkpoint; start it again without --resume"
            )
        runner._restore(load_checkpoint(latest))
        return runner

    def _restore(self, state: JobState) -> None:
        self.state = state
        self.strategy.load_state_dict(state.strategy)
        self.dir.remove_incomplete_checkpoints()
        self.dir.truncate_metrics(state.round)
        self._setup_keys()
        self._setup_plugins(resumed=True)

    def _setup_keys(self) -> None:
        key_dir = (
            Path(self.cfg.aggregation.key_dir) if self.cfg.aggregation.key_dir else self.dir.keys
        )
        self.protocol.setup(job_id=self.state.job_id, key_dir=key_dir)

    def start(self) -> None:
        """Create the run directory and the job's identity and keys."""
        if self.dir.latest_checkpoint() is not None:
            raise ConfigError(
                f"{self.dir.root} already holds a run; resume it with `secfed run --resume "
                f"{self.dir.root}` or choose another --out"
            )
        self.dir.create()
        self.dir.config.write_text(self.cfg.to_toml())
        self.state.job_id = f"{self.cfg.name}/{self.cfg.seed}/{secrets.token_hex(8)}"
        self._setup_keys()
        self._setup_plugins(resumed=False)

    def _setup_plugins(self, *, resumed: bool) -> None:
        for plugin in self.plugins:
            plugin.setup(run_dir=self.dir.root, model=self.parts.model, resumed=resumed)

    def run(self, on_round: RoundCallback | None = None) -> dict[str, Any]:
        """Run the remaining rounds and write the final outputs."""
        if not self.state.job_id:
            self.start()
        for round_ in range(self.state.round + 1, self.cfg.federation.rounds + 1):
            record = self.run_round(round_)
            if on_round is not None:
                on_round(record)
        return self.finish()

    # -- one round -------------------------------------------------------------------------
    def sample_cohort(self, round_: int) -> list[int]:
        """Clients taking part in ``round_`` (Bernoulli sampling, at least one)."""
        n, rate = self.cfg.federation.clients, self.cfg.federation.sample_rate
        rng = np.random.default_rng(derive_seed(self.cfg.seed, "cohort", round_))
        chosen = [c for c in range(n) if rng.random() < rate]
        return chosen or [int(rng.integers(n))]

    def train_client(self, round_: int, client_id: int) -> ClientResult:
        """Local training of one client from the current global adapter."""
        t0 = time.perf_counter()
        fed = self.cfg.federation
        global_vec = self.state.global_vector
        models.load_adapter_vector(self.parts.model, global_vec.astype(np.float32))
        hooks = [h for h in (self.strategy.client_hook(client_id, global_vec),) if h is not None]
        extra_grads = [training.vector_grad_hook(hooks)]
        extra_grads += [p.client_grad_hook(client_id, self.parts.model) for p in self.plugins]
        dataset = client_dataset(self.parts, self.parts.shards[client_id])
        extras = [d for p in self.plugins if (d := p.client_examples(client_id)) is not None]
        if extras:
            dataset = TensorDataset(
                *(
                    torch.cat(ts)
                    for ts in zip(dataset.tensors, *(e.tensors for e in extras), strict=True)
                )
            )
        stats = training.train_local(
            self.parts.model,
            dataset,
            loss_fn=self.loss_fn,
            epochs=fed.local_epochs,
            batch_size=fed.batch_size,
            lr=fed.lr,
            optimizer=fed.optimizer,
            extra_grad=training.combine_hooks(extra_grads),
            seed=derive_seed(self.cfg.seed, "train", round_, client_id),
        )
        local = models.adapter_vector(self.parts.model).astype(np.float64)
        payload = self.strategy.client_payload(
            client_id, global_vec, local, steps=stats.steps, lr=fed.lr
        )
        weight = float(len(self.parts.shards[client_id].train))
        return ClientResult(
            client_id, payload, weight, stats.steps, stats.mean_loss, time.perf_counter() - t0
        )

    def aggregate(self, round_: int, results: list[ClientResult]) -> crypto.RoundOutcome:
        """Ferry the cohort's payloads through the protocol."""
        dim = len(results[0].payload)
        spec = crypto.RoundSpec(
            job_id=self.state.job_id,
            round=round_,
            cohort=tuple(r.client_id for r in results),
            dim=dim,
        )
        server = self.protocol.server_session(spec)
        clients = {
            r.client_id: self.protocol.client_session(spec, r.client_id, r.payload, r.weight)
            for r in results
        }
        return crypto.run_round(server, clients)

    def run_round(self, round_: int) -> dict[str, Any]:
        """Train, aggregate, update, evaluate and checkpoint one round."""
        t_round = time.perf_counter()
        cohort = self.sample_cohort(round_)
        results = [self.train_client(round_, cid) for cid in cohort]
        t_train = time.perf_counter() - t_round

        t1 = time.perf_counter()
        outcome = self.aggregate(round_, results)
        t_agg = time.perf_counter() - t1

        contributors = set(outcome.aggregate.contributors)
        for r in results:
            if r.client_id in contributors:
                self.strategy.commit_client(r.client_id)
        participation = len(contributors) / self.cfg.federation.clients
        new_global = self.strategy.apply(
            self.state.global_vector, outcome.aggregate.mean, participation=participation
        )
        # The model holds float32: keep the global vector exactly representable.
        self.state.global_vector = new_global.astype(np.float32).astype(np.float64)
        self.state.strategy = self.strategy.state_dict()

        t2 = time.perf_counter()
        models.load_adapter_vector(self.parts.model, self.state.global_vector.astype(np.float32))
        metrics = training.evaluate(self.parts.model, self.parts.test_set)
        t_eval = time.perf_counter() - t2

        traffic = outcome.traffic
        n = max(len(results), 1)
        record: dict[str, Any] = {
            "round": round_,
            "accuracy": metrics["accuracy"],
            "loss": metrics["loss"],
            "train_loss": float(np.mean([r.loss for r in results])),
            "cohort": cohort,
            "contributors": sorted(contributors),
            "dropped": list(outcome.dropped),
            "bytes_up": sum(traffic.bytes_up.values()) / n,
            "bytes_down": sum(traffic.bytes_down.values()) / n,
            "bytes_up_per_client": {str(k): v for k, v in sorted(traffic.bytes_up.items())},
            "bytes_down_per_client": {str(k): v for k, v in sorted(traffic.bytes_down.items())},
            "phases": {
                "train": t_train,
                "aggregate": t_agg,
                "aggregate_server": traffic.server_seconds,
                "aggregate_client_max": max(traffic.client_seconds.values(), default=0.0),
                "evaluate": t_eval,
            },
            "aggregate_error_bound": outcome.aggregate.error_bound,
        }
        self.state.round = round_
        record["seconds"] = time.perf_counter() - t_round
        self.dir.append_metrics(record)
        if round_ % self.cfg.output.checkpoint_every == 0 or round_ == self.cfg.federation.rounds:
            save_checkpoint(self.dir.checkpoint(round_), self.state)
        log.info("round %d: accuracy %.4f loss %.4f", round_, metrics["accuracy"], metrics["loss"])
        return record

    # -- end of job ------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Save the final adapter and base model, and write ``summary.json``."""
        models.load_adapter_vector(self.parts.model, self.state.global_vector.astype(np.float32))
        models.save_adapter(self.parts.model, self.dir.adapter)
        if not self.dir.base_model.exists():
            models.save_base_model(self.parts.model, self.parts.tokenizer, self.dir.base_model)
        rows = self.dir.read_metrics()
        last = rows[-1] if rows else {}
        summary: dict[str, Any] = {
            "name": self.cfg.name,
            "rounds": self.state.round,
            "accuracy": last.get("accuracy"),
            "loss": last.get("loss"),
            "protocol": self.cfg.aggregation.protocol,
            "strategy": self.cfg.federation.strategy,
            "adapter": self.cfg.adapter.method,
            "adapter_parameters": self.dim,
            "seconds": sum(r.get("seconds", 0.0) for r in rows),
            "bytes_up_per_round": float(np.mean([r["bytes_up"] for r in rows])) if rows else 0.0,
            "threat_model": self.protocol.threat_model().as_dict(),
        }
        for plugin in self.plugins:
            summary[plugin.name] = plugin.finish(run_dir=self.dir.root, model=self.parts.model)
        write_json_atomic(self.dir.summary, summary)
        return summary


def build_plugins(cfg: ExperimentConfig, parts: JobParts) -> list[TrainingPlugin]:
    """The training plugins the config enables."""
    plugins: list[TrainingPlugin] = []
    if cfg.watermark.enabled:
        from .watermark_plugin import WatermarkPlugin

        plugins.append(WatermarkPlugin(cfg, parts))
    return plugins


def _classification_loss(model: Any, batch: tuple[Any, ...]) -> Any:
    """Per-example cross-entropy of a sequence classifier (shape [B])."""
    import torch

    input_ids, attention_mask, labels = batch
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return torch.nn.functional.cross_entropy(logits, labels, reduction="none")
