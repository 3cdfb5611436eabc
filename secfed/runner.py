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
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

import crypto
import models
import privacy

from . import training
from .assembly import JobParts, build_parts, client_dataset
from .checkpoint import JobState, load_checkpoint, save_checkpoint
from .config import ExperimentConfig, load_config
from .dp import (
    SampleLevelDP,
    UserLevelDP,
    dp_threat,
    privacy_fields,
    privacy_summary,
    protocol_options,
)
from .errors import ConfigError, ResumeError
from .plugins import TrainingPlugin, build_plugins
from .rundir import RunDir, write_json_atomic
from .sft import evaluate_sft, sft_loss
from .strategies import Strategy, create_strategy
from .training import classification_loss

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
        self.protocol = crypto.create_protocol(cfg.aggregation.protocol, **protocol_options(cfg))
        self.loss_fn = classification_loss if cfg.model.task == "classification" else sft_loss
        self.plugins: list[TrainingPlugin] = build_plugins(cfg, self.parts)
        self.sample_dp: SampleLevelDP | None = None
        if cfg.privacy.sample.enabled:
            privacy.check_dp_support(self.parts.model)
        self.user_dp = UserLevelDP(cfg, self.protocol) if cfg.privacy.user.enabled else None
        initial = models.adapter_vector(self.parts.model).astype(np.float64)
        self.state = JobState(round=0, job_id="", global_vector=initial)
        self.stopped_early: str | None = None

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
        if self.sample_dp is not None:
            self.sample_dp.load_state_dict(state.privacy["sample"])
        if self.user_dp is not None:
            self.user_dp.load_state_dict(state.privacy["user"])

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
        self.setup_sample_dp()

    def setup_sample_dp(self) -> None:
        """Create the DP-SGD ledger; call after plugins hold their keys (they add examples)."""
        if self.cfg.privacy.sample.enabled:
            sizes = {cid: len(self.client_data(cid)) for cid in range(self.cfg.federation.clients)}
            self.sample_dp = SampleLevelDP(self.cfg, sizes)

    def run(self, on_round: RoundCallback | None = None) -> dict[str, Any]:
        """Run the remaining rounds and write the final outputs."""
        if not self.state.job_id:
            self.start()
        for round_ in range(self.state.round + 1, self.cfg.federation.rounds + 1):
            if self.sample_dp is not None and self.sample_dp.exhausted():
                log.warning(
                    "privacy budget exhausted for every client after round %d: ending the job "
                    "early, results kept",
                    self.state.round,
                )
                self.stopped_early = f"privacy budget exhausted after round {self.state.round}"
                break
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

    def client_data(self, client_id: int) -> TensorDataset:
        """The client's training examples."""
        return client_dataset(self.parts, self.parts.shards[client_id])

    @cached_property
    def max_client_examples(self) -> int:
        """Size of the largest client dataset (the FedAvg weight scale)."""
        return max(len(self.client_data(c)) for c in range(self.cfg.federation.clients))

    def noise_rng(self, *parts: int | str) -> np.random.Generator:
        """DP noise generator: unpredictable unless privacy.deterministic_noise is set."""
        if self.cfg.privacy.deterministic_noise:
            return np.random.default_rng(derive_seed(self.cfg.seed, "noise", *parts))
        return privacy.make_noise_rng()

    def train_cohort(self, round_: int, cohort: list[int]) -> list[ClientResult]:
        """Local training of every cohort member (remote in a deployment)."""
        return [self.train_client(round_, cid) for cid in cohort]

    def train_client(self, round_: int, client_id: int) -> ClientResult:
        """Local training of one client from the current global adapter."""
        t0 = time.perf_counter()
        fed = self.cfg.federation
        global_vec = self.state.global_vector
        models.load_adapter_vector(self.parts.model, global_vec.astype(np.float32))
        hooks = [h for h in (self.strategy.client_hook(client_id, global_vec),) if h is not None]
        extra_grads = [training.vector_grad_hook(hooks)]
        extra_grads += [p.client_grad_hook(client_id, self.parts.model) for p in self.plugins]
        extra_grad = training.combine_hooks(extra_grads)
        dataset = self.client_data(client_id)
        seed = derive_seed(self.cfg.seed, "train", round_, client_id)
        common: dict[str, Any] = {
            "loss_fn": self.loss_fn,
            "epochs": fed.local_epochs,
            "batch_size": fed.batch_size,
            "lr": fed.lr,
            "optimizer": fed.optimizer,
            "extra_grad": extra_grad,
        }
        if self.sample_dp is not None:
            s = self.cfg.privacy.sample
            self.parts.model.train()
            torch.manual_seed(seed)  # dropout; DP noise and sampling use their own generators
            pstats = privacy.train_private(
                self.parts.model,
                dataset,
                noise_multiplier=self.sample_dp.noise[client_id],
                max_grad_norm=s.max_grad_norm,
                accountant=self.sample_dp.ledger.accountant(client_id),
                max_physical_batch_size=s.max_physical_batch_size,
                seed=seed if self.cfg.privacy.deterministic_noise else None,
                **common,
            )
            self.sample_dp.ledger.record(client_id, round=round_)
            steps, loss = pstats.steps, pstats.mean_loss
        else:
            stats = training.train_local(self.parts.model, dataset, seed=seed, **common)
            steps, loss = stats.steps, stats.mean_loss
        local = models.adapter_vector(self.parts.model).astype(np.float64)
        payload = self.strategy.client_payload(client_id, global_vec, local, steps=steps, lr=fed.lr)
        # FedAvg weight: examples held, scaled by the largest client so weights lie in (0, 1]
        # (the scale cancels in the weighted mean and keeps integer encodings small).
        weight = len(dataset) / self.max_client_examples
        if self.user_dp is not None:
            # Clipped; under adaptive clipping one more coordinate carries the unclipped bit.
            payload = self.user_dp.client_vector(payload)
            weight = 1.0  # DP-FedAvg: uniform weights, so one client's influence is bounded
        return ClientResult(client_id, payload, weight, steps, loss, time.perf_counter() - t0)

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
        clients = {}
        for r in results:
            vector = r.payload
            if self.user_dp is not None:
                rng = self.noise_rng("client", round_, r.client_id)
                vector = vector + self.user_dp.client_noise(dim, cohort=len(results), rng=rng)
            clients[r.client_id] = self.protocol.client_session(spec, r.client_id, vector, r.weight)
        return crypto.run_round(server, clients)

    def run_round(self, round_: int) -> dict[str, Any]:
        """Train, aggregate, update, evaluate and checkpoint one round."""
        t_round = time.perf_counter()
        sampled = self.sample_cohort(round_)
        cohort = self.sample_dp.admit(round_, sampled) if self.sample_dp is not None else sampled
        if not cohort:
            return self.skip_round(round_, sampled, t_round)
        results = self.train_cohort(round_, cohort)
        t_train = time.perf_counter() - t_round

        t1 = time.perf_counter()
        outcome = self.aggregate(round_, results)
        t_agg = time.perf_counter() - t1

        contributors = set(outcome.aggregate.contributors)
        for r in results:
            if r.client_id in contributors:
                self.strategy.commit_client(r.client_id)
        participation = len(contributors) / self.cfg.federation.clients
        mean = outcome.aggregate.mean
        if self.user_dp is not None:
            # The party that reads the aggregate adds the central noise (zero if clients did),
            # takes the noised unclipped count off the last coordinate (adaptive clipping),
            # strips it and divides by the number of contributors (uniform weights).
            mean = self.user_dp.read_aggregate(
                outcome.aggregate.weighted_sum,
                contributors=len(contributors),
                rng=self.noise_rng("central", round_),
                count_rng=self.noise_rng("clipcount", round_),
            )
        new_global = self.strategy.apply(
            self.state.global_vector, mean, participation=participation
        )
        # The model holds float32: keep the global vector exactly representable.
        self.state.global_vector = new_global.astype(np.float32).astype(np.float64)
        self.state.strategy = self.strategy.state_dict()

        t2 = time.perf_counter()
        models.load_adapter_vector(self.parts.model, self.state.global_vector.astype(np.float32))
        metrics = self.evaluate()
        t_eval = time.perf_counter() - t2

        traffic = outcome.traffic
        n = max(len(results), 1)
        record: dict[str, Any] = {
            "round": round_,
            **metrics,
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
        if self.sample_dp is None and self.user_dp is None:
            # Un-noised training loss is released only where no DP promise covers it.
            record["train_loss"] = float(np.mean([r.loss for r in results]))
        return self.close_round(round_, record, t_round)

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of the current global model; ``accuracy`` is exact match for SFT."""
        if self.parts.test_records is None:
            return training.evaluate(self.parts.model, self.parts.test_set)
        data = self.cfg.data
        out = evaluate_sft(
            self.parts.model,
            self.parts.tokenizer,
            self.parts.test_set,
            self.parts.test_records[: data.eval_generate],
            max_new_tokens=data.max_new_tokens,
        )
        return {**out, "accuracy": out["exact_match"]}

    def privacy_fields(self, round_: int) -> dict[str, Any]:
        """Per-round privacy fields of metrics.jsonl."""
        return privacy_fields(self.sample_dp, self.user_dp, round_=round_)

    def skip_round(self, round_: int, sampled: list[int], t_round: float) -> dict[str, Any]:
        """Record a round in which no sampled client could train within its budget."""
        record: dict[str, Any] = {
            "round": round_,
            "accuracy": None,
            "loss": None,
            "cohort": [],
            "sampled": sampled,
            "contributors": [],
            "bytes_up": 0.0,
            "bytes_down": 0.0,
            "note": "every sampled client is out of privacy budget; global model unchanged",
        }
        rows = self.dir.read_metrics()
        if rows:
            record["accuracy"], record["loss"] = rows[-1]["accuracy"], rows[-1]["loss"]
        return self.close_round(round_, record, t_round)

    def close_round(self, round_: int, record: dict[str, Any], t_round: float) -> dict[str, Any]:
        """Add privacy fields, append the record and checkpoint."""
        record.update(self.privacy_fields(round_))
        self.state.round = round_
        self.state.privacy = {
            "sample": self.sample_dp.state_dict() if self.sample_dp is not None else None,
            "user": self.user_dp.state_dict() if self.user_dp is not None else None,
        }
        record["seconds"] = time.perf_counter() - t_round
        self.dir.append_metrics(record)
        if round_ % self.cfg.output.checkpoint_every == 0 or round_ == self.cfg.federation.rounds:
            save_checkpoint(self.dir.checkpoint(round_), self.state)
        log.info("round %d: accuracy %s loss %s", round_, record["accuracy"], record["loss"])
        return record

    # -- end of job ------------------------------------------------------------------------
    def privacy_summary(self) -> dict[str, Any]:
        """The privacy report: mechanisms, accountant, spend per client, threat model."""
        return privacy_summary(
            self.cfg, self.sample_dp, self.user_dp, rounds=self.state.round,
            threat_model=self.threat_report(),
        )  # fmt: skip

    def threat_report(self) -> dict[str, Any]:
        """What the run protects: protocol threat model plus the DP level."""
        tm = self.protocol.threat_model().as_dict()
        tm["dp"] = dp_threat(self.cfg, self.user_dp)
        tm["max_dropouts_per_round"] = self.protocol.max_dropouts(self.cfg.federation.clients)
        return tm

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
        if self.stopped_early:
            summary["stopped_early"] = self.stopped_early
        summary["privacy"] = self.privacy_summary()
        write_json_atomic(self.dir.root / "privacy_report.json", summary["privacy"])
        for plugin in self.plugins:
            summary[plugin.name] = plugin.finish(run_dir=self.dir.root, model=self.parts.model)
        write_json_atomic(self.dir.summary, summary)
        return summary
