"""Watermarks in a tiny federated job: every owner verifies, merged too; unmarked is not."""

from __future__ import annotations

import copy
import hashlib
import json
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
from secfed.watermark.plugin import JOB_OWNER, WatermarkPlugin, key_path
from secfed.watermark.verify import verify_keys

from .conftest import tiny_job

OWNERS = 2
KEY_HOLDERS = [0, 1, JOB_OWNER]  # the two owner clients and the job


class _CountingSecrets:
    """Stand-in for :mod:`secrets` in key generation: fixed keys, so the run is repeatable.

    Fresh keys embed to different depths in this 3-client, 3-key toy job (51-64 of 64 bits
    over repeated runs); the example job's figures come from real random keys.
    """

    def __init__(self) -> None:
        self.calls = 0

    def token_bytes(self, n: int) -> bytes:
        self.calls += 1
        return hashlib.shake_256(f"test-key-{self.calls}".encode()).digest(n)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], FederatedRunner]:
    cfg = tiny_job(
        federation={"rounds": 3},
        watermark={"enabled": True, "owners": OWNERS, "bits": 64, "job_key": True, "triggers": 8},
    )
    out = tmp_path_factory.mktemp("wm_run")
    runner = FederatedRunner(cfg, out)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("crypto.watermark.keys.secrets", _CountingSecrets())
        summary = runner.run()
    return out, summary, runner


def _verify(*args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(watermark_app, ["verify", *args, "--json"])
    assert result.exit_code == 0, result.output
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


def test_keys_are_private_files_and_summary_marks_every_owner(run):
    run_dir, summary, _ = run
    for owner in KEY_HOLDERS:
        assert key_path(run_dir, owner).stat().st_mode & 0o077 == 0
    wsum = summary["watermark"]
    assert wsum["owners"] == OWNERS and wsum["job_key"] and wsum["marked"] == len(KEY_HOLDERS)
    assert set(wsum["keys"]) == {"owner_0", "owner_1", "job"}
    for name, rec in wsum["keys"].items():
        assert rec["bit_p_value"] < 1e-6 and rec["verdict"] == "marked"
        # triggers_for = "job": only the job key carries a trigger set
        assert ("trigger" in rec) == (name == "job")
    assert {"hits", "ci_low", "ci_high", "chance"} <= set(wsum["keys"]["job"]["trigger"])


def test_cli_verify_adapter_fields_and_commitment(run):
    run_dir, _, _runner = run
    commitments = json.loads((run_dir / "watermark" / "commitments.json").read_text())[
        "commitments"
    ]
    printed = CliRunner().invoke(watermark_app, ["commit", "--key", str(key_path(run_dir, 0))])
    assert printed.stdout.strip() == commitments["owner_0"]
    args = [*_keys(run_dir), "--adapter", str(run_dir / "adapter")]
    for c in (commitments["owner_0"], commitments["owner_1"], commitments["job"]):
        args += ["--commitment", c]
    records = _verify(*args)
    assert len(records) == len(KEY_HOLDERS)
    for rec in records:
        assert {
            "bits",
            "bit_accuracy",
            "p_value",
            "verdict",
            "alpha",
            "correction",
        } <= set(rec)
        assert rec["bits"] == 64 and rec["bit_p_value"] < 1e-6
        assert rec["verdict"] == "marked" and rec["correction"] == "holm"
        assert rec["commitment_ok"] is True
    bad = CliRunner().invoke(
        watermark_app,
        [
            "verify",
            *_keys(run_dir)[:2],
            "--adapter",
            str(run_dir / "adapter"),
            "--commitment",
            "00" * 32,
        ],
    )
    assert bad.exit_code == 2 and "does not match" in " ".join(bad.output.split())


def test_merged_model_verifies(run, tmp_path):
    run_dir, _, _runner = run
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(str(run_dir / "base_model"))
    merged = models.load_adapter(base, run_dir / "adapter").merge_and_unload()  # type: ignore[operator]
    merged.save_pretrained(str(tmp_path / "merged"))
    records = _verify(
        *_keys(run_dir), "--model", str(tmp_path / "merged"), "--base", str(run_dir / "base_model")
    )
    assert all(r["bit_p_value"] < 1e-6 and r["verdict"] == "marked" for r in records)


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
        *_keys(run_dir), "--adapter", str(tmp_path / "plain"), "--base", str(run_dir / "base_model")
    )
    assert all(r["verdict"] == "not marked" and r["bit_p_value"] > 1e-6 for r in records)


