"""Privacy spend of a job before running it (``secfed privacy estimate``)."""

from __future__ import annotations

from typing import Any

import privacy

from .config import ExperimentConfig
from .data import load_dataset, partition


def estimate(cfg: ExperimentConfig) -> dict[str, Any]:
    """Per-client DP-SGD noise and epsilon for the whole job, and the user-level epsilon.

    Client dataset sizes come from the job's own partition (watermark triggers are a
    separate gradient term, not training examples, so they do not change them).
    """
    p, fed = cfg.privacy, cfg.federation
    out: dict[str, Any] = {"delta": p.delta, "rounds": fed.rounds, "sample": None, "user": None}
    if p.sample.enabled:
        data = load_dataset(cfg.data, seed=cfg.seed)
        shards = partition(data, cfg.data, fed, seed=cfg.seed)
        clients = {}
        for shard in shards:
            sched = privacy.dp_schedule(
                dataset_size=len(shard.train), batch_size=fed.batch_size, epochs=fed.local_epochs
            )
            steps = sched.steps * fed.rounds
            if p.sample.noise_multiplier is not None:
                noise = p.sample.noise_multiplier
            else:
                assert p.sample.epsilon is not None
                noise = privacy.calibrate_noise(
                    target_epsilon=p.sample.epsilon, delta=p.delta, sample_rate=sched.sample_rate,
                    steps=steps, accountant=p.sample.accountant,
                )  # fmt: skip
            eps = privacy.epsilon_for(
                noise_multiplier=noise, sample_rate=sched.sample_rate, steps=steps,
                delta=p.delta, accountant=p.sample.accountant,
            )  # fmt: skip
            clients[str(shard.client_id)] = {
                "examples": len(shard.train),
                "sample_rate": sched.sample_rate,
                "steps": steps,
                "noise_multiplier": noise,
                "epsilon": eps,
            }
        out["sample"] = {
            "accountant": p.sample.accountant,
            "budget": p.budget if p.budget is not None else p.sample.epsilon,
            "max_grad_norm": p.sample.max_grad_norm,
            "clients": clients,
        }
    if p.user.enabled:
        u = p.user
        eps = (
            privacy.user_level_epsilon(
                noise_multiplier=u.noise_multiplier,
                sample_rate=fed.sample_rate,
                rounds=fed.rounds,
                delta=p.delta,
                accountant=p.sample.accountant,
            )
            if u.noise_multiplier > 0
            else float("inf")
        )
        out["user"] = {
            "clip_norm": u.clip_norm,
            "noise_multiplier": u.noise_multiplier,
            "noise": u.noise,
            "client_sample_rate": fed.sample_rate,
            "epsilon": eps,
            "note": "distributed noise through masking secure aggregation is accounted as "
            "Skellam at run time (slightly above this Gaussian figure)"
            if u.noise == "distributed"
            else "",
        }
    return out
