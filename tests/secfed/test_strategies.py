"""Server strategies on toy problems with known answers.

Client i minimises f_i(x) = 0.5 * h_i * ||x - a_i||^2 with plain gradient steps. The
federated optimum of the (equally weighted) sum is x* = sum(h_i a_i) / sum(h_i).
"""

from __future__ import annotations

import numpy as np
import pytest

from secfed.errors import ConfigError
from secfed.strategies import create_strategy

DIM = 3
A = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0], [-1.0, 4.0, 2.0]])


def simulate(name, *, h, rounds, local_steps, lr, options=None):
    strat = create_strategy(name, dim=DIM, options=options or {})
    x = np.zeros(DIM)
    for _ in range(rounds):
        payloads = []
        for cid in range(len(A)):
            hook = strat.client_hook(cid, x)
            y = x.copy()
            for _ in range(local_steps):
                g = h[cid] * (y - A[cid])
                if hook is not None:
                    g = g + hook(y)
                y = y - lr * g
            payloads.append(strat.client_payload(cid, x, y, steps=local_steps, lr=lr))
        for cid in range(len(A)):
            strat.commit_client(cid)
        mean = np.mean(payloads, axis=0)
        x = strat.apply(x, mean, participation=1.0)
    return x, strat


H_EQUAL = np.ones(3)
H_HETERO = np.array([1.0, 4.0, 0.25])


def optimum(h):
    return (h[:, None] * A).sum(0) / h.sum()


@pytest.mark.parametrize(
    "name", ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"]
)
def test_converges_to_the_mean_with_equal_curvature(name):
    opts = {"server_lr": 0.3, "momentum": 0.5} if name == "fedavgm" else {}
    if name in ("fedadam", "fedyogi", "fedadagrad"):
        opts = {"server_lr": 0.1}
    x, _ = simulate(name, h=H_EQUAL, rounds=400, local_steps=1, lr=0.5, options=opts)
    np.testing.assert_allclose(x, A.mean(0), atol=2e-2)


def test_fedavg_one_step_is_the_weighted_mean_update():
    strat = create_strategy("fedavg", dim=DIM, options={"server_lr": 0.5})
    x = np.ones(DIM)
    out = strat.apply(x, np.array([1.0, 2.0, -4.0]), participation=1.0)
    np.testing.assert_allclose(out, [1.5, 2.0, -1.0])


def test_fedavgm_momentum_accumulates():
    strat = create_strategy("fedavgm", dim=DIM, options={"server_lr": 1.0, "momentum": 0.5})
    d = np.array([1.0, 0.0, -2.0])
    x1 = strat.apply(np.zeros(DIM), d, participation=1.0)
    x2 = strat.apply(x1, d, participation=1.0)
    np.testing.assert_allclose(x2 - x1, 1.5 * d)


def test_fedadam_first_step_matches_formula():
    opts = {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}
    strat = create_strategy("fedadam", dim=DIM, options=opts)
    d = np.array([0.2, -0.05, 0.0])
    m = 0.1 * d
    v = 0.99 * 1e-6 + 0.01 * d**2
    np.testing.assert_allclose(
        strat.apply(np.zeros(DIM), d, participation=1.0), 0.1 * m / (np.sqrt(v) + 1e-3)
    )


def test_yogi_and_adagrad_second_moments_differ_from_adam():
    d = np.array([0.3, -0.1, 0.05])
    outs = {}
    for name in ("fedadam", "fedyogi", "fedadagrad"):
        strat = create_strategy(name, dim=DIM, options={})
        x = np.zeros(DIM)
        for _ in range(3):
            x = strat.apply(x, d, participation=1.0)
        outs[name] = strat.state["v"]
    v0 = 1e-6
    adagrad = v0 + 3 * d**2
    np.testing.assert_allclose(outs["fedadagrad"], adagrad)
    yogi = v0
    for _ in range(3):
        yogi = yogi - 0.01 * d**2 * np.sign(yogi - d**2)
    np.testing.assert_allclose(outs["fedyogi"], yogi)
    assert not np.allclose(outs["fedadam"], outs["fedyogi"])


def test_scaffold_removes_client_drift_that_fedavg_suffers():
    want = optimum(H_HETERO)
    x_avg, _ = simulate("fedavg", h=H_HETERO, rounds=300, local_steps=10, lr=0.1)
    x_scaf, strat = simulate("scaffold", h=H_HETERO, rounds=300, local_steps=10, lr=0.1)
    drift = np.linalg.norm(x_avg - want)
    assert drift > 0.1  # FedAvg with many local steps on heterogeneous clients is biased
    np.testing.assert_allclose(x_scaf, want, atol=1e-3)
    # Server control variate converges to the mean of the clients' gradient at x*.
    assert set(strat.client_controls) == {0, 1, 2}


def test_scaffold_state_round_trips():
    _, strat = simulate("scaffold", h=H_HETERO, rounds=3, local_steps=2, lr=0.1)
    clone = create_strategy("scaffold", dim=DIM, options={})
    clone.load_state_dict(strat.state_dict())
    assert clone.client_controls.keys() == strat.client_controls.keys()
    for k in strat.client_controls:
        np.testing.assert_array_equal(clone.client_controls[k], strat.client_controls[k])


def test_fedprox_pulls_towards_the_global_model():
    # With a strong proximal term the local model barely moves away from x.
    x_prox, _ = simulate(
        "fedprox", h=H_HETERO, rounds=1, local_steps=20, lr=0.05, options={"mu": 10.0}
    )
    x_avg, _ = simulate("fedavg", h=H_HETERO, rounds=1, local_steps=20, lr=0.05)
    assert np.linalg.norm(x_prox) < 0.5 * np.linalg.norm(x_avg)


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match=r"unknown federation\.strategy_options"):
        create_strategy("fedavg", dim=DIM, options={"momentum": 0.9})
    with pytest.raises(ConfigError, match="choose one of"):
        create_strategy("fedsgd", dim=DIM, options={})
    with pytest.raises(ConfigError, match=">= 0"):
        create_strategy("fedadam", dim=DIM, options={"tau": -1.0})
