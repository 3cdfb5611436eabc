"""Cohort sampling as the user-level accountant assumes it: Poisson, no forced member,
secret under DP; empty rounds release noise only; the mean has a fixed denominator."""

from __future__ import annotations

import math

import numpy as np
import pytest

import crypto
from secfed.job_dp import UserLevelDP
from secfed.runner import FederatedRunner
from tests.secfed.conftest import tiny_job

USER = {"enabled": True, "clip_norm": 0.01, "noise_multiplier": 1.0}


def _user_runner(tmp_path, *, clients, rate, **privacy):
    cfg = tiny_job(
        federation={"clients": clients, "sample_rate": rate},
        data={"num_examples": max(160, 20 * clients)},
        privacy={"user": USER, **privacy},
    )
    return FederatedRunner(cfg, tmp_path / "run")


@pytest.mark.parametrize(("clients", "rate"), [(4, 0.01), (10, 0.05)])
def test_inclusion_rate_is_the_rate_accounted(tmp_path, clients, rate):
    """The issue's cases: with a forced member the real rate was 0.25 and 0.11."""
    runner = _user_runner(tmp_path, clients=clients, rate=rate)
    rounds = 20_000
    counts = np.zeros(clients)
    empty = 0
    for r in range(1, rounds + 1):
        cohort = runner.sample_cohort(r)
        counts[cohort] += 1
        empty += not cohort
    accounted = runner.user_dp.report(1)["client_sample_rate"]
    assert accounted == rate
    # Each client's count is Binomial(rounds, rate): 5 standard deviations.
    sd = math.sqrt(rate * (1 - rate) / rounds)
    assert np.all(np.abs(counts / rounds - accounted) < 5 * sd), counts / rounds
    want_empty = (1 - rate) ** clients  # no forced member: empty cohorts happen this often
    assert abs(empty / rounds - want_empty) < 5 * math.sqrt(want_empty / rounds)


def test_cohorts_are_secret_under_dp_and_seeded_only_on_request(tmp_path):
    a = _user_runner(tmp_path / "a", clients=20, rate=0.3)
    b = _user_runner(tmp_path / "b", clients=20, rate=0.3)
    assert [a.sample_cohort(r) for r in range(1, 30)] != [b.sample_cohort(r) for r in range(1, 30)]
    c = _user_runner(tmp_path / "c", clients=20, rate=0.3, deterministic_noise=True)
    d = _user_runner(tmp_path / "d", clients=20, rate=0.3, deterministic_noise=True)
    assert [c.sample_cohort(r) for r in range(1, 30)] == [d.sample_cohort(r) for r in range(1, 30)]


def test_empty_round_releases_noise_of_the_accounted_scale(tmp_path):
    runner = _user_runner(tmp_path, clients=8, rate=0.25)
    runner.sample_cohort = lambda round_: []  # type: ignore[method-assign]
    runner.start()
    before = runner.state.global_vector.copy()
    row = runner.run_round(1)
    step = runner.state.global_vector - before
    # Central noise z*S on the sum, divided by the expected cohort 8 * 0.25 = 2.
    want = 1.0 * 0.01 / 2.0
    assert np.std(step) == pytest.approx(want, rel=0.1)
    assert row["cohort"] == [] and "noise alone" in row["note"]
    assert row["user_epsilon"] > 0  # the empty round is accounted like any other


def test_mean_divides_by_the_expected_cohort(tmp_path):
    user = {**USER, "noise_multiplier": 0.0}
    cfg = tiny_job(federation={"clients": 4, "sample_rate": 0.5}, privacy={"user": user})
    runner = FederatedRunner(cfg, tmp_path / "run")
    runner.sample_cohort = lambda round_: [0]  # type: ignore[method-assign]
    runner.start()
    before = runner.state.global_vector.copy()
    runner.run_round(1)
    # One client's update clipped to 0.01, over the expected cohort of 2 (not over 1).
    assert np.linalg.norm(runner.state.global_vector - before) == pytest.approx(0.005, rel=1e-3)


def test_participations_are_counted_and_checkpointed(tmp_path):
    runner = _user_runner(tmp_path, clients=3, rate=1.0)
    runner.run()
    assert runner.user_dp.participations == {0: 3, 1: 3, 2: 3}
    resumed = FederatedRunner.resume(tmp_path / "run")
    assert resumed.user_dp.participations == {0: 3, 1: 3, 2: 3}


def _rdp_gaussian_epsilon(z: float, k: int, delta: float) -> float:
    """Independent: RDP of k Gaussian steps is a*k/(2 z^2); Balle et al. 2020 conversion."""
    best = math.inf
    for a in np.linspace(1.01, 200, 20_000):
        rdp = a * k / (2 * z * z)
        best = min(best, rdp + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1))
    return best


@pytest.mark.parametrize(
    ("protocol", "noise", "finite"),
    [
        ("plain", "distributed", False),
        ("plain", "central", False),
        ("secagg+", "central", False),
        ("ckks", "distributed", True),
        ("ckks", "central", False),
    ],
)
def test_aggregator_epsilon_per_protocol(protocol, noise, finite):
    cfg = tiny_job(
        federation={"clients": 10, "sample_rate": 0.1, "rounds": 200},
        aggregation={"protocol": protocol},
        privacy={"user": {**USER, "noise": noise}},
    )
    proto = crypto.create_protocol(protocol, **({"clip": 1.0} if protocol == "secagg+" else {}))
    dp = UserLevelDP(cfg, proto)
    dp.participations = {0: 25, 1: 12}
    obs = dp.observers(200)
    released, agg = obs["released_models"], obs["aggregator"]
    assert released["amplification_by_sampling"] and not agg["amplification_by_sampling"]
    if not finite:
        assert agg["epsilon"] == math.inf and not agg["protected"]
        return
    # Against the aggregator: the Gaussian at z=1 composed 25 times, no sampling. The exact
    # (analytic) figure lies below the RDP bound and not far below it.
    rdp = _rdp_gaussian_epsilon(1.0, 25, cfg.privacy.delta)
    assert 0.8 * rdp < agg["epsilon"] <= rdp
    assert agg["epsilon_by_participations"]["12"] < agg["epsilon"]
    # Amplification makes the released-models figure far smaller than the aggregator's.
    assert released["epsilon"] < agg["epsilon"] / 2
