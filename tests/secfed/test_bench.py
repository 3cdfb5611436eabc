"""secfed bench: records, byte accounting, outputs and the CLI on tiny sweeps."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import crypto
from crypto.core import wire
from secfed.bench import baselines, report
from secfed.bench.cli import bench
from secfed.bench.measure import ferry, measure_point
from secfed.bench.sweep import SweepConfig, protocol_options, run_sweep
from secfed.bench.workload import (
    Point,
    parse_int_list,
    parse_protocol_options,
    synthetic_updates,
)
from secfed.errors import SecfedError

REQUIRED = (
    "protocol",
    "params",
    "clients",
    "dropouts",
    "encode_s",
    "aggregate_s",
    "decode_s",
    "bytes_up",
    "bytes_down",
    "max_abs_error",
    "expansion",
    "peak_mem_bytes",
    "encode_s_iqr",
    "encode_s_min",
    "encode_s_max",
    "aggregate_s_iqr",
    "decode_s_iqr",
)


def _plain_record(params: int, clients: int, dropouts: int = 0) -> dict[str, Any]:
    proto = crypto.create_protocol("plain")
    return measure_point(proto, Point("plain", params, clients, dropouts), repeats=2).as_dict()


def test_plain_record_has_every_field_and_exact_bytes() -> None:
    rec = _plain_record(1000, 3)
    for key in REQUIRED:
        assert key in rec, key
        assert not (isinstance(rec[key], float) and math.isnan(rec[key])), key
    # One reply: header + float64 weight + float32 per parameter; one hello down.
    assert rec["bytes_up"] == wire.HEADER_SIZE + 8 + 4 * 1000
    assert rec["bytes_down"] == wire.HEADER_SIZE
    assert rec["expansion"] == pytest.approx((wire.HEADER_SIZE + 8 + 4000) / 4000)
    assert rec["max_abs_error"] <= 1e-12
    assert rec["weight_error"] <= 1e-12
    assert rec["repeats"] == 2
    assert rec["encode_s_min"] <= rec["encode_s"] <= rec["encode_s_max"]
    assert rec["decode_s"] == 0.0  # the server learns plain's aggregate
    assert rec["peak_mem_bytes"] > 4 * 1000 * 3  # at least the three updates' bytes


def test_plain_dropouts_sum_the_survivors_exactly() -> None:
    rec = _plain_record(500, 4, dropouts=2)
    assert rec["drop_stage"] == 0 and rec["reply_stages"] == 1
    assert rec["max_abs_error"] <= 1e-12
    assert rec["error"] == ""


def test_dropouts_beyond_the_protocol_limit_are_skipped_not_faked() -> None:
    proto = crypto.create_protocol("plain")
    rec = measure_point(proto, Point("plain", 10, 2, 2), repeats=1)
    assert rec.error.startswith("skipped") and math.isnan(rec.encode_s)


@pytest.mark.parametrize(
    "name", [p for p in ("plain", "secagg", "ckks") if p in crypto.protocol_names()]
)
def test_ferry_counts_the_same_bytes_as_the_driver(name: str, tmp_path: Path) -> None:
    proto = crypto.create_protocol(name)
    proto.setup(job_id="t", key_dir=tmp_path)
    spec = crypto.RoundSpec(job_id="t", round=1, cohort=(0, 1, 2), dim=300)
    vectors, weights = synthetic_updates(params=300, clients=3)
    mine = ferry(proto, spec, vectors, weights, decode_clients=1)
    sessions = {c: proto.client_session(spec, c, vectors[c], weights[c]) for c in spec.cohort}
    ref = crypto.run_round(proto.server_session(spec), sessions)
    assert mine.bytes_up == ref.traffic.bytes_up
    assert mine.bytes_down == ref.traffic.bytes_down
    assert mine.aggregate.contributors == ref.aggregate.contributors


def test_sweep_outputs_are_written_and_load_back(tmp_path: Path) -> None:
    cfg = SweepConfig(["plain"], [100, 1000], [2], [0, 1], repeats=1, baselines=False, memory=False)
    labels: list[str] = []
    records = run_sweep(cfg, advance=labels.append)
    assert len(records) == len(labels) == 4
    report.write_json(tmp_path / "r.json", records, {"quick": True})
    report.write_csv(tmp_path / "r.csv", records)
    report.write_plot(tmp_path / "p.png", records)
    loaded = report.read_json(tmp_path / "r.json")
    assert [(r["params"], r["dropouts"]) for r in loaded] == [
        (100, 0),
        (1000, 0),
        (100, 1),
        (1000, 1),
    ]
    assert isinstance(json.loads((tmp_path / "r.json").read_text()), list)
    json.dumps(loaded, allow_nan=False)  # NaN written as null
    with (tmp_path / "r.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and float(rows[1]["bytes_up"]) == loaded[1]["bytes_up"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| plain | 1,000 | 2 | 1 |" in report.markdown_table(records)


def test_options_parse_and_quick_mode_only_uses_named_insecure_options() -> None:
    assert parse_protocol_options(["paillier.key_bits=3072", "ckks.preset=precise"]) == {
        "paillier": {"key_bits": 3072},
        "ckks": {"preset": "precise"},
    }
    with pytest.raises(SecfedError, match=r"PROTOCOL\.NAME=VALUE"):
        parse_protocol_options(["key_bits=3072"])
    assert parse_int_list("10000,1e6", what="params") == [10000, 1_000_000]
    with pytest.raises(SecfedError):
        parse_int_list("ten", what="params")
    quick = SweepConfig(["plain"], [10], [2], [0], quick=True, workers=1)
    assert protocol_options(quick, "plain") == ({}, False)
    if "paillier" in crypto.protocol_names():
        opts, insecure = protocol_options(quick, "paillier")
        assert insecure and opts["insecure_key_bits"] < 2048 and opts["workers"] == 1
        secure = SweepConfig(
            ["paillier"], [10], [2], [0], quick=True, options={"paillier": {"key_bits": 2048}}
        )
        assert protocol_options(secure, "paillier") == ({"key_bits": 2048}, False)


def test_baselines_are_labelled_and_measure_real_work() -> None:
    rec = baselines.phe_naive(params=10_000, clients=3, key_bits=1024)
    assert rec.kind == "baseline" and "extrapolated" in rec.note
    assert rec.encode_s > 0 and rec.max_abs_error < 1e-9
    assert rec.expansion > 30  # per-value ciphertexts: >= 256 bytes for 4 bytes of float
    ts_rec = baselines.tenseal_bare(params=5000, clients=2)
    if not ts_rec.error:
        assert ts_rec.max_abs_error < 1e-4 and ts_rec.bytes_up > 4 * 5000
    fl = baselines.flwr_secaggplus(params=1000, clients=3, neighbours=2, threshold=2)
    if not fl.error:
        assert fl.bytes_up > 8 * 1000  # int64 masked vector, plus keys and encrypted shares
        assert fl.encode_s > 0 and "stages 0-3" in fl.note


def test_cli_tiny_sweep(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(bench)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "--protocols", "plain", "--params", "200,500", "--clients", "2", "--repeats", "1",
            "--no-baselines", "--no-memory", "--json", str(out / "r.json"),
            "--csv", str(out / "r.csv"),
            "--plot", str(out / "p.png"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = report.read_json(out / "r.json")
    assert [r["params"] for r in records] == [200, 500]
    assert (out / "r.csv").exists() and (out / "p.png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["--protocols", "nope"])
    assert bad.exit_code == 2 and "unknown protocol" in bad.output


@pytest.mark.slow
def test_e2e_default_job_plain() -> None:
    from secfed.bench.e2e import run_e2e

    (rec,) = run_e2e(["plain"], rounds=1)
    assert rec["error"] == "" and rec["bytes_up"] > 4 * rec["params"]
    assert 0.0 <= rec["accuracy"] <= 1.0


def test_cap_skips_large_points_with_a_reason() -> None:
    cfg = SweepConfig(
        ["plain"], [10, 50], [2], [0], repeats=1, baselines=False, caps={"plain": 20}, memory=False
    )
    small, big = run_sweep(cfg)
    assert small["error"] == "" and small["bytes_up"] > 0
    assert big["error"] == "skipped: above --cap plain=20"
    assert math.isnan(big["encode_s"])


@pytest.mark.slow
def test_cli_adapter_config_uses_the_jobs_adapter_size(tmp_path: Path) -> None:
    import models
    from secfed.assembly import build_parts
    from secfed.bench.e2e import DEFAULT_JOB
    from secfed.config import load_config

    app = typer.Typer()
    app.command()(bench)
    args = ["--adapter-config", str(DEFAULT_JOB), "--protocols", "plain", "--clients", "2"]
    args += ["--repeats", "1", "--no-baselines", "--json", str(tmp_path / "r.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (rec,) = report.read_json(tmp_path / "r.json")
    expected = models.adapter_size(build_parts(load_config(DEFAULT_JOB)).model)
    assert rec["params"] == expected and rec["bytes_up"] == wire.HEADER_SIZE + 8 + 4 * expected


@pytest.mark.slow
@pytest.mark.parametrize("name", ["plain", "secagg+"])
def test_memory_probe_measures_each_party_in_its_own_process(name: str, tmp_path: Path) -> None:
    """A client holds at least its update (lower bound, independent of the probe) and, for
    the masking protocols, at most 3x its float32 size above the post-import baseline."""
    from secfed.bench.memory import party_peaks
    from secfed.bench.workload import synthetic_updates

    dim = 2_000_000
    vectors, weights = synthetic_updates(params=dim, clients=3)
    proto = crypto.create_protocol(name)
    proto.setup(job_id="probe", key_dir=tmp_path)
    peaks = party_peaks(
        proto, name=name, options={}, key_dir=tmp_path, job_id="probe",
        vectors=vectors, weights=weights,
    )  # fmt: skip
    client, server = peaks["client"], peaks["server"]
    assert client["above_baseline_bytes"] >= 4 * dim  # it received and kept its update
    assert client["over_update"] <= 3.0
    # The server held the other clients' replies (at least 2 of 3 uploads) at once.
    assert server["above_baseline_bytes"] >= 2 * 2 * dim
    assert client["peak_rss_bytes"] < 4 * dim + 1e9  # its own process, not the bench's


def test_sweep_measures_the_signed_path_by_default_and_labels_the_unsigned_one() -> None:
    def sweep(**kw: Any) -> dict[str, Any]:
        cfg = SweepConfig(["secagg+"], [64], [4], [0], repeats=1, baselines=False, memory=False)
        (rec,) = run_sweep(SweepConfig(**{**cfg.__dict__, **kw}))
        assert not rec["error"], rec["error"]
        return rec

    signed, unsigned = sweep(), sweep(authenticated=False)
    assert signed["authenticated"] and not unsigned["authenticated"]
    # Signed frames carry Ed25519 signatures (64 bytes), keys and MACs: more bytes up.
    assert signed["bytes_up"] >= unsigned["bytes_up"] + 64
    assert "UNAUTHENTICATED" in report.markdown_table([unsigned])
    assert "UNAUTHENTICATED" not in report.markdown_table([signed])
