"""A user's key directory is only read: missing or other-scheme keys are refused, and
`secfed keys generate` neither overwrites keys silently nor accepts schemes without keys."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from secfed.cli import app
from secfed.errors import ConfigError
from secfed.keydir import check_job_key_dir, key_schemes
from secfed.runner import FederatedRunner
from tests.secfed.conftest import tiny_job

runner = CliRunner()


def _files(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _ckks_dir(tmp_path):
    keys = tmp_path / "keys"
    result = runner.invoke(app, ["keys", "generate", "--scheme", "ckks", "--out", str(keys)])
    assert result.exit_code == 0, result.output
    return keys


def test_paillier_job_refuses_a_ckks_key_dir_without_writing(tmp_path):
    keys = _ckks_dir(tmp_path)
    before = _files(keys)
    cfg = tiny_job(aggregation={"protocol": "paillier", "key_dir": str(keys)})
    job = FederatedRunner(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"holds ckks keys, not paillier.*--scheme paillier"):
        job.run()
    assert _files(keys) == before  # nothing written into the user's directory
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def test_missing_key_dir_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist: make the keys"):
        check_job_key_dir("ckks", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no keys"):
        check_job_key_dir("paillier", tmp_path / "empty")
    check_job_key_dir("plain", tmp_path / "nope")  # no key files: nothing to check


def test_keys_generate_refuses_to_overwrite_without_force(tmp_path):
    keys = _ckks_dir(tmp_path)
    secret = keys / "ckks" / "secret.ctx"
    old = secret.read_bytes()
    again = runner.invoke(app, ["keys", "generate", "--scheme", "ckks", "--out", str(keys)])
    assert again.exit_code == 2 and "--force" in again.output
    assert secret.read_bytes() == old
    forced = ["keys", "generate", "--scheme", "ckks", "--out", str(keys), "--force"]
    assert runner.invoke(app, forced).exit_code == 0
    assert secret.read_bytes() != old


@pytest.mark.parametrize("scheme", ["plain", "secagg", "nope"])
def test_keys_generate_refuses_schemes_without_key_files(tmp_path, scheme):
    out = tmp_path / "k"
    result = runner.invoke(app, ["keys", "generate", "--scheme", scheme, "--out", str(out)])
    assert result.exit_code == 2
    assert "choose one of ckks, paillier" in result.output
    assert not out.exists()


def test_key_schemes_are_the_protocols_whose_clients_hold_the_key(tmp_path):
    # Each one really writes its keys under <key_dir>/<name>/ (what the checks look for).
    assert key_schemes() == ["ckks", "paillier"]
    keys = _ckks_dir(tmp_path)
    assert sorted(p.name for p in keys.iterdir()) == ["ckks"]
