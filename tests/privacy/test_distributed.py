"""Distributed Skellam noise: moments, closure under sums, dropouts, accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privacy import (
    PrivacyConfigError,
    integer_sensitivity,
    make_noise_rng,
    noise_tail_bound,
    per_client_variance,
    plan_skellam,
    skellam_epsilon,
    skellam_noise,
    skellam_rdp,
)
from privacy.rdp import INTEGER_ORDERS, poisson_subsampled_rdp, rdp_to_epsilon, sampled_gaussian_rdp


def test_skellam_moments():
    x = skellam_noise(400_000, mu=30.0, rng=make_noise_rng(0))
    assert x.dtype == np.int64
    assert abs(x.mean()) < 0.05
    assert x.var() == pytest.approx(30.0, rel=0.01)
    centred = x - x.mean()
    assert abs((centred**3).mean()) / 30.0**1.5 < 0.02  # symmetric
    # excess kurtosis of Skellam(mu) is 1/mu
    assert (centred**4).mean() / x.var() ** 2 - 3 == pytest.approx(1 / 30.0, abs=0.02)
    assert np.array_equal(skellam_noise(5, mu=0.0, rng=make_noise_rng(0)), np.zeros(5))


def test_survivors_sum_reaches_target_variance():
    target, n, t = 400.0, 8, 2
    mu_c = per_client_variance(target_variance=target, clients=n, tolerated_dropouts=t)
    assert mu_c == pytest.approx(target / 6)
    rng = make_noise_rng(1)
    draws = np.stack([skellam_noise(200_000, mu=mu_c, rng=rng) for _ in range(n - t)])
    total = draws.sum(axis=0)
    assert total.var() == pytest.approx(target, rel=0.02)
    with pytest.raises(PrivacyConfigError):
        per_client_variance(target_variance=1.0, clients=2, tolerated_dropouts=2)


def test_skellam_rdp_approaches_gaussian_and_is_above_it():
    l2 = 100.0
    l1 = 10.0 * l2
    mu = (2.0 * l2) ** 2  # noise multiplier 2
    orders = list(range(2, 65))
    sk = skellam_rdp(l1=l1, l2=l2, mu=mu, orders=orders)
    gauss = np.array(orders) / (2 * 2.0**2)
    assert np.all(sk >= gauss)
    np.testing.assert_allclose(sk, gauss, rtol=0.01)


def test_general_subsampling_bound_is_valid_for_the_gaussian():
    """Zhu-Wang's bound applied to the Gaussian must not undercut the exact sampled Gaussian."""
    sigma, q = 1.5, 0.05
    top = int(max(INTEGER_ORDERS))
    base = np.array([j / (2 * sigma**2) for j in range(top + 1)])
    bound = poisson_subsampled_rdp(base_rdp=base, sample_rate=q, orders=INTEGER_ORDERS)
    exact = sampled_gaussian_rdp(
        sample_rate=q, noise_multiplier=sigma, steps=1, orders=INTEGER_ORDERS
    )
    assert np.all(bound >= exact * (1 - 1e-9))
    assert np.all(bound <= base[list(INTEGER_ORDERS)] + 1e-12)
    eps_bound = rdp_to_epsilon(rdp=bound * 200, orders=INTEGER_ORDERS, delta=1e-5)[0]
    eps_exact = rdp_to_epsilon(rdp=exact * 200, orders=INTEGER_ORDERS, delta=1e-5)[0]
    assert eps_exact <= eps_bound < 2.0 * eps_exact  # amplification mostly kept


def test_plan_and_epsilon():
    plan = plan_skellam(
        noise_multiplier=1.0, clip_norm=1.0, quantum=2**-16, dim=10_000, clients=10,
        tolerated_dropouts=2,
    )  # fmt: skip
    l1, l2 = integer_sensitivity(clip_norm=1.0, quantum=2**-16, dim=10_000)
    assert (plan.l1, plan.l2) == (l1, l2)
    assert l2 == pytest.approx(2**16 + 50)
    assert plan.central_variance == pytest.approx(l2**2)
    assert plan.client_variance * 8 == pytest.approx(plan.central_variance)
    noise = plan.client_noise(make_noise_rng(4))
    assert noise.shape == (10_000,) and noise.dtype == np.int64
    eps = plan.epsilon(sample_rate=0.1, rounds=50, delta=1e-5)
    gauss = rdp_to_epsilon(
        rdp=sampled_gaussian_rdp(sample_rate=0.1, noise_multiplier=1.0, steps=50,
                                 orders=INTEGER_ORDERS),
        orders=INTEGER_ORDERS, delta=1e-5,
    )[0]  # fmt: skip
    assert gauss <= eps < 1.5 * gauss
    assert skellam_epsilon(l1=l1, l2=l2, mu=plan.central_variance, sample_rate=0.1,
                           rounds=0, delta=1e-5) == 0.0  # fmt: skip
    assert eps < skellam_epsilon(l1=l1, l2=l2, mu=plan.central_variance, sample_rate=1.0,
                                 rounds=50, delta=1e-5)  # fmt: skip


def test_noise_tail_bound_holds():
    mu, dim = 50.0, 100_000
    t = noise_tail_bound(mu=mu, dim=dim, failure_prob=1e-3)
    x = skellam_noise(dim, mu=mu, rng=make_noise_rng(5))
    assert np.abs(x).max() < t
    assert t < 10 * math.sqrt(mu)  # not absurdly loose
