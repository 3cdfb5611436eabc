"""DPO jobs end to end: every protocol and strategy, SFT then DPO under one DP-SGD ledger."""

from __future__ import annotations

import json

import numpy as np
import pytest

import models
from secfed.config import STRATEGIES
from secfed.errors import ConfigError
from secfed.runner import FederatedRunner

from .conftest import SECURE_PROTOCOL_CASES, tiny_job
from .test_dpo import dpo_job


@pytest.mark.parametrize(("protocol", "options"), SECURE_PROTOCOL_CASES)
def test_a_dpo_round_through_every_protocol_matches_plain(tmp_path, protocol, options):
    plain = FederatedRunner(dpo_job(), tmp_path / "plain")
    plain.run()
    cfg = dpo_job(aggregation={"protocol": protocol, "options": options})
    secure = FederatedRunner(cfg, tmp_path / protocol)
    summary = secure.run()
    moved = secure.state.global_vector - FederatedRunner(cfg, tmp_path / "x").state.global_vector
    assert np.abs(moved).max() > 1e-4  # the DPO round trained the adapter
    bound = secure.dir.read_metrics()[-1]["aggregate_error_bound"]
    diff = np.max(np.abs(secure.state.global_vector - plain.state.global_vector))
    assert diff <= bound / 2.0 + 1e-6
    assert 0.0 <= summary["accuracy"] <= 1.0
    assert summary["dpo"]["after"]["preference_accuracy"] == summary["accuracy"]


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "fedavg"])
def test_a_dpo_round_under_every_strategy(tmp_path, strategy):
    cfg = dpo_job(federation={"strategy": strategy})
    runner = FederatedRunner(cfg, tmp_path / strategy)
    start = runner.state.global_vector.copy()
    runner.run()
    assert np.all(np.isfinite(runner.state.global_vector))
    assert np.abs(runner.state.global_vector - start).max() > 1e-5


def test_sft_then_dpo_spends_one_ledger(tmp_path):
    from opacus.accountants import RDPAccountant

    cfg = dpo_job(
        federation={"rounds": 3, "batch_size": 8},
        dpo={"sft_rounds": 1},
        privacy={"sample": {"enabled": True, "noise_multiplier": 1.5, "max_grad_norm": 1.0}},
    )
    runner = FederatedRunner(cfg, tmp_path / "run")
    summary = runner.run()
    rows = runner.dir.read_metrics()
    assert [r["phase"] for r in rows] == ["sft", "dpo", "dpo"]
    assert "before_dpo" in rows[1] and "before_dpo" not in rows[0]
    assert summary["dpo"]["before"]["sft_loss"] == rows[1]["before_dpo"]["sft_loss"]
    for cid, spent in runner.sample_dp.epsilon().items():
        n = len(runner.client_data(int(cid)))
        q = min(1.0, 8 / n)
        acc = RDPAccountant()
        acc.history = [(1.5, q, 3 * max(1, n // 8))]  # both phases, every step
        assert spent == pytest.approx(acc.get_epsilon(delta=cfg.privacy.delta), rel=0.02)


def test_sft_rounds_must_leave_a_dpo_round():
    with pytest.raises(ConfigError, match="no DPO round"):
        dpo_job(dpo={"sft_rounds": 1})
    with pytest.raises(ConfigError, match="dpo_builtin"):
        dpo_job(data={"source": "sft_builtin"})


def test_local_only_baseline_of_one_client_is_the_federated_model(tmp_path):
    """With one client, FedAvg over plain aggregation IS local training: same numbers."""
    cfg = tiny_job(federation={"clients": 1, "rounds": 2, "baseline": "local"})
    runner = FederatedRunner(cfg, tmp_path / "one")
    summary = runner.run()
    comp = summary["comparison"]
    alone = comp["local_only"]["clients"]["0"]
    assert alone["accuracy"] == pytest.approx(comp["federated"]["accuracy"], abs=1e-6)
    assert alone["own_accuracy"] == pytest.approx(alone["federated_own_accuracy"], abs=1e-6)
    assert alone["steps"] > 0


def test_local_only_baseline_trains_each_client_alone_and_restores_the_job(tmp_path):
    cfg = dpo_job(
        federation={"clients": 3, "rounds": 2, "baseline": "local"},
        privacy={"sample": {"enabled": True, "noise_multiplier": 1.0}},
    )
    runner = FederatedRunner(cfg, tmp_path / "run")
    summary = runner.run()
    comp = json.loads((tmp_path / "run" / "comparison.json").read_text())
    assert comp == json.loads(json.dumps(summary["comparison"]))
    clients = comp["local_only"]["clients"]
    assert set(clients) == {"0", "1", "2"}
    fed_eps = runner.sample_dp.epsilon()
    for cid, c in clients.items():
        assert c["train_examples"] == len(runner.client_data(int(cid)))
        assert c["epsilon"] == pytest.approx(fed_eps[cid])  # as private alone as in the job
    mean = np.mean([c["accuracy"] for c in clients.values()])
    assert comp["local_only"]["mean_accuracy"] == pytest.approx(mean)
    assert comp["federated_minus_mean_local"] == pytest.approx(comp["federated"]["accuracy"] - mean)
    # The model holds the federated adapter again, and it is what was saved.
    assert np.array_equal(
        models.adapter_vector(runner.parts.model), runner.state.global_vector.astype(np.float32)
    )
    assert runner.evaluate()["accuracy"] == pytest.approx(comp["federated"]["accuracy"])


def test_sft_dpo_job_resumed_at_the_phase_boundary_ends_where_a_full_run_ends(tmp_path):
    cfg = dpo_job(
        federation={"rounds": 2},
        dpo={"sft_rounds": 1},
        privacy={
            "deterministic_noise": True,
            "sample": {"enabled": True, "noise_multiplier": 1.0},
        },
    )
    full = FederatedRunner(cfg, tmp_path / "full")
    full.run()
    crashed = FederatedRunner(cfg, tmp_path / "crashed")
    crashed.start()
    crashed.run_round(1)  # the SFT phase; killed before the first DPO round
    del crashed
    resumed = FederatedRunner.resume(tmp_path / "crashed")
    resumed.run()
    np.testing.assert_array_equal(resumed.state.global_vector, full.state.global_vector)
    assert resumed.sample_dp.epsilon() == full.sample_dp.epsilon()
    keys = ("round", "phase", "accuracy", "loss", "reward_margin", "sft_loss", "before_dpo")
    a, b = full.dir.read_metrics(), resumed.dir.read_metrics()
    assert [[r.get(k) for k in keys] for r in a] == [[r.get(k) for k in keys] for r in b]
    assert b[1]["before_dpo"] is not None
