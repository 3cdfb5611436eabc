"""Local-only baseline: the same job with each client training alone on its own data.

Federating is only worth its cost if the joint model beats what each party gets alone
(OpenFedLLM's central comparison). :func:`local_baseline` replays the job's local training
for every client without any aggregation: the same initial adapter, rounds, local epochs,
batch size, optimizer, loss (both phases of an SFT+DPO job) and sample-level DP-SGD (a fresh
ledger per client with the job's noise and budget, so each lone client is as private as in
the job). It trains in every round, as a lone client is never left out of a cohort; it has
no server strategy, plugin or user-level DP (nothing leaves the client). Each local model
and the federated model are scored on the same held-out data: the union of the clients'
test splits, and each client's own test split.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

import models

from . import training
from .assembly import client_test_dataset
from .checkpoint import JobState
from .dpo import evaluate_dpo
from .job_dp import SampleLevelDP
from .runner.local import LocalTraining, derive_seed

if TYPE_CHECKING:
    from .runner import FederatedRunner

log = logging.getLogger(__name__)


class _LocalOnly(LocalTraining):
    """One lone client's training, sharing the runner's model and data (no second model)."""

    def __init__(self, runner: FederatedRunner) -> None:
        self.cfg = runner.cfg
        self.parts = runner.parts
        self.plugins = []
        self.user_dp = None
        self.strategy = runner.strategy  # unused by fit(); kept for the mixin's contract
        self.state = JobState(round=0, job_id="local-only", global_vector=runner.initial_vector)
        self.sample_dp = None
        if self.cfg.privacy.sample.enabled:
            sizes = {c: len(self.client_data(c)) for c in range(self.cfg.federation.clients)}
            self.sample_dp = SampleLevelDP(self.cfg, sizes)

    def train_alone(self, client_id: int) -> dict[str, Any]:
        models.load_adapter_vector(self.parts.model, self.state.global_vector.astype(np.float32))
        steps = 0
        for round_ in range(1, self.cfg.federation.rounds + 1):
            if self.sample_dp is not None and not self.sample_dp.admit(round_, [client_id]):
                continue
            # The job's own seed for this client and round: the same batches (and, without
            # DP noise, the same steps) as in the job; only the starting adapter differs.
            seed = derive_seed(self.cfg.seed, "train", round_, client_id)
            done, _ = self.fit(round_, client_id, extra_grad=None, seed=seed)
            steps += done
        out: dict[str, Any] = {"train_examples": len(self.client_data(client_id)), "steps": steps}
        if self.sample_dp is not None:
            out["epsilon"] = self.sample_dp.epsilon().get(str(client_id))
        return out


def own_accuracy(runner: FederatedRunner, client_id: int) -> float | None:
    """Accuracy of the model as loaded on ``client_id``'s own test split (None for SFT)."""
    data = client_test_dataset(runner.parts, runner.parts.shards[client_id])
    if len(data) == 0:
        return None
    task = runner.cfg.model.task
    if task == "classification":
        return training.evaluate(runner.parts.model, data)["accuracy"]
    if task == "dpo":
        return evaluate_dpo(runner.parts.model, data, beta=runner.cfg.dpo.beta)[
            "preference_accuracy"
        ]
    return None  # SFT: exact match needs generation; the joint held-out set is scored instead


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def local_baseline(runner: FederatedRunner) -> dict[str, Any]:
    """Local-only accuracy per client and on average next to the federated model's."""
    n = runner.cfg.federation.clients
    final = runner.state.global_vector.astype(np.float32)
    models.load_adapter_vector(runner.parts.model, final)
    federated = {"accuracy": runner.evaluate()["accuracy"]}
    federated_own = {str(c): own_accuracy(runner, c) for c in range(n)}
    alone = _LocalOnly(runner)
    clients: dict[str, dict[str, Any]] = {}
    try:
        for c in range(n):
            info = alone.train_alone(c)
            info["accuracy"] = runner.evaluate()["accuracy"]
            info["own_accuracy"] = own_accuracy(runner, c)
            info["federated_own_accuracy"] = federated_own[str(c)]
            clients[str(c)] = info
            log.info("local-only client %d: accuracy %.4f", c, info["accuracy"])
    finally:
        models.load_adapter_vector(runner.parts.model, final)
    mean_local = _mean([c["accuracy"] for c in clients.values()])
    return {
        "held_out": f"the union of the clients' test splits ({len(runner.parts.test_set)} "
        "examples); own_accuracy: each client's own test split",
        "metric": "preference accuracy" if runner.cfg.model.task == "dpo" else "accuracy",
        "federated": {**federated, "mean_own_accuracy": _mean(list(federated_own.values()))},
        "local_only": {
            "mean_accuracy": mean_local,
            "mean_own_accuracy": _mean([c["own_accuracy"] for c in clients.values()]),
            "best_accuracy": max(c["accuracy"] for c in clients.values()),
            "clients": clients,
        },
        "federated_minus_mean_local": (
            None if mean_local is None else federated["accuracy"] - mean_local
        ),
    }
