"""The accuracy-cost bench's statistics and its same-job check (against hand computations)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from tests.secfed.conftest import tiny_job

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_watermark_cost.py"
_SPEC = importlib.util.spec_from_file_location("bench_watermark_cost", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_wilson_interval_matches_the_textbook_value():
    lo, hi = bench.wilson(930, 1000)
    assert lo == pytest.approx(0.9125, abs=1e-4) and hi == pytest.approx(0.9442, abs=1e-4)


def test_paired_cost_is_the_mean_difference_with_its_normal_interval():
    rng = np.random.default_rng(0)
    base = rng.random(5000) < 0.92
    marked = np.where(rng.random(5000) < 0.06, ~base, base)
    row = bench.paired_cost(base, marked)
    diff = base.astype(float) - marked.astype(float)
    assert row["cost_points"] == pytest.approx(100 * diff.mean())
    half = 1.96 * diff.std() / math.sqrt(len(diff))
    assert row["ci_high"] - row["cost_points"] == pytest.approx(100 * half, rel=1e-3)
    assert row["discordant"] == int((diff != 0).sum())


def _run(tmp_path: Path, folder: str, **sections) -> Path:
    run = tmp_path / folder
    run.mkdir()
    (run / "config.toml").write_text(tiny_job(**sections).to_toml())
    return run


def test_only_watermark_and_output_may_differ(tmp_path):
    plain = _run(tmp_path, "plain")
    marked = _run(tmp_path, "marked", watermark={"enabled": True}, output={"dir": "elsewhere"})
    wider = _run(tmp_path, "wider", model={"public_words": 10}, watermark={"enabled": True})
    assert bench.config_differences(plain, marked) == []
    assert bench.config_differences(plain, wider) == ["model.public_words"]


def test_main_refuses_a_baseline_from_another_job(tmp_path, monkeypatch):
    plain = _run(tmp_path, "plain", name="one-name")
    wider = _run(tmp_path, "wider", name="other-name", model={"public_words": 10})
    assert bench.config_differences(plain, _run(tmp_path, "renamed", name="x")) == []
    argv = ["bench", "--unmarked", str(plain), "--marked", str(wider)]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit, match=r"model\.public_words.*--any-baseline"):
        bench.main()


def test_main_refuses_a_marked_baseline(tmp_path, monkeypatch):
    marked = _run(tmp_path, "marked", watermark={"enabled": True})
    monkeypatch.setattr("sys.argv", ["bench", "--unmarked", str(marked), "--marked", str(marked)])
    with pytest.raises(SystemExit, match="has watermarks on"):
        bench.main()
