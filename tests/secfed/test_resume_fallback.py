"""--resume survives a corrupt latest checkpoint by falling back to the one before it."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from secfed.errors import ResumeError
from secfed.runner import FederatedRunner
from tests.secfed.conftest import tiny_job

CFG = tiny_job(federation={"clients": 2, "rounds": 2})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-round run (checkpoints after rounds 1 and 2) and its final vector."""
    root = tmp_path_factory.mktemp("fallback") / "run"
    runner = FederatedRunner(CFG, root)
    runner.run()
    return root, runner.state.global_vector.copy()


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_arrays_fall_back_and_end_the_same(finished, tmp_path, caplog):
    root, final = finished
    run = _copy(root, tmp_path / "run")
    arrays = run / "checkpoints" / "round_0002" / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        resumed = FederatedRunner.resume(run)
    assert resumed.state.round == 1
    assert str(arrays) in caplog.text
    assert (run / "checkpoints" / "corrupt_round_0002").is_dir()
    resumed.run()
    # Round 2 is redone from round 1's checkpoint: the same adapter as the first time.
    np.testing.assert_array_equal(resumed.state.global_vector, final)
    assert [r["round"] for r in resumed.dir.read_metrics()] == [1, 2]


def test_corrupt_state_json_is_named_and_skipped(finished, tmp_path, caplog):
    root, _ = finished
    run = _copy(root, tmp_path / "run")
    state = run / "checkpoints" / "round_0002" / "state.json"
    state.write_text('{"round": 2, "job_')
    with caplog.at_level(logging.WARNING):
        assert FederatedRunner.resume(run).state.round == 1
    assert str(state) in caplog.text


def test_every_checkpoint_corrupt_is_one_clean_error(finished, tmp_path):
    root, _ = finished
    run = _copy(root, tmp_path / "run")
    for r in (1, 2):
        (run / "checkpoints" / f"round_{r:04d}" / "state.json").write_text("not json")
    with pytest.raises(ResumeError, match=r"no checkpoint .* reads back: .*round_0002.*round_0001"):
        FederatedRunner.resume(run)
