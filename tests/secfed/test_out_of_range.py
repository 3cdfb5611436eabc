"""The runner and the one out-of-range policy: refused by default, clipped only on request
(and counted), never clipped after distributed DP noise."""

from __future__ import annotations

import numpy as np
import pytest

from crypto.errors import EncodingError
from secfed.errors import ConfigError
from secfed.runner import FederatedRunner
from tests.secfed.conftest import tiny_job

TINY_RANGE = {"protocol": "secagg+", "options": {"clip": 1e-5}}


def test_update_outside_the_range_is_refused_by_default(tmp_path):
    runner = FederatedRunner(tiny_job(aggregation=TINY_RANGE), tmp_path / "run")
    runner.start()
    with pytest.raises(EncodingError, match=r"coordinates outside \[-1e-05, 1e-05\].*out_of_range"):
        runner.run_round(1)


def test_explicit_clip_is_applied_and_counted_per_round(tmp_path):
    options = {**TINY_RANGE["options"], "out_of_range": "clip"}
    cfg = tiny_job(aggregation={**TINY_RANGE, "options": options}, federation={"rounds": 1})
    runner = FederatedRunner(cfg, tmp_path / "run")
    runner.start()
    submitted: list[np.ndarray] = []
    weights: list[float] = []
    session = runner.protocol.client_session

    def spy(spec, cid, vector, weight):
        submitted.append(np.asarray(vector, dtype=np.float32))
        weights.append(weight)
        return session(spec, cid, vector, weight)

    runner.protocol.client_session = spy  # type: ignore[method-assign]
    outcome = None
    aggregate = runner.aggregate

    def keep(round_, results):
        nonlocal outcome
        outcome = aggregate(round_, results)
        return outcome

    runner.aggregate = keep  # type: ignore[method-assign]
    runner.run_round(1)
    row = runner.dir.read_metrics()[-1]
    want = sum(int(np.count_nonzero(np.abs(v) > 1e-5)) for v in submitted)
    assert want > 0 and row["clipped_coordinates"] == want
    # The protocol summed the clipped updates (numpy clip + float64 sum, within its bound).
    clipped = sum(
        w * np.clip(v.astype(np.float64), -1e-5, 1e-5)
        for v, w in zip(submitted, weights, strict=True)
    )
    assert outcome is not None
    err = np.max(np.abs(outcome.aggregate.weighted_sum - clipped))
    assert err <= outcome.aggregate.error_bound + 1e-12


def test_in_range_job_records_no_clipping(tmp_path):
    cfg = tiny_job(aggregation={"protocol": "secagg+"}, federation={"rounds": 1})
    runner = FederatedRunner(cfg, tmp_path / "run")
    runner.run()
    assert runner.dir.read_metrics()[-1]["clipped_coordinates"] == 0


def test_clipping_after_distributed_noise_is_refused():
    user = {"enabled": True, "clip_norm": 0.05, "noise_multiplier": 0.8, "noise": "distributed"}
    cfg = tiny_job(
        privacy={"user": user},
        aggregation={"protocol": "secagg+", "options": {"out_of_range": "clip"}},
    )
    with pytest.raises(ConfigError, match=r"out_of_range = 'clip'.*accountant"):
        FederatedRunner(cfg, "unused")


def test_the_range_leaves_eight_noise_deviations_above_the_clip_norm(tmp_path):
    # The refusal under distributed noise needs an 8-sigma draw: measure a client's actual
    # noise share (Skellam in the fixed-point unit) against the room the range leaves.
    user = {"enabled": True, "clip_norm": 0.05, "noise_multiplier": 0.8, "noise": "distributed"}
    cfg = tiny_job(privacy={"user": user}, aggregation={"protocol": "secagg+"})
    runner = FederatedRunner(cfg, tmp_path / "run")
    room = runner.protocol.options["clip"] - 0.05
    noise = runner.user_dp.client_noise(200_000, cohort=2, rng=np.random.default_rng(0))
    assert float(np.std(noise)) * 8 <= room * 1.01
    assert float(np.max(np.abs(noise))) < room
