"""`secfed privacy audit`: power without DP, and never above the accounted epsilon with DP."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from secfed.audit.runner import run_audit
from secfed.cli import app
from tests.secfed.conftest import tiny_job

USER_DP = {"user": {"enabled": True, "clip_norm": 0.05, "noise_multiplier": 1.0}}
SAMPLE_DP = {"sample": {"enabled": True, "noise_multiplier": 1.0}}
ONE_ROUND = {"clients": 3, "rounds": 1}


def test_user_level_audit_has_power_without_dp(tmp_path):
    out = run_audit(tiny_job(federation=ONE_ROUND), tmp_path / "run", canaries=200, level="user")
    # Canary clients' updates show plainly in the model: most guesses are right.
    assert out["correct"] >= 0.95 * out["guesses"]
    assert out["epsilon_lower_bound"] > 2.5
    assert out["accounted_epsilon"] == {}  # no DP, nothing accounted
    saved = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert saved["epsilon_lower_bound"] == out["epsilon_lower_bound"]


def test_user_level_audit_stays_below_the_accounted_epsilon(tmp_path):
    cfg = tiny_job(federation={**ONE_ROUND, "rounds": 2}, privacy=USER_DP)
    out = run_audit(cfg, tmp_path / "run", canaries=200, level="user")
    released = out["accounted_epsilon"]["released_models"]
    assert math.isfinite(released)
    assert out["epsilon_lower_bound"] <= released and out["consistent"]
    # The noise hides the canaries: far from the DP-off power.
    assert out["epsilon_lower_bound"] < 2.5


def test_audit_cli_prints_the_bound_beside_the_accounted_epsilon(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(tiny_job(federation=ONE_ROUND, privacy=USER_DP).to_toml())
    res = CliRunner().invoke(
        app, ["privacy", "audit", str(job), "--canaries", "40", "--out", str(tmp_path / "a")]
    )
    assert res.exit_code == 0, res.output
    assert "epsilon >=" in res.output and "accounted epsilon, released_models" in res.output
    assert "accounted epsilon, aggregator: inf" in res.output  # plain: no guarantee


# A job that memorises: many local steps, and few enough clients that FedAvg keeps what the
# canaries' holder learned (see secfed/audit/runner.py).
MEMORISES = {"clients": 2, "rounds": 5, "local_epochs": 10, "lr": 1e-2}


def test_sample_level_audit_has_power_without_dp(tmp_path):
    """Random-label canary examples, memorised without DP, give a lower bound well above 1
    (measured 1.43-2.02 over eleven runs, 86-96% of 100-400 guesses right; the threshold
    sits at 1.0, about 80% of 100 guesses, so that a low draw does not fail the suite)."""
    cfg = tiny_job(federation=MEMORISES)
    out = run_audit(cfg, tmp_path / "run", canaries=1000, level="sample")
    assert out["accounted_epsilon"] == {}
    assert out["epsilon_lower_bound"] > 1.0, out
    # Independent restatement: the guesses behind the bound beat chance by far.
    assert out["correct"] >= 0.75 * out["guesses"] > 0


def test_the_memorising_job_under_dp_stays_below_its_accounted_epsilon(tmp_path):
    """The job that gives the power above, with DP-SGD on: the bound drops below the
    accounted epsilon, and below the power the same job shows without DP."""
    cfg = tiny_job(federation=MEMORISES, privacy=SAMPLE_DP)
    out = run_audit(cfg, tmp_path / "run", canaries=1000, level="sample")
    accounted = out["accounted_epsilon"]
    holder = accounted["every_observer, client 0 (holds the canaries)"]
    # Client 0 holds ~500 extra examples: its sampling rate, and epsilon, are the lowest.
    assert math.isfinite(holder) and holder < accounted["every_observer"]
    assert out["epsilon_lower_bound"] <= holder and out["consistent"]
    assert out["epsilon_lower_bound"] < 1.0, out  # > 1.0 without DP (test above)


@pytest.mark.slow
def test_sample_level_audit_stays_below_the_accounted_epsilon(tmp_path):
    cfg = tiny_job(federation={"clients": 3, "rounds": 2, "local_epochs": 3}, privacy=SAMPLE_DP)
    out = run_audit(cfg, tmp_path / "run", canaries=200, level="sample")
    assert out["epsilon_lower_bound"] <= out["accounted_epsilon"]["every_observer"]
    assert out["consistent"]


def test_audit_refuses_too_few_canaries(tmp_path):
    from secfed.errors import ConfigError

    with pytest.raises(ConfigError, match="canaries"):
        run_audit(tiny_job(federation=ONE_ROUND), tmp_path / "run", canaries=1)


def test_sample_scores_cancel_a_shared_label_drift():
    """Training shifts every random canary of one label the same way; the centred score
    removes that shift, so guesses follow memorisation, not labels. It matters most where
    the audit's power is weak and it guesses on every canary."""
    import numpy as np

    import privacy
    from secfed.audit.canaries import ExampleCanaries

    rng = np.random.default_rng(0)
    canaries = ExampleCanaries.draw(400, vocab=50, specials=5, length=4, labels=2, rng=rng)
    y, inc = canaries.tensors[2].numpy(), canaries.included
    memorised = 1.0 * inc + rng.normal(0, 1.0, 400)  # weak: one standard deviation apart
    gain = np.where(y == 1, 20.0, -20.0) + memorised
    raw = privacy.audit_scores(gain, inc, delta=1e-5, guess_counts=[400])
    centred = privacy.audit_scores(canaries.scores(gain), inc, delta=1e-5, guess_counts=[400])
    # Raw: "included" means label 1, right about half the time (200 +- 10).
    assert raw.correct <= 235
    # Centred: Phi(0.5) = 69% right (276 +- 9).
    assert centred.correct >= 250 and centred.epsilon_lower_bound > raw.epsilon_lower_bound
    # Per label, the centred scores average zero: an independent restatement.
    for label in (0, 1):
        assert abs(canaries.scores(gain)[y == label].mean()) < 1e-9


def test_canary_first_tokens_are_spread_evenly():
    import numpy as np

    from secfed.audit.canaries import ExampleCanaries

    rng = np.random.default_rng(1)
    few = ExampleCanaries.draw(40, vocab=50, specials=5, length=4, labels=2, rng=rng)
    first = few.tensors[0][:, 0].numpy()
    assert len(set(first.tolist())) == 40 and first.min() >= 5 and first.max() < 50
    many = ExampleCanaries.draw(100, vocab=50, specials=5, length=4, labels=2, rng=rng)
    counts = np.bincount(many.tensors[0][:, 0].numpy(), minlength=50)[5:]
    assert counts.sum() == 100 and counts.max() - counts.min() <= 1  # 45 tokens, 2-3 uses each


def test_included_sample_canaries_all_go_to_client_0(tmp_path):
    import numpy as np

    from secfed.audit.runner import AuditRunner

    cfg = tiny_job(federation={"clients": 3, "rounds": 1})
    plain = AuditRunner(cfg, tmp_path / "plain", canaries=2, level="user")
    runner = AuditRunner(cfg, tmp_path / "run", canaries=60, level="sample")
    base = len(plain.parts.encoded)
    assert runner.example_canaries is not None
    added = int(runner.example_canaries.included.sum())
    assert len(runner.parts.encoded) == base + added
    shards = runner.parts.shards
    assert np.array_equal(np.sort(shards[0].train[shards[0].train >= base]),
                          np.arange(base, base + added))  # fmt: skip
    for before, after in zip(plain.parts.shards[1:], shards[1:], strict=True):
        assert np.array_equal(before.train, after.train)
