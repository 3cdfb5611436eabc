"""The client side of a round: local training from the global adapter to a payload.

:class:`LocalTraining` is the part of :class:`~secfed.runner.FederatedRunner` that a client
runs (in-process, or inside a Flower node agent): its data, its seeds, DP-SGD or plain
training with the strategy's and plugins' gradient terms, and the payload it submits
(clipped under user-level DP).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

import models
import privacy

from .. import training
from ..assembly import JobParts, client_dataset
from ..checkpoint import JobState
from ..config import ExperimentConfig
from ..dpo import make_dpo_loss
from ..job_dp import SampleLevelDP, UserLevelDP
from ..plugins import TrainingPlugin
from ..progress import ProgressCallback, ProgressEvent, emit
from ..sft import sft_loss
from ..strategies import Strategy

log = logging.getLogger(__name__)


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


class LocalTraining:
    """Client data, seeds and local training (mixed into the runner)."""

    cfg: ExperimentConfig
    parts: JobParts
    strategy: Strategy
    plugins: list[TrainingPlugin]
    sample_dp: SampleLevelDP | None
    user_dp: UserLevelDP | None
    state: JobState
    progress: ProgressCallback | None

    def in_sft_phase(self, round_: int) -> bool:
        """True for the SFT rounds that open a DPO job (``dpo.sft_rounds``)."""
        return self.cfg.model.task == "dpo" and round_ <= self.cfg.dpo.sft_rounds

    def loss_for(self, round_: int) -> training.LossFn:
        """The per-example loss of ``round_``: classification, SFT, or DPO (one per pair)."""
        task = self.cfg.model.task
        if task == "classification":
            return training.classification_loss
        if task == "causal_lm" or self.in_sft_phase(round_):
            return sft_loss
        return make_dpo_loss(self.cfg.dpo.beta)

    def client_data(self, client_id: int, round_: int | None = None) -> TensorDataset:
        """The client's training examples (in ``round_``'s phase; DPO pairs by default).

        A DPO job's SFT phase uses each pair's (prompt, chosen): the same records, so the
        client holds as many examples (and spends from one DP-SGD ledger) in both phases.
        """
        sft = round_ is not None and self.in_sft_phase(round_)
        return client_dataset(self.parts, self.parts.shards[client_id], sft=sft)

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
        return [
            self.train_client(round_, cid, member=i + 1, cohort=len(cohort))
            for i, cid in enumerate(cohort)
        ]

    def _step_ticker(
        self, round_: int, client_id: int, *, member: int, cohort: int, steps: int
    ) -> training.ExtraGrad | None:
        """A hook called once per optimiser step that reports progress (gradients untouched)."""
        callback = self.progress
        if callback is None:
            return None
        done = 0

        def tick(model: torch.nn.Module) -> None:
            nonlocal done
            done += 1
            callback(ProgressEvent("train", done, steps, round_, client_id, member, cohort))

        return tick

    def train_client(
        self, round_: int, client_id: int, *, member: int = 1, cohort: int = 1
    ) -> ClientResult:
        """Local training of one client from the current global adapter.

        ``member`` of ``cohort`` only labels progress events.
        """
        t0 = time.perf_counter()
        fed = self.cfg.federation
        global_vec = self.state.global_vector
        models.load_adapter_vector(self.parts.model, global_vec.astype(np.float32))
        hooks = [h for h in (self.strategy.client_hook(client_id, global_vec),) if h is not None]
        extra_grads = [training.vector_grad_hook(hooks)]
        extra_grads += [p.client_grad_hook(client_id, self.parts.model) for p in self.plugins]
        expected = fed.local_epochs * -(-len(self.client_data(client_id, round_)) // fed.batch_size)
        emit(self.progress, ProgressEvent("train", 0, expected, round_, client_id, member, cohort))
        extra_grads.append(
            self._step_ticker(round_, client_id, member=member, cohort=cohort, steps=expected)
        )
        extra_grad = training.combine_hooks(extra_grads)
        seed = derive_seed(self.cfg.seed, "train", round_, client_id)
        steps, loss = self.fit(round_, client_id, extra_grad=extra_grad, seed=seed)
        local = models.adapter_vector(self.parts.model).astype(np.float64)
        payload = self.strategy.client_payload(
            client_id, global_vec, local, steps=steps, lr=fed.lr_at(round_)
        )
        # FedAvg weight: examples held, scaled by the largest client so weights lie in (0, 1]
        # (the scale cancels in the weighted mean and keeps integer encodings small).
        weight = len(self.client_data(client_id)) / self.max_client_examples
        if self.user_dp is not None:
            # Clipped; under adaptive clipping one more coordinate carries the unclipped bit.
            payload = self.user_dp.client_vector(payload)
            weight = 1.0  # DP-FedAvg: uniform weights, so one client's influence is bounded
        seconds = time.perf_counter() - t0
        log.info("round %d: client %d (%d/%d) trained %d steps in %.1fs", round_, client_id,
                 member, cohort, steps, seconds)  # fmt: skip
        return ClientResult(client_id, payload, weight, steps, loss, seconds)

    def fit(
        self, round_: int, client_id: int, *, extra_grad: training.ExtraGrad | None, seed: int
    ) -> tuple[int, float]:
        """Train the model's adapter in place on the client's data; ``(steps, mean loss)``.

        Under sample-level DP the steps are accounted in the client's ledger entry.
        """
        fed = self.cfg.federation
        dataset = self.client_data(client_id, round_)
        common: dict[str, Any] = {
            "loss_fn": self.loss_for(round_),
            "epochs": fed.local_epochs,
            "batch_size": fed.batch_size,
            "lr": fed.lr_at(round_),
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
            return pstats.steps, pstats.mean_loss
        stats = training.train_local(self.parts.model, dataset, seed=seed, **common)
        return stats.steps, stats.mean_loss
