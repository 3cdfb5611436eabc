"""The audit run: a :class:`FederatedRunner` with canaries, then the membership guesses.

Sample-level canaries all go to client 0. Spread over several clients, each client memorised
its share locally (98% of included canaries right in a one-client run) but FedAvg of the
clients' diverging LoRA factors erased it (58% right on included and excluded canaries alike,
3 clients x 30 local epochs); concentrated, the average keeps it. The bound stays valid:
every canary is one example in one client's DP-SGD, whose (epsilon, delta) covers it in the
released model by post-processing, and the reported epsilon is the largest over clients.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

import privacy

from ..config import ExperimentConfig
from ..errors import ConfigError
from ..rundir import write_json_atomic
from ..runner import FederatedRunner
from ..runner.local import ClientResult
from .canaries import ExampleCanaries, UpdateCanaries, secret_rng

log = logging.getLogger(__name__)

Level = Literal["user", "sample"]


def default_level(cfg: ExperimentConfig) -> Level:
    """Audit the job's DP level (user-level when both or neither are on)."""
    return "sample" if cfg.privacy.sample.enabled and not cfg.privacy.user.enabled else "user"


class AuditRunner(FederatedRunner):
    """A federated job run with ``canaries`` canaries of the given level."""

    def __init__(
        self, cfg: ExperimentConfig, run_dir: str | Path, *, canaries: int, level: Level
    ) -> None:
        if canaries < 2:
            raise ConfigError(f"--canaries must be at least 2, got {canaries}")
        super().__init__(cfg, run_dir)
        self.level = level
        self.rng = secret_rng()
        self.update_canaries: UpdateCanaries | None = None
        self.example_canaries: ExampleCanaries | None = None
        if level == "user":
            u = cfg.privacy.user
            norm = u.clip_norm if u.enabled else 1.0
            self.update_canaries = UpdateCanaries.draw(canaries, self.dim, norm=norm, rng=self.rng)
        else:
            self._insert_examples(canaries)

    def _insert_examples(self, m: int) -> None:
        if self.cfg.model.task != "classification":
            raise ConfigError("the sample-level audit needs model.task = 'classification'")
        tok = self.parts.tokenizer
        vocab = len(tok)
        top_special = max(tok.all_special_ids)
        low = top_special + 1 if top_special + 1 < vocab // 2 else 0
        canaries = ExampleCanaries.draw(
            m, vocab=vocab, specials=low, length=self.cfg.model.max_length,
            labels=max(self.parts.data.num_labels, 2), rng=self.rng,
        )  # fmt: skip
        self.example_canaries = canaries
        self.initial_log_prob = canaries.label_log_prob(self.parts.model)
        keep = torch.as_tensor(np.flatnonzero(canaries.included))
        base = len(self.parts.encoded)
        pairs = zip(self.parts.encoded.tensors, canaries.tensors, strict=True)
        self.parts.encoded = torch.utils.data.TensorDataset(
            *(torch.cat([t, c[keep]]) for t, c in pairs)
        )
        # Every included canary goes to client 0 (see the module docstring: FedAvg of
        # clients' diverging adapters erases what each memorised alone).
        new = np.arange(base, base + len(keep))
        self.parts.shards = [
            dataclasses.replace(s, train=np.concatenate([s.train, new])) if i == 0 else s
            for i, s in enumerate(self.parts.shards)
        ]

    def party_ids(self) -> list[int]:
        """The job's clients and, for a user-level audit, every canary client."""
        ids = super().party_ids()
        if self.update_canaries is not None:
            first = self.cfg.federation.clients
            ids += [first + j for j in range(len(self.update_canaries.included))]
        return ids

    def train_cohort(self, round_: int, cohort: list[int]) -> list[ClientResult]:
        results = super().train_cohort(round_, cohort)
        c = self.update_canaries
        if c is None:
            return results
        width = self.dim * self.strategy.update_blocks
        rate = self.cfg.federation.sample_rate
        first = self.cfg.federation.clients
        for j in np.flatnonzero(c.included):
            if rate < 1.0 and self.rng.random() >= rate:
                continue  # canary clients are sampled like any client
            payload = c.payload(int(j), width)
            if self.user_dp is not None:
                payload = self.user_dp.client_vector(payload)
            results.append(ClientResult(first + int(j), payload, 1.0, 0, 0.0, 0.0))
        return results

    def scores(self, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Membership scores (higher: more likely included) and the true inclusions."""
        if self.update_canaries is not None:
            c = self.update_canaries
            return c.scores(start, self.state.global_vector), c.included
        e = self.example_canaries
        assert e is not None
        return e.scores(e.label_log_prob(self.parts.model) - self.initial_log_prob), e.included


def _accounted(summary: dict[str, Any], level: Level) -> dict[str, Any]:
    p = summary.get("privacy", {})
    if level == "user" and "user_level" in p:
        obs = p["user_level"]["observers"]
        return {k: v["epsilon"] for k, v in obs.items()}
    if level == "sample" and "sample_level" in p:
        sample = p["sample_level"]
        out = {"every_observer": sample["max_epsilon"]}
        holder = sample.get("clients", {}).get("0")
        if holder is not None:  # the canaries' holder: the epsilon that covers them
            out["every_observer, client 0 (holds the canaries)"] = holder["epsilon"]
        return out
    return {}


def run_audit(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    *,
    canaries: int = 1000,
    level: Level | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Run ``cfg`` once with canaries; returns (and writes ``audit.json``) the lower bound
    beside the accounted epsilon."""
    lvl = level or default_level(cfg)
    runner = AuditRunner(cfg, run_dir, canaries=canaries, level=lvl)
    start = runner.state.global_vector.copy()
    summary = runner.run()
    scores, included = runner.scores(start)
    result = privacy.audit_scores(scores, included, delta=cfg.privacy.delta, confidence=confidence)
    accounted = _accounted(summary, lvl)
    bound = result.epsilon_lower_bound
    finite = [v for v in accounted.values() if v is not None and math.isfinite(v)]
    out: dict[str, Any] = {
        "job": cfg.name,
        "level": lvl,
        "canary": (
            "canary clients submitting a random unit direction scaled to the clip norm; score "
            "= projection of the final model's change on it"
            if lvl == "user"
            else "random-token, random-label examples (distinct first tokens) in client 0's "
            "data; score = gain in the log-probability of the canary's label minus the mean "
            "gain of its label"
        ),
        "delta": cfg.privacy.delta,
        **result.as_dict(),
        "accounted_epsilon": accounted,
        "consistent": all(bound <= v for v in finite),
        "accuracy": summary.get("accuracy"),
        "rounds": summary.get("rounds"),
        "method": "Steinke, Nasr, Jagielski 2023 (one training run), Theorem 5.2",
    }
    write_json_atomic(runner.dir.root / "audit.json", out)
    if not out["consistent"]:
        log.error("audit lower bound %.3f exceeds the accounted epsilon %s", bound, accounted)
    return out
