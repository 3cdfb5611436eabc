"""Traffic records count the global-model broadcast as well as protocol messages."""

from __future__ import annotations

import numpy as np

from secfed.flower.codec import vector_bytes
from secfed.runner import FederatedRunner
from tests.secfed.conftest import tiny_job


def test_bytes_down_includes_the_global_model_broadcast(tmp_path):
    cfg = tiny_job(federation={"clients": 3, "rounds": 1})
    runner = FederatedRunner(cfg, tmp_path / "run")
    runner.run()
    (rec,) = runner.dir.read_metrics()
    # What a deployment sends each client per round: the global adapter as Flower carries it.
    broadcast = len(vector_bytes(np.zeros(runner.dim)))
    assert rec["bytes_down_model"] == broadcast
    assert 0 < rec["bytes_down_protocol"] < broadcast  # plain: a small header per client
    assert rec["bytes_down"] == rec["bytes_down_model"] + rec["bytes_down_protocol"]
    per_client = rec["bytes_down_per_client"]
    assert sorted(per_client) == [str(c) for c in rec["cohort"]]
    assert np.mean(list(per_client.values())) == rec["bytes_down"]
    assert all(v > broadcast for v in per_client.values())
