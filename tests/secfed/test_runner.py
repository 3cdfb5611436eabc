"""The in-process runner end to end: outputs, resume equivalence, protocol plumbing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from peft import PeftModel

import models
from secfed.errors import ConfigError, ResumeError
from secfed.runner import FederatedRunner
from tests.secfed.conftest import SECURE_PROTOCOL_CASES, tiny_job


def test_run_writes_the_stable_outputs(tmp_path, tiny_config):
    runner = FederatedRunner(tiny_config, tmp_path / "run")
    summary = runner.run()
    root = tmp_path / "run"
    rows = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    for r in rows:
        for key in ("round", "accuracy", "loss", "seconds", "bytes_up", "bytes_down"):
            assert key in r
        # plain sends 4 bytes per parameter plus framing.
        assert r["bytes_up"] >= 4 * runner.dim
    saved = json.loads((root / "summary.json").read_text())
    assert saved["accuracy"] == rows[-1]["accuracy"] == summary["accuracy"]
    assert (root / "config.toml").exists()
    # The adapter loads with peft onto the saved base model and reproduces the global vector.
    base, _ = models.load_pretrained(root / "base_model", task="classification")
    loaded = PeftModel.from_pretrained(base, root / "adapter")
    for p in loaded.parameters():
        p.requires_grad_(False)
    np.testing.assert_array_equal(
        np.concatenate(
            [
                p.detach().numpy().ravel()
                for n, p in loaded.named_parameters()
                if "lora_" in n or "modules_to_save" in n
            ]
        ),
        runner.state.global_vector.astype(np.float32),
    )


def test_training_changes_the_adapter_and_learns(tmp_path):
    cfg = tiny_job(data={"num_examples": 400}, federation={"rounds": 3, "local_epochs": 2})
    runner = FederatedRunner(cfg, tmp_path / "run")
    before = runner.state.global_vector.copy()
    runner.run()
    assert not np.allclose(before, runner.state.global_vector)
    rows = runner.dir.read_metrics()
    assert rows[-1]["loss"] < rows[0]["loss"] + 0.05


def test_resume_after_a_crash_ends_where_an_uninterrupted_run_ends(tmp_path, tiny_config):
    full = FederatedRunner(tiny_config, tmp_path / "full")
    full.run()

    crashed = FederatedRunner(tiny_config, tmp_path / "crashed")
    crashed.start()
    crashed.run_round(1)
    crashed.run_round(2)
    # A crash in round 3: a half-written checkpoint and a stray metrics record.
    (crashed.dir.checkpoint(3)).mkdir()
    crashed.dir.append_metrics({"round": 3, "accuracy": -1.0})
    del crashed

    resumed = FederatedRunner.resume(tmp_path / "crashed")
    assert resumed.state.round == 2
    resumed.run()
    np.testing.assert_array_equal(resumed.state.global_vector, full.state.global_vector)
    a = [(r["round"], r["accuracy"], r["loss"]) for r in full.dir.read_metrics()]
    b = [(r["round"], r["accuracy"], r["loss"]) for r in resumed.dir.read_metrics()]
    assert a == b


def test_existing_run_is_not_overwritten(tmp_path, tiny_config):
    FederatedRunner(tiny_config, tmp_path / "run").run()
    with pytest.raises(ConfigError, match="--resume"):
        FederatedRunner(tiny_config, tmp_path / "run").run()


def test_resume_of_a_non_run_dir_is_refused(tmp_path):
    with pytest.raises(ResumeError, match="not a secfed run directory"):
        FederatedRunner.resume(tmp_path)


def test_sampling_is_seeded_and_respects_rate(tmp_path):
    cfg = tiny_job(federation={"clients": 20, "sample_rate": 0.25}, data={"num_examples": 400})
    runner = FederatedRunner(cfg, tmp_path / "run")
    cohorts = [runner.sample_cohort(r) for r in range(1, 41)]
    assert cohorts == [runner.sample_cohort(r) for r in range(1, 41)]
    mean = np.mean([len(c) for c in cohorts])
    assert 3.0 < mean < 7.0


@pytest.mark.parametrize(("protocol", "options"), SECURE_PROTOCOL_CASES)
def test_every_protocol_gives_the_plain_round_within_its_bound(tmp_path, protocol, options):
    base = {"federation": {"clients": 3, "rounds": 1}}
    plain = FederatedRunner(tiny_job(**base), tmp_path / "plain")
    plain.run()
    cfg = tiny_job(**base, aggregation={"protocol": protocol, "options": options})
    secure = FederatedRunner(cfg, tmp_path / protocol)
    secure.run()
    bound = secure.dir.read_metrics()[-1]["aggregate_error_bound"]
    # The mean update differs from plain by at most bound / total weight (weights <= 1).
    diff = np.max(np.abs(secure.state.global_vector - plain.state.global_vector))
    assert diff <= bound / 2.0 + 1e-6
    assert (tmp_path / protocol / "summary.json").exists()


@pytest.mark.parametrize("dp", [False, True])
def test_cosine_schedule_sets_each_rounds_local_lr(tmp_path, monkeypatch, dp):
    import privacy
    from secfed import training

    seen: list[float] = []
    for module, name in ((training, "train_local"), (privacy, "train_private")):
        real = getattr(module, name)

        def spy(*args, _real=real, **kwargs):
            seen.append(kwargs["lr"])
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    private = {"sample": {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0}}
    cfg = tiny_job(
        federation={"clients": 2, "rounds": 4, "lr": 0.01, "lr_schedule": "cosine"},
        privacy=private if dp else {},
    )
    FederatedRunner(cfg, tmp_path / "run").run()
    # Round r of 4: 0.01 x (1 + cos(pi (r - 1) / 4)) / 2, for each of the two clients.
    expected = [0.01 * (1 + np.cos(np.pi * r / 4)) / 2 for r in range(4)]
    np.testing.assert_allclose(seen, np.repeat(expected, 2), rtol=1e-12)
    assert seen[0] == 0.01 and seen[-1] < 0.0015


def test_constant_schedule_is_the_default(tmp_path):
    assert tiny_job().federation.lr_schedule == "constant"
    assert {tiny_job().federation.lr_at(r) for r in (1, 2, 3)} == {tiny_job().federation.lr}
