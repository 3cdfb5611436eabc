"""Watermarks in a tiny federated job: every owner verifies, merged too; unmarked is not.

Also the CLI contract: exit 0 marked / 1 not marked / 2 error, commitment records.
"""

from __future__ import annotations

import copy
import hashlib
import json
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import models
from crypto import watermark as wm
from secfed import training
from secfed.assembly import client_dataset
from secfed.errors import ConfigError
from secfed.runner import FederatedRunner
from secfed.watermark.cli import watermark_app
from secfed.watermark.plugin import JOB_OWNER, WatermarkPlugin, key_path, record_path
from secfed.watermark.verify import read_adapter_dir, verify_keys

from .conftest import tiny_job

OWNERS = 2
KEY_HOLDERS = [0, 1, JOB_OWNER]  # the two owner clients and the job


class _CountingSecrets:
    """Stand-in for :mod:`secrets` in key generation: fixed keys, so the run is repeatable.

    Fresh keys embed to different depths in this 3-client, 3-key toy job (220-256 of 256
    bits); the example job's figures come from real random keys.
    """

    def __init__(self) -> None:
        self.calls = 0

    def token_bytes(self, n: int) -> bytes:
        self.calls += 1
        return hashlib.shake_256(f"test-key-{self.calls}".encode()).digest(n)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], FederatedRunner]:
    cfg = tiny_job(
        federation={"rounds": 3, "local_epochs": 3},
        watermark={
            "enabled": True,
            "owners": OWNERS,
            "job_key": True,
            "triggers": 256,
            "max_grad_fraction": 1.0,
        },
    )
    out = tmp_path_factory.mktemp("wm_run")
    runner = FederatedRunner(cfg, out)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("crypto.watermark.keys.secrets", _CountingSecrets())
        summary = runner.run()
    return out, summary, runner


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(watermark_app, list(args))


