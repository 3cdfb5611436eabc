"""Adaptive clipping under user-level DP: the unclipped count travels through the aggregation
protocol as one extra coordinate of each client's vector (never as a per-client flag), and the
clip norm follows the protocol-summed, noised count."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import privacy
from secfed.config import ExperimentConfig
from secfed.errors import ConfigError
from secfed.runner import ClientResult, FederatedRunner, derive_seed
from tests.secfed.conftest import tiny_job

CLIENTS, SEED = 4, 3


def adaptive_job(
    protocol: str = "secagg", *, clip: float = 0.28, z: float = 0.0, count_noise: float = 0.0,
    deterministic: bool = False, rounds: int = 3, coordinate_range: float = 1.0,
) -> ExperimentConfig:  # fmt: skip
    user = {
        "enabled": True, "clip_norm": clip, "noise_multiplier": z, "adaptive_quantile": 0.5,
        "adaptive_lr": 0.5, "adaptive_count_noise": count_noise,
    }  # fmt: skip
    options = {} if protocol == "plain" else {"clip": coordinate_range}
    return tiny_job(
        privacy={"user": user, "deterministic_noise": deterministic},
        aggregation={"protocol": protocol, "options": options},
        federation={"clients": CLIENTS, "sample_rate": 1.0, "rounds": rounds},
    )


def distributed(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with distributed user-level noise."""
    user = cfg.privacy.user.model_copy(update={"noise": "distributed"})
    return cfg.model_copy(update={"privacy": cfg.privacy.model_copy(update={"user": user})})


class Spy:
    """Records every client's true flag, the vectors handed to the protocol, and the norm
    and count scale each round started from."""

    def __init__(self, runner: FederatedRunner):
        self.flags: list[bool] = []
        self.submitted: dict[int, np.ndarray] = {}
        self.norms: list[float] = []
        self.scales: list[float] = []
        self.runner = runner
        dp = runner.user_dp
        assert dp is not None
        clip, session, train = dp.clip, runner.protocol.client_session, runner.train_cohort

        def spy_clip(payload: np.ndarray) -> tuple[np.ndarray, bool]:
            out, clipped = clip(payload)
            self.flags.append(not clipped)
            return out, clipped

        def spy_session(spec: Any, cid: int, vector: np.ndarray, weight: float) -> Any:
            self.submitted[cid] = np.array(vector)
            return session(spec, cid, vector, weight)

        def spy_train(round_: int, cohort: list[int]) -> list[ClientResult]:
            self.norms.append(dp.norm)
            self.scales.append(dp.count_scale)
            return train(round_, cohort)

        dp.clip = spy_clip  # type: ignore[method-assign]
        runner.protocol.client_session = spy_session  # type: ignore[method-assign]
        runner.train_cohort = spy_train  # type: ignore[method-assign]

    def round_flags(self) -> list[bool]:
        out, self.flags = self.flags, []
        return out


def next_norm(norm: float, *, unclipped: float, n: int, lr: float = 0.5, q: float = 0.5) -> float:
    """Andrew et al. 2021 geometric update, written out independently of the runner."""
    fraction = (unclipped - n / 2) / CLIENTS + 0.5
    return norm * math.exp(-lr * (fraction - q))


