"""Progress events: building the job, then every local step of every client in a round."""

from __future__ import annotations

import math

from secfed.progress import ProgressEvent
from secfed.runner import FederatedRunner
from tests.secfed.conftest import tiny_job


def test_progress_reports_build_stages_and_every_local_step(tmp_path):
    cfg = tiny_job(federation={"clients": 2, "rounds": 1, "local_epochs": 2, "batch_size": 8})
    events: list[ProgressEvent] = []
    runner = FederatedRunner(cfg, tmp_path / "run", progress=events.append)
    assert [e.stage for e in events] == ["data", "tokenizer", "model"]
    events.clear()
    runner.run()
    for member, cid in enumerate(runner.sample_cohort(1), start=1):
        n = len(runner.client_data(cid))
        steps = 2 * math.ceil(n / 8)  # epochs x batches, computed here from the shard size
        mine = [e for e in events if e.stage == "train" and e.client == cid]
        assert [e.done for e in mine] == list(range(steps + 1))
        assert {(e.total, e.member, e.cohort, e.round) for e in mine} == {(steps, member, 2, 1)}
    tail = [e.stage for e in events if e.stage != "train"]
    assert tail == ["aggregate", "evaluate"]