def _verify(*args: str, code: int = 0) -> list[dict[str, Any]]:
    result = _invoke("verify", *args, "--json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def _fresh_lora(run_dir: Path, *, seed: int) -> torch.nn.Module:
    """The run's base model with a new, untrained LoRA adapter (r=4)."""
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(str(run_dir / "base_model"))
    spec = models.AdapterSpec("lora", {"r": 4, "lora_alpha": 8})
    return models.attach_adapter(base, spec, family="bert", task="classification", seed=seed)


def _keys(run_dir: Path) -> list[str]:
    args = []
    for owner in KEY_HOLDERS:
        args += ["--key", str(key_path(run_dir, owner))]
    return args


def _records(run_dir: Path) -> list[str]:
    args = []
    for owner in KEY_HOLDERS:
        args += ["--commitment", str(record_path(run_dir, owner))]
    return args


def test_keys_are_private_files_and_summary_marks_every_owner(run):
    run_dir, summary, _ = run
    for owner in KEY_HOLDERS:
        assert key_path(run_dir, owner).stat().st_mode & 0o077 == 0
    wsum = summary["watermark"]
    assert wsum["owners"] == OWNERS and wsum["job_key"] and wsum["marked"] == len(KEY_HOLDERS)
    assert wsum["scheme"] == "secfed-wm/4" and wsum["bits"] == 256 and wsum["triggers"] == 256
    assert wsum["trigger_length"] == 6
    assert set(wsum["keys"]) == {"owner_0", "owner_1", "job"}
    for name, rec in wsum["keys"].items():
        assert rec["bit_p_adjusted"] <= 2.0**-64 and rec["verdict"] == "marked"
        assert ("trigger" in rec) == (name == "job")  # triggers_for = "job"
    assert {"hits", "ci_low", "ci_high", "chance", "p_adjusted", "rank_p_adjusted"} <= set(
        wsum["keys"]["job"]["trigger"]
    )


def test_commitment_records_written_before_training_and_completed(run):
    run_dir, summary, runner = run
    adapter_hash = hashlib.sha256((run_dir / "adapter" / "adapter_model.safetensors").read_bytes())
    first_checkpoint = min(p.stat().st_mtime for p in (run_dir / "checkpoints").iterdir())
    for owner in KEY_HOLDERS:
        rpath = record_path(run_dir, owner)
        record = json.loads(rpath.read_text())
        key = wm.load_key(key_path(run_dir, owner))
        expected = hashlib.sha256(
            b"secfed-watermark-commitment/v3\x00secfed-wm/4\x00" + key.seed
        ).hexdigest()
        assert record["key_hash"] == expected and record["job_id"] == runner.state.job_id
        assert record["scheme"] == "secfed-wm/4" and record["created"].endswith("Z")
        assert record["adapter_sha256"] == adapter_hash.hexdigest()
        assert summary["watermark"]["commitments"][rpath.name.split(".")[0]] == record
        assert key.seed.hex() not in rpath.read_text()  # no secret in the public record
        # Created at job start: no later than the first round's checkpoint.
        created = datetime.strptime(record["created"], "%Y-%m-%dT%H:%M:%SZ")
        assert created.replace(tzinfo=UTC).timestamp() <= first_checkpoint


def test_cli_verify_adapter_with_records_exits_0(run):
    run_dir, summary, _ = run
    result = _invoke(
        "verify",
        *_keys(run_dir),
        "--adapter",
        str(run_dir / "adapter"),
        *_records(run_dir),
        "--json",
    )
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert "WARNING" not in result.stderr
    for rec in records:
        assert rec["bits"] == 256 and rec["verdict"] == "marked" and rec["correction"] == "holm"
        assert rec["p_value"] <= rec["level"] == 2.0**-64
        assert rec["commitment"]["job_id"] == summary["watermark"]["commitments"]["job"]["job_id"]
        assert rec["commitment"]["timestamp"] is None
    # Holm-adjusted, recomputed here: 5 tests (3 bit tests + the job's trigger hits and
    # trigger ranks).
    trig = records[2]["trigger"]
    raw = [r["bit_p_value"] for r in records] + [trig["p_value"], trig["rank_p_value"]]
    order = sorted(range(5), key=lambda i: raw[i])
    adj, run_max = [0.0] * 5, 0.0
    for rank, i in enumerate(order):
        run_max = max(run_max, min(1.0, (5 - rank) * raw[i]))
        adj[i] = run_max
    got = [r["bit_p_adjusted"] for r in records] + [trig["p_adjusted"], trig["rank_p_adjusted"]]
    assert got == pytest.approx(adj, rel=1e-9)
    job = summary["watermark"]["keys"]["job"]["trigger"]
    assert records[2]["trigger"]["hits"] == job["hits"]  # same domain from base_model/ files


def test_cli_verify_table_and_loud_warning_without_record(run):
    run_dir, _, _ = run
    result = CliRunner().invoke(
        watermark_app,
        ["verify", *_keys(run_dir), "--adapter", str(run_dir / "adapter")],
        env={"COLUMNS": "400"},
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "WARNING: no --commitment record given" in text
    for col in ("bit p (Holm)", "trigger acc", "trigger p (Holm)", "commitment", "marked"):
        assert col in text


def test_cli_errors_exit_2(run, tmp_path):
    run_dir, _, _ = run
    adapter = ["--adapter", str(run_dir / "adapter")]
    both = _invoke("verify", *_keys(run_dir), *adapter, "--model", str(run_dir / "base_model"))
    assert both.exit_code == 2 and "not both" in both.output
    loose = _invoke("verify", *_keys(run_dir), *adapter, "--alpha", "0.5")
    assert loose.exit_code == 2 and "alpha" in loose.output
    ia3 = tmp_path / "ia3.key"
    wm.save_key(wm.WatermarkKey(seed=bytes(32), anchor_kind="ia3"), ia3)
    kind = _invoke("verify", "--key", str(ia3), *adapter, "--no-triggers")
    assert kind.exit_code == 2 and "for ia3 adapters, this one is lora" in " ".join(
        kind.output.split()
    )
    lone = tmp_path / "lone"
    (lone / "adapter").mkdir(parents=True)
    for f in (run_dir / "adapter").iterdir():
        (lone / "adapter" / f.name).write_bytes(f.read_bytes())
    job_key = ["--key", str(key_path(run_dir, JOB_OWNER))]
    no_base = _invoke("verify", *job_key, "--adapter", str(lone / "adapter"))
    assert no_base.exit_code == 2 and "--no-triggers" in " ".join(no_base.output.split())
    sig_only = _verify(*job_key, "--adapter", str(lone / "adapter"), "--no-triggers")
    assert sig_only[0]["verdict"] == "marked" and not sig_only[0]["triggers_tested"]
    swapped = [*_records(run_dir)[2:4], *_records(run_dir)[0:2], *_records(run_dir)[4:]]
    wrong = _invoke("verify", *_keys(run_dir), *adapter, *swapped)
    assert wrong.exit_code == 2 and "another key" in " ".join(wrong.output.split())
    old = tmp_path / "old.key"
    old.write_text(json.dumps({"version": 2, "seed": "00" * 32, "layout": []}))
    assert _invoke("verify", "--key", str(old), *adapter).exit_code == 2
    bad = _invoke("attack", "--run", str(run_dir), "--attacks", "prune,nonsense")
    assert bad.exit_code == 2 and "nonsense" in bad.output
    keyless = tmp_path / "keyless"
    keyless.mkdir()
    (keyless / "config.toml").write_bytes((run_dir / "config.toml").read_bytes())
    missing = _invoke("attack", "--run", str(keyless), "--attacks", "none")
    assert missing.exit_code == 2 and "enabled = true" in " ".join(missing.output.split())


def test_keygen_and_commit_commands(run, tmp_path):
    run_dir, _, _ = run
    path = tmp_path / "k" / "mine.key"
    made = _invoke(
        "keygen", "--out", str(path), "--owner", "7", "--adapter", str(run_dir / "adapter")
    )
    assert made.exit_code == 0, made.output
    key = wm.load_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and key.owner == 7
    assert key.anchor_kind == "lora" and key.architecture is not None
    assert wm.key_hash(key) in made.stdout
    assert _invoke("keygen", "--out", str(path)).exit_code == 2  # never overwritten
    rec = tmp_path / "mine.commitment.json"
    done = _invoke(
        "commit",
        "--key",
        str(path),
        "--adapter",
        str(run_dir / "adapter"),
        "--job-id",
        "j1",
        "--out",
        str(rec),
    )
    assert done.exit_code == 0, done.output
    record = json.loads(rec.read_text())
    assert done.stdout.strip() == record["digest"] == wm.record_digest(record)
    # A fresh key is not marked on the released adapter: exit 1, its record checks out.
    records = _verify(
        "--key",
        str(path),
        "--adapter",
        str(run_dir / "adapter"),
        "--commitment",
        str(rec),
        code=1,
    )
    assert records[0]["verdict"] == "not marked" and records[0]["commitment"]["job_id"] == "j1"


def test_merged_model_verifies(run, tmp_path):
    run_dir, _, _runner = run
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(str(run_dir / "base_model"))
    merged = models.load_adapter(base, run_dir / "adapter").merge_and_unload()  # type: ignore[operator]
    merged.save_pretrained(str(tmp_path / "merged"))
    records = _verify(
        *_keys(run_dir), "--model", str(tmp_path / "merged"), "--base", str(run_dir / "base_model")
    )
    assert all(r["verdict"] == "marked" for r in records)


def test_adapter_trained_without_watermark_is_not_marked(run, tmp_path):
    run_dir, _, runner = run
    model = _fresh_lora(run_dir, seed=11)
    training.train_local(
        model,
        client_dataset(runner.parts, runner.parts.shards[0]),
        loss_fn=training.classification_loss,
        epochs=2,
        batch_size=16,
        lr=5e-3,
        optimizer="adamw",
        extra_grad=None,
        seed=0,
    )
    models.save_adapter(model, tmp_path / "plain")
    records = _verify(
        *_keys(run_dir),
        "--adapter",
        str(tmp_path / "plain"),
        "--base",
        str(run_dir / "base_model"),
        code=1,
    )
    assert all(r["verdict"] == "not marked" and r["bit_p_value"] > 1e-6 for r in records)


def test_fresh_keys_against_marked_adapter_are_not_marked(run):
    run_dir, _, _runner = run
    tensors, config = read_adapter_dir(run_dir / "adapter")
    anchor = wm.adapter_anchor(tensors, config)
    arch = wm.Architecture.of("lora", anchor)
    fresh = [wm.verify_bits(wm.generate_key(), anchor, arch).matches for _ in range(50)]
    assert max(fresh) < wm.min_matches(trials=256, chance=0.5)


def test_owner_and_capacity_errors(run, tmp_path):
    _, _, runner = run
    with pytest.raises(ConfigError, match="owners"):
        WatermarkPlugin(tiny_job(watermark={"enabled": True, "owners": 5}), runner.parts)
    with pytest.raises(ConfigError, match="job_key = true"):
        WatermarkPlugin(tiny_job(watermark={"enabled": True, "triggers": 256}), runner.parts)
    with pytest.raises(ConfigError, match="fixes it at 256"):
        WatermarkPlugin(tiny_job(watermark={"enabled": True, "bits": 64}), runner.parts)
    with pytest.raises(ConfigError, match="fixes it at 6"):  # secfed-wm/3's 16 tokens
        WatermarkPlugin(tiny_job(watermark={"enabled": True, "trigger_length": 16}), runner.parts)
    with pytest.raises(ConfigError, match="256 triggers"):
        WatermarkPlugin(
            tiny_job(watermark={"enabled": True, "job_key": True, "triggers": 64}), runner.parts
        )
    lm = tiny_job(
        model={"task": "causal_lm", "family": "gpt2"},
        data={"source": "sft_builtin"},
        watermark={"enabled": True, "job_key": True, "triggers": 256},
    )
    with pytest.raises(ConfigError, match=r"needs model\.task"):
        WatermarkPlugin(lm, runner.parts)
    cfg = tiny_job(
        adapter={"options": {"r": 1, "lora_alpha": 2}},
        watermark={"enabled": True, "owners": 2},
    )
    with pytest.raises(wm.WatermarkCapacityError, match="at most"):
        FederatedRunner(cfg, tmp_path / "cap").start()


def test_hook_is_capped_by_task_gradient(run):
    _, _, runner = run
    cfg = tiny_job(watermark={"enabled": True, "owners": 1, "max_grad_fraction": 0.1})
    parts = runner.parts
    plugin = WatermarkPlugin(cfg, parts)
    params = {n: p for n, p in parts.model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        arch = wm.Architecture.of("lora", wm.adapter_anchor(params, plugin.peft_config))
    plugin.keys[0] = wm.generate_key(owner=0, architecture=arch)
    plugin.embedders[0] = wm.SignEmbedder(plugin.keys[0], arch, strength=100.0, margin=1.0)
    assert plugin.client_grad_hook(1, parts.model) is None
    hook = plugin.client_grad_hook(0, parts.model)
    assert hook is not None
    for p in params.values():
        p.grad = torch.ones_like(p)
    before = {n: p.grad.clone() for n, p in params.items()}
    task_norm = wm.grad_norm(params)
    hook(parts.model)
    added = torch.sqrt(sum(((p.grad - before[n]) ** 2).sum() for n, p in params.items()))
    assert 0 < float(added) <= 0.1 * task_norm * (1 + 1e-5)


@pytest.mark.slow
def test_attack_suite_quick(run, tmp_path):
    run_dir, _, _ = run
    result = CliRunner().invoke(
        watermark_app,
        [
            "attack",
            "--run",
            str(run_dir),
            "--quick",
            "--attacks",
            "none,refactorize,merge,int8",
            "--json",
            str(tmp_path / "a.json"),
            "--plot",
            str(tmp_path / "a.png"),
        ],
        env={"COLUMNS": "400"},
    )
    assert result.exit_code == 0, result.output
    assert "trig hits" in result.output
    rows = json.loads((tmp_path / "a.json").read_text())
    by = {r["attack"]: r for r in rows}
    assert set(by) == {"none", "refactorize", "merge", "int8"}
    for name in ("none", "refactorize", "merge", "int8"):
        assert by[name]["all_marked"], name
        assert by[name]["min_trigger_hits"] is not None
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_embeds_under_dp_sgd_after_clipping_and_noise(run, tmp_path):
    from privacy import ClientAccountant, train_private
    from secfed.watermark.verify import model_anchor

    run_dir, _, runner = run
    cfg = tiny_job(
        privacy={"sample": {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0}},
        watermark={"enabled": True, "owners": 1, "strength": 20.0},
    )
    model = _fresh_lora(run_dir, seed=5)
    parts = copy.copy(runner.parts)
    parts.model = model
    plugin = WatermarkPlugin(cfg, parts)
    plugin.setup(run_dir=tmp_path, model=model, resumed=False)
    assert plugin.clip_norm == 1.0
    train_private(
        model,
        client_dataset(runner.parts, runner.parts.shards[0]),
        loss_fn=training.classification_loss,
        epochs=12,
        batch_size=16,
        lr=5e-3,
        optimizer="adamw",
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        accountant=ClientAccountant(delta=1e-5),
        extra_grad=plugin.client_grad_hook(0, model),
        seed=0,
    )
    (verdict,) = verify_keys([plugin.keys[0]], anchor=model_anchor(model), kind="lora")
    assert verdict.marked, verdict.bits  # 12 epochs: 224-234 of 256 bits (6 gave 198-211)


def test_cli_checks_rfc3161_timestamps_of_the_records(run, tmp_path):
    from tests.crypto.tsa import OpensslTSA

    run_dir, _, _ = run
    trusted = OpensslTSA(tmp_path / "tsa")
    forger = OpensslTSA(tmp_path / "forger", "forger tsa")
    tokens, forged = [], []
    for owner in KEY_HOLDERS:
        data = wm.canonical_start(json.loads(record_path(run_dir, owner).read_text()))
        tokens += ["--timestamp", str(trusted.stamp(data, tmp_path / f"{owner}.tsr"))]
        forged += ["--timestamp", str(forger.stamp(data, tmp_path / f"f{owner}.tsr"))]
    common = [*_keys(run_dir), "--adapter", str(run_dir / "adapter"), *_records(run_dir)]
    records = _verify(*common, *tokens, "--tsa-cert", str(trusted.cert))
    assert all(r["commitment"]["timestamp"].endswith("Z") for r in records)
    refused = _invoke("verify", *common, *forged, "--tsa-cert", str(trusted.cert))
    assert refused.exit_code == 2 and "another TSA" in " ".join(refused.output.split())
    assert _invoke("verify", *common, *tokens).exit_code == 2  # a token needs --tsa-cert
