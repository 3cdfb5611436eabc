"""No pooled client text: the built-in tokenizer comes from the public corpus."""

from __future__ import annotations

import csv
import json

import pytest

from secfed.assembly import build_parts
from secfed.errors import ConfigError
from secfed.runner import FederatedRunner
from tests.secfed.conftest import tiny_job

SECRET = "zorblaxquee"  # a word only the clients' texts contain


def _csv(tmp_path):
    path = tmp_path / "clients.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(160):
            w.writerow([f"patient {SECRET} reported item {i % 7}", i % 2])
    return path


def _job(tmp_path, **model):
    return tiny_job(
        data={"source": "csv", "path": str(_csv(tmp_path)), "num_examples": 160},
        model={"family": "bert", "max_length": 16, "vocab_size": 600, **model},
        federation={"clients": 2, "rounds": 1},
    )


def test_client_words_stay_out_of_the_vocabulary(tmp_path):
    tok = build_parts(_job(tmp_path)).tokenizer
    assert SECRET not in tok.get_vocab()
    pieces = tok.tokenize(SECRET)
    # Split into public pieces, never the unknown token (printable ASCII is in the alphabet).
    assert len(pieces) > 1 and tok.unk_token not in pieces


def test_opt_in_leaks_and_is_reported_as_a_disclosure(tmp_path):
    cfg = _job(tmp_path, tokenizer_from_client_data=True)
    runner = FederatedRunner(cfg, tmp_path / "run")
    assert SECRET in runner.parts.tokenizer.get_vocab()  # the leak the default prevents
    runner.run()
    report = json.loads((tmp_path / "run" / "privacy_report.json").read_text())
    [disclosure] = report["disclosures_outside_accountant"]
    assert "pooled" in disclosure and "outside every accountant" in disclosure


def test_default_report_lists_no_disclosure(tmp_path):
    runner = FederatedRunner(_job(tmp_path), tmp_path / "run")
    runner.run()
    report = json.loads((tmp_path / "run" / "privacy_report.json").read_text())
    assert report["disclosures_outside_accountant"] == []


@pytest.mark.parametrize("level", ["sample", "user"])
def test_opt_in_is_refused_under_dp(tmp_path, level):
    dp = (
        {"sample": {"enabled": True, "noise_multiplier": 1.0}}
        if level == "sample"
        else {"user": {"enabled": True}}
    )
    cfg = _job(tmp_path, tokenizer_from_client_data=True).with_overrides(privacy=dp)
    with pytest.raises(ConfigError, match="tokenizer_from_client_data"):
        build_parts(cfg)
