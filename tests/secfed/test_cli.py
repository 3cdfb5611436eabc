"""The ``secfed`` command line: run, resume after a real kill, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from secfed.cli import app
from tests.secfed.conftest import tiny_job

runner = CliRunner()


def write_job(tmp_path: Path, **sections) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(tiny_job(**sections).to_toml())
    return path


def test_run_prints_summary_and_writes_outputs(tmp_path):
    job = write_job(tmp_path)
    result = runner.invoke(app, ["run", str(job), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rounds"] == 3


def test_bad_config_exits_2_with_the_key_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation]\nclients = -1\n")
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 2
    assert "federation.clients" in result.output


def test_killed_job_resumes_to_the_uninterrupted_result(tmp_path):
    job = write_job(tmp_path, federation={"rounds": 4}, data={"num_examples": 240})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "secfed", "run", str(job)]
    full = subprocess.run([*cmd, "--out", str(tmp_path / "full")], env=env, capture_output=True)
    assert full.returncode == 0, full.stderr.decode()[-2000:]

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed_dir)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed_dir / "checkpoints" / "round_0002").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "summary.json").exists(), "job finished before it could be killed"

    resumed = subprocess.run(
        [sys.executable, "-m", "secfed", "run", "--resume", str(killed_dir)],
        env=env,
        capture_output=True,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]

    def rows(d):
        return [
            (r["round"], r["accuracy"], r["loss"])
            for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
        ]

    assert rows(killed_dir) == rows(tmp_path / "full")
    a = np.load(tmp_path / "full" / "checkpoints" / "round_0004" / "arrays.npz")["global_vector"]
    b = np.load(killed_dir / "checkpoints" / "round_0004" / "arrays.npz")["global_vector"]
    np.testing.assert_array_equal(a, b)


def test_keys_generate_identity_makes_a_roster_and_owner_only_keys(tmp_path):
    from crypto.core import identity

    out = tmp_path / "keys"
    result = runner.invoke(
        app, ["keys", "generate", "--scheme", "identity", "--clients", "3", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    ring = identity.load(out / identity.SUBDIR)
    assert ring is not None and set(ring.roster.keys) == {0, 1, 2, identity.SERVER_ID}
    assert set(ring.signers) == set(ring.roster.keys)
    for f in (out / identity.SUBDIR).iterdir():
        assert f.stat().st_mode & 0o077 == 0
    refused = runner.invoke(app, ["keys", "generate", "--scheme", "identity", "--out", str(out)])
    assert refused.exit_code != 0 and "--clients" in refused.output
