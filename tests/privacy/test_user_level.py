"""User-level DP: clipping, noise statistics, split noise, accounting, adaptive clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privacy import (
    AdaptiveClipNorm,
    PrivacyConfigError,
    UserLevelDP,
    adaptive_update_noise_multiplier,
    clip_update,
    epsilon_for,
    gaussian_noise,
    gaussian_tail_bound,
    make_noise_rng,
    split_noise_std,
    user_level_epsilon,
)


def test_clip_update():
    v = np.array([3.0, 4.0])
    clipped, was = clip_update(v, norm=1.0)
    assert was and np.linalg.norm(clipped) == pytest.approx(1.0)
    np.testing.assert_allclose(clipped, [0.6, 0.8])
    same, was = clip_update(v, norm=10.0)
    assert not was and np.array_equal(same, v) and same is not v
    with pytest.raises(PrivacyConfigError, match="NaN"):
        clip_update(np.array([np.nan]), norm=1.0)


def test_central_noise_std_is_z_times_clip():
    dp = UserLevelDP(clip_norm=0.5, noise_multiplier=1.3)
    noise = gaussian_noise(200_000, std=dp.central_std, rng=make_noise_rng(1))
    assert noise.std() == pytest.approx(1.3 * 0.5, rel=0.01)
    assert abs(noise.mean()) < 0.01
    assert dp.coordinate_bound == 0.5


def test_split_noise_survivors_reach_target_variance():
    z, clip, n, t = 1.0, 2.0, 10, 3
    std = split_noise_std(noise_multiplier=z, clip_norm=clip, clients=n, tolerated_dropouts=t)
    assert std == pytest.approx(z * clip / math.sqrt(7))
    rng = make_noise_rng(2)
    draws = rng.normal(0.0, std, size=(n, 100_000))
    worst = draws[: n - t].sum(axis=0)  # exactly t clients dropped
    assert worst.var() == pytest.approx((z * clip) ** 2, rel=0.02)
    assert draws.sum(axis=0).var() > (z * clip) ** 2  # fewer dropouts: more noise
    dp = UserLevelDP(clip_norm=clip, noise_multiplier=z, tolerated_dropouts=t)
    assert dp.client_noise_std(clients=n) == pytest.approx(std)
    with pytest.raises(PrivacyConfigError, match="survive"):
        split_noise_std(noise_multiplier=z, clip_norm=clip, clients=3, tolerated_dropouts=3)


def test_user_level_epsilon_is_sampled_gaussian_over_rounds():
    eps = user_level_epsilon(noise_multiplier=1.0, sample_rate=0.1, rounds=50, delta=1e-5)
    assert eps == epsilon_for(noise_multiplier=1.0, sample_rate=0.1, steps=50, delta=1e-5)
    assert user_level_epsilon(noise_multiplier=1.0, sample_rate=0.1, rounds=100, delta=1e-5) > eps


def test_noise_rng_seeded_from_secrets_by_default():
    a, b = make_noise_rng(), make_noise_rng()
    assert a.integers(0, 2**62) != b.integers(0, 2**62)
    assert make_noise_rng(5).integers(0, 2**62) == make_noise_rng(5).integers(0, 2**62)


def test_adaptive_clip_tracks_target_quantile():
    rng = make_noise_rng(3)
    m = 200
    clip = AdaptiveClipNorm(
        initial_norm=0.05, target_quantile=0.5, learning_rate=0.2,
        count_noise_std=m / 20, expected_clients=m,
    )  # fmt: skip
    for _ in range(150):
        norms = rng.lognormal(mean=0.0, sigma=0.5, size=m)  # median 1.0
        unclipped = int((norms <= clip.norm).sum())
        clip.update(unclipped=unclipped, participants=m, rng=rng)
    assert clip.norm == pytest.approx(1.0, rel=0.15)
    restored = AdaptiveClipNorm(
        initial_norm=1.0, target_quantile=0.1, count_noise_std=1.0, expected_clients=1
    )
    restored.load_state_dict(clip.state_dict())
    assert restored.state_dict() == clip.state_dict()


def test_adaptive_noise_split_composes_back_to_target():
    z, sigma_b = 1.0, 10.0
    z_u = adaptive_update_noise_multiplier(noise_multiplier=z, count_noise_std=sigma_b)
    assert z_u > z
    assert (z_u**-2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(z)
    with pytest.raises(PrivacyConfigError, match="too small"):
        adaptive_update_noise_multiplier(noise_multiplier=1.0, count_noise_std=0.4)


def test_gaussian_tail_bound_holds():
    std, dim = 0.3, 100_000
    t = gaussian_tail_bound(std=std, dim=dim, failure_prob=1e-3)
    x = gaussian_noise(dim, std=std, rng=make_noise_rng(6))
    assert np.abs(x).max() < t < 7 * std
