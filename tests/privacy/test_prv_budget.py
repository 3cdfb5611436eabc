"""The PRV accountant never builds a grid that exhausts memory or time; the exact Gaussian
epsilon used against the aggregator."""

from __future__ import annotations

import logging
import math
import time

import pytest
from scipy.integrate import quad
from scipy.stats import norm

import privacy


@pytest.mark.parametrize(
    ("sigma", "rate", "steps"),
    [(1.0, 0.6, 50_000), (0.5, 1.0, 1000), (0.5, 1.0, 50_000), (0.8, 0.05, 50_000)],
)
def test_huge_prv_grids_fall_back_to_rdp_quickly(caplog, sigma, rate, steps):
    plan = privacy.plan_prv([(sigma, rate, steps)], delta=1e-5)
    assert not plan.fits and plan.points > privacy.MAX_GRID_POINTS
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        eps = privacy.epsilon_for(
            noise_multiplier=sigma, sample_rate=rate, steps=steps, delta=1e-5, accountant="prv"
        )
    assert time.perf_counter() - t0 < 30  # the 12-119 GiB grids are never allocated
    assert "using the RDP accountant" in caplog.text
    rdp = privacy.epsilon_for(noise_multiplier=sigma, sample_rate=rate, steps=steps, delta=1e-5)
    assert eps == rdp


def test_plan_matches_the_grid_opacus_builds():
    """Independent: the size of the discretised PRV Opacus actually returns."""
    from opacus.accountants import PRVAccountant

    hist = [(1.0, 0.01, 2000)]
    acc = PRVAccountant()
    acc.history = list(hist)
    dprv = acc._get_dprv(eps_error=0.01, delta_error=1e-8)
    plan = privacy.plan_prv(hist, delta=1e-5)
    assert plan.fits
    assert len(dprv.pmf) == pytest.approx(plan.points, rel=0.01)


def test_small_prv_grids_still_use_prv(caplog):
    with caplog.at_level(logging.WARNING):
        prv = privacy.epsilon_for(
            noise_multiplier=1.0, sample_rate=0.01, steps=2000, delta=1e-5, accountant="prv"
        )
    rdp = privacy.epsilon_for(noise_multiplier=1.0, sample_rate=0.01, steps=2000, delta=1e-5)
    assert prv < rdp and "RDP" not in caplog.text


def _hockey_stick(eps: float, s: float) -> float:
    """Independent: delta(eps) = int max(0, p(x) - e^eps q(x)) dx for N(1, s^2) vs N(0, s^2)."""

    def f(x: float) -> float:
        return max(0.0, norm.pdf(x, 1.0, s) - math.exp(eps) * norm.pdf(x, 0.0, s))

    cut = 0.5 + eps * s * s  # the integrand is zero left of the crossing point
    return quad(f, cut, cut + 40 * s, limit=400)[0]


@pytest.mark.parametrize(("z", "k"), [(1.0, 1), (1.0, 35), (4.0, 10), (0.7, 3)])
def test_gaussian_epsilon_is_exact(z, k):
    eps = privacy.gaussian_epsilon(noise_multiplier=z, compositions=k, delta=1e-5)
    s = z / math.sqrt(k)
    assert _hockey_stick(eps, s) == pytest.approx(1e-5, rel=1e-3)
    assert _hockey_stick(eps * 0.98, s) > 1e-5  # a smaller epsilon would not hold


def test_gaussian_epsilon_edges():
    assert privacy.gaussian_epsilon(noise_multiplier=1.0, compositions=0, delta=1e-5) == 0.0
    assert privacy.gaussian_epsilon(noise_multiplier=0.0, compositions=3, delta=1e-5) == math.inf
    with pytest.raises(privacy.PrivacyConfigError, match="delta"):
        privacy.gaussian_epsilon(noise_multiplier=1.0, compositions=3, delta=0.0)