@pytest.mark.parametrize("protocol", ["secagg", "secagg+"])
def test_clip_norm_follows_the_protocol_summed_count(tmp_path, protocol):
    runner = FederatedRunner(adaptive_job(protocol), tmp_path / "run")
    runner.start()
    spy = Spy(runner)
    counts, norm = [], 0.28
    for round_ in (1, 2, 3):
        row = runner.run_round(round_)
        flags = spy.round_flags()
        counts.append(sum(flags))
        dim = runner.dim
        for vec in spy.submitted.values():
            # The submitted vector is the clipped update plus one coordinate kappa*(b - 1/2).
            assert vec.shape == (dim + 1,)
            assert abs(vec[-1]) == pytest.approx(spy.scales[-1] / 2)
            assert np.linalg.norm(vec[:dim]) <= spy.norms[-1] * (1 + 1e-9)
        signs = sorted(bool(v[-1] > 0) for v in spy.submitted.values())
        assert signs == sorted(flags)
        norm = next_norm(norm, unclipped=sum(flags), n=CLIENTS)
        # Fixed-point error of the count: n/2 quanta over kappa, far below one client.
        assert row["clip_norm"] == pytest.approx(norm, rel=1e-3)
        assert runner.user_dp.adaptive.last_fraction == pytest.approx(
            sum(flags) / CLIENTS, abs=1e-3
        )
    assert 0 < sum(counts) < 3 * CLIENTS  # the flags were mixed: the test can tell them apart


def test_central_count_noise_is_added_by_the_reader_to_the_summed_count(tmp_path):
    cfg = adaptive_job("plain", z=0.5, count_noise=1.0, deterministic=True)
    runner = FederatedRunner(cfg, tmp_path / "run")
    runner.start()
    spy = Spy(runner)
    norm = 0.28
    for round_ in (1, 2, 3):
        row = runner.run_round(round_)
        flags = spy.round_flags()
        # Count noise N(0, sigma_b^2) from the reader's own stream, independent of the
        # update's noise (central noise: kappa only keeps the coordinate in range).
        rng = np.random.default_rng(derive_seed(SEED, "noise", "clipcount", round_))
        noised = sum(flags) + rng.normal(0.0, 1.0)
        norm = next_norm(norm, unclipped=noised, n=CLIENTS)
        assert row["clip_norm"] == pytest.approx(norm, rel=1e-6)
        assert spy.scales[-1] == spy.norms[-1]  # plain has no fixed-point range


@pytest.mark.parametrize("protocol", ["secagg", "plain"])
def test_distributed_noise_on_the_count_coordinate_is_the_count_noise(tmp_path, protocol):
    z, sigma_b = 0.5, 1.0
    job = adaptive_job(protocol, z=z, count_noise=sigma_b, deterministic=True, coordinate_range=2.0)
    cfg = distributed(job)
    runner = FederatedRunner(cfg, tmp_path / "run")
    runner.start()
    dp = runner.user_dp
    z_u = privacy.adaptive_update_noise_multiplier(noise_multiplier=z, count_noise_std=sigma_b)
    spy = Spy(runner)
    norm, dim = 0.28, runner.dim + 1
    for round_ in (1, 2, 3):
        row = runner.run_round(round_)
        flags = spy.round_flags()
        kappa = spy.scales[-1]
        # kappa makes the clients' noise on the coordinate (std z_u S) read as sigma_b.
        assert kappa == pytest.approx(z_u * spy.norms[-1] / sigma_b)
        noise, survivors = 0.0, CLIENTS - runner.protocol.max_dropouts(CLIENTS)
        for cid in range(CLIENTS):
            rng = np.random.default_rng(derive_seed(SEED, "noise", "client", round_, cid))
            if protocol == "plain":
                std = z_u * spy.norms[-1] / math.sqrt(survivors)
                noise += rng.normal(0.0, std, size=dim)[-1]
            else:
                # Skellam planned on the joint vector: sensitivity S z_u / z, multiplier z.
                g = runner.protocol.quantum
                _, l2 = privacy.integer_sensitivity(
                    clip_norm=spy.norms[-1] * z_u / z, quantum=g, dim=dim
                )
                mu = (z * l2) ** 2 / survivors
                noise += privacy.skellam_noise(dim, mu=mu, rng=rng)[-1] * g
        norm = next_norm(norm, unclipped=sum(flags) + noise / kappa, n=CLIENTS)
        assert row["clip_norm"] == pytest.approx(norm, rel=1e-3)
    assert dp.sensitivity == pytest.approx(dp.norm * z_u / z)
    if protocol == "secagg":
        assert dp.plan is not None and dp.plan.dim == dim
        assert row["user_epsilon"] == pytest.approx(
            dp.plan.epsilon(sample_rate=1.0, rounds=3, delta=cfg.privacy.delta)
        )
    else:  # the joint Gaussian release is accounted with the target multiplier z
        assert row["user_epsilon"] == pytest.approx(
            privacy.user_level_epsilon(
                noise_multiplier=z, sample_rate=1.0, rounds=3, delta=cfg.privacy.delta
            )
        )


