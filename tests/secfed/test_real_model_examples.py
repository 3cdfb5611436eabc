"""The real-model DP example and its non-private twin compare like with like: the same
model, the same data and the same held-out examples; the DP plan stays within epsilon 8."""

from __future__ import annotations

from pathlib import Path

import pytest

from secfed.config import load_config
from secfed.data import load_dataset, partition
from secfed.estimate import estimate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_twin_has_the_dp_examples_model_and_data_without_dp():
    dp = load_config(EXAMPLES / "real_model_dp.toml")
    twin = load_config(EXAMPLES / "real_model_dp_twin.toml")
    assert dp.privacy.sample.enabled and not twin.privacy.sample.enabled
    assert not twin.privacy.user.enabled
    assert dp.seed == twin.seed and dp.model == twin.model and dp.data == twin.data
    assert dp.federation.clients == twin.federation.clients
    assert dp.aggregation == twin.aggregation
    # The same held-out examples (evaluation), drawn independently for each config.
    shards = [
        partition(load_dataset(c.data, seed=c.seed), c.data, c.federation, seed=c.seed)
        for c in (dp, twin)
    ]
    for a, b in zip(*shards, strict=True):
        assert a.test.tolist() == b.test.tolist() and a.train.tolist() == b.train.tolist()


def test_dp_example_plans_at_most_epsilon_8_per_client():
    out = estimate(load_config(EXAMPLES / "real_model_dp.toml"))
    rows = out["sample"]["clients"].values()
    assert all(r["epsilon"] <= 8.0 for r in rows) and out["warnings"] == []
    assert all(r["examples"] == 3000 for r in rows)
    assert out["delta"] == pytest.approx(1e-5)