def test_fresh_keys_against_marked_adapter_are_not_marked(run):
    run_dir, _, _runner = run
    from secfed.watermark.verify import read_adapter_dir

    tensors, config = read_adapter_dir(run_dir / "adapter")
    anchor = wm.adapter_anchor(tensors, config)
    layout = list(wm.load_key(key_path(run_dir, 0)).layout)
    fresh = [
        wm.generate_key(owner=9, bits=64, anchor_kind="lora", layout=layout) for _ in range(200)
    ]
    assert sum(wm.verify_bits(k, anchor).p_value < 1e-6 for k in fresh) == 0


def test_owner_and_capacity_errors(run, tmp_path):
    _, _, runner = run
    with pytest.raises(ConfigError, match="owners"):
        WatermarkPlugin(tiny_job(watermark={"enabled": True, "owners": 5}), runner.parts)
    with pytest.raises(ConfigError, match="job_key = true"):
        WatermarkPlugin(tiny_job(watermark={"enabled": True, "triggers": 8}), runner.parts)
    lm = tiny_job(
        model={"task": "causal_lm", "family": "gpt2"},
        data={"source": "sft_builtin"},
        watermark={"enabled": True, "job_key": True, "triggers": 8},
    )
    with pytest.raises(ConfigError, match=r"needs model\.task"):
        WatermarkPlugin(lm, runner.parts)
    cfg = tiny_job(
        adapter={"options": {"r": 1, "lora_alpha": 2}},
        watermark={"enabled": True, "owners": 2, "bits": 256},
    )
    with pytest.raises(wm.WatermarkCapacityError, match="at most"):
        FederatedRunner(cfg, tmp_path / "cap").start()


def test_hook_is_capped_by_task_gradient(run):
    _, _, runner = run
    cfg = tiny_job(watermark={"enabled": True, "owners": 1, "max_grad_fraction": 0.1})
    parts = runner.parts
    plugin = WatermarkPlugin(cfg, parts)
    plugin.keys[0] = wm.generate_key(
        owner=0,
        bits=64,
        anchor_kind="lora",
        layout=wm.layout_of(
            wm.adapter_anchor(dict(parts.model.named_parameters()), plugin.peft_config)
        ),
    )
    plugin.embedders[0] = wm.SignEmbedder(plugin.keys[0], strength=100.0, margin=1.0)
    assert plugin.client_grad_hook(1, parts.model) is None
    hook = plugin.client_grad_hook(0, parts.model)
    assert hook is not None
    params = {n: p for n, p in parts.model.named_parameters() if p.requires_grad}
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
            "--json",
            str(tmp_path / "a.json"),
            "--plot",
            str(tmp_path / "a.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "a.json").read_text())
    by = {r["attack"]: r for r in rows}
    assert {"none", "prune", "int8", "noise", "refactorize", "svd", "finetune", "merge"} <= set(by)
    for name in ("none", "refactorize", "merge", "int8"):
        assert by[name]["all_marked"], name
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
        epochs=6,
        batch_size=16,
        lr=5e-3,
        optimizer="adamw",
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        accountant=ClientAccountant(delta=1e-5),
        extra_grad=plugin.client_grad_hook(0, model),
        seed=0,
    )
    (verdict,) = verify_keys([plugin.keys[0]], anchor=model_anchor(model))
    assert verdict.marked and verdict.p_value < 1e-6