def test_joint_sensitivity_composes_to_the_target_multiplier(tmp_path):
    """Noise ``z_u S`` on a vector of L2 norm ``sqrt(S^2 + kappa^2/4)`` is multiplier ``z``."""
    z, sigma_b = 1.1, 3.0
    cfg = distributed(adaptive_job("plain", clip=0.7, z=z, count_noise=sigma_b))
    dp = FederatedRunner(cfg, tmp_path / "run").user_dp
    assert dp.count_in_client_noise
    assert dp.update_noise_multiplier * dp.norm / dp.sensitivity == pytest.approx(z)
    assert dp.count_scale * sigma_b == pytest.approx(dp.update_noise_multiplier * dp.norm)


def test_range_too_small_for_the_initial_norm_is_refused(tmp_path):
    cfg = distributed(adaptive_job("secagg", z=0.5, count_noise=1.0, coordinate_range=1.0))
    with pytest.raises(ConfigError, match=r"raise aggregation\.options\.clip"):
        FederatedRunner(cfg, tmp_path / "run")


def test_adaptive_norm_stops_where_coordinates_and_noise_still_fit(tmp_path):
    # The protocol clips coordinates beyond +-range after the noise is added, which would
    # break the accounted mechanism: the norm may not outgrow the range's headroom.
    job = adaptive_job("secagg", z=0.5, count_noise=1.0, coordinate_range=2.0)
    dp = FederatedRunner(distributed(job), tmp_path / "run").user_dp
    assert dp is not None and dp.adaptive is not None
    z_u = dp.update_noise_multiplier
    dp.adaptive.load_state_dict({**dp.adaptive.state_dict(), "norm": 50.0})
    cap = 2.0 / (max(1.0, z_u / 1.0 / 2) + 8.0 * z_u)
    assert dp.norm == pytest.approx(cap) and dp.norm < 50.0
    vector = dp.client_vector(np.full(10, 100.0))
    worst = np.max(np.abs(vector)) + 8.0 * z_u * dp.norm  # 8 std of a client's noise share
    assert worst <= 2.0 * (1 + 1e-9)


def test_report_and_threat_model_say_the_protocol_sums_the_count(tmp_path):
    runner = FederatedRunner(adaptive_job("secagg", rounds=1), tmp_path / "run")
    report = runner.run()["privacy"]
    assert "secagg protocol" in report["threat_model"]["dp"]["clipped_count"]
    text = report["user_level"]["adaptive_clipping"]["count_aggregation"]
    assert "secagg protocol" in text and "masked vectors, the weighted sum" in text
    plain = FederatedRunner(adaptive_job("plain", rounds=1), tmp_path / "plain")
    text = plain.run()["privacy"]["user_level"]["adaptive_clipping"]["count_aggregation"]
    assert "every client's individual update" in text  # plain hides nothing, bit included


def test_adaptive_norm_and_count_survive_resume(tmp_path):
    cfg = adaptive_job("plain", z=0.5, count_noise=1.0, deterministic=True)
    full = FederatedRunner(cfg, tmp_path / "full")
    full.run()
    part = FederatedRunner(cfg, tmp_path / "part")
    part.start()
    part.run_round(1)
    resumed = FederatedRunner.resume(tmp_path / "part")
    resumed.run()
    want = [r["clip_norm"] for r in full.dir.read_metrics()]
    assert [r["clip_norm"] for r in resumed.dir.read_metrics()] == want
    np.testing.assert_array_equal(resumed.state.global_vector, full.state.global_vector)
